//! Checking the store like `git fsck`: re-hash every committed blob, find what named images
//! lack, and move corrupt blobs aside (STORE-15..17).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use oci_spec::image::ImageManifest;

use super::{ImageRecord, Store};
use crate::manifest::{descriptor_digest, parse_config, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use crate::{Digest, Error, Hasher, Manifest, ManifestBlob, Platform, Result};

/// Bytes each hashing thread reads at a time: memory use is this times the thread count.
const HASH_BUFFER: usize = 1 << 20;

/// What [`check`] found: every blob re-hashed, every named image walked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Committed blobs hashed.
    pub blobs: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Every named image, with the parts of it that could be read.
    pub images: Vec<ImageCheck>,
    /// Blobs that are corrupt, unreadable, invalid or missing, by digest.
    pub problems: Vec<BlobProblem>,
}

/// One named image as [`check`] found it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageCheck {
    /// `name:tag`, or `name@digest` for an image named only by digest.
    pub reference: String,
    /// The store's record of the name.
    #[serde(skip)]
    pub record: ImageRecord,
    /// Its platform manifest and layers, when the manifests and config are intact.
    #[serde(skip)]
    pub resolved: Option<ResolvedImage>,
}

/// The parts of an image that its intact manifest and config name.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The platform image manifest (the top manifest, or the index child for the platform).
    pub manifest: Digest,
    /// The config blob.
    pub config: Digest,
    /// The layers, bottom first.
    pub layers: Vec<ResolvedLayer>,
}

/// One layer of a [`ResolvedImage`].
#[derive(Debug, Clone)]
pub struct ResolvedLayer {
    /// The layer blob.
    pub digest: Digest,
    /// Its media type, as the manifest declares it.
    pub media_type: String,
    /// The digest of its uncompressed tar stream, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// A blob that is wrong, and the images it breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobProblem {
    /// The blob's digest: its name in `blobs/`, or the digest a manifest names it by.
    pub digest: Digest,
    /// What is wrong with it.
    pub fault: BlobFault,
    /// References of the named images that need it (empty: no image does).
    pub images: Vec<String>,
}

/// What is wrong with a blob (STORE-15, STORE-16).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BlobFault {
    /// Its bytes hash to `actual`, not to the digest it is stored under.
    Corrupt {
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Reading it failed.
    Unreadable {
        /// The error, one line.
        error: String,
    },
    /// Its bytes are intact, but not the manifest or config the image needs them to be.
    Invalid {
        /// What is wrong with them.
        error: String,
    },
    /// A named image needs it and it is not in `blobs/`.
    Missing,
}

impl BlobFault {
    /// Whether the bytes in `blobs/` are bad and must be moved aside before a re-fetch.
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            BlobFault::Corrupt { .. } | BlobFault::Unreadable { .. }
        )
    }
}

/// The outcome of hashing one committed blob.
#[derive(Debug)]
enum Hashed {
    Intact,
    Corrupt(Digest),
    Unreadable(String),
}

impl Hashed {
    /// The fault this outcome is, if any.
    fn fault(&self) -> Option<BlobFault> {
        match self {
            Hashed::Intact => None,
            Hashed::Corrupt(actual) => Some(BlobFault::Corrupt {
                actual: actual.clone(),
            }),
            Hashed::Unreadable(error) => Some(BlobFault::Unreadable {
                error: error.clone(),
            }),
        }
    }
}

/// Re-hashes every committed blob on `threads` threads and walks every named image (STORE-15, STORE-16).
///
/// Holds a lease while it runs, so GC cannot remove blobs under it. Memory stays bounded:
/// each thread streams its blob through a 1 MiB buffer.
pub fn check(store: &Store, threads: usize) -> Result<CheckReport> {
    let _lease = store.lease()?;
    let mut sized = Vec::new();
    for digest in store.digests()? {
        // Gone since the listing (a concurrent commit replaced nothing; only GC removes).
        if let Some(size) = store.blob_size(&digest)? {
            sized.push((digest, size));
        }
    }
    // Largest first, so the last blob to finish is a small one.
    sized.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let mut hashed = hash_all(store, &sized, threads.max(1));
    let mut report = CheckReport {
        blobs: sized.len(),
        bytes: sized.iter().map(|(_, size)| size).sum(),
        ..CheckReport::default()
    };
    let mut problems: BTreeMap<Digest, (BlobFault, BTreeSet<String>)> = BTreeMap::new();
    for (digest, outcome) in &hashed {
        if let Some(fault) = outcome.fault() {
            problems.insert(digest.clone(), (fault, BTreeSet::new()));
        }
    }
    for record in store.images()? {
        let reference = match &record.tag {
            Some(tag) => format!("{}:{tag}", record.name),
            None => format!("{}@{}", record.name, record.digest),
        };
        let mut walk = Walk {
            store,
            hashed: &mut hashed,
            problems: &mut problems,
            reference: &reference,
        };
        let resolved = walk.image(&record)?;
        report.images.push(ImageCheck {
            reference,
            record,
            resolved,
        });
    }
    report.problems = problems
        .into_iter()
        .map(|(digest, (fault, images))| BlobProblem {
            digest,
            fault,
            images: images.into_iter().collect(),
        })
        .collect();
    Ok(report)
}

/// Moves the blob `digest` out of `blobs/` into `quarantine/<alg>/<hex>` if its bytes are
/// bad (STORE-17); returns where it went, or `None` if it is absent or (now) intact.
///
/// Holds the digest's ingest lock and re-hashes first, so a blob that a concurrent ingest
/// just replaced with good bytes stays. A blob that cannot be read is moved too. An earlier
/// quarantined copy of the same digest is replaced.
pub fn quarantine(store: &Store, digest: &Digest) -> Result<Option<PathBuf>> {
    let ingest = store.ingest(digest, None)?;
    let blob = store.blob_path(digest);
    let mut buf = vec![0; HASH_BUFFER];
    match hash_file(&blob, digest, &mut buf) {
        Ok(actual) if &actual == digest => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Ok(_) | Err(_) => {}
    }
    let dir = store
        .root()
        .join("quarantine")
        .join(digest.algorithm().as_str());
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("create directory", &dir, e))?;
    let dest = dir.join(digest.hex());
    fs::rename(&blob, &dest).map_err(|e| Error::io("quarantine blob", &blob, e))?;
    for synced in [blob.parent(), dest.parent()].into_iter().flatten() {
        File::open(synced)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", synced, e))?;
    }
    drop(ingest);
    Ok(Some(dest))
}

/// Hashes `sized` on `threads` threads; a blob that vanished meanwhile is left out.
fn hash_all(store: &Store, sized: &[(Digest, u64)], threads: usize) -> HashMap<Digest, Hashed> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(HashMap::with_capacity(sized.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.min(sized.len()) {
            scope.spawn(|| {
                let mut buf = vec![0; HASH_BUFFER];
                loop {
                    let Some((digest, _)) = sized.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let Some(outcome) = hash_blob(store, digest, &mut buf) else {
                        continue;
                    };
                    results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(digest.clone(), outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hashes the committed blob `digest`; `None` if it is not in `blobs/`.
fn hash_blob(store: &Store, digest: &Digest, buf: &mut [u8]) -> Option<Hashed> {
    let path = store.blob_path(digest);
    match hash_file(&path, digest, buf) {
        Ok(actual) if &actual == digest => Some(Hashed::Intact),
        Ok(actual) => Some(Hashed::Corrupt(actual)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Hashed::Unreadable(format!("read {}: {e}", path.display()))),
    }
}

/// Streams the file at `path` through a hasher of `digest`'s algorithm.
fn hash_file(path: &Path, digest: &Digest, buf: &mut [u8]) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new(digest.algorithm());
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Walks one named image's blobs, recording the problems it meets under its reference.
struct Walk<'a> {
    store: &'a Store,
    hashed: &'a mut HashMap<Digest, Hashed>,
    problems: &'a mut BTreeMap<Digest, (BlobFault, BTreeSet<String>)>,
    reference: &'a str,
}

impl Walk<'_> {
    /// The image's platform manifest, config and layers (STORE-16); `None` when a manifest
    /// or the config is not intact, since what they name is then unknown.
    fn image(&mut self, record: &ImageRecord) -> Result<Option<ResolvedImage>> {
        let Some(top) = self.manifest(&record.digest, Some(&record.media_type))? else {
            return Ok(None);
        };
        let (digest, manifest) = match top.manifest {
            Manifest::Image(manifest) => (top.digest, manifest),
            Manifest::Index(index) => {
                let platform = match &record.platform {
                    Some(p) => Platform::parse(p),
                    None => Ok(Platform::host()),
                };
                let child = platform
                    .and_then(|p| p.select(&index).and_then(descriptor_digest))
                    .map_err(|e| e.to_string());
                let child = match child {
                    Ok(child) => child,
                    Err(error) => {
                        self.problem(&top.digest, BlobFault::Invalid { error });
                        return Ok(None);
                    }
                };
                let Some(blob) = self.manifest(&child, None)? else {
                    return Ok(None);
                };
                match blob.manifest {
                    Manifest::Image(manifest) => (blob.digest, manifest),
                    Manifest::Index(_) => {
                        let error = "an index where the index needs an image manifest".into();
                        self.problem(&child, BlobFault::Invalid { error });
                        return Ok(None);
                    }
                }
            }
        };
        self.layers(&digest, &manifest)
    }

    /// Checks the config and layers of an image manifest and pairs layers with diff_ids.
    fn layers(
        &mut self,
        digest: &Digest,
        manifest: &ImageManifest,
    ) -> Result<Option<ResolvedImage>> {
        // `ManifestBlob::parse` validated the digests of an image manifest.
        let config = descriptor_digest(manifest.config())?;
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for layer in manifest.layers() {
            let layer_digest = descriptor_digest(layer)?;
            self.intact(&layer_digest);
            layers.push((layer_digest, layer.media_type().to_string()));
        }
        if !self.intact(&config) {
            return Ok(None);
        }
        let parsed = self
            .store
            .read_blob(&config, MAX_CONFIG_SIZE)
            .and_then(|bytes| parse_config(&bytes, &config));
        let diff_ids: Vec<Digest> = match parsed.and_then(|c| {
            c.rootfs()
                .diff_ids()
                .iter()
                .map(|d| Digest::parse(d))
                .collect()
        }) {
            Ok(diff_ids) => diff_ids,
            Err(e) => {
                let error = e.to_string();
                self.problem(&config, BlobFault::Invalid { error });
                return Ok(None);
            }
        };
        if diff_ids.len() != layers.len() {
            let error = format!(
                "config lists {} diff_ids for the {} layers of manifest {digest}",
                diff_ids.len(),
                layers.len()
            );
            self.problem(&config, BlobFault::Invalid { error });
            return Ok(None);
        }
        Ok(Some(ResolvedImage {
            manifest: digest.clone(),
            config,
            layers: layers
                .into_iter()
                .zip(diff_ids)
                .map(|((digest, media_type), diff_id)| ResolvedLayer {
                    digest,
                    media_type,
                    diff_id,
                })
                .collect(),
        }))
    }

    /// The manifest `digest`, if it is intact and parses.
    fn manifest(
        &mut self,
        digest: &Digest,
        content_type: Option<&str>,
    ) -> Result<Option<ManifestBlob>> {
        if !self.intact(digest) {
            return Ok(None);
        }
        let recorded = match content_type {
            Some(t) => Some(t.to_string()),
            None => self.store.blob_record(digest)?.map(|r| r.media_type),
        };
        let parsed = self
            .store
            .read_blob(digest, MAX_MANIFEST_SIZE)
            .and_then(|bytes| ManifestBlob::parse(bytes, recorded.as_deref(), Some(digest)));
        match parsed {
            Ok(blob) => Ok(Some(blob)),
            Err(e) => {
                let error = e.to_string();
                self.problem(digest, BlobFault::Invalid { error });
                Ok(None)
            }
        }
    }

    /// Whether the blob is committed and intact; records it as a problem of this image if not.
    ///
    /// A blob committed after the listing is hashed now.
    fn intact(&mut self, digest: &Digest) -> bool {
        if !self.hashed.contains_key(digest) {
            match hash_blob(self.store, digest, &mut vec![0; HASH_BUFFER]) {
                Some(outcome) => {
                    self.hashed.insert(digest.clone(), outcome);
                }
                None => {
                    self.problem(digest, BlobFault::Missing);
                    return false;
                }
            }
        }
        match self.hashed.get(digest).and_then(Hashed::fault) {
            None => true,
            Some(fault) => {
                self.problem(digest, fault);
                false
            }
        }
    }

    /// Records `fault` of `digest` (keeping the first fault found) as breaking this image.
    fn problem(&mut self, digest: &Digest, fault: BlobFault) {
        self.problems
            .entry(digest.clone())
            .or_insert_with(|| (fault, BTreeSet::new()))
            .1
            .insert(self.reference.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media;

    fn new_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn put(store: &Store, bytes: &[u8], media_type: &str) -> Digest {
        let digest = Digest::sha256(bytes);
        store.put_blob(&digest, bytes, media_type, None).unwrap();
        digest
    }

    fn corrupt(store: &Store, digest: &Digest) {
        let path = store.blob_path(digest);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        // Blobs are 0444; the owner may still replace the file.
        fs::remove_file(&path).unwrap();
        fs::write(&path, bytes).unwrap();
    }

    fn manifest(config: &Digest, config_len: usize, layer: &Digest, layer_len: usize) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config.to_string(), "size": config_len},
            "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": layer.to_string(), "size": layer_len}],
        }))
        .unwrap()
    }

    /// A one-layer image manifest for `arch` whose blobs are all in `store`.
    fn image(store: &Store, arch: &str) -> (Digest, usize) {
        let layer = format!("layer of {arch}").into_bytes();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::sha256(arch.as_bytes()).to_string()]},
        }))
        .unwrap();
        let layer_digest = put(store, &layer, media::OCI_LAYER_GZIP);
        let config_digest = put(store, &config, media::OCI_CONFIG);
        let bytes = manifest(&config_digest, config.len(), &layer_digest, layer.len());
        (put(store, &bytes, media::OCI_MANIFEST), bytes.len())
    }

    fn name(store: &Store, tag: &str, digest: &Digest, media_type: &str, platform: &str) {
        store
            .set_image(&ImageRecord {
                name: "example.com/app".into(),
                tag: Some(tag.into()),
                digest: digest.clone(),
                media_type: media_type.into(),
                size: 0,
                created: None,
                platform: Some(platform.into()),
                updated: 0,
            })
            .unwrap();
    }

    #[test]
    fn clean_store_has_no_problems_and_resolves_layers_with_diff_ids() {
        // STORE-15, STORE-16
        let (_dir, store) = new_store();
        let (top, _) = image(&store, "amd64");
        name(&store, "1", &top, media::OCI_MANIFEST, "linux/amd64");
        let report = check(&store, 2).unwrap();
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.blobs, 3);
        let resolved = report.images[0].resolved.as_ref().unwrap();
        assert_eq!(resolved.manifest, top);
        assert_eq!(resolved.layers[0].diff_id, Digest::sha256(b"amd64"));
    }

    #[test]
    fn index_needs_only_the_recorded_platform_child() {
        // STORE-16: the arm64 child is absent (a pull fetches one platform) and that is fine;
        // its amd64 sibling's missing config breaks the image.
        let (_dir, store) = new_store();
        let (amd, amd_len) = image(&store, "amd64");
        let absent = Digest::sha256(b"arm64 manifest never pulled");
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [
                {"mediaType": media::OCI_MANIFEST, "digest": amd.to_string(), "size": amd_len,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": media::OCI_MANIFEST, "digest": absent.to_string(), "size": 10,
                 "platform": {"os": "linux", "architecture": "arm64"}},
            ],
        }))
        .unwrap();
        let top = put(&store, &index, media::OCI_INDEX);
        name(&store, "1", &top, media::OCI_INDEX, "linux/amd64");
        assert_eq!(check(&store, 1).unwrap().problems, vec![]);

        let amd_manifest: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&amd, 1 << 20).unwrap()).unwrap();
        let config = Digest::parse(amd_manifest["config"]["digest"].as_str().unwrap()).unwrap();
        fs::remove_file(store.blob_path(&config)).unwrap();
        let report = check(&store, 1).unwrap();
        assert_eq!(
            report.problems,
            vec![BlobProblem {
                digest: config,
                fault: BlobFault::Missing,
                images: vec!["example.com/app:1".into()],
            }]
        );
        assert!(report.images[0].resolved.is_none());
    }

    #[test]
    fn corrupt_blob_is_found_whoever_needs_it_and_quarantine_moves_it_out() {
        // STORE-15, STORE-17
        let (_dir, store) = new_store();
        let orphan = put(&store, b"nobody names me", "application/octet-stream");
        let (top, _) = image(&store, "amd64");
        name(&store, "1", &top, media::OCI_MANIFEST, "linux/amd64");
        name(&store, "2", &top, media::OCI_MANIFEST, "linux/amd64");
        corrupt(&store, &orphan);
        corrupt(&store, &top);
        let report = check(&store, 2).unwrap();
        let actual = |d: &Digest| Digest::sha256(&fs::read(store.blob_path(d)).unwrap());
        let mut want = vec![
            BlobProblem {
                digest: orphan.clone(),
                fault: BlobFault::Corrupt {
                    actual: actual(&orphan),
                },
                images: vec![],
            },
            BlobProblem {
                digest: top.clone(),
                fault: BlobFault::Corrupt {
                    actual: actual(&top),
                },
                images: vec!["example.com/app:1".into(), "example.com/app:2".into()],
            },
        ];
        want.sort_by(|a, b| a.digest.cmp(&b.digest));
        assert_eq!(report.problems, want);

        let bad = fs::read(store.blob_path(&top)).unwrap();
        let moved = quarantine(&store, &top).unwrap().unwrap();
        assert_eq!(
            moved,
            store.root().join("quarantine/sha256").join(top.hex())
        );
        assert_eq!(fs::read(&moved).unwrap(), bad);
        assert_eq!(store.blob_size(&top).unwrap(), None);
        assert!(!store.digests().unwrap().contains(&top));
        // Now needed and absent: missing.
        let report = check(&store, 2).unwrap();
        assert!(report
            .problems
            .iter()
            .any(|p| p.digest == top && p.fault == BlobFault::Missing));
    }

    #[test]
    fn quarantine_leaves_an_intact_blob_where_it_is() {
        // STORE-17: a blob replaced by good bytes since the check stays.
        let (_dir, store) = new_store();
        let digest = put(&store, b"good bytes", "application/octet-stream");
        assert_eq!(quarantine(&store, &digest).unwrap(), None);
        assert_eq!(store.blob_size(&digest).unwrap(), Some(10));
        assert!(!store.root().join("quarantine").exists());
        let absent = Digest::sha256(b"never stored");
        assert_eq!(quarantine(&store, &absent).unwrap(), None);
    }
}

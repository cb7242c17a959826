//! `ferry load`: one archive stream into the store (ARC-9 to ARC-14).
//!
//! Entries are taken in archive order, so a pipe works: blobs go through `Store::ingest`
//! (hashed on the way, checked at the end of their entry) but are committed only when the
//! whole archive has been read and checked and the trust policy accepts every image; then
//! signatures are stored and names set. Any failure before that removes every partial the
//! load wrote, so the store is as before.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::path::PathBuf;

use ferry_core::manifest::{descriptor_digest, parse_config, MAX_MANIFEST_SIZE};
use ferry_core::media::{self, Compression};
use ferry_core::oci_spec::image::{Descriptor, ANNOTATION_REF_NAME};
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Hasher, Manifest, ManifestBlob, Platform, Reference, Store};
use ferry_signing::{Policy, SignatureEnvelope, MAX_PAYLOAD_SIZE, PAYLOAD_MEDIA_TYPE};
use serde::Serialize;

use super::{
    corrupt, digest_of_path, docker, invalid, local, Format, StreamCompression, Toc,
    ANNOTATION_CONTAINERD_NAME, MAX_JSON_SIZE, TOC_FILE, TOC_VERSION,
};
use crate::transfer::progress::{BlobKind, Event, Progress, Silent};
use crate::transfer::signatures::{
    envelope_of_layer, signature_tag, signatures_in_store, signing_error, store_signature_leased,
};
use crate::{Error, ErrorKind, Result};

/// Total bytes of small files and JSON blobs kept in memory while loading.
const MEMORY_BUDGET: u64 = 256 * 1024 * 1024;
/// Loose files up to this size are kept in memory; larger ones are spooled to disk.
const SMALL_FILE: u64 = 1024 * 1024;
/// Read buffer size.
const CHUNK: usize = 1024 * 1024;
/// Longest chain of links followed inside an archive.
const MAX_LINKS: usize = 8;

/// Options of [`load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The image name for plain-tag ref names (`latest`), as `skopeo copy … oci-archive:F:TAG`
    /// writes them (ARC-12).
    pub name: Option<String>,
    /// Recorded as the source of the blobs the load adds (e.g. `archive:/media/usb/x.tar`).
    pub source_label: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            name: None,
            source_label: "archive".into(),
        }
    }
}

/// What [`load`] did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The format read.
    pub format: Format,
    /// How the stream was compressed.
    pub compression: StreamCompression,
    /// The images named, in archive order.
    pub images: Vec<LoadedImage>,
    /// Blobs committed by this load.
    pub blobs_added: usize,
    /// Their bytes.
    pub bytes_added: u64,
    /// Blobs the images need that the store already had.
    pub blobs_present: usize,
}

/// One image a load named.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedImage {
    /// `NAME:TAG` or `NAME@DIGEST`.
    pub reference: String,
    /// The top manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Bytes of the image's manifests, config and layers.
    pub size: u64,
    /// Signature envelopes the archive carried for it.
    pub signatures: usize,
    /// False when the store already named this image so (loading again changes nothing).
    pub changed: bool,
}

/// Reads an archive (any format of ARC-1, compressed or not) from `input` into `store`,
/// checks every image against `policy`, and names them (ARC-9, ARC-10).
///
/// Holds a store lease throughout. On any error the store keeps no name, blob or partial
/// that this load added.
pub fn load<R: Read>(
    store: &Store,
    input: R,
    policy: &Policy,
    options: &LoadOptions,
) -> Result<LoadReport> {
    load_with_progress(store, input, policy, options, &Silent)
}

/// [`load`], reporting each blob read to `progress` (start, bytes, done; `present` when the
/// store had it). A blob's kind comes from the ferry archive's table of contents; blobs of
/// other archives are reported as layers.
pub fn load_with_progress<R: Read>(
    store: &Store,
    input: R,
    policy: &Policy,
    options: &LoadOptions,
    progress: &dyn Progress,
) -> Result<LoadReport> {
    let _lease = store.lease().map_err(local)?;
    let mut loader = Loader {
        store,
        options,
        progress,
        staged: HashMap::new(),
        json: HashMap::new(),
        memory: 0,
        files: HashMap::new(),
        spools: HashMap::new(),
        links: HashMap::new(),
        toc: None,
        entries: 0,
        spool_dir: None,
        synthesized: HashMap::new(),
        docker_targets: HashMap::new(),
    };
    let result = loader.run(input, policy);
    loader.cleanup();
    result
}

/// A blob read from the archive and verified, waiting in the store's ingest area.
struct Staged {
    size: u64,
    /// The store had it committed already: nothing to commit.
    present: bool,
    /// Committed by this load.
    committed: bool,
}

/// A large loose file (a docker layer tar) spooled to disk.
struct Spool {
    path: PathBuf,
    sha256: Digest,
    size: u64,
}

/// An image the archive names.
struct Candidate {
    reference: Reference,
    digest: Digest,
    media_type: String,
    size: u64,
}

/// An image ready to be named.
struct Ready {
    record: ImageRecord,
    needed: Vec<(Digest, u64, String)>,
    envelopes: Vec<SignatureEnvelope>,
}

struct Loader<'a> {
    store: &'a Store,
    options: &'a LoadOptions,
    progress: &'a dyn Progress,
    staged: HashMap<Digest, Staged>,
    /// Bytes of small JSON blobs (manifests, configs, envelopes) among the staged ones.
    json: HashMap<Digest, Vec<u8>>,
    /// Bytes held in `json` and `files`.
    memory: u64,
    /// Small loose files (not under `blobs/`) by path.
    files: HashMap<String, Vec<u8>>,
    spools: HashMap<String, Spool>,
    /// Links by path, to the path they point at.
    links: HashMap<String, String>,
    toc: Option<Toc>,
    entries: usize,
    spool_dir: Option<tempfile::TempDir>,
    /// Blobs made by the load (a docker image's config and manifest): bytes, media type.
    synthesized: HashMap<Digest, (Vec<u8>, String)>,
    /// Docker layer paths whose diff ID is known before they arrive.
    docker_targets: HashMap<String, Digest>,
}

fn read_error(e: io::Error) -> Error {
    corrupt(format!(
        "reading the archive: {e} (is it truncated or damaged?)"
    ))
}

/// Strips `./` and `/` prefixes; refuses `..` components.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The path a link at `at` pointing to `target` names, inside the archive.
fn link_target(at: &str, target: &str, hard: bool) -> Option<String> {
    if hard || target.starts_with('/') {
        return normalize(target);
    }
    let mut parts: Vec<&str> = at.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Opens the stream, detecting gzip or zstd compression by magic bytes (ARC-9).
fn decompress<'r, R: Read + 'r>(mut input: R) -> Result<(Box<dyn Read + 'r>, StreamCompression)> {
    let mut head = Vec::with_capacity(8);
    while head.len() < 8 {
        let mut b = [0u8; 8];
        let n = match input.read(&mut b[..8 - head.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    if head.is_empty() {
        return Err(invalid("the archive is empty"));
    }
    let sniffed = Compression::sniff(&head);
    let whole = Cursor::new(head).chain(input);
    Ok(match sniffed {
        Compression::None => (Box::new(whole), StreamCompression::None),
        Compression::Gzip => (
            Box::new(flate2::read::MultiGzDecoder::new(whole)),
            StreamCompression::Gzip,
        ),
        Compression::Zstd => (
            Box::new(zstd::Decoder::new(whole).map_err(read_error)?),
            StreamCompression::Zstd,
        ),
    })
}

impl Loader<'_> {
    fn run(&mut self, input: impl Read, policy: &Policy) -> Result<LoadReport> {
        let (reader, compression) = decompress(input)?;
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            self.entry(&mut entry)?;
        }
        let format = self.format()?;
        let candidates = match format {
            Format::Ferry | Format::OciArchive => self.oci_candidates(format)?,
            Format::DockerArchive => self.docker_candidates()?,
        };
        if candidates.images.is_empty() {
            return Err(invalid(
                "the archive names no image (nothing to load)".to_string(),
            ));
        }
        // Check everything, then the policy, before anything becomes visible (ARC-10).
        let mut ready = Vec::new();
        for c in &candidates.images {
            let mut r = self.check_image(c)?;
            r.envelopes = self.envelopes(&candidates.signature_sets, c)?;
            ready.push(r);
        }
        for (c, r) in candidates.images.iter().zip(&ready) {
            let mut all = r.envelopes.clone();
            for e in signatures_in_store(self.store, &c.digest)? {
                if !all.contains(&e) {
                    all.push(e);
                }
            }
            match policy.check(&c.reference, &c.digest, &all) {
                Ok(_) => {}
                Err(ferry_signing::Error::Rejected { reason, .. }) => {
                    return Err(Error::new(
                        ErrorKind::Rejected,
                        "",
                        format!("{reason}; nothing was loaded"),
                    ))
                }
                Err(e) => return Err(signing_error(e)),
            }
        }
        self.commit(format, compression, candidates.images, ready)
    }

    /// Takes one tar entry.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = normalize(&raw) else {
            return Err(invalid(format!(
                "archive entry {raw:?} reaches outside the archive"
            )));
        };
        let kind = entry.header().entry_type();
        let first = self.entries == 0;
        self.entries += 1;
        match kind {
            tar::EntryType::Directory => return Ok(()),
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if let Some(t) = link_target(&path, &target, kind == tar::EntryType::Link) {
                    self.links.insert(path, t);
                }
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => {
                tracing::warn!("archive entry {path}: ignoring entry of type {other:?}");
                return Ok(());
            }
        }
        let size = entry.size();
        if first && path == TOC_FILE {
            let bytes = self.read_small(entry, &path, size)?;
            return self.take_toc(&bytes);
        }
        if let Some(digest) = digest_of_path(&path) {
            if let Some(toc) = &self.toc {
                if !toc
                    .blobs
                    .iter()
                    .any(|b| b.digest == digest && b.size == size)
                {
                    return Err(corrupt(format!(
                        "archive entry {path} ({size} bytes) is not in its {TOC_FILE}"
                    )));
                }
            }
            return self.stage(&digest, Some(size), entry, &path);
        }
        if let Some(diff_id) = self.docker_targets.get(&path).cloned() {
            return self.stage_layer(&diff_id, entry, size, &path);
        }
        let fits = self.memory + size <= MEMORY_BUDGET;
        if fits && (size <= SMALL_FILE || (path.ends_with(".json") && size <= MAX_JSON_SIZE)) {
            let bytes = self.read_small(entry, &path, size)?;
            self.memory += bytes.len() as u64;
            self.files.insert(path.clone(), bytes);
            if path == "manifest.json" || path.ends_with(".json") {
                self.update_docker_targets();
            }
            return Ok(());
        }
        self.spool(entry, &path, size)
    }

    /// Reads a whole small entry, checking it is not cut short.
    fn read_small(&mut self, entry: &mut impl Read, path: &str, size: u64) -> Result<Vec<u8>> {
        if size > MAX_JSON_SIZE {
            return Err(invalid(format!(
                "archive entry {path}: {size} bytes, more than the {MAX_JSON_SIZE} read"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(read_error)?;
        if bytes.len() as u64 != size {
            return Err(truncated(path, bytes.len() as u64, size));
        }
        Ok(bytes)
    }

    /// Reads the table of contents and checks that the store has every excluded blob (ARC-3,
    /// ARC-6), before any other byte is read.
    fn take_toc(&mut self, bytes: &[u8]) -> Result<()> {
        let toc: Toc =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("{TOC_FILE}: {e}")))?;
        if toc.ferry_archive != TOC_VERSION {
            return Err(invalid(format!(
                "{TOC_FILE}: archive version {}, this ferry reads version {TOC_VERSION}; upgrade ferry",
                toc.ferry_archive
            )));
        }
        for b in &toc.excluded {
            if self.store.blob_size(&b.digest).map_err(local)? != Some(b.size) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "",
                    format!(
                        "the archive leaves out blob {} ({}, {} bytes) for a store that has it, and this store does not; load the archive that brought it first, or save without --exclude-digests",
                        b.digest, b.media_type, b.size
                    ),
                ));
            }
        }
        self.toc = Some(toc);
        Ok(())
    }

    /// Streams `reader` into the store's ingest of `digest`, verifying size and digest at its
    /// end; the blob stays uncommitted (ARC-10). A blob the store has is only verified.
    fn stage(
        &mut self,
        digest: &Digest,
        size: Option<u64>,
        reader: &mut dyn Read,
        path: &str,
    ) -> Result<()> {
        let duplicate = self.staged.contains_key(digest);
        let present = !duplicate
            && match (self.store.blob_size(digest).map_err(local)?, size) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            };
        let mut ingest = if duplicate || present {
            None
        } else {
            let mut i = self.store.ingest(digest, size).map_err(local)?;
            if i.offset() != 0 {
                i.reset().map_err(local)?;
            }
            Some(i)
        };
        let keep_json = size.is_some_and(|s| {
            s <= MAX_JSON_SIZE
                && self.memory + s <= MEMORY_BUDGET
                && !self.json.contains_key(digest)
        });
        let mut kept: Option<Vec<u8>> = keep_json.then(Vec::new);
        let mut hasher = Hasher::new(digest.algorithm());
        let mut count = 0u64;
        let kind = self.kind_of(digest);
        let total = size.unwrap_or(0);
        if !duplicate {
            self.progress.event(&Event::BlobStart {
                digest: digest.to_string(),
                kind,
                size: total,
                resumed_from: 0,
            });
        }
        let mut buf = vec![0u8; CHUNK];
        let outcome: Result<()> = (|| {
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(e)),
                };
                let chunk = &buf[..n];
                if count == 0 && !chunk.trim_ascii_start().starts_with(b"{") {
                    kept = None;
                }
                hasher.update(chunk);
                count += n as u64;
                if let Some(k) = kept.as_mut() {
                    k.extend_from_slice(chunk);
                }
                if let Some(i) = ingest.as_mut() {
                    i.write_all(chunk).map_err(local)?;
                }
                if !duplicate {
                    self.progress.event(&Event::BlobProgress {
                        digest: digest.to_string(),
                        done: count,
                        size: total.max(count),
                    });
                }
            }
            if let Some(want) = size.filter(|&w| w != count) {
                return Err(truncated(path, count, want));
            }
            let actual = hasher.finish();
            if &actual != digest {
                return Err(corrupt(format!(
                    "blob {digest} ({path} in the archive): digest mismatch: its bytes hash to {actual}"
                )));
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            if let Some(mut i) = ingest {
                // Nothing of a bad blob stays: the empty partial goes when the ingest drops.
                let _ = i.reset();
            }
            return Err(e);
        }
        drop(ingest);
        if let Some(k) = kept {
            self.memory += k.len() as u64;
            self.json.insert(digest.clone(), k);
        }
        if !duplicate {
            self.progress.event(&Event::BlobDone {
                digest: digest.to_string(),
                kind,
                size: count,
                present,
                source: (!present).then(|| self.options.source_label.clone()),
            });
            self.staged.insert(
                digest.clone(),
                Staged {
                    size: count,
                    present,
                    committed: false,
                },
            );
        }
        Ok(())
    }

    /// What blob `digest` is, per the table of contents (a layer when there is none).
    fn kind_of(&self, digest: &Digest) -> BlobKind {
        self.toc
            .as_ref()
            .and_then(|toc| toc.blobs.iter().find(|b| &b.digest == digest))
            .map_or(BlobKind::Layer, |b| BlobKind::of_media_type(&b.media_type))
    }

    /// Stages a docker layer tar as the uncompressed tar its diff ID names, decompressing a
    /// gzip or zstd one on the way (ARC-11).
    fn stage_layer(
        &mut self,
        diff_id: &Digest,
        reader: &mut dyn Read,
        size: u64,
        path: &str,
    ) -> Result<()> {
        let mut head = vec![0u8; 8];
        let mut got = 0;
        while got < head.len() {
            match reader.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        head.truncate(got);
        let compression = Compression::sniff(&head);
        let mut whole = Cursor::new(head).chain(reader);
        if compression == Compression::None {
            return self.stage(diff_id, Some(size), &mut whole, path);
        }
        let mut d = docker::decoder(compression, &mut whole).map_err(read_error)?;
        self.stage(diff_id, None, &mut d, path)
    }

    /// Writes a large loose entry to a temporary file beside the store, hashing it.
    fn spool(&mut self, entry: &mut impl Read, path: &str, size: u64) -> Result<()> {
        if self.spool_dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix(".ferry-load-")
                .tempdir_in(self.store.root())
                .map_err(|e| {
                    local(ferry_core::Error::io(
                        "create spool directory in",
                        self.store.root(),
                        e,
                    ))
                })?;
            self.spool_dir = Some(dir);
        }
        let dir = self.spool_dir.as_ref().expect("created above").path();
        let file_path = dir.join(format!("{}", self.spools.len()));
        let io_err = |e: io::Error| local(ferry_core::Error::io("write spool", &file_path, e));
        let mut file = File::create(&file_path).map_err(io_err)?;
        let mut hasher = Hasher::new(ferry_core::Algorithm::Sha256);
        let mut count = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err)?;
            count += n as u64;
        }
        if count != size {
            return Err(truncated(path, count, size));
        }
        self.spools.insert(
            path.to_string(),
            Spool {
                path: file_path,
                sha256: hasher.finish(),
                size,
            },
        );
        Ok(())
    }

    /// When `manifest.json` and configs came first (as ferry writes docker archives), the
    /// layer paths and their diff IDs are known before the layers arrive.
    fn update_docker_targets(&mut self) {
        let Some(Ok(images)) = self
            .files
            .get("manifest.json")
            .map(|b| docker::parse_manifest_json(b))
        else {
            return;
        };
        for image in images {
            let Some(config) = self
                .resolve_path(&image.config)
                .and_then(|p| self.files.get(&p))
            else {
                continue;
            };
            let Ok(ids) = docker::diff_ids(config, &image.config) else {
                continue;
            };
            if ids.len() != image.layers.len() {
                continue;
            }
            for (layer, id) in image.layers.iter().zip(ids) {
                if let Some(p) = normalize(layer) {
                    self.docker_targets.insert(p, id);
                }
            }
        }
    }

    /// Follows links (at most [`MAX_LINKS`]) from `path`.
    fn resolve_path(&self, path: &str) -> Option<String> {
        let mut p = normalize(path)?;
        for _ in 0..MAX_LINKS {
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => return Some(p),
            }
        }
        None
    }

    /// Which format the archive is, now that every entry was read (ARC-1, ARC-9).
    fn format(&self) -> Result<Format> {
        if let Some(toc) = &self.toc {
            let missing: Vec<String> = toc
                .blobs
                .iter()
                .filter(|b| !self.staged.contains_key(&b.digest))
                .map(|b| b.digest.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(corrupt(format!(
                    "the archive is truncated: {} of the {} blobs its {TOC_FILE} lists are missing (first: {})",
                    missing.len(),
                    toc.blobs.len(),
                    missing[0]
                )));
            }
            return Ok(Format::Ferry);
        }
        if self.files.contains_key("index.json") {
            return Ok(Format::OciArchive);
        }
        if self.files.contains_key("manifest.json") {
            return Ok(Format::DockerArchive);
        }
        if self.entries == 0 {
            return Err(corrupt("the archive has no entries (truncated?)"));
        }
        Err(invalid(
            "not an image archive: it has neither index.json (OCI layout) nor manifest.json (docker save)",
        ))
    }

    /// The images and signature sets `index.json` names (ARC-4, ARC-12).
    fn oci_candidates(&mut self, format: Format) -> Result<Candidates> {
        let index: serde_json::Value = serde_json::from_slice(&self.files["index.json"])
            .map_err(|e| invalid(format!("index.json: {e}")))?;
        let entries = index
            .get("manifests")
            .and_then(|m| m.as_array())
            .ok_or_else(|| invalid("index.json has no \"manifests\" array"))?;
        let mut out = Candidates::default();
        for entry in entries {
            let desc: Descriptor = serde_json::from_value(entry.clone())
                .map_err(|e| invalid(format!("index.json: bad descriptor: {e}")))?;
            let digest = descriptor_digest(&desc).map_err(local)?;
            let annotations = desc.annotations().clone().unwrap_or_default();
            let reference = match (
                annotations.get(ANNOTATION_CONTAINERD_NAME),
                annotations.get(ANNOTATION_REF_NAME),
            ) {
                (Some(full), _) => Reference::parse(full).map_err(|e| {
                    invalid(format!("index.json: {ANNOTATION_CONTAINERD_NAME} {full:?}: {e}"))
                })?,
                (None, Some(r)) if r.contains(['/', ':', '@']) => Reference::parse(r)
                    .map_err(|e| invalid(format!("index.json: ref name {r:?}: {e}")))?,
                (None, Some(tag)) => match &self.options.name {
                    Some(name) => {
                        let base = Reference::parse(name).map_err(local)?;
                        Reference::with_name(&base.name(), Some(tag), None).map_err(local)?
                    }
                    None => {
                        return Err(invalid(format!(
                            "index.json names {digest} by the plain tag {tag:?}, without an image name; pass --name NAME to load it as NAME:{tag}"
                        )))
                    }
                },
                (None, None) => {
                    tracing::warn!("index.json lists {digest} without a name; not loading it");
                    continue;
                }
            };
            let candidate = Candidate {
                digest,
                media_type: desc.media_type().to_string(),
                size: desc.size(),
                reference,
            };
            if candidate
                .reference
                .tag()
                .is_some_and(|t| t.ends_with(".sig"))
            {
                out.signature_sets.push(candidate);
            } else {
                out.images.push(candidate);
            }
        }
        // A signature tag that names no image of the archive is an image like any other.
        let (sets, strays): (Vec<Candidate>, Vec<Candidate>) =
            std::mem::take(&mut out.signature_sets)
                .into_iter()
                .partition(|s| {
                    out.images.iter().any(|i| {
                        i.reference.name() == s.reference.name()
                            && s.reference.tag() == Some(&signature_tag(&i.digest))
                    })
                });
        out.signature_sets = sets;
        for s in strays {
            tracing::info!(
                "index.json: {} names no image of the archive; ignoring it",
                s.reference
            );
        }
        if format == Format::Ferry {
            let toc = self.toc.as_ref().expect("ferry archives have a TOC");
            let mut from_index: Vec<(String, Option<String>, Digest)> = out
                .images
                .iter()
                .map(|c| {
                    (
                        c.reference.name(),
                        c.reference.tag().map(str::to_string),
                        c.digest.clone(),
                    )
                })
                .collect();
            let mut from_toc: Vec<(String, Option<String>, Digest)> = toc
                .images
                .iter()
                .map(|i| (i.name.clone(), i.tag.clone(), i.digest.clone()))
                .collect();
            from_index.sort();
            from_toc.sort();
            if from_index != from_toc {
                return Err(invalid(format!(
                    "{TOC_FILE} and index.json disagree about the images of the archive"
                )));
            }
        }
        Ok(out)
    }

    /// The images `manifest.json` names, each stored as an OCI manifest over its config and
    /// uncompressed layers (ARC-11).
    fn docker_candidates(&mut self) -> Result<Candidates> {
        let images = docker::parse_manifest_json(&self.files["manifest.json"])?;
        let mut out = Candidates::default();
        for image in images {
            let what = format!("image {} of manifest.json", image.config);
            let config_path = self
                .resolve_path(&image.config)
                .ok_or_else(|| invalid(format!("{what}: bad config path")))?;
            let config = match self.files.get(&config_path) {
                Some(b) => b.clone(),
                None => match self.spools.get(&config_path) {
                    Some(s) if s.size <= MAX_JSON_SIZE => {
                        std::fs::read(&s.path).map_err(read_error)?
                    }
                    _ => {
                        return Err(corrupt(format!(
                            "{what}: its config {} is not in the archive (truncated?)",
                            image.config
                        )))
                    }
                },
            };
            let config_digest = Digest::sha256(&config);
            let ids = docker::diff_ids(&config, &what)?;
            if ids.len() != image.layers.len() {
                return Err(invalid(format!(
                    "{what}: {} layers, but its config lists {} diff IDs",
                    image.layers.len(),
                    ids.len()
                )));
            }
            let mut layers = Vec::new();
            for (path, id) in image.layers.iter().zip(&ids) {
                let size = self.docker_layer(path, id, &what)?;
                layers.push((id.clone(), size));
            }
            let manifest = docker::oci_manifest(&config_digest, config.len() as u64, &layers);
            let digest = Digest::sha256(&manifest);
            let size = manifest.len() as u64;
            self.synthesized
                .insert(config_digest, (config, media::OCI_CONFIG.to_string()));
            self.synthesized
                .insert(digest.clone(), (manifest, media::OCI_MANIFEST.to_string()));
            if image.repo_tags.is_empty() {
                tracing::warn!("{what} has no name (RepoTags); not loading it ({digest})");
            }
            for tag in &image.repo_tags {
                let reference = Reference::parse(tag)
                    .map_err(|e| invalid(format!("{what}: RepoTags {tag:?}: {e}")))?;
                out.images.push(Candidate {
                    reference,
                    digest: digest.clone(),
                    media_type: media::OCI_MANIFEST.to_string(),
                    size,
                });
            }
        }
        Ok(out)
    }

    /// Makes the layer at `path` staged as the uncompressed tar of diff ID `id`; its size.
    fn docker_layer(&mut self, path: &str, id: &Digest, what: &str) -> Result<u64> {
        if let Some(s) = self.staged.get(id) {
            return Ok(s.size);
        }
        let resolved = self
            .resolve_path(path)
            .ok_or_else(|| invalid(format!("{what}: bad layer path {path:?}")))?;
        let mismatch = |actual: &Digest| {
            corrupt(format!(
                "{what}: layer {path} is {actual}, but the config's diff ID for it is {id}"
            ))
        };
        if let Some(bytes) = self.files.get(&resolved).cloned() {
            let compression = Compression::sniff(&bytes);
            if compression == Compression::None && &Digest::sha256(&bytes) != id {
                return Err(mismatch(&Digest::sha256(&bytes)));
            }
            self.stage_layer(id, &mut Cursor::new(&bytes), bytes.len() as u64, path)?;
        } else if let Some(spool) = self.spools.get(&resolved) {
            let (file_path, sha, size) = (spool.path.clone(), spool.sha256.clone(), spool.size);
            let mut file = File::open(&file_path).map_err(read_error)?;
            if &sha == id {
                self.stage(id, Some(size), &mut file, path)?;
            } else {
                let mut head = [0u8; 8];
                let n = file.read(&mut head).map_err(read_error)?;
                if Compression::sniff(&head[..n]) == Compression::None {
                    return Err(mismatch(&sha));
                }
                let file = File::open(&file_path).map_err(read_error)?;
                self.stage_layer(id, &mut io::BufReader::new(file), size, path)?;
            }
        } else if let Some(d) = digest_of_path(&resolved).filter(|d| self.staged.contains_key(d)) {
            // An OCI blob used as a docker layer (docker 25+ archives) must be uncompressed.
            return Err(mismatch(&d));
        } else {
            return Err(corrupt(format!(
                "{what}: layer {path} is not in the archive (truncated?)"
            )));
        }
        Ok(self.staged[id].size)
    }

    /// The bytes of manifest or config `d`, from the archive or the store.
    fn json_blob(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        if let Some((b, _)) = self.synthesized.get(d) {
            return Ok(Some(b.clone()));
        }
        if let Some(b) = self.json.get(d) {
            return Ok(Some(b.clone()));
        }
        if self.staged.get(d).is_some_and(|s| !s.present) {
            return Err(invalid(format!(
                "blob {d} in the archive is too large or not JSON, but is needed as a manifest or config"
            )));
        }
        match self.store.blob_size(d).map_err(local)? {
            Some(_) => Ok(Some(self.store.read_blob(d, limit).map_err(local)?)),
            None => Ok(None),
        }
    }

    /// Whether blob `d` of `size` bytes is in the archive (verified) or in the store.
    fn available(&self, d: &Digest, size: u64) -> Result<bool> {
        if let Some(s) = self.staged.get(d) {
            return Ok(s.size == size);
        }
        if let Some((b, _)) = self.synthesized.get(d) {
            return Ok(b.len() as u64 == size);
        }
        Ok(self.store.blob_size(d).map_err(local)? == Some(size))
    }

    /// Checks that every blob an image needs is at hand and builds its record (ARC-10).
    fn check_image(&self, c: &Candidate) -> Result<Ready> {
        let name = c.reference.to_string();
        let incomplete = |what: String| {
            corrupt(format!(
                "the archive is incomplete: {name} needs {what}, which is neither in the archive nor in the store"
            ))
        };
        let top_bytes = self
            .json_blob(&c.digest, MAX_MANIFEST_SIZE)?
            .ok_or_else(|| incomplete(format!("manifest {}", c.digest)))?;
        if top_bytes.len() as u64 != c.size {
            return Err(corrupt(format!(
                "{name}: manifest {} has {} bytes, its descriptor says {}",
                c.digest,
                top_bytes.len(),
                c.size
            )));
        }
        let top =
            ManifestBlob::parse(top_bytes, Some(&c.media_type), Some(&c.digest)).map_err(local)?;
        let mut needed: Vec<(Digest, u64, String)> =
            vec![(c.digest.clone(), c.size, top.media_type.clone())];
        let mut size = c.size;
        let (image, platform) = match &top.manifest {
            Manifest::Image(_) => (top.clone(), None),
            Manifest::Index(index) => {
                // Every child at hand is kept; one is enough (a pull keeps one platform).
                let mut present: Vec<(Descriptor, ManifestBlob)> = Vec::new();
                for child in index.manifests() {
                    let d = descriptor_digest(child).map_err(local)?;
                    let Some(bytes) = self.json_blob(&d, MAX_MANIFEST_SIZE)? else {
                        continue;
                    };
                    if bytes.len() as u64 != child.size() {
                        return Err(corrupt(format!(
                            "{name}: manifest {d} has {} bytes, its index says {}",
                            bytes.len(),
                            child.size()
                        )));
                    }
                    let blob =
                        ManifestBlob::parse(bytes, Some(child.media_type().as_ref()), Some(&d))
                            .map_err(local)?;
                    needed.push((d, child.size(), blob.media_type.clone()));
                    if let Manifest::Image(m) = &blob.manifest {
                        self.image_blobs(m, &mut needed, &incomplete)?;
                    }
                    present.push((child.clone(), blob));
                }
                let mut at_hand = index.as_ref().clone();
                at_hand.set_manifests(present.iter().map(|(d, _)| d.clone()).collect());
                let chosen = Platform::host()
                    .select(&at_hand)
                    .ok()
                    .and_then(|d| present.iter().find(|(p, _)| p.digest() == d.digest()))
                    .or_else(|| present.first())
                    .ok_or_else(|| {
                        incomplete(format!("one of the manifests of index {}", c.digest))
                    })?;
                let platform = chosen.0.platform().as_ref().map(|p| {
                    let mut s = format!("{}/{}", p.os(), p.architecture());
                    if let Some(v) = p.variant() {
                        s.push('/');
                        s.push_str(v);
                    }
                    s
                });
                size += chosen.1.bytes.len() as u64;
                (chosen.1.clone(), platform)
            }
        };
        let Manifest::Image(manifest) = &image.manifest else {
            return Err(invalid(format!("{name}: an index inside an index")));
        };
        if matches!(top.manifest, Manifest::Image(_)) {
            self.image_blobs(manifest, &mut needed, &incomplete)?;
        }
        let config_digest = descriptor_digest(manifest.config()).map_err(local)?;
        let config_bytes = self
            .json_blob(&config_digest, MAX_JSON_SIZE)?
            .ok_or_else(|| incomplete(format!("config {config_digest}")))?;
        let config = parse_config(&config_bytes, &config_digest).map_err(local)?;
        size += manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        let platform = platform.or_else(|| Some(Platform::of_config(&config).to_string()));
        Ok(Ready {
            record: ImageRecord {
                name: c.reference.name(),
                tag: c.reference.tag().map(str::to_string),
                digest: c.digest.clone(),
                media_type: top.media_type.clone(),
                size,
                created: config.created().clone(),
                platform,
                updated: unix_now(),
            },
            needed,
            envelopes: Vec::new(),
        })
    }

    /// Adds an image manifest's config and layers to `needed`, each checked at hand.
    fn image_blobs(
        &self,
        m: &ferry_core::oci_spec::image::ImageManifest,
        needed: &mut Vec<(Digest, u64, String)>,
        incomplete: &dyn Fn(String) -> Error,
    ) -> Result<()> {
        for desc in std::iter::once(m.config()).chain(m.layers()) {
            let d = descriptor_digest(desc).map_err(local)?;
            if !self.available(&d, desc.size())? {
                return Err(incomplete(format!("blob {d} ({} bytes)", desc.size())));
            }
            needed.push((d, desc.size(), desc.media_type().to_string()));
        }
        Ok(())
    }

    /// The envelopes the archive's signature set carries for candidate `c` (ARC-5, SIG-14).
    fn envelopes(&self, sets: &[Candidate], c: &Candidate) -> Result<Vec<SignatureEnvelope>> {
        let tag = signature_tag(&c.digest);
        let mut out: Vec<SignatureEnvelope> = Vec::new();
        for set in sets
            .iter()
            .filter(|s| s.reference.name() == c.reference.name() && s.reference.tag() == Some(&tag))
        {
            let Some(bytes) = self.json_blob(&set.digest, MAX_MANIFEST_SIZE)? else {
                tracing::warn!(
                    "signature set {} is not in the archive; skipping it",
                    set.reference
                );
                continue;
            };
            let blob = ManifestBlob::parse(bytes, Some(&set.media_type), Some(&set.digest))
                .map_err(local)?;
            let Manifest::Image(m) = &blob.manifest else {
                continue;
            };
            let subject = m.subject().as_ref().and_then(|s| descriptor_digest(s).ok());
            if m.subject().is_some() && subject.as_ref() != Some(&c.digest) {
                return Err(invalid(format!(
                    "signature set {} is not for {}",
                    set.reference, c.digest
                )));
            }
            for layer in m.layers() {
                let d = descriptor_digest(layer).map_err(local)?;
                if layer.media_type().to_string() != PAYLOAD_MEDIA_TYPE
                    || layer.size() > MAX_PAYLOAD_SIZE as u64
                {
                    tracing::warn!(
                        "signature {d} of {}: not a signature layer; skipping it",
                        c.reference
                    );
                    continue;
                }
                match self.json_blob(&d, MAX_PAYLOAD_SIZE as u64)? {
                    Some(bytes) => match envelope_of_layer(layer, bytes) {
                        Ok(e) if !out.contains(&e) => out.push(e),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!("signature {d} of {}: {e}; skipping it", c.reference)
                        }
                    },
                    None => tracing::warn!(
                        "signature {d} of {} is not in the archive; skipping it",
                        c.reference
                    ),
                }
            }
        }
        Ok(out)
    }

    /// Makes everything visible: blobs, then signatures, then names (ARC-10, ARC-13).
    fn commit(
        &mut self,
        format: Format,
        compression: StreamCompression,
        candidates: Vec<Candidate>,
        ready: Vec<Ready>,
    ) -> Result<LoadReport> {
        let mut added = 0;
        let mut bytes_added = 0;
        let mut present = 0;
        let mut done: HashSet<Digest> = HashSet::new();
        let label = Some(self.options.source_label.as_str());
        for r in &ready {
            // Manifests were listed first; commit them last, after what they name.
            for (d, size, media_type) in r.needed.iter().rev() {
                if !done.insert(d.clone()) {
                    continue;
                }
                if let Some((b, _)) = self.synthesized.get(d) {
                    let had = self.store.blob_size(d).map_err(local)?.is_some();
                    self.store
                        .put_blob(d, b, media_type, label)
                        .map_err(local)?;
                    if had {
                        present += 1;
                    } else {
                        added += 1;
                        bytes_added += size;
                    }
                    continue;
                }
                match self.staged.get_mut(d) {
                    Some(s) if !s.present => {
                        let ingest = self.store.ingest(d, Some(s.size)).map_err(local)?;
                        if ingest.offset() != s.size {
                            return Err(Error::new(
                                ErrorKind::Unavailable,
                                "",
                                format!("blob {d}: its staged bytes changed in the store while loading (another process?); load again"),
                            ));
                        }
                        ingest.commit(media_type, label).map_err(local)?;
                        s.committed = true;
                        added += 1;
                        bytes_added += s.size;
                    }
                    _ => present += 1,
                }
            }
        }
        let mut images = Vec::new();
        for (c, r) in candidates.iter().zip(ready) {
            // The signatures go in first: a name in the store always has its signatures (SIG-17).
            for e in &r.envelopes {
                store_signature_leased(self.store, &c.digest, e)?;
            }
            let same = self.store.images().map_err(local)?.into_iter().any(|i| {
                i.name == r.record.name && i.tag == r.record.tag && i.digest == r.record.digest
            });
            if !same {
                self.store.set_image(&r.record).map_err(local)?;
            }
            images.push(LoadedImage {
                reference: match &r.record.tag {
                    Some(t) => format!("{}:{t}", r.record.name),
                    None => format!("{}@{}", r.record.name, r.record.digest),
                },
                digest: r.record.digest.clone(),
                media_type: r.record.media_type.clone(),
                size: r.record.size,
                signatures: r.envelopes.len(),
                changed: !same,
            });
        }
        Ok(LoadReport {
            format,
            compression,
            images,
            blobs_added: added,
            bytes_added,
            blobs_present: present,
        })
    }

    /// Removes every partial this load staged and did not commit.
    fn cleanup(&mut self) {
        for (d, s) in &self.staged {
            if s.present || s.committed {
                continue;
            }
            match self.store.ingest(d, None) {
                Ok(mut ingest) => {
                    // Emptied, the partial is removed when the ingest drops (STORE-4).
                    if let Err(e) = ingest.reset() {
                        tracing::warn!("removing the staged partial of {d}: {e}");
                    }
                }
                Err(e) => tracing::warn!("removing the staged partial of {d}: {e}"),
            }
        }
    }
}

#[derive(Default)]
struct Candidates {
    images: Vec<Candidate>,
    signature_sets: Vec<Candidate>,
}

fn truncated(path: &str, got: u64, want: u64) -> Error {
    corrupt(format!(
        "the archive is truncated: entry {path} ends after {got} of its {want} bytes"
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

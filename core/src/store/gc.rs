//! Garbage collection: mark from names and extra roots, sweep blobs, records and stale ingests
//! (STORE-11..13). Runs under the exclusive GC lock (STORE-10).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{lock, GcReport, Store, ALGORITHMS};
use crate::manifest::{descriptor_digest, MAX_MANIFEST_SIZE};
use crate::{Digest, Error, Manifest, ManifestBlob, Result};

/// An unlocked partial older than this is abandoned and removed by GC (STORE-13).
pub const STALE_INGEST_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Collects garbage; the caller holds the GC lock exclusively.
pub(super) fn collect(store: &Store) -> Result<GcReport> {
    let live = mark(store)?;
    let mut report = GcReport::default();
    sweep_blobs(store, &live, &mut report)?;
    sweep_ingests(store, &mut report)?;
    Ok(report)
}

/// Every digest reachable from a name or an extra root (STORE-11).
fn mark(store: &Store) -> Result<HashSet<Digest>> {
    // (digest, whether it may be a manifest whose children are followed)
    let mut stack: Vec<(Digest, bool)> = store
        .root_digests()?
        .into_iter()
        .map(|d| (d, true))
        .collect();
    let mut live = HashSet::new();
    while let Some((digest, follow)) = stack.pop() {
        if !live.insert(digest.clone()) || !follow {
            continue;
        }
        let Some(manifest) = read_manifest(store, &digest)? else {
            continue;
        };
        match manifest.manifest {
            Manifest::Index(index) => {
                for child in index.manifests() {
                    match descriptor_digest(child) {
                        Ok(d) => stack.push((d, true)),
                        Err(e) => tracing::warn!("gc: index {digest}: skipping child: {e}"),
                    }
                }
            }
            Manifest::Image(image) => {
                // Digests of an image manifest were validated by `ManifestBlob::parse`.
                let blobs = std::iter::once(image.config()).chain(image.layers());
                stack.extend(
                    blobs
                        .filter_map(|d| descriptor_digest(d).ok())
                        .map(|d| (d, false)),
                );
            }
        }
    }
    Ok(live)
}

/// The blob as a manifest, or `None` if it is absent or not a manifest (then it is a leaf).
///
/// Errors only when the blob cannot be read: a root whose children went unmarked because
/// of an I/O error would lose them.
fn read_manifest(store: &Store, digest: &Digest) -> Result<Option<ManifestBlob>> {
    match store.blob_size(digest)? {
        Some(size) if size <= MAX_MANIFEST_SIZE => {}
        _ => return Ok(None),
    }
    let bytes = match store.read_blob(digest, MAX_MANIFEST_SIZE) {
        Ok(bytes) => bytes,
        // Removed since we looked: nothing to follow.
        Err(Error::BlobNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let media_type = store.blob_record(digest)?.map(|r| r.media_type);
    match ManifestBlob::parse(bytes, media_type.as_deref(), Some(digest)) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::debug!("gc: {digest} is a leaf: {e}");
            Ok(None)
        }
    }
}

/// Removes blobs and blob records that are not live (STORE-12).
fn sweep_blobs(store: &Store, live: &HashSet<Digest>, report: &mut GcReport) -> Result<()> {
    for digest in store.digests()? {
        if live.contains(&digest) {
            continue;
        }
        let path = store.blob_path(&digest);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat blob", path, e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("remove blob", path, e)),
        }
        report.removed_blobs.push(digest);
        report.freed_bytes += size;
    }
    store.forget_blobs_except(live)
}

/// Removes abandoned partials (STORE-13).
///
/// A partial is abandoned when nobody holds its lock and it is empty, older than
/// [`STALE_INGEST_AGE`], named for a blob already committed, or not named for a digest.
fn sweep_ingests(store: &Store, report: &mut GcReport) -> Result<()> {
    let now = SystemTime::now();
    for alg in ALGORITHMS {
        let dir = store.root().join("ingest").join(alg.as_str());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("list ingests", dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list ingests", &dir, e))?;
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            // Held by a live ingest (or replaced since we listed): not ours to judge.
            let Some(file) = lock::try_lock_partial(&path)? else {
                continue;
            };
            let meta = file
                .metadata()
                .map_err(|e| Error::io("stat ingest", &path, e))?;
            let committed = match Digest::parse(&format!(
                "{}:{}",
                alg.as_str(),
                entry.file_name().to_string_lossy()
            )) {
                Ok(d) => store.blob_size(&d)?.is_some(),
                // Not a digest: nothing can ever resume it.
                Err(_) => true,
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok());
            let stale = meta.len() == 0 || committed || age.is_some_and(|a| a > STALE_INGEST_AGE);
            if stale {
                remove_ingest(&path)?;
                report.removed_ingests += 1;
                report.freed_bytes += meta.len();
            }
            // `file` closes here, after the removal: the lock covered it.
        }
    }
    Ok(())
}

fn remove_ingest(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove ingest", path, e)),
    }
}

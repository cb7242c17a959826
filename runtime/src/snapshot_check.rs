//! Checking snapshots for `ferry store check`: every snapshot a named image's roots keep is
//! re-extracted from its layer blob and compared with what is on disk, file by file
//! (specs/store.md STORE-18, STORE-19).
//!
//! A snapshot records nothing about its own contents (RUN-9: it appears only by an atomic
//! rename of a verified extraction), so the layer blob is the reference: a snapshot is
//! intact when it holds exactly what extracting its layer gives.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use ferry_core::media::Compression;
use ferry_core::store::check::{ImageCheck, ResolvedLayer};
use ferry_core::{Digest, Store};
use nix::fcntl::FlockArg;

use crate::snapshot::{chain_ids, lock, root_key, snapshot_dir, snapshots_root, ROOT_KIND};
use crate::unpack::{apply_layer, Budget, Limits, Whiteouts};
use crate::{Error, Result};

/// A snapshot that is not what its layer makes, and the images it breaks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotProblem {
    /// The snapshot's chain ID (its directory name).
    pub chain_id: Digest,
    /// The layer blob it is extracted from.
    pub layer: Digest,
    /// What is wrong with it.
    pub fault: SnapshotFault,
    /// References (`name:tag` or `name@digest`) of the named images whose roots keep it.
    pub images: Vec<String>,
}

/// What is wrong with a snapshot (STORE-18).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SnapshotFault {
    /// A root keeps it but its directory is gone.
    Missing,
    /// Its files differ from a fresh extraction of its layer.
    Tampered {
        /// The first difference found: the path inside the snapshot and how it differs.
        difference: String,
    },
    /// It could not be compared (the layer failed to extract, or a read failed).
    Unverifiable {
        /// Why, one line.
        error: String,
    },
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SnapshotReport {
    /// Snapshots compared with their layer (or found missing).
    pub checked: usize,
    /// Snapshots not compared because their layer blob is not intact (a blob problem says so).
    pub skipped: usize,
    /// Broken snapshots, by chain ID.
    pub problems: Vec<SnapshotProblem>,
}

/// Compares every snapshot kept by a named image's roots with a fresh extraction of its
/// layer (STORE-18).
///
/// `images` comes from [`ferry_core::store::check::check`]; a snapshot whose layer blob
/// `bad_blobs` lists, or whose image could not be resolved, is skipped. Holds the snapshot
/// GC lock shared while it runs, as `snapshot::prepare` does. Needs root when the layers
/// have whiteouts (as making the snapshot did).
pub fn check(
    store: &Store,
    images: &[ImageCheck],
    bad_blobs: &HashSet<Digest>,
) -> Result<SnapshotReport> {
    let mut report = SnapshotReport::default();
    // A store whose images never ran has nothing to check, and gets no `snapshots/` made.
    if store.roots(ROOT_KIND)?.is_empty() {
        return Ok(report);
    }
    let _gc = lock(&snapshots_root(store).join("gc.lock"), FlockArg::LockShared)?;
    for (chain_id, Kept { layer, images }) in kept(store, images)? {
        let Some(layer) = layer else {
            report.skipped += 1;
            continue;
        };
        if bad_blobs.contains(&layer.digest) {
            report.skipped += 1;
            continue;
        }
        report.checked += 1;
        let dir = snapshot_dir(store, &chain_id);
        let fault = if !dir.exists() {
            Some(SnapshotFault::Missing)
        } else {
            match compare_with_layer(store, &dir, &chain_id, &layer) {
                Ok(None) => None,
                Ok(Some(difference)) => Some(SnapshotFault::Tampered { difference }),
                Err(e) => Some(SnapshotFault::Unverifiable {
                    error: e.to_string(),
                }),
            }
        };
        if let Some(fault) = fault {
            report.problems.push(SnapshotProblem {
                chain_id,
                layer: layer.digest,
                fault,
                images: images.into_iter().collect(),
            });
        }
    }
    Ok(report)
}

/// Removes the snapshot `chain_id` and every root that keeps it, so the next use extracts
/// it again (STORE-19).
///
/// Takes the snapshot GC lock exclusively (no `prepare` runs meanwhile) and refuses, with
/// [`Error::SnapshotInUse`], a snapshot that a container's overlay uses.
pub fn drop_snapshot(store: &Store, chain_id: &Digest) -> Result<()> {
    let _gc = lock(
        &snapshots_root(store).join("gc.lock"),
        FlockArg::LockExclusive,
    )?;
    let dir = snapshot_dir(store, chain_id);
    if crate::run::lowers_in_use(store)?
        .iter()
        .any(|lower| lower.parent() == Some(dir.as_path()))
    {
        return Err(Error::SnapshotInUse { path: dir });
    }
    for (key, rooted) in store.roots(ROOT_KIND)? {
        if &rooted == chain_id {
            store.remove_root(ROOT_KIND, &key, chain_id)?;
        }
    }
    // Out of the way in one rename first: an interrupted removal leaves a `.tmp-` that
    // snapshot GC removes, never a half-deleted snapshot under its name.
    let doomed = dir.with_file_name(format!(
        ".tmp-drop-{}-{}",
        chain_id.hex(),
        std::process::id()
    ));
    match fs::rename(&dir, &doomed) {
        Ok(()) => fs::remove_dir_all(&doomed).map_err(|e| io_error("remove", &doomed, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("move snapshot aside", &dir, e)),
    }
}

/// A snapshot that named images' roots keep.
#[derive(Default)]
struct Kept {
    /// The layer it is extracted from, if an image keeping it could be resolved.
    layer: Option<ResolvedLayer>,
    /// References of the images keeping it.
    images: BTreeSet<String>,
}

/// Every chain ID a named image's roots keep.
fn kept(store: &Store, images: &[ImageCheck]) -> Result<BTreeMap<Digest, Kept>> {
    let mut roots: BTreeMap<String, Vec<Digest>> = BTreeMap::new();
    for (key, chain_id) in store.roots(ROOT_KIND)? {
        roots.entry(key).or_default().push(chain_id);
    }
    let mut kept: BTreeMap<Digest, Kept> = BTreeMap::new();
    for image in images {
        let Some(rooted) = roots.get(&root_key(&image.record)) else {
            continue;
        };
        let layers: Vec<(Digest, &ResolvedLayer)> = match &image.resolved {
            Some(resolved) => {
                let diff_ids: Vec<Digest> =
                    resolved.layers.iter().map(|l| l.diff_id.clone()).collect();
                chain_ids(&diff_ids)
                    .into_iter()
                    .zip(&resolved.layers)
                    .collect()
            }
            None => Vec::new(),
        };
        for chain_id in rooted {
            let layer = layers
                .iter()
                .find(|(c, _)| c == chain_id)
                .map(|(_, l)| (*l).clone());
            let entry = kept.entry(chain_id.clone()).or_default();
            if entry.layer.is_none() {
                entry.layer = layer;
            }
            entry.images.insert(image.reference.clone());
        }
    }
    Ok(kept)
}

/// Extracts `layer` beside the snapshot `dir` and compares the two trees; the first
/// difference, or `None` when they are the same.
fn compare_with_layer(
    store: &Store,
    dir: &Path,
    chain_id: &Digest,
    layer: &ResolvedLayer,
) -> Result<Option<String>> {
    let fresh = dir.with_file_name(format!(
        ".tmp-check-{}-{}",
        chain_id.hex(),
        std::process::id()
    ));
    let result = (|| {
        let fs_dir = fresh.join("fs");
        fs::create_dir_all(&fs_dir).map_err(|e| io_error("create directory", &fs_dir, e))?;
        apply_layer(
            &fs_dir,
            store.open_blob(&layer.digest)?,
            Compression::of_layer(&layer.media_type)?,
            Some(&layer.diff_id),
            Whiteouts::Overlay,
            &mut Budget::new(Limits::default()),
        )?;
        let actual = dir.join("fs");
        compare(&fs_dir, &actual, Path::new("")).map_err(|e| io_error("compare", &actual, e))
    })();
    if let Err(e) = fs::remove_dir_all(&fresh) {
        tracing::warn!("removing {}: {e}", fresh.display());
    }
    result
}

/// The first difference between the trees `expected` and `actual` at `rel`, if any: type,
/// permission bits, owner, size, content, link target, device number or extended attributes.
fn compare(expected: &Path, actual: &Path, rel: &Path) -> io::Result<Option<String>> {
    let name = || {
        if rel.as_os_str().is_empty() {
            "/".to_string()
        } else {
            rel.display().to_string()
        }
    };
    let want = fs::symlink_metadata(expected)?;
    let have = match fs::symlink_metadata(actual) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Some(format!("{}: missing", name())))
        }
        Err(e) => return Err(e),
    };
    let (wt, ht) = (want.file_type(), have.file_type());
    if kind(&wt) != kind(&ht) {
        return Ok(Some(format!(
            "{}: is a {}, the layer has a {}",
            name(),
            kind(&ht),
            kind(&wt)
        )));
    }
    if want.mode() & 0o7777 != have.mode() & 0o7777 {
        return Ok(Some(format!(
            "{}: mode {:04o}, the layer says {:04o}",
            name(),
            have.mode() & 0o7777,
            want.mode() & 0o7777
        )));
    }
    if (want.uid(), want.gid()) != (have.uid(), have.gid()) {
        return Ok(Some(format!(
            "{}: owner {}:{}, the layer says {}:{}",
            name(),
            have.uid(),
            have.gid(),
            want.uid(),
            want.gid()
        )));
    }
    if xattrs(expected)? != xattrs(actual)? {
        return Ok(Some(format!("{}: extended attributes differ", name())));
    }
    if wt.is_symlink() {
        if fs::read_link(expected)? != fs::read_link(actual)? {
            return Ok(Some(format!("{}: link target differs", name())));
        }
    } else if wt.is_char_device() || wt.is_block_device() {
        if want.rdev() != have.rdev() {
            return Ok(Some(format!("{}: device number differs", name())));
        }
    } else if wt.is_file() {
        if want.len() != have.len() {
            return Ok(Some(format!(
                "{}: {} bytes, the layer has {}",
                name(),
                have.len(),
                want.len()
            )));
        }
        if !same_content(expected, actual)? {
            return Ok(Some(format!("{}: content differs", name())));
        }
    } else if wt.is_dir() {
        let want_names = names(expected)?;
        let have_names = names(actual)?;
        if let Some(extra) = have_names.difference(&want_names).next() {
            return Ok(Some(format!(
                "{}: not in the layer",
                rel.join(extra).display()
            )));
        }
        for child in &want_names {
            if let Some(diff) =
                compare(&expected.join(child), &actual.join(child), &rel.join(child))?
            {
                return Ok(Some(diff));
            }
        }
    }
    Ok(None)
}

fn kind(t: &fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "socket"
    }
}

fn names(dir: &Path) -> io::Result<BTreeSet<OsString>> {
    fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

/// Whether two files of equal length hold the same bytes, read in bounded chunks.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    const CHUNK: usize = 1 << 20;
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut x, mut y) = (vec![0; CHUNK], vec![0; CHUNK]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The extended attributes of `path` itself (not following a symlink), by name.
fn xattrs(path: &Path) -> io::Result<BTreeMap<OsString, Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut out = BTreeMap::new();
    // SAFETY: a null buffer of size 0 asks for the size of the name list.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(out),
            _ => Err(e),
        };
    }
    let mut list = vec![0u8; size as usize];
    // SAFETY: `list` is writable for `list.len()` bytes.
    let size = unsafe { libc::llistxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    list.truncate(size as usize);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split at NUL");
        // SAFETY: as above, a size query.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: `value` is writable for `value.len()` bytes.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(len as usize);
        out.insert(OsString::from_vec(name.to_vec()), value);
    }
    Ok(out)
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

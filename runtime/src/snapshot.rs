//! Snapshots: every layer extracted once, into a directory named by its chain ID, and
//! shared by all images and containers stacked on it (specs/runtime.md RUN-8…RUN-11).
//!
//! `STORE_ROOT/snapshots/<alg>/<hex>/fs` holds the layer's own files in overlayfs form
//! (whiteouts as 0/0 character devices, opaque directories as `trusted.overlay.opaque`).
//! A snapshot appears only by an atomic rename of a complete, verified extraction.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::media::Compression;
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Store};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::image::Image;
use crate::unpack::{apply_layer, Budget, LayerSummary, Limits, Whiteouts};
use crate::{Error, Result};

/// Kind of the store roots that keep snapshots alive, keyed by [`root_key`] (RUN-10).
pub const ROOT_KIND: &str = "snapshot";

/// The chain IDs of a stack of layers, bottom first, from their diff IDs (RUN-8).
///
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// The directory of the snapshot named `chain_id`; its files are in `fs/` below it (RUN-9).
pub fn snapshot_dir(store: &Store, chain_id: &Digest) -> PathBuf {
    snapshots_root(store)
        .join(chain_id.algorithm().as_str())
        .join(chain_id.hex())
}

/// The key under which [`prepare`] roots an image's snapshots: `name:tag@digest` or
/// `name@digest` (RUN-10).
pub fn root_key(image: &ImageRecord) -> String {
    match &image.tag {
        Some(tag) => format!("{}:{}@{}", image.name, tag, image.digest),
        None => format!("{}@{}", image.name, image.digest),
    }
}

/// Makes sure a snapshot exists for every layer of an image and returns their `fs`
/// directories, bottom layer first (RUN-9, RUN-10).
///
/// Missing layers are extracted from the store with overlayfs whiteouts, checked against
/// the config's diff_ids, and renamed into place; present ones are reused. Concurrent calls
/// (threads or processes) on the same layers extract each once. The snapshots are recorded
/// as store roots of kind [`ROOT_KIND`] under [`root_key`]`(image)`, so [`gc`] keeps them while
/// the image keeps that name. `limits` bounds everything extracted by this call.
pub fn prepare(store: &Store, image: &Image, limits: Limits) -> Result<Vec<PathBuf>> {
    let manifest = image.manifest();
    let diff_ids = diff_ids(manifest, image.config())?;
    let chain = chain_ids(&diff_ids);
    let _gc = lock(&snapshots_root(store).join("gc.lock"), FlockArg::LockShared)?;
    let key = root_key(image.record());
    for chain_id in &chain {
        store.add_root(ROOT_KIND, &key, chain_id)?;
    }
    let mut budget = Budget::new(limits);
    let mut dirs = Vec::with_capacity(chain.len());
    let layers = manifest.layers();
    for (i, ((layer, diff_id), chain_id)) in layers.iter().zip(&diff_ids).zip(&chain).enumerate() {
        let dir = snapshot_dir(store, chain_id);
        if !dir.exists() {
            let blob = ferry_core::manifest::descriptor_digest(layer)?;
            let compression = Compression::of_layer(layer.media_type().as_ref())?;
            extract(store, &dir, &blob, compression, diff_id, &mut budget)
                .map_err(|e| e.in_layer(i + 1, layers.len()))?;
        }
        dirs.push(dir.join("fs"));
    }
    Ok(dirs)
}

/// Removes the snapshots that no named image's roots and no container reach; returns how
/// many it removed (RUN-10).
///
/// Roots whose image name no longer points at the digest they were taken for are dropped.
/// Waits for running [`prepare`] calls, and makes new ones wait until it is done.
pub fn gc(store: &Store) -> Result<usize> {
    let root = snapshots_root(store);
    let _gc = lock(&root.join("gc.lock"), FlockArg::LockExclusive)?;
    let named: HashSet<String> = store.images()?.iter().map(root_key).collect();
    let mut live = HashSet::new();
    for (key, chain_id) in store.roots(ROOT_KIND)? {
        if named.contains(&key) {
            live.insert(snapshot_dir(store, &chain_id));
        } else {
            store.remove_roots(ROOT_KIND, &key)?;
        }
    }
    for lower in crate::run::lowers_in_use(store)? {
        if let Some(dir) = lower.parent() {
            live.insert(dir.to_path_buf());
        }
    }
    let mut removed = 0;
    for alg in list_dir(&root)? {
        if !alg.is_dir() {
            continue;
        }
        for entry in list_dir(&alg)? {
            let name = entry
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            // Leftovers of interrupted extractions (no prepare runs now), locks of dead snapshots.
            let dead = if name.starts_with(".tmp-") {
                true
            } else if let Some(hex) = name.strip_suffix(".lock") {
                !live.contains(&alg.join(hex))
            } else if !live.contains(&entry) {
                removed += 1;
                true
            } else {
                false
            };
            if dead {
                remove_all(&entry)?;
            }
        }
    }
    Ok(removed)
}

/// Extracts an image's layers on top of each other into `dest`, applying whiteouts, for
/// `ferry unpack` (RUN-11): staged at once and merged in order (RUN-25).
///
/// `dest` is created if missing. Each layer is checked against the config's diff_ids;
/// `limits` bounds the whole image.
pub fn flatten(
    store: &Store,
    image: &Image,
    dest: &Path,
    limits: Limits,
) -> Result<Vec<LayerSummary>> {
    crate::one_pass::flatten_stored(store, image.manifest(), image.config(), dest, limits)
}

/// The directory holding every snapshot of `store`.
pub(crate) fn snapshots_root(store: &Store) -> PathBuf {
    store.root().join("snapshots")
}

/// The config's diff_ids, one per manifest layer.
pub(crate) fn diff_ids(
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<Vec<Digest>> {
    let listed = config.rootfs().diff_ids();
    if listed.len() != manifest.layers().len() {
        return Err(Error::LayerCount {
            layers: manifest.layers().len(),
            diff_ids: listed.len(),
        });
    }
    Ok(listed
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<_, _>>()?)
}

/// Extracts one layer into the snapshot directory `dir`, unless a concurrent caller did.
fn extract(
    store: &Store,
    dir: &Path,
    blob: &Digest,
    compression: Compression,
    diff_id: &Digest,
    budget: &mut Budget,
) -> Result<()> {
    let Some(pending) = Pending::start(dir, FlockArg::LockExclusive)? else {
        return Ok(());
    };
    apply_layer(
        &pending.fs(),
        store.open_blob(blob)?,
        compression,
        Some(diff_id),
        Whiteouts::Overlay,
        budget,
    )?;
    pending.publish()
}

/// A snapshot being extracted: its lock, held until it is published or thrown away, and a
/// temporary directory beside it that becomes the snapshot by one rename (RUN-9).
/// Dropped unpublished, the temporary directory is removed.
pub(crate) struct Pending {
    dir: PathBuf,
    tmp: PathBuf,
    published: bool,
    _lock: Flock<File>,
}

impl Pending {
    /// Locks snapshot `dir` with `mode` (exclusive, waiting or not) and creates its
    /// temporary directory; `None` when the snapshot exists, or when a non-blocking `mode`
    /// finds another extraction holding the lock.
    pub(crate) fn start(dir: &Path, mode: FlockArg) -> Result<Option<Pending>> {
        static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
        let parent = dir.parent().expect("a snapshot dir has a parent");
        let hex = dir
            .file_name()
            .expect("a snapshot dir has a name")
            .to_string_lossy();
        fs::create_dir_all(parent).map_err(|e| io_error("create directory", parent, e))?;
        let Some(lock) = try_lock(&parent.join(format!("{hex}.lock")), mode)? else {
            return Ok(None);
        };
        if dir.exists() {
            return Ok(None);
        }
        let tmp = parent.join(format!(
            ".tmp-{hex}-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let pending = Pending {
            dir: dir.to_path_buf(),
            tmp,
            published: false,
            _lock: lock,
        };
        let fs_dir = pending.fs();
        fs::create_dir_all(&fs_dir).map_err(|e| io_error("create directory", &fs_dir, e))?;
        tracing::debug!("extracting snapshot {}", dir.display());
        Ok(Some(pending))
    }

    /// The directory the layer's files go into.
    pub(crate) fn fs(&self) -> PathBuf {
        self.tmp.join("fs")
    }

    /// Makes the extraction the snapshot, by renaming it into place.
    pub(crate) fn publish(mut self) -> Result<()> {
        match fs::rename(&self.tmp, &self.dir) {
            // Another process without our lock (an older ferry) won the race: use its copy.
            Err(e) if self.dir.exists() => {
                tracing::debug!(
                    "snapshot {} appeared while extracting: {e}",
                    self.dir.display()
                );
                Ok(())
            }
            Err(e) => Err(io_error("rename snapshot into place", &self.dir, e)),
            Ok(()) => {
                self.published = true;
                Ok(())
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: gc removes leftovers too.
            let _ = remove_all(&self.tmp);
        }
    }
}

/// Opens (creating) `path` and flocks it, waiting.
pub(crate) fn lock(path: &Path, mode: FlockArg) -> Result<Flock<File>> {
    Ok(try_lock(path, mode)?.expect("a waiting lock is always taken"))
}

/// Opens (creating) `path` and flocks it with `mode`; `None` when a non-blocking mode finds
/// the lock held.
fn try_lock(path: &Path, mode: FlockArg) -> Result<Option<Flock<File>>> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, e))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_error("open lock", path, e))?;
    loop {
        match Flock::lock(file, mode) {
            Ok(lock) => return Ok(Some(lock)),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(io_error("lock", path, e.into())),
        }
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(|e| io_error("list", dir, e)))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error("list", dir, e)),
    }
}

fn remove_all(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", path, e)),
        _ => Ok(()),
    }
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

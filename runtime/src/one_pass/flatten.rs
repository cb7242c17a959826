//! One pass into one directory: `ferry unpack DIR` extracts an image's layers while the
//! pull brings them (RUN-24), several at once, each staged on its own beside DIR and merged
//! into DIR in order (RUN-25); [`flatten_stored`] does the same from the store.
//!
//! The bytes are not queued in memory: a layer's extraction reads the store's ingest file
//! of the blob as the pull writes it, and waits where the pull has not written yet.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_core::manifest::descriptor_digest;
use ferry_core::media::Compression;
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::{Digest, Store};
use ferry_signing::TrustedImage;

use crate::snapshot::diff_ids;
use crate::unpack::{
    apply_layer, stage_layer, Budget, LayerSummary, Limits, StagedLayer, Whiteouts,
};
use crate::{Error, Result};

/// How often a layer waiting for its bytes looks whether its blob came into the store.
const STORE_POLL: Duration = Duration::from_millis(20);

/// An image's layers being extracted into one directory as they arrive (RUN-24, RUN-25).
///
/// Dropped before [`finish`](StreamedFlatten::finish), the extraction stops: every read
/// fails, the threads end, the staging directory goes, and the directory holds part of
/// the image.
pub struct StreamedFlatten {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<Vec<LayerSummary>>>>,
}

/// Where each layer's bytes are, shared by the pull's feeds and the applying threads.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Set with `State::stopped`, for readers to look at without the lock.
    halted: AtomicBool,
}

struct State {
    layers: Vec<Source>,
    /// The pull is over: layers without a feed are read from the store.
    pull_done: bool,
    /// Nothing more will come or be read (the pull failed or was dropped, or the unpack
    /// failed).
    stopped: bool,
    /// Why the unpack failed, when it stopped because of that: what feeds answer then.
    failure: Option<(String, bool)>,
    /// Layers extracted (staged, or applied in order), with their outcome: a feed's `finish`
    /// answers with it.
    applied: Vec<Option<Outcome>>,
    /// How many feeds each layer was given: a new one means its download started over.
    feeds: Vec<u64>,
    /// Layers are staged, so one whose download starts over is extracted again from its
    /// new feed (RUN-25); otherwise that fails the unpack.
    restartable: bool,
}

/// How applying a layer ended: `Err` as [`Error::OnePass`] gives it.
type Outcome = std::result::Result<(), (String, bool)>;

/// Where one layer's bytes come from.
enum Source {
    /// Not known yet: a feed may come, or the layer is read from the store after the pull.
    Waiting,
    /// The ingest file the pull writes, and how many bytes it has written.
    Following {
        file: Option<File>,
        written: u64,
        done: bool,
    },
    /// The feed went away before all bytes came.
    Broken,
}

impl StreamedFlatten {
    /// Starts applying the image `trusted` accepted (its `manifest` and `config`) into
    /// `dest` (created if missing), bounded by `limits`. Layers in `store` are read from
    /// it; the others from the feeds [`follow`](StreamedFlatten::follow) opens.
    pub fn new(
        store: Arc<Store>,
        trusted: &TrustedImage,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
        dest: &Path,
        limits: Limits,
    ) -> Result<StreamedFlatten> {
        tracing::debug!("one-pass unpack of {}", trusted.reference());
        let layers = planned(manifest, config, dest)?;
        let staging = Staging::beside(dest)?;
        let shared = Arc::new(Shared::new(layers.len(), false, staging.is_some()));
        let dest = dest.to_path_buf();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("unpack".to_string())
            .spawn(move || apply_all(&worker, &store, &layers, &dest, staging, limits))
            .map_err(|source| Error::Io {
                op: "start unpack thread for",
                path: PathBuf::new(),
                source,
            })?;
        Ok(StreamedFlatten {
            shared,
            thread: Some(thread),
        })
    }

    /// A feed of layer `index` from `partial`, the store's ingest file of its blob, which
    /// the pull writes from its first byte on. Applied in order, it fails when an earlier
    /// feed of the layer failed or broke off while it was being applied; staged, a layer
    /// that failed is staged again from it, and one staged already (its diff_id checked)
    /// stays as it is.
    pub fn follow(&self, index: usize, partial: File) -> Result<LayerFeed> {
        let mut state = self.shared.lock();
        if let Some((reason, corrupt)) = &state.failure {
            return Err(one_pass(&(reason.clone(), *corrupt)));
        }
        match &state.applied[index] {
            Some(Err(_)) if state.restartable => state.applied[index] = None,
            Some(Err(failure)) => return Err(one_pass(failure)),
            _ => {}
        }
        if matches!(state.layers[index], Source::Broken) {
            return Err(broken(index, state.layers.len()));
        }
        state.layers[index] = Source::Following {
            file: Some(partial),
            written: 0,
            done: false,
        };
        state.feeds[index] += 1;
        self.shared.changed.notify_all();
        Ok(LayerFeed {
            shared: self.shared.clone(),
            index,
            finished: false,
        })
    }

    /// The pull is over: applies what is left (layers it did not fetch come from the store)
    /// and returns what each layer did, bottom first.
    pub fn finish(mut self) -> Result<Vec<LayerSummary>> {
        {
            let mut state = self.shared.lock();
            state.pull_done = true;
            self.shared.changed.notify_all();
        }
        self.join()
    }

    fn join(&mut self) -> Result<Vec<LayerSummary>> {
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for StreamedFlatten {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shared.stop();
            if let Err(e) = self.join() {
                tracing::debug!("unpack stopped: {e}");
            }
        }
    }
}

/// The pull's side of one layer: how far the ingest file is written.
pub struct LayerFeed {
    shared: Arc<Shared>,
    index: usize,
    finished: bool,
}

impl LayerFeed {
    /// `n` more bytes of the layer are in the ingest file.
    pub fn written(&mut self, n: u64) {
        let mut state = self.shared.lock();
        if let Source::Following { written, .. } = &mut state.layers[self.index] {
            *written += n;
        }
        self.shared.changed.notify_all();
    }

    /// Every byte is in: waits until the layer is applied and says whether it applied
    /// cleanly (its diff_id checked out).
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        let mut state = self.shared.lock();
        if let Source::Following { done, .. } = &mut state.layers[self.index] {
            *done = true;
        }
        self.shared.changed.notify_all();
        loop {
            match &state.applied[self.index] {
                Some(Ok(())) => return Ok(()),
                Some(Err(failure)) => return Err(one_pass(failure)),
                None if state.stopped => return Err(stopped(&state)),
                None => state = self.shared.wait(state),
            }
        }
    }
}

impl Drop for LayerFeed {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.shared.lock();
            // Not yet read, or staged (its extraction starts over): the layer waits for a
            // new feed; half read into the destination: the layer is broken.
            let started = matches!(
                state.layers[self.index],
                Source::Following { file: None, .. }
            );
            state.layers[self.index] = if started && !state.restartable {
                Source::Broken
            } else {
                Source::Waiting
            };
            self.shared.changed.notify_all();
        }
    }
}

/// Applies an image's layers (its `manifest` and `config`), all in `store`, into `dest`
/// (created if missing) within `limits`, as [`StreamedFlatten`] does once the pull is over.
pub(crate) fn flatten_stored(
    store: &Store,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    dest: &Path,
    limits: Limits,
) -> Result<Vec<LayerSummary>> {
    let layers = planned(manifest, config, dest)?;
    let staging = Staging::beside(dest)?;
    let shared = Shared::new(layers.len(), true, staging.is_some());
    apply_all(&shared, store, &layers, dest, staging, limits)
}

/// Each layer's blob, compression and diff_id, bottom first; creates `dest`.
fn planned(
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    dest: &Path,
) -> Result<Vec<(Digest, Compression, Digest)>> {
    let diff_ids = diff_ids(manifest, config)?;
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| {
            Ok((
                descriptor_digest(layer)?,
                Compression::of_layer(layer.media_type().as_ref())?,
                diff_id,
            ))
        })
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(dest).map_err(|source| Error::Io {
        op: "create directory",
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(layers)
}

impl Shared {
    /// The state of `count` layers, none fed yet; `pull_done` when no feed will come;
    /// `restartable` when the layers are staged.
    fn new(count: usize, pull_done: bool, restartable: bool) -> Shared {
        Shared {
            state: Mutex::new(State {
                layers: (0..count).map(|_| Source::Waiting).collect(),
                pull_done,
                stopped: false,
                failure: None,
                applied: vec![None; count],
                feeds: vec![0; count],
                restartable,
            }),
            changed: Condvar::new(),
            halted: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("unpack state lock")
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).expect("unpack state lock")
    }

    /// Layer `i` is done with `outcome`: its feed's `finish` returns.
    fn applied<T>(&self, i: usize, outcome: &Result<T>) {
        let mut state = self.lock();
        state.applied[i] = Some(outcome_of(outcome));
        self.changed.notify_all();
    }

    /// Layer `i` failed with `outcome` from feed number `feed`: `true` when its download
    /// started over meanwhile (stage it again), else the failure answers the feed, under
    /// one lock, so it never answers a newer feed.
    fn failed_from<T>(&self, i: usize, feed: u64, outcome: &Result<T>) -> bool {
        let mut state = self.lock();
        if state.feeds[i] != feed || matches!(state.layers[i], Source::Waiting) {
            return true;
        }
        state.applied[i] = Some(outcome_of(outcome));
        self.changed.notify_all();
        false
    }

    /// Nothing more is read: the pull failed, or the unpack is dropped.
    fn stop(&self) {
        self.lock().stopped = true;
        self.halted.store(true, Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// The unpack failed with `error`: nothing more is read, and feeds answer with it.
    fn fail(&self, error: &Error) {
        self.lock()
            .failure
            .get_or_insert_with(|| (error.to_string(), is_corrupt(error)));
        self.stop();
    }

    /// Whether reading is to stop.
    fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// After layer `i` failed from feed number `feed`: waits until its download starts over
    /// (`true`) or the pull ends without that (`false`).
    fn fed_again(&self, i: usize, feed: u64) -> bool {
        let mut state = self.lock();
        loop {
            if state.feeds[i] != feed || matches!(state.layers[i], Source::Waiting) {
                return true;
            }
            if state.pull_done || state.stopped {
                return false;
            }
            state = self.wait(state);
        }
    }
}

/// The applying thread: every layer, from its feed or from the store, staged at once in
/// `staging` and merged in order (RUN-25), or, without one (none could be made on `dest`'s
/// file system), applied in order into `dest`.
fn apply_all(
    shared: &Shared,
    store: &Store,
    layers: &[(Digest, Compression, Digest)],
    dest: &Path,
    staging: Option<Staging>,
    limits: Limits,
) -> Result<Vec<LayerSummary>> {
    match staging {
        Some(staging) => apply_staged(shared, store, layers, dest, &staging, limits),
        None => apply_in_order(shared, store, layers, dest, limits),
    }
}

/// Each layer in order, straight into `dest`.
fn apply_in_order(
    shared: &Shared,
    store: &Store,
    layers: &[(Digest, Compression, Digest)],
    dest: &Path,
    limits: Limits,
) -> Result<Vec<LayerSummary>> {
    let mut budget = Budget::new(limits);
    let mut summaries = Vec::with_capacity(layers.len());
    let count = layers.len();
    for (i, (blob, compression, diff_id)) in layers.iter().enumerate() {
        let (bytes, _) = open_source(shared, store, blob, i)?;
        let outcome = apply_layer(
            dest,
            bytes,
            *compression,
            Some(diff_id),
            Whiteouts::Apply,
            &mut budget,
        )
        .map_err(|e| e.in_layer(i + 1, count));
        shared.applied(i, &outcome);
        summaries.push(outcome?);
    }
    Ok(summaries)
}

/// Every layer staged on threads of its own (at most [`STAGING_THREADS`] at once), merged
/// into `dest` in order as soon as it and the layers below it are in.
fn apply_staged(
    shared: &Shared,
    store: &Store,
    layers: &[(Digest, Compression, Digest)],
    dest: &Path,
    staging: &Staging,
    limits: Limits,
) -> Result<Vec<LayerSummary>> {
    let next = AtomicUsize::new(0);
    // What the layers staged so far used: a layer starts with what is left of the image's
    // limits and is charged when staged, so staging ahead is bounded too (UNPACK-50).
    let budget = &Mutex::new(Budget::new(limits));
    let (done, results) = mpsc::channel();
    let threads = layers.len().min(STAGING_THREADS);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done = done.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= layers.len() || shared.halted() {
                    return;
                }
                let staged = stage(shared, store, layers, i, staging, budget);
                let failed = staged.is_err();
                if done.send((i, staged)).is_err() || failed {
                    return;
                }
            });
        }
        drop(done);
        let merged = merge_in_order(layers.len(), dest, staging, &results);
        if let Err(e) = &merged {
            // Stops the other layers' reading; the scope then waits for their threads.
            shared.fail(e);
        }
        merged
    })
}

/// The coordinator's side of [`apply_staged`]: takes staged layers as they come and merges
/// each once the layers below it are merged.
fn merge_in_order(
    count: usize,
    dest: &Path,
    staging: &Staging,
    results: &mpsc::Receiver<(usize, Result<StagedLayer>)>,
) -> Result<Vec<LayerSummary>> {
    let mut ready: BTreeMap<usize, StagedLayer> = BTreeMap::new();
    let mut summaries = Vec::with_capacity(count);
    while summaries.len() < count {
        let i = summaries.len();
        let Some(layer) = ready.remove(&i) else {
            let (j, staged) = results.recv().map_err(|_| Error::OnePass {
                reason: "the layers' extraction stopped".into(),
                corrupt: false,
            })?;
            ready.insert(j, staged?);
            continue;
        };
        let summary = layer
            .merge_into(dest)
            .map_err(|e| e.in_layer(i + 1, count))?;
        staging.clear(i)?;
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Stages layer `i` into its staging directory from its feed or the store, starting over
/// when its download does, within what is left of `budget`, which it is charged; says the
/// outcome to the layer's feed.
fn stage(
    shared: &Shared,
    store: &Store,
    layers: &[(Digest, Compression, Digest)],
    i: usize,
    staging: &Staging,
    budget: &Mutex<Budget>,
) -> Result<StagedLayer> {
    let (blob, compression, diff_id) = &layers[i];
    loop {
        let outcome = staging.fresh(i).and_then(|dir| {
            let (bytes, feed) = open_source(shared, store, blob, i)?;
            let mut left = budget.lock().expect("budget lock").clone();
            let staged = stage_layer(&dir, bytes, *compression, Some(diff_id), &mut left)
                .and_then(|staged| {
                    let mut budget = budget.lock().expect("budget lock");
                    budget.charge(diff_id, staged.summary())?;
                    Ok(staged)
                })
                .map_err(|e| e.in_layer(i + 1, layers.len()));
            Ok((staged, feed))
        });
        let (outcome, feed) = match outcome {
            Ok((staged, feed)) => (staged, feed),
            Err(e) => (Err(e), None),
        };
        let Some(feed) = feed.filter(|_| outcome.is_err()) else {
            shared.applied(i, &outcome);
            return outcome;
        };
        // The pull hears of the failure; when the bytes were the source's fault it fetches
        // the blob again, from the next source (STORE-3), and this layer with it.
        if !shared.failed_from(i, feed, &outcome) && !shared.fed_again(i, feed) {
            return outcome;
        }
        tracing::debug!(
            "layer {}/{}: its download started over",
            i + 1,
            layers.len()
        );
    }
}

/// Layer `i`'s bytes: its feed (with the feed's number), followed as the pull writes its
/// ingest file, or its blob in the store.
fn open_source<'a>(
    shared: &'a Shared,
    store: &Store,
    blob: &Digest,
    i: usize,
) -> Result<(Box<dyn Read + Send + 'a>, Option<u64>)> {
    Ok(match take_source(shared, store, blob, i)? {
        Some((file, feed)) => (
            Box::new(Follower {
                shared,
                index: i,
                file,
                read: 0,
            }),
            Some(feed),
        ),
        None => (
            Box::new(Halting {
                shared,
                inner: store.open_blob(blob)?,
            }),
            None,
        ),
    })
}

/// Most layers staged at once: enough to keep the cores busy while some wait for bytes.
const STAGING_THREADS: usize = 4;

/// The directory beside an unpack's destination where its layers are staged, on the same
/// mount (so layers move into the destination by rename); removed when dropped (RUN-25).
struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Makes `.NAME.ferry-unpack-PID` beside `dest`, after removing those a process that is
    /// gone left; `None` when it cannot be made there or is on another mount than `dest`
    /// (another file system, or `dest` is a mount point or bind mount).
    fn beside(dest: &Path) -> Result<Option<Staging>> {
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Ok(None);
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let prefix = format!(".{}.ferry-unpack-", name.to_string_lossy());
        remove_abandoned(parent, &prefix);
        let dir = parent.join(format!("{prefix}{}", std::process::id()));
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            tracing::debug!(
                "no staging directory {}: {e}; unpacking in order",
                dir.display()
            );
            return Ok(None);
        }
        let staging = Staging { dir };
        // A rename works within one mount, not only within one file system (a bind mount).
        if mount_id(&staging.dir)? != mount_id(dest)? {
            tracing::debug!("{} is a mount point: unpacking in order", dest.display());
            return Ok(None);
        }
        Ok(Some(staging))
    }

    /// An empty directory for layer `i`.
    fn fresh(&self, i: usize) -> Result<PathBuf> {
        self.clear(i)?;
        let dir = self.dir.join(i.to_string());
        std::fs::create_dir(&dir).map_err(|source| Error::Io {
            op: "create staging directory",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Removes what is left of layer `i`'s directory.
    fn clear(&self, i: usize) -> Result<()> {
        let dir = self.dir.join(i.to_string());
        remove_tree(&dir).map_err(|source| Error::Io {
            op: "remove staging directory",
            path: dir,
            source,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.dir) {
            tracing::warn!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Removes the tree at `path` (nothing there is fine); the directories a layer made
/// read-only are made writable first when that is what stops an ordinary user.
fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path)?;
            std::fs::remove_dir_all(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Gives the owner full access to every directory at and below `path` (symlinks are not
/// followed).
fn make_writable(path: &Path) -> io::Result<()> {
    let mut todo = vec![path.to_path_buf()];
    while let Some(dir) = todo.pop() {
        if !std::fs::symlink_metadata(&dir)?.is_dir() {
            continue;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    Ok(())
}

/// The id of the mount `path` is on (`statx` `STATX_MNT_ID`).
fn mount_id(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::Io {
        op: "stat",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is NUL-terminated and `stx` is a valid statx buffer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Error::Io {
            op: "stat",
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: statx succeeded and filled the buffer.
    Ok(unsafe { stx.assume_init() }.stx_mnt_id)
}

/// Removes the staging directories with `prefix` in `parent` whose process is gone (a
/// killed unpack leaves one).
fn remove_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            tracing::debug!(
                "removing {}, left by an unpack that stopped",
                entry.path().display()
            );
            if let Err(e) = remove_tree(&entry.path()) {
                tracing::warn!("could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// Waits until layer `i` has a feed (its file and number) or its blob is in the store (`None`): the
/// pull does not fetch a blob the store has (another process may commit it meanwhile).
fn take_source(
    shared: &Shared,
    store: &Store,
    blob: &Digest,
    i: usize,
) -> Result<Option<(File, u64)>> {
    let mut state = shared.lock();
    loop {
        let (count, pull_done, stopped_now) = (state.layers.len(), state.pull_done, state.stopped);
        let feed = state.feeds[i];
        match &mut state.layers[i] {
            Source::Following { file, .. } => {
                return Ok(Some((file.take().expect("a feed is read once"), feed)))
            }
            Source::Broken => return Err(broken(i, count)),
            Source::Waiting if stopped_now => return Err(stopped(&state)),
            Source::Waiting if pull_done => return Ok(None),
            Source::Waiting if store.blob_size(blob)?.is_some() => return Ok(None),
            Source::Waiting => {
                state = shared
                    .changed
                    .wait_timeout(state, STORE_POLL)
                    .expect("unpack state lock")
                    .0
            }
        }
    }
}

fn broken(i: usize, count: usize) -> Error {
    Error::OnePass {
        reason: format!(
            "layer {}/{count}: its download started over while it was being unpacked; \
             unpack again",
            i + 1
        ),
        corrupt: false,
    }
}

/// Why reading stopped: the unpack's failure, or the pull's end.
fn stopped(state: &State) -> Error {
    if let Some(failure) = &state.failure {
        return one_pass(failure);
    }
    Error::OnePass {
        reason: "unpacking stopped: the pull ended first".to_string(),
        corrupt: false,
    }
}

/// What a layer's feed is answered with for `outcome`.
fn outcome_of<T>(outcome: &Result<T>) -> Outcome {
    match outcome {
        Ok(_) => Ok(()),
        Err(e) => Err((e.to_string(), is_corrupt(e))),
    }
}

/// Whether `e` says the bytes are not the layer the image describes.
fn is_corrupt(e: &Error) -> bool {
    matches!(
        e,
        Error::DiffIdMismatch { .. } | Error::OnePass { corrupt: true, .. }
    )
}

/// A layer's blob read from the store, failing once the unpack stops.
struct Halting<'a, R> {
    shared: &'a Shared,
    inner: R,
}

impl<R: Read> Read for Halting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shared.halted() {
            return Err(io::Error::other("unpacking stopped"));
        }
        self.inner.read(buf)
    }
}

fn one_pass((reason, corrupt): &(String, bool)) -> Error {
    Error::OnePass {
        reason: reason.clone(),
        corrupt: *corrupt,
    }
}

/// Reads a layer's ingest file as the pull writes it: waits at what is written so far, ends
/// when the feed is done.
struct Follower<'a> {
    shared: &'a Shared,
    index: usize,
    file: File,
    read: u64,
}

impl Read for Follower<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = {
            let mut state = self.shared.lock();
            loop {
                match &state.layers[self.index] {
                    Source::Following { written, done, .. } => {
                        if *written > self.read {
                            break *written - self.read;
                        }
                        if *done {
                            return Ok(0);
                        }
                    }
                    Source::Broken | Source::Waiting => {
                        return Err(io::Error::other("the layer's download started over"))
                    }
                }
                if state.stopped {
                    return Err(io::Error::other(stopped(&state).to_string()));
                }
                state = self.shared.wait(state);
            }
        };
        let len = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..len], self.read)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the ingest file is shorter than what was written to it",
            ));
        }
        self.read += n as u64;
        Ok(n)
    }
}

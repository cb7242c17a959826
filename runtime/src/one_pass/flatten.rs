//! One pass into one directory: `ferry unpack DIR` extracts an image's layers while the
//! pull brings them (RUN-24), several at once, each staged on its own beside DIR and merged
//! into DIR in order (RUN-25); [`flatten_stored`] does the same from the store.
//!
//! The bytes are not queued in memory: a layer's extraction reads the store's ingest file
//! of the blob as the pull writes it, and waits where the pull has not written yet.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Dropped before [`finish`](StreamedFlatten::finish), the applying stops (the directory
/// holds part of the image).
pub struct StreamedFlatten {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<Vec<LayerSummary>>>>,
}

/// Where each layer's bytes are, shared by the pull's feeds and the applying thread.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    layers: Vec<Source>,
    /// The pull is over: layers without a feed are read from the store.
    pull_done: bool,
    /// Nothing more will come (the pull failed or was dropped).
    stopped: bool,
    /// Layers the applying thread has finished, with their outcome.
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
    /// the pull writes from its first byte on. Fails when an earlier feed of the layer
    /// broke off while it was being applied, or when applying stopped.
    pub fn follow(&self, index: usize, partial: File) -> Result<LayerFeed> {
        let mut state = self.shared.lock();
        if state.restartable {
            // A staged layer is extracted again from this feed.
            state.applied[index] = None;
        } else if let Some(Some(Err(failure))) = state.applied.get(index) {
            return Err(one_pass(failure));
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
                None if state.stopped => return Err(stopped()),
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
                applied: vec![None; count],
                feeds: vec![0; count],
                restartable,
            }),
            changed: Condvar::new(),
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
        state.applied[i] = Some(match outcome {
            Ok(_) => Ok(()),
            Err(e) => Err((e.to_string(), matches!(e, Error::DiffIdMismatch { .. }))),
        });
        self.changed.notify_all();
    }

    /// Nothing more is read: the unpack failed or is dropped.
    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// Whether layer `i`'s download started over since its feed number `feed` was taken.
    fn started_over(&self, i: usize, feed: u64) -> bool {
        let state = self.lock();
        state.feeds[i] != feed || matches!(state.layers[i], Source::Waiting)
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
    let (done, results) = mpsc::channel();
    let threads = layers.len().min(STAGING_THREADS);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done = done.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= layers.len() {
                    return;
                }
                let staged = stage(shared, store, layers, i, staging, limits);
                let failed = staged.is_err();
                if done.send((i, staged)).is_err() || failed {
                    return;
                }
            });
        }
        drop(done);
        let merged = merge_in_order(layers.len(), dest, staging, limits, &results);
        if merged.is_err() {
            // Stops the other layers' reading; the scope then waits for their threads.
            shared.stop();
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
    limits: Limits,
    results: &mpsc::Receiver<(usize, Result<StagedLayer>)>,
) -> Result<Vec<LayerSummary>> {
    let mut budget = Budget::new(limits);
    let mut ready: BTreeMap<usize, StagedLayer> = BTreeMap::new();
    let mut summaries = Vec::with_capacity(count);
    while summaries.len() < count {
        let i = summaries.len();
        let Some(layer) = ready.remove(&i) else {
            let (j, staged) = results.recv().map_err(|_| stopped())?;
            ready.insert(j, staged?);
            continue;
        };
        let diff_id = layer.summary().diff_id.clone();
        let summary = budget
            .charge(&diff_id, layer.summary())
            .and_then(|()| layer.merge_into(dest))
            .map_err(|e| e.in_layer(i + 1, count))?;
        staging.clear(i)?;
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Stages layer `i` into its staging directory from its feed or the store, starting over
/// when its download does; says the outcome to the layer's feed.
fn stage(
    shared: &Shared,
    store: &Store,
    layers: &[(Digest, Compression, Digest)],
    i: usize,
    staging: &Staging,
    limits: Limits,
) -> Result<StagedLayer> {
    let (blob, compression, diff_id) = &layers[i];
    loop {
        let dir = staging.fresh(i)?;
        let (bytes, feed) = open_source(shared, store, blob, i)?;
        // Bounded by the image's limits alone, so what stops it does not depend on which
        // layers are in by then; the layers together are charged in order when merged.
        let mut alone = Budget::new(limits);
        let outcome = stage_layer(&dir, bytes, *compression, Some(diff_id), &mut alone)
            .map_err(|e| e.in_layer(i + 1, layers.len()));
        let Some(feed) = feed.filter(|_| outcome.is_err()) else {
            shared.applied(i, &outcome);
            return outcome;
        };
        if !shared.started_over(i, feed) {
            // The pull hears of the failure; when the bytes were the source's fault it
            // fetches the blob again, from the next source (STORE-3), and this layer with it.
            shared.applied(i, &outcome);
            if !shared.fed_again(i, feed) {
                return outcome;
            }
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
        None => (Box::new(store.open_blob(blob)?), None),
    })
}

/// Most layers staged at once: enough to keep the cores busy while some wait for bytes.
const STAGING_THREADS: usize = 4;

/// The directory beside an unpack's destination where its layers are staged, on the same
/// file system; removed when dropped (RUN-25).
struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Makes `.NAME.ferry-unpack-PID` beside `dest`, after removing those a process that is
    /// gone left; `None` when it cannot be made there or is on another file system.
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
        let device = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.dev())
                .map_err(|source| Error::Io {
                    op: "stat",
                    path: p.to_path_buf(),
                    source,
                })
        };
        if device(&staging.dir)? != device(dest)? {
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
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
                op: "remove staging directory",
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("could not remove {}: {e}", self.dir.display());
        }
    }
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
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
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
            Source::Waiting if pull_done => return Ok(None),
            Source::Waiting if stopped_now => return Err(stopped()),
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

fn stopped() -> Error {
    Error::OnePass {
        reason: "unpacking stopped: the pull ended first".to_string(),
        corrupt: false,
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
                    return Err(io::Error::other("unpacking stopped"));
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

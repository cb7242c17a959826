//! One pass into one directory: `ferry unpack DIR` applies an image's layers in order while
//! the pull brings them, so layer N+1 downloads while layer N is applied (RUN-24).
//!
//! The bytes are not queued in memory: a layer's extraction reads the store's ingest file
//! of the blob as the pull writes it, and waits where the pull has not written yet.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_core::manifest::descriptor_digest;
use ferry_core::media::Compression;
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::{Digest, Store};
use ferry_signing::TrustedImage;

use crate::snapshot::diff_ids;
use crate::unpack::{apply_layer, Budget, LayerSummary, Limits, Whiteouts};
use crate::{Error, Result};

/// How often a layer waiting for its bytes looks whether its blob came into the store.
const STORE_POLL: Duration = Duration::from_millis(20);

/// An image's layers being applied into one directory, bottom first, as they arrive.
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
        let diff_ids = diff_ids(manifest, config)?;
        let layers: Vec<(Digest, Compression, Digest)> = manifest
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                layers: layers.iter().map(|_| Source::Waiting).collect(),
                pull_done: false,
                stopped: false,
                applied: layers.iter().map(|_| None).collect(),
            }),
            changed: Condvar::new(),
        });
        let dest = dest.to_path_buf();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("unpack".to_string())
            .spawn(move || apply_all(&worker, &store, &layers, &dest, limits))
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
        if let Some(Some(Err(failure))) = state.applied.get(index) {
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
            self.shared.lock().stopped = true;
            self.shared.changed.notify_all();
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
            // Not yet read: the layer waits for a new feed; half read: the layer is broken.
            let started = matches!(
                state.layers[self.index],
                Source::Following { file: None, .. }
            );
            state.layers[self.index] = if started {
                Source::Broken
            } else {
                Source::Waiting
            };
            self.shared.changed.notify_all();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("unpack state lock")
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).expect("unpack state lock")
    }
}

/// The applying thread: each layer in order, from its feed or from the store.
fn apply_all(
    shared: &Arc<Shared>,
    store: &Store,
    layers: &[(Digest, Compression, Digest)],
    dest: &Path,
    limits: Limits,
) -> Result<Vec<LayerSummary>> {
    let mut budget = Budget::new(limits);
    let mut summaries = Vec::with_capacity(layers.len());
    let count = layers.len();
    for (i, (blob, compression, diff_id)) in layers.iter().enumerate() {
        let bytes: Box<dyn Read> = match take_source(shared, store, blob, i)? {
            Some(file) => Box::new(Follower {
                shared: shared.clone(),
                index: i,
                file,
                read: 0,
            }),
            None => Box::new(store.open_blob(blob)?),
        };
        let outcome = apply_layer(
            dest,
            bytes,
            *compression,
            Some(diff_id),
            Whiteouts::Apply,
            &mut budget,
        )
        .map_err(|e| e.in_layer(i + 1, count));
        let mut state = shared.lock();
        state.applied[i] = Some(match &outcome {
            Ok(_) => Ok(()),
            Err(e) => Err((e.to_string(), matches!(e, Error::DiffIdMismatch { .. }))),
        });
        shared.changed.notify_all();
        drop(state);
        summaries.push(outcome?);
    }
    Ok(summaries)
}

/// Waits until layer `i` has a feed (its file) or its blob is in the store (`None`): the
/// pull does not fetch a blob the store has (another process may commit it meanwhile).
fn take_source(shared: &Shared, store: &Store, blob: &Digest, i: usize) -> Result<Option<File>> {
    let mut state = shared.lock();
    loop {
        let (count, pull_done, stopped_now) = (state.layers.len(), state.pull_done, state.stopped);
        match &mut state.layers[i] {
            Source::Following { file, .. } => {
                return Ok(Some(file.take().expect("a feed is read once")))
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
struct Follower {
    shared: Arc<Shared>,
    index: usize,
    file: File,
    read: u64,
}

impl Read for Follower {
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

//! One pass: snapshots extracted from a layer's bytes while they are being downloaded, each
//! layer on its own thread, instead of re-read from the store after the pull
//! (specs/runtime.md RUN-20…RUN-23).
//!
//! A [`LayerExtraction`] takes the bytes the pull writes into the store's ingest, in order,
//! through a small bounded channel; [`LayerExtraction::finish`] checks the diff_id, and the
//! result is published as the snapshot only after the blob's digest checked out too
//! ([`ExtractedLayer::publish`]). Anything else throws the extraction away.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferry_core::media::Compression;
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::{Digest, Store};
use ferry_signing::TrustedImage;
use nix::fcntl::{Flock, FlockArg};

use crate::snapshot::{chain_ids, diff_ids, lock, snapshot_dir, snapshots_root, Pending};
use crate::unpack::{apply_layer, Budget, LayerSummary, Limits, Whiteouts};
use crate::Result;

/// Chunks in flight between the download and one layer's extraction: with the pull's
/// chunks of at most a few hundred KiB, a few MiB per layer at most.
const CHUNKS_IN_FLIGHT: usize = 16;

/// The snapshots of an accepted image whose layers are about to be pulled.
///
/// Holds the snapshots' shared gc lock while it lives, so [`crate::snapshot::gc`] does not
/// remove a snapshot published before the image is named and [`crate::snapshot::prepare`]
/// roots it.
pub struct StreamedSnapshots {
    layers: Vec<Planned>,
    budget: Arc<Mutex<Budget>>,
    _gc: Flock<File>,
}

/// Where one layer's snapshot goes and what it must be.
struct Planned {
    dir: PathBuf,
    diff_id: Digest,
    compression: Compression,
    position: (usize, usize),
}

impl StreamedSnapshots {
    /// Plans the snapshots of the image `trusted` accepted, from its `manifest` and `config`;
    /// `limits` bound everything extracted through it together (UNPACK-50).
    pub fn new(
        store: &Store,
        trusted: &TrustedImage,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
        limits: Limits,
    ) -> Result<StreamedSnapshots> {
        tracing::debug!("one-pass snapshots of {}", trusted.reference());
        let diff_ids = diff_ids(manifest, config)?;
        let chain = chain_ids(&diff_ids);
        let count = manifest.layers().len();
        let layers = manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .zip(&chain)
            .enumerate()
            .map(|(i, ((layer, diff_id), chain_id))| {
                Ok(Planned {
                    dir: snapshot_dir(store, chain_id),
                    diff_id,
                    compression: Compression::of_layer(layer.media_type().as_ref())?,
                    position: (i + 1, count),
                })
            })
            .collect::<Result<_>>()?;
        let gc = lock(&snapshots_root(store).join("gc.lock"), FlockArg::LockShared)?;
        Ok(StreamedSnapshots {
            layers,
            budget: Arc::new(Mutex::new(Budget::new(limits))),
            _gc: gc,
        })
    }

    /// Starts extracting layer `index` (0 is the bottom layer) from its first byte, on a
    /// thread of its own; `None` when its snapshot exists or another extraction of it is
    /// under way (then [`crate::snapshot::prepare`] waits for that one).
    pub fn layer(&self, index: usize) -> Result<Option<LayerExtraction>> {
        let planned = &self.layers[index];
        if planned.dir.exists() {
            return Ok(None);
        }
        let Some(pending) = Pending::start(&planned.dir, FlockArg::LockExclusiveNonblock)? else {
            return Ok(None);
        };
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
        let fs = pending.fs();
        let diff_id = planned.diff_id.clone();
        let compression = planned.compression;
        let (position, count) = planned.position;
        // Each layer is bounded by what is left when it starts; `finish` charges the
        // image's budget with what it used.
        let mut budget = self.budget.lock().expect("budget lock").clone();
        let thread = std::thread::Builder::new()
            .name(format!("extract-{position}"))
            .spawn(move || {
                let bytes = ChunkReader {
                    receiver,
                    chunk: None,
                    at: 0,
                    ended: false,
                };
                apply_layer(
                    &fs,
                    bytes,
                    compression,
                    Some(&diff_id),
                    Whiteouts::Overlay,
                    &mut budget,
                )
                .map_err(|e| e.in_layer(position, count))
            })
            .map_err(|e| crate::Error::Io {
                op: "start extraction thread for",
                path: planned.dir.clone(),
                source: e,
            })?;
        Ok(Some(LayerExtraction {
            sender: Some(sender),
            thread: Some(thread),
            pending: Some(pending),
            diff_id: planned.diff_id.clone(),
            budget: self.budget.clone(),
        }))
    }
}

/// One layer being extracted from its bytes as they arrive.
///
/// Dropped before [`finish`](LayerExtraction::finish), the extraction stops and its
/// directory is removed.
pub struct LayerExtraction {
    sender: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<Result<LayerSummary>>>,
    pending: Option<Pending>,
    diff_id: Digest,
    budget: Arc<Mutex<Budget>>,
}

impl LayerExtraction {
    /// Hands on the next bytes of the layer, waiting while the extraction is behind.
    /// `false` when the extraction has stopped; [`finish`](LayerExtraction::finish) says why.
    pub fn write(&mut self, chunk: impl AsRef<[u8]> + Send + 'static) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|s| s.send(Message::Bytes(Box::new(chunk))).is_ok())
    }

    /// Every byte was written: waits for the extraction and checks it (the diff_id, the
    /// image's limits). The snapshot appears only when the result is published.
    pub fn finish(mut self) -> Result<ExtractedLayer> {
        if let Some(sender) = self.sender.take() {
            // The extraction may have stopped already; its result says why.
            let _ = sender.send(Message::End);
        }
        let summary = self.join().expect("joined once")?;
        self.budget
            .lock()
            .expect("budget lock")
            .charge(&self.diff_id, &summary)?;
        Ok(ExtractedLayer {
            pending: self.pending.take().expect("finished once"),
        })
    }

    /// Waits for the extraction thread; a panic there is ferry's bug and goes on here.
    fn join(&mut self) -> Option<Result<LayerSummary>> {
        self.sender = None;
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    }
}

impl Drop for LayerExtraction {
    fn drop(&mut self) {
        // Without the end mark the extraction fails at its next read; its directory goes
        // with `pending` once the thread is done with it.
        if let Some(Err(e)) = self.join() {
            tracing::debug!("extraction stopped: {e}");
        }
    }
}

/// A layer extracted and checked, waiting for its blob to be committed.
pub struct ExtractedLayer {
    pending: Pending,
}

impl ExtractedLayer {
    /// The blob is committed: makes the extraction the layer's snapshot (RUN-21).
    pub fn publish(self) -> Result<()> {
        self.pending.publish()
    }
}

/// What the download hands the extraction.
enum Message {
    /// The next bytes.
    Bytes(Box<dyn AsRef<[u8]> + Send>),
    /// Every byte was handed on.
    End,
}

/// The layer's bytes as a reader: ends at the end mark, fails when the download stopped
/// without one.
struct ChunkReader {
    receiver: Receiver<Message>,
    chunk: Option<Box<dyn AsRef<[u8]> + Send>>,
    at: usize,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.chunk {
                let rest = &(**chunk).as_ref()[self.at..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.at += n;
                    return Ok(n);
                }
            }
            if self.ended {
                return Ok(0);
            }
            match self.receiver.recv() {
                Ok(Message::Bytes(chunk)) => {
                    self.chunk = Some(chunk);
                    self.at = 0;
                }
                Ok(Message::End) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the layer's download stopped",
                    ))
                }
            }
        }
    }
}

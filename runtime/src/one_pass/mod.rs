//! One pass: layers extracted from their bytes while they are being downloaded, instead of
//! re-read from the store after the pull (specs/runtime.md RUN-20…RUN-24): into snapshots,
//! each layer on its own thread (here), or into one directory, staged at once and merged
//! in order ([`StreamedFlatten`]).
//!
//! A [`LayerExtraction`] reads the bytes the pull writes into the store's ingest, in order,
//! from a reader the caller feeds (a small bounded queue);
//! [`LayerExtraction::finish`] checks the diff_id, and the result is published as the
//! snapshot only after the blob's digest checked out too ([`ExtractedLayer::publish`]).
//! Anything else throws the extraction away.

mod flatten;
mod targets;

pub(crate) use flatten::flatten_stored;
pub use flatten::{LayerFeed, StreamedFlatten};
pub use targets::{snapshots_in_one_pass, FlattenInOnePass};

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
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

    /// Starts extracting layer `index` (0 is the bottom layer) from `bytes`, its blob from
    /// the first byte, on a thread of its own; `None` when its snapshot exists or another
    /// extraction of it is under way (then [`crate::snapshot::prepare`] waits for that one).
    ///
    /// `bytes` must fail, not end, when the download stops before the blob's end.
    pub fn layer(
        &self,
        index: usize,
        bytes: impl Read + Send + 'static,
    ) -> Result<Option<LayerExtraction>> {
        let planned = &self.layers[index];
        if planned.dir.exists() {
            return Ok(None);
        }
        let Some(pending) = Pending::start(&planned.dir, FlockArg::LockExclusiveNonblock)? else {
            return Ok(None);
        };
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
            thread: Some(thread),
            pending: Some(pending),
            diff_id: planned.diff_id.clone(),
            budget: self.budget.clone(),
        }))
    }
}

/// One layer being extracted from its bytes as they arrive.
///
/// Dropped before [`finish`](LayerExtraction::finish), it waits for the extraction to end
/// (its reader must fail once its feeder is gone) and removes its directory.
pub struct LayerExtraction {
    thread: Option<JoinHandle<Result<LayerSummary>>>,
    pending: Option<Pending>,
    diff_id: Digest,
    budget: Arc<Mutex<Budget>>,
}

impl LayerExtraction {
    /// Every byte was fed to its reader: waits for the extraction and checks it (the
    /// diff_id, the image's limits). The snapshot appears only when the result is published.
    pub fn finish(mut self) -> Result<ExtractedLayer> {
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
        // The extraction's directory goes with `pending` once the thread is done with it.
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

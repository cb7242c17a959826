//! The one-pass extractions behind the drivers' layer sinks (specs/runtime.md RUN-20, RUN-24):
//! what a pull is given as its [`LayerTarget`] so that each layer is extracted as its bytes
//! arrive, into its snapshot ([`snapshots_in_one_pass`]) or in order into one directory
//! ([`FlattenInOnePass`]).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::{Digest, Store};
use ferry_drivers::transfer::sink::{
    Bytes, LayerResult, LayerSink, LayerSinks, LayerTarget, SinkFuture,
};
use ferry_drivers::{Error as DriverError, ErrorKind};
use ferry_signing::TrustedImage;

use super::{ExtractedLayer, LayerExtraction, LayerFeed, StreamedFlatten, StreamedSnapshots};
use crate::unpack::{LayerSummary, Limits};
use crate::{Error, Result};

/// Where a pull sends layers to become snapshots as they arrive (one pass, RUN-20): the
/// runtime's extraction behind the drivers' layer sinks. `limits` bound what is extracted.
pub fn snapshots_in_one_pass(store: &Arc<Store>, limits: Limits) -> Arc<dyn LayerTarget> {
    Arc::new(SnapshotTarget {
        store: store.clone(),
        limits,
    })
}

#[derive(Debug)]
struct SnapshotTarget {
    store: Arc<Store>,
    limits: Limits,
}

impl LayerTarget for SnapshotTarget {
    fn begin(
        &self,
        trusted: &TrustedImage,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
    ) -> ferry_drivers::Result<Box<dyn LayerSinks>> {
        let snapshots = StreamedSnapshots::new(&self.store, trusted, manifest, config, self.limits)
            .map_err(sink_error)?;
        Ok(Box::new(Snapshots(snapshots)))
    }
}

struct Snapshots(StreamedSnapshots);

/// Chunks in flight between the download and one layer's extraction.
const CHUNKS_IN_FLIGHT: usize = 16;

impl LayerSinks for Snapshots {
    fn open(&self, index: usize) -> ferry_drivers::Result<Option<Box<dyn LayerSink>>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let bytes = ChunkReader {
            receiver,
            chunk: Bytes::new(),
            ended: false,
        };
        let extraction = self.0.layer(index, bytes).map_err(sink_error)?;
        Ok(extraction
            .map(|extraction| Box::new(Extraction { sender, extraction }) as Box<dyn LayerSink>))
    }
}

/// A layer's extraction and the queue that feeds it; `None` marks the end of the bytes.
struct Extraction {
    // Dropped first: the reader then fails, and the extraction's drop can wait for it.
    sender: tokio::sync::mpsc::Sender<Option<Bytes>>,
    extraction: LayerExtraction,
}

impl LayerSink for Extraction {
    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            self.sender.send(Some(chunk)).await.map_err(|_| {
                DriverError::new(ErrorKind::Invalid, "", "the layer's extraction stopped")
            })
        })
    }

    fn finish(self: Box<Self>) -> SinkFuture<'static, Box<dyn LayerResult>> {
        let Extraction { sender, extraction } = *self;
        Box::pin(async move {
            // The extraction may have stopped already: its result says why.
            let _ = sender.send(None).await;
            let extracted = tokio::task::spawn_blocking(move || extraction.finish())
                .await
                .map_err(task_failed)?
                .map_err(sink_error)?;
            Ok(Box::new(Extracted(extracted)) as Box<dyn LayerResult>)
        })
    }
}

/// The bytes of a layer as its extraction reads them: ends at the end mark, fails when the
/// queue is closed without one (the download stopped).
struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<Option<Bytes>>,
    chunk: Bytes,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&self.chunk[..n]);
                self.chunk = self.chunk.slice(n..);
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.receiver.blocking_recv() {
                Some(Some(chunk)) => self.chunk = chunk,
                Some(None) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the layer's download stopped",
                    ))
                }
            }
        }
    }
}

struct Extracted(ExtractedLayer);

impl LayerResult for Extracted {
    fn publish(self: Box<Self>) -> ferry_drivers::Result<()> {
        self.0.publish().map_err(sink_error)
    }
}

/// Where a pull sends layers to be applied in order into `dest` as they arrive (one pass,
/// RUN-24); after the pull, [`FlattenInOnePass::finish`] applies what is left.
pub struct FlattenInOnePass {
    target: Arc<FlattenTarget>,
}

impl FlattenInOnePass {
    /// Layers of the pulled image will go into `dest` (created if missing) within `limits`.
    pub fn new(store: &Arc<Store>, dest: &Path, limits: Limits) -> Self {
        FlattenInOnePass {
            target: Arc::new(FlattenTarget {
                store: store.clone(),
                dest: dest.to_path_buf(),
                limits,
                started: Arc::default(),
            }),
        }
    }

    /// The layer target to pull with.
    pub fn target(&self) -> Arc<dyn LayerTarget> {
        self.target.clone()
    }

    /// The pull succeeded: applies the layers it did not bring, and returns what each layer
    /// did, bottom first.
    pub fn finish(self) -> Result<Vec<LayerSummary>> {
        let started = self.target.started.lock().expect("lock").take();
        let Some(started) = started else {
            return Err(Error::OnePass {
                reason: "the pull never reached the layers".into(),
                corrupt: false,
            });
        };
        started.flatten.finish()
    }
}

#[derive(Debug)]
struct FlattenTarget {
    store: Arc<Store>,
    dest: PathBuf,
    limits: Limits,
    started: Arc<Mutex<Option<Started>>>,
}

/// The image being applied, and its layers' blobs.
struct Started {
    flatten: StreamedFlatten,
    blobs: Vec<Digest>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("blobs", &self.blobs)
            .finish()
    }
}

impl LayerTarget for FlattenTarget {
    fn begin(
        &self,
        trusted: &TrustedImage,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
    ) -> ferry_drivers::Result<Box<dyn LayerSinks>> {
        let blobs = manifest
            .layers()
            .iter()
            .map(ferry_core::manifest::descriptor_digest)
            .collect::<ferry_core::Result<_>>()
            .map_err(DriverError::local)?;
        let flatten = StreamedFlatten::new(
            self.store.clone(),
            trusted,
            manifest,
            config,
            &self.dest,
            self.limits,
        )
        .map_err(sink_error)?;
        *self.started.lock().expect("lock") = Some(Started { flatten, blobs });
        Ok(Box::new(Feeds {
            store: self.store.clone(),
            started: self.started.clone(),
        }))
    }
}

/// Opens a feed per layer the pull fetches: the layer's ingest file, followed as it grows.
struct Feeds {
    store: Arc<Store>,
    started: Arc<Mutex<Option<Started>>>,
}

impl LayerSinks for Feeds {
    fn open(&self, index: usize) -> ferry_drivers::Result<Option<Box<dyn LayerSink>>> {
        let started = self.started.lock().expect("lock");
        let Some(started) = started.as_ref() else {
            return Ok(None);
        };
        let Some(partial) = self
            .store
            .open_partial(&started.blobs[index])
            .map_err(DriverError::local)?
        else {
            return Ok(None);
        };
        let feed = started.flatten.follow(index, partial).map_err(sink_error)?;
        Ok(Some(Box::new(Feed(feed))))
    }
}

struct Feed(LayerFeed);

impl LayerSink for Feed {
    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, ()> {
        // The bytes are in the ingest file already: only say how far it is written.
        self.0.written(chunk.len() as u64);
        Box::pin(std::future::ready(Ok(())))
    }

    fn finish(self: Box<Self>) -> SinkFuture<'static, Box<dyn LayerResult>> {
        let feed = self.0;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || feed.finish())
                .await
                .map_err(task_failed)?
                .map_err(sink_error)?;
            Ok(Box::new(Applied) as Box<dyn LayerResult>)
        })
    }
}

/// A layer applied into the directory: nothing is left to publish.
struct Applied;

impl LayerResult for Applied {
    fn publish(self: Box<Self>) -> ferry_drivers::Result<()> {
        Ok(())
    }
}

fn task_failed(e: tokio::task::JoinError) -> DriverError {
    DriverError::new(
        ErrorKind::Invalid,
        "",
        format!("an unpack task failed: {e}"),
    )
}

/// A runtime failure as the pull sees it: a diff_id mismatch means the bytes are not the
/// layer the image describes (corrupt); a limit says how to raise it.
fn sink_error(e: Error) -> DriverError {
    let kind = match e {
        Error::DiffIdMismatch { .. } | Error::OnePass { corrupt: true, .. } => ErrorKind::Corrupt,
        _ => ErrorKind::Invalid,
    };
    DriverError::new(kind, "", e.to_string())
}

//! Progress events of a transfer (pull, save, load), for bars, plain lines or `--json`.

use std::io::Read;

use serde::Serialize;

/// What a blob is to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobKind {
    /// An image manifest or an index.
    Manifest,
    /// An image config.
    Config,
    /// A layer.
    Layer,
}

/// One step of a pull, a save or a load, in the order they happen (blob events of different
/// blobs interleave). `ferry save` and `ferry load` send the blob events for each blob they
/// write or read, then [`Event::Saved`] or [`Event::Loaded`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Resolving a reference to a digest has started.
    Resolving {
        /// The reference being resolved.
        reference: String,
    },
    /// The reference resolved to a top manifest.
    Resolved {
        /// The reference.
        reference: String,
        /// The top manifest's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A blob transfer starts (or is found present).
    BlobStart {
        /// The blob's digest.
        digest: String,
        /// What it is.
        kind: BlobKind,
        /// Its size per its descriptor.
        size: u64,
        /// Bytes already in the store from an earlier, interrupted transfer.
        resumed_from: u64,
    },
    /// Bytes of a blob arrived.
    BlobProgress {
        /// The blob's digest.
        digest: String,
        /// Bytes now in the store, including any resumed prefix (back at 0 when the
        /// transfer restarts from the first byte).
        done: u64,
        /// Its size.
        size: u64,
    },
    /// A blob is verified and committed, or was already present.
    BlobDone {
        /// The blob's digest.
        digest: String,
        /// What it is.
        kind: BlobKind,
        /// Its size.
        size: u64,
        /// True when it was already in the store and nothing was transferred.
        present: bool,
        /// The source that served it, when something was transferred.
        source: Option<String>,
    },
    /// The image is in the store under its name.
    Done {
        /// The name it is stored under (with tag, if any).
        reference: String,
        /// The top manifest's digest.
        digest: String,
        /// Total bytes of the image.
        size: u64,
        /// Bytes transferred by this pull.
        transferred: u64,
        /// Wall time in milliseconds.
        elapsed_ms: u64,
    },
    /// An archive is written (`ferry save`).
    Saved {
        /// The images, as `NAME:TAG` (or `NAME@DIGEST`).
        images: Vec<String>,
        /// Blob entries written.
        blobs: usize,
        /// Their bytes.
        bytes: u64,
        /// Wall time in milliseconds.
        elapsed_ms: u64,
    },
    /// An archive is read into the store and its images named (`ferry load`).
    Loaded {
        /// The images named, as `NAME:TAG@DIGEST` (or `NAME@DIGEST`).
        images: Vec<String>,
        /// Blobs added to the store.
        blobs_added: usize,
        /// Their bytes.
        bytes_added: u64,
        /// Blobs the store had already.
        blobs_present: usize,
        /// Wall time in milliseconds.
        elapsed_ms: u64,
    },
}

impl BlobKind {
    /// What a blob of `media_type` is: a manifest or index, a config (`…config…`), else a
    /// layer.
    pub fn of_media_type(media_type: &str) -> BlobKind {
        if ferry_core::media::is_manifest(media_type) {
            BlobKind::Manifest
        } else if media_type.contains("config") {
            BlobKind::Config
        } else {
            BlobKind::Layer
        }
    }
}

/// Reports the bytes read through it as [`Event::BlobProgress`] of one blob.
pub struct ProgressReader<'a, R> {
    inner: R,
    digest: String,
    size: u64,
    done: u64,
    progress: &'a dyn Progress,
}

impl<'a, R> ProgressReader<'a, R> {
    /// Reads `inner`, the `size` bytes of blob `digest`, reporting to `progress`.
    pub fn new(
        inner: R,
        digest: &ferry_core::Digest,
        size: u64,
        progress: &'a dyn Progress,
    ) -> Self {
        ProgressReader {
            inner,
            digest: digest.to_string(),
            size,
            done: 0,
            progress,
        }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.done += n as u64;
            self.progress.event(&Event::BlobProgress {
                digest: self.digest.clone(),
                done: self.done,
                size: self.size,
            });
        }
        Ok(n)
    }
}

impl Event {
    /// A blob found already at its destination: nothing was transferred.
    pub fn present(digest: &ferry_core::Digest, kind: BlobKind, size: u64) -> Event {
        Event::BlobDone {
            digest: digest.to_string(),
            kind,
            size,
            present: true,
            source: None,
        }
    }
}

/// Receives progress events; implementations must be cheap (called per received chunk).
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event);
}

/// A progress sink that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: &Event) {}
}

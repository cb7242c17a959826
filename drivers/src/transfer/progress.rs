//! Progress events of a transfer, for bars, plain lines or `--json`.

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

/// One step of a pull, in the order they happen (blob events of different blobs interleave).
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

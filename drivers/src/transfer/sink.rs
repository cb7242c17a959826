//! Layer sinks: consumers that see a pulled layer's bytes as they arrive, beside the store's
//! ingest, so a pull can extract layers in the same pass (specs/store.md STORE-20..23).
//!
//! The pull writes each chunk into the ingest and then into the layer's sink; a sink's
//! verdict gates the commit of the blob, and the blob's commit gates the sink's result. The
//! drivers know nothing of what a sink does with the bytes (the runtime extracts them).

use std::future::Future;
use std::pin::Pin;

pub use bytes::Bytes;
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_signing::TrustedImage;

use crate::Result;

/// Where a pull sends an image's layers as they arrive.
pub trait LayerTarget: Send + Sync + std::fmt::Debug {
    /// Called once the image's config is in the store, before any layer is fetched: the
    /// sinks of this image's layers.
    fn begin(
        &self,
        trusted: &TrustedImage,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
    ) -> Result<Box<dyn LayerSinks>>;
}

/// Opens a sink per layer of one image.
pub trait LayerSinks: Send + Sync {
    /// A sink for the bytes of layer `index` (0 is the bottom layer), starting at its first
    /// byte; `None` when the layer needs none (its result exists, or another pull makes it).
    fn open(&self, index: usize) -> Result<Option<Box<dyn LayerSink>>>;
}

/// What a sink's calls return: they may wait (for the consumer) without blocking the pull.
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Takes one layer's bytes in order, and gives a verdict on them when they are all there.
///
/// Dropping a sink before [`finish`](LayerSink::finish) throws away what it made; the drop
/// may block briefly while its consumer stops.
pub trait LayerSink: Send {
    /// Takes the next bytes of the layer; waits while the consumer is behind. An error
    /// means the consumer stopped; [`finish`](LayerSink::finish) then says why.
    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, ()>;

    /// Every byte was written: waits for the consumer and returns its result, held back
    /// until the blob is committed. A failure of kind [`Corrupt`](crate::ErrorKind::Corrupt)
    /// means the bytes cannot be the layer the image describes: the blob is not committed.
    fn finish(self: Box<Self>) -> SinkFuture<'static, Box<dyn LayerResult>>;
}

/// A sink's result, made visible only once the blob it came from is committed.
pub trait LayerResult: Send {
    /// The blob is committed: makes the result visible. Dropping it instead throws it away.
    fn publish(self: Box<Self>) -> Result<()>;
}

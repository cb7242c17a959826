//! ferry's distribution drivers: one async [`Driver`] API that every transport implements,
//! in three layers that depend downwards only:
//!
//! - [`sources`]: the transports (registry, S3, OCI layout, mirror, peer, the local store);
//! - [`site`]: the site config and the routes that map a name to its sources;
//! - [`transfer`]: the engines that move images (pull, copy, archives, signature transport).

#![warn(missing_docs)]

mod error;
pub mod site;
pub mod sources;
pub mod transfer;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::Digest;
use futures::Stream;

pub use error::{Error, ErrorKind};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream of body bytes from a driver.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What a driver can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It can answer tag → digest.
    pub resolve: bool,
    /// It can list the tags of a name.
    pub list_tags: bool,
    /// It accepts blobs and manifests.
    pub write: bool,
    /// It serves byte ranges of blobs.
    pub ranges: bool,
}

/// A byte range of a blob: from `offset`, `len` bytes or to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes, or `None` for "to the end".
    pub len: Option<u64>,
}

impl ByteRange {
    /// The whole blob.
    pub const WHOLE: ByteRange = ByteRange {
        offset: 0,
        len: None,
    };

    /// From `offset` to the end.
    pub fn from(offset: u64) -> Self {
        ByteRange { offset, len: None }
    }

    /// Whether this is the whole blob.
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.len.is_none()
    }
}

/// A blob body being fetched.
pub struct BlobBody {
    /// Bytes in this body, when the transport says.
    pub len: Option<u64>,
    /// The bytes, exactly as the source serves them (unverified: the consumer verifies).
    pub stream: ByteStream,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Manifest bytes as a source served them.
#[derive(Debug, Clone)]
pub struct ManifestBytes {
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// The transport's media type (e.g. HTTP `Content-Type`), if any.
    pub content_type: Option<String>,
}

/// One transport of images: a registry, a bucket, a directory, a set of peers.
///
/// Names passed in are full image names (`registry.example.com/team/app`); a driver maps
/// them to its own locations. Every error carries one [`ErrorKind`] the router acts on.
#[async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// The source name this driver was configured under (used in messages).
    fn source_name(&self) -> &str;

    /// What this driver supports.
    fn capabilities(&self) -> Capabilities;

    /// Resolves `name:tag` to the descriptor of its top manifest.
    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor>;

    /// Fetches a manifest or index by digest (the bytes are checked against the digest).
    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes>;

    /// Streams a blob, or a range of it, by digest. The bytes are not verified here.
    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody>;

    /// The size of a blob if the source has it, `None` if not.
    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>>;

    /// The tags of `name`.
    async fn list_tags(&self, name: &str) -> Result<Vec<String>>;

    /// Stores a blob under `name` (writable drivers only).
    async fn put_blob(
        &self,
        name: &str,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        let _ = (name, digest, size, body);
        Err(Error::unsupported(self.source_name(), "writing blobs"))
    }

    /// Stores a manifest under `name`, tagged `tag` when given (writable drivers only).
    async fn put_manifest(
        &self,
        name: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let _ = (name, tag, media_type, bytes);
        Err(Error::unsupported(self.source_name(), "writing manifests"))
    }
}

//! The content-addressed store: blobs by digest, one verified write path, metadata in SQLite.
//!
//! Layout and invariants: `specs/store.md`.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Digest, Reference, Result};

/// What the store records about a named image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRecord {
    /// Full name without tag, e.g. `docker.io/library/busybox`.
    pub name: String,
    /// Tag, or `None` for an image named only by digest.
    pub tag: Option<String>,
    /// Digest of the top manifest (index or image manifest).
    pub digest: Digest,
    /// Media type of the top manifest.
    pub media_type: String,
    /// Total size of the manifest(s), config and layers in bytes.
    pub size: u64,
    /// Image creation time from its config (RFC 3339), if any.
    pub created: Option<String>,
    /// `os/arch[/variant]` of the image that was pulled.
    pub platform: Option<String>,
    /// Unix seconds when the name was last set.
    pub updated: i64,
}

/// What the store records about a blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobRecord {
    /// The blob's digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Media type as declared by the descriptor that brought it.
    pub media_type: String,
    /// The source that served it (a driver name), if known.
    pub source: Option<String>,
    /// Unix seconds of commit.
    pub created: i64,
}

/// Blobs and ingests that a garbage collection removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Digests of removed blobs.
    pub removed_blobs: Vec<Digest>,
    /// Number of stale ingests removed.
    pub removed_ingests: usize,
    /// Bytes freed in total.
    pub freed_bytes: u64,
}

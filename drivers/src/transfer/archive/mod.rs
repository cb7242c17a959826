//! Image archives: `ferry save` writes images of the store into one tar stream, `ferry load`
//! reads one into the store, across an air gap.
//!
//! Formats and rules: `specs/archive.md` (IDs `ARC-n` below refer to it). Three formats:
//! ferry's own (an OCI image layout with a table of contents first, signatures, and a list of
//! blobs left out because the far side has them), `oci-archive` (a plain OCI layout tar,
//! as skopeo's `oci-archive:`), and `docker-archive` (what `docker save` writes). Both
//! directions stream: memory stays bounded by the largest manifest or config, never by a
//! layer or the archive.
//!
//! Everything here blocks (tar, the store); call it from `spawn_blocking` in async code.

mod docker;
mod load;
mod plan;
mod save;
mod tar_out;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::{self, Read};

use ferry_core::{Digest, Hasher};
use serde::{Deserialize, Serialize};

pub use load::{load, load_with_progress, LoadOptions, LoadReport, LoadedImage};
pub use save::{save, save_with_progress, SaveOptions, SaveReport};

use crate::{Error, ErrorKind, Result};

/// Name of the table of contents, the first entry of a ferry archive (ARC-2, ARC-3).
pub const TOC_FILE: &str = "ferry-archive.json";
/// Version of the table of contents this build writes and reads.
pub const TOC_VERSION: u32 = 1;
/// Annotation containerd and docker use for an image's full name in `index.json`.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Largest JSON file (TOC, `index.json`, `manifest.json`, config) an archive may hold.
const MAX_JSON_SIZE: u64 = 16 * 1024 * 1024;

/// An archive format (ARC-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// ferry's format: OCI layout + table of contents + signatures + excluded blobs.
    Ferry,
    /// A plain OCI image layout in a tar (skopeo `oci-archive:`).
    OciArchive,
    /// `docker save`'s format (`manifest.json`, config JSON, uncompressed layer tars).
    DockerArchive,
}

impl Format {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ferry => "ferry",
            Format::OciArchive => "oci-archive",
            Format::DockerArchive => "docker-archive",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ferry" => Ok(Format::Ferry),
            "oci-archive" | "oci" => Ok(Format::OciArchive),
            "docker-archive" | "docker" => Ok(Format::DockerArchive),
            other => Err(format!(
                "unknown archive format {other:?} (ferry, oci-archive, docker-archive)"
            )),
        }
    }
}

/// How a whole archive stream is compressed (ARC-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamCompression {
    /// A plain tar.
    None,
    /// gzip (load only).
    Gzip,
    /// zstd.
    Zstd,
}

/// The table of contents of a ferry archive, `ferry-archive.json` (ARC-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toc {
    /// Format version, [`TOC_VERSION`].
    pub ferry_archive: u32,
    /// The images the archive names, in the order they were saved.
    pub images: Vec<TocImage>,
    /// Every blob entry of the archive, in archive order.
    pub blobs: Vec<TocBlob>,
    /// Blobs the images need that the archive leaves out: the loading store must have them.
    pub excluded: Vec<TocBlob>,
}

/// One image of a [`Toc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TocImage {
    /// Full, normalized name.
    pub name: String,
    /// Tag, or absent for an image named by digest only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Top manifest digest.
    pub digest: Digest,
    /// Top manifest media type.
    pub media_type: String,
    /// Digests of the signature envelopes carried for this image (ARC-5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<Digest>,
}

/// One blob of a [`Toc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TocBlob {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The media type of the descriptor that names it.
    pub media_type: String,
}

/// Reads a list of digests, one a line (blank lines and `#` comments skipped), as
/// `ferry store digests` prints them (ARC-6).
pub fn read_digest_list(text: &str) -> Result<HashSet<Digest>> {
    let mut set = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let d =
            Digest::parse(line).map_err(|e| invalid(format!("digest list line {}: {e}", i + 1)))?;
        set.insert(d);
    }
    Ok(set)
}

/// An archive error: invalid input, named as the archive's.
fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, "", message)
}

/// A corrupt archive: bytes that do not match their digest or size.
fn corrupt(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, "", message)
}

/// A store error during save or load.
fn local(e: ferry_core::Error) -> Error {
    Error::local(e)
}

/// `blobs/<alg>/<hex>`: where a layout keeps blob `d`.
fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// The digest a `blobs/<alg>/<hex>` path names, if it is one.
fn digest_of_path(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// A reader that hashes and counts what passes, and fails at its end (as `InvalidData`)
/// when the bytes are not `expected` (and `size`, when given).
struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    size: Option<u64>,
    seen: u64,
    what: String,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R, expected: &Digest, size: Option<u64>, what: String) -> Self {
        HashingReader {
            inner,
            hasher: Some(Hasher::new(expected.algorithm())),
            expected: expected.clone(),
            size,
            seen: 0,
            what,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.seen += n as u64;
            if let Some(h) = self.hasher.as_mut() {
                h.update(&buf[..n]);
            }
            return Ok(n);
        }
        if !buf.is_empty() {
            if let Some(h) = self.hasher.take() {
                let bad = |why: String| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", self.what))
                };
                if let Some(size) = self.size.filter(|&s| s != self.seen) {
                    return Err(bad(format!("{} bytes, expected {size}", self.seen)));
                }
                let actual = h.finish();
                if actual != self.expected {
                    return Err(bad(format!(
                        "digest mismatch: expected {}, got {actual}",
                        self.expected
                    )));
                }
            }
        }
        Ok(0)
    }
}

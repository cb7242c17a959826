//! Applying OCI image layers to a directory, safely: nothing a layer says can touch a
//! file outside that directory. The guarantees are in `specs/unpack.md` (UNPACK-*).
//!
//! ```no_run
//! # use ferry_runtime::unpack::*;
//! # use ferry_core::media::Compression;
//! # fn f(layers: Vec<(std::fs::File, Compression, ferry_core::Digest)>) -> ferry_runtime::Result<()> {
//! let mut budget = Budget::new(Limits::default());
//! for (blob, compression, diff_id) in layers {
//!     apply_layer("rootfs".as_ref(), blob, compression, Some(&diff_id), Whiteouts::Apply, &mut budget)?;
//! }
//! # Ok(()) }
//! ```

mod apply;
mod path;
mod root;
#[doc(hidden)]
pub mod stream;
mod tar;

use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ferry_core::media::Compression;
use ferry_core::{Algorithm, Digest, Hasher};

use crate::{Error, Result};
use apply::{Applier, StagedRecord};
use root::Root;
use stream::{DecompressError, DiffReader};
use tar::{TarError, TarReader};

/// Buffer between the decompressor and the tar reader: file data is written from it.
const TAR_BUFFER: usize = 1024 * 1024;

/// How whiteout entries (`.wh.NAME`, `.wh..wh..opq`) are applied (UNPACK-30…33).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Flattened root filesystem: delete what lower layers put there.
    Apply,
    /// Overlayfs lower directory: write whiteouts as char devices 0/0 and mark opaque
    /// directories with `trusted.overlay.opaque="y"` (needs root).
    Overlay,
}

/// Per-image limits on what unpacking may produce (UNPACK-50, UNPACK-51); users set them
/// as `max-bytes` and `max-entries` (UNPACK-53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of all layers' tar streams together (`max-bytes`).
    pub max_bytes: u64,
    /// Tar entries of all layers together (`max-entries`).
    pub max_entries: u64,
}

impl Default for Limits {
    /// 64 GiB and 10 million entries.
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 10_000_000,
        }
    }
}

/// What is left of an image's [`Limits`] while its layers are applied one by one.
#[derive(Debug, Clone)]
pub struct Budget {
    limits: Limits,
    bytes_left: u64,
    entries_left: u64,
}

impl Budget {
    /// A full budget for one image.
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            bytes_left: limits.max_bytes,
            entries_left: limits.max_entries,
        }
    }

    /// The limits this budget started from.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Uncompressed bytes later layers may still use.
    pub fn bytes_left(&self) -> u64 {
        self.bytes_left
    }

    /// Entries later layers may still use.
    pub fn entries_left(&self) -> u64 {
        self.entries_left
    }

    /// Takes what `layer` used when it was applied with a copy of this budget, beside other
    /// layers: fails when the layers taken so far together went past a limit.
    pub(crate) fn charge(&mut self, layer: &Digest, used: &LayerSummary) -> Result<()> {
        let over = |what, limit| Error::UnpackLimit {
            layer: layer.to_string(),
            what,
            limit,
            entry: "(the image's layers together)".to_string(),
        };
        self.bytes_left = self
            .bytes_left
            .checked_sub(used.bytes)
            .ok_or_else(|| over("max-bytes", self.limits.max_bytes))?;
        self.entries_left = self
            .entries_left
            .checked_sub(used.entries)
            .ok_or_else(|| over("max-entries", self.limits.max_entries))?;
        Ok(())
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// Digest of the whole uncompressed stream (trailing bytes after the tar included).
    pub diff_id: Digest,
    /// Tar entries read.
    pub entries: u64,
    /// Uncompressed bytes read.
    pub bytes: u64,
}

/// Why applying an entry failed, before the layer and entry are named.
enum Fail {
    /// A file-system call failed.
    Io { op: String, source: io::Error },
    /// The entry is refused by a rule of specs/unpack.md.
    Reject(String),
    /// The tar stream could not be read.
    Tar(TarError),
    /// The image has more entries than its limit.
    TooManyEntries,
}

/// Applies one layer stream (compressed per `compression`, checked against the magic
/// bytes) into `dir`.
///
/// `dir` must exist; it stands for `/` and nothing outside it is read or written. The
/// diff_id is computed over the whole decompressed stream and checked against
/// `expected_diff_id` when given; on any error the directory holds a partial layer and
/// should be discarded.
pub fn apply_layer<R: Read>(
    dir: &Path,
    layer: R,
    compression: Compression,
    expected_diff_id: Option<&Digest>,
    whiteouts: Whiteouts,
    budget: &mut Budget,
) -> Result<LayerSummary> {
    let label = label(expected_diff_id);
    let root = open_root(dir)?;
    let applier = Applier::new(root, label.clone(), whiteouts);
    extract(applier, label, layer, compression, expected_diff_id, budget)
        .map(|(summary, _)| summary)
}

/// A layer extracted on its own into a staging directory, to be merged onto the layers
/// below it later ([`StagedLayer::merge_into`]), so an image's layers can be extracted at
/// once and still give one flattened tree (UNPACK-70).
pub struct StagedLayer {
    dir: PathBuf,
    label: String,
    record: StagedRecord,
    summary: LayerSummary,
}

/// Extracts `layer` into `dir` (existing and empty, on the mount of the tree it will be
/// merged into: the merge renames), checking it as [`apply_layer`] does; its whiteouts, opaque markers and
/// hard links to files it does not have itself are recorded for the merge (UNPACK-70).
pub fn stage_layer<R: Read>(
    dir: &Path,
    layer: R,
    compression: Compression,
    expected_diff_id: Option<&Digest>,
    budget: &mut Budget,
) -> Result<StagedLayer> {
    let label = label(expected_diff_id);
    let root = open_root(dir)?;
    let applier = Applier::staging(root, label.clone());
    let (summary, record) = extract(
        applier,
        label.clone(),
        layer,
        compression,
        expected_diff_id,
        budget,
    )?;
    Ok(StagedLayer {
        dir: dir.to_path_buf(),
        label,
        record: record.expect("a staging applier leaves a record"),
        summary,
    })
}

impl StagedLayer {
    /// What extracting the layer did.
    pub fn summary(&self) -> &LayerSummary {
        &self.summary
    }

    /// Moves the layer into `dest`, where the layers below it are, with the result
    /// [`apply_layer`] with [`Whiteouts::Apply`] gives there (UNPACK-71); the staging
    /// directory is left with what did not move, for the caller to remove. On an error
    /// `dest` holds part of the layer.
    pub fn merge_into(self, dest: &Path) -> Result<LayerSummary> {
        let staged = std::fs::File::open(&self.dir).map_err(|source| Error::Io {
            op: "open staged layer",
            path: self.dir.clone(),
            source,
        })?;
        let applier = Applier::new(open_root(dest)?, self.label.clone(), Whiteouts::Apply);
        applier
            .merge(staged.as_fd(), self.record)
            .map_err(|(at, fail)| {
                let at = if at.is_empty() {
                    "/".into()
                } else {
                    shown(&at)
                };
                let fail = match fail {
                    Fail::Io { op, source } => Fail::Io {
                        op: format!("merging the staged layer: {op}"),
                        source,
                    },
                    other => other,
                };
                failed(fail, &self.label, at, "tar", None)
            })?;
        Ok(self.summary)
    }
}

fn label(expected_diff_id: Option<&Digest>) -> String {
    expected_diff_id.map_or_else(|| "(diff_id not given)".to_string(), Digest::to_string)
}

fn open_root(dir: &Path) -> Result<Root> {
    Root::open(dir).map_err(|source| Error::Io {
        op: "open unpack directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Reads a layer's stream through `applier`, with the checks and limits of
/// [`apply_layer`]; returns what it did and, for a staging applier, its record.
fn extract<R: Read>(
    mut applier: Applier,
    label: String,
    layer: R,
    compression: Compression,
    expected_diff_id: Option<&Digest>,
    budget: &mut Budget,
) -> Result<(LayerSummary, Option<StagedRecord>)> {
    let what = match compression {
        Compression::None => "tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    let input = stream::decompress(layer, compression).map_err(|e| match e {
        DecompressError::Mismatch(found) => Error::CompressionMismatch {
            layer: label.clone(),
            declared: stream::name(compression).to_string(),
            found: stream::name(found).to_string(),
        },
        DecompressError::Io(source) => Error::LayerStream {
            layer: label.clone(),
            what,
            source,
        },
    })?;
    let algorithm = expected_diff_id.map_or(Algorithm::Sha256, Digest::algorithm);
    let diff = DiffReader::new(input, Hasher::new(algorithm), budget.bytes_left);
    let mut tar = TarReader::new(BufReader::with_capacity(TAR_BUFFER, diff));

    let mut entries = 0u64;
    let mut current: Option<Vec<u8>> = None;
    let mut outcome = (|| {
        while let Some(entry) = tar.next_entry().map_err(Fail::Tar)? {
            current = Some(entry.path.clone());
            if entries == budget.entries_left {
                return Err(Fail::TooManyEntries);
            }
            entries += 1;
            applier.apply(&entry, &mut tar)?;
        }
        current = None;
        applier.finish()
    })();
    let offset = tar.offset();
    let mut rest = tar.into_inner();
    if outcome.is_ok() {
        if let Err(e) = stream::drain(&mut rest) {
            outcome = Err(Fail::Tar(TarError::Io(e)));
        }
    }
    let diff = rest.into_inner();
    budget.bytes_left -= diff.consumed();
    budget.entries_left -= entries;
    let entry = match &current {
        Some(p) => shown(p),
        None => format!("(at byte {offset})"),
    };
    if diff.exceeded() {
        return Err(Error::UnpackLimit {
            layer: label,
            what: "max-bytes",
            limit: budget.limits.max_bytes,
            entry,
        });
    }
    let record = outcome
        .map_err(|fail| failed(fail, &label, entry, what, Some(budget.limits.max_entries)))?;
    let bytes = diff.consumed();
    let diff_id = diff.finish();
    if let Some(expected) = expected_diff_id {
        if &diff_id != expected {
            return Err(Error::DiffIdMismatch {
                layer: label,
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok((
        LayerSummary {
            diff_id,
            entries,
            bytes,
        },
        record,
    ))
}

/// The error for `fail` at `entry` of `layer` (a `what` stream; `max_entries` is the
/// entry limit it ran into).
fn failed(
    fail: Fail,
    layer: &str,
    entry: String,
    what: &'static str,
    max_entries: Option<u64>,
) -> Error {
    let layer = layer.to_string();
    match fail {
        Fail::Io { op, source } => Error::UnpackIo {
            layer,
            entry,
            op,
            source,
        },
        Fail::Reject(reason) | Fail::Tar(TarError::Format(reason)) => Error::UnpackRejected {
            layer,
            entry,
            reason,
        },
        Fail::Tar(TarError::Io(source)) => Error::LayerStream {
            layer,
            what,
            source,
        },
        Fail::TooManyEntries => Error::UnpackLimit {
            layer,
            what: "max-entries",
            limit: max_entries.unwrap_or_default(),
            entry,
        },
    }
}

/// An entry name for messages: lossy UTF-8, at most 200 characters.
fn shown(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

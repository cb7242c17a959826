//! The one write path into `blobs/`: a resumable, hashing ingest and its commit (STORE-2..6).

use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{lock, Inner};
use crate::{Digest, Error, Hasher, Result};

/// A blob being written into the store; see [`crate::Store::ingest`].
///
/// Holds the exclusive lock on the blob's partial file. Dropping it without
/// [`commit`](Ingest::commit) keeps the bytes written so far for the next ingest of the
/// same digest to resume from, and releases the lock (STORE-4), unless they are known bad:
/// all declared bytes are there and their digest is wrong (STORE-3).
pub struct Ingest {
    store: Arc<Inner>,
    expected: Digest,
    size: Option<u64>,
    path: PathBuf,
    /// The partial file, open and flocked exclusively for the life of the ingest.
    file: File,
    hasher: Hasher,
    /// Bytes in the partial file, all of them fed to `hasher`.
    written: u64,
    /// `Some(size)` while the blob was already committed and nothing was written since.
    present: Option<u64>,
    /// The partial file no longer belongs to this ingest (renamed into `blobs/` or removed).
    done: bool,
}

impl Ingest {
    /// Locks the partial of `expected` (waiting for other holders) and finds the resume point.
    pub(super) fn open(store: Arc<Inner>, expected: &Digest, size: Option<u64>) -> Result<Ingest> {
        let path = store.partial_path(expected);
        let file = lock::lock_partial(&path)?;
        let mut ingest = Ingest {
            store,
            expected: expected.clone(),
            size,
            path,
            file,
            hasher: Hasher::new(expected.algorithm()),
            written: 0,
            present: None,
            done: false,
        };
        if let Some(have) = ingest.store.blob_size(expected)? {
            // Committed by someone else (maybe while we waited): the partial is useless (STORE-6).
            ingest.truncate()?;
            if let Some(want) = size.filter(|&want| want != have) {
                return Err(Error::SizeMismatch {
                    what: ingest.what(),
                    expected: want,
                    actual: have,
                });
            }
            ingest.present = Some(have);
            return Ok(ingest);
        }
        ingest.rehash()?;
        if let Some(want) = size {
            let complete = ingest.written == want;
            if ingest.written > want
                || (complete && ingest.hasher.clone().finish() != ingest.expected)
            {
                tracing::warn!(
                    "discarding partial {} ({} bytes): it cannot become {}",
                    ingest.path.display(),
                    ingest.written,
                    ingest.what()
                );
                ingest.reset()?;
            }
        }
        Ok(ingest)
    }

    /// The digest this ingest must produce.
    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// Bytes already in place: where the caller resumes writing.
    ///
    /// Equal to the blob's size when the blob was already committed; with a known size,
    /// `offset() == size` means nothing is left to write and [`commit`](Ingest::commit) succeeds.
    pub fn offset(&self) -> u64 {
        self.present.unwrap_or(self.written)
    }

    /// Appends `data`, hashing it; fails if it goes past the expected size.
    ///
    /// Going past the size fails with [`Error::SizeMismatch`] and resets the ingest to
    /// offset 0, since the source sent bytes that cannot be this blob (STORE-3).
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = self.offset() + data.len() as u64;
        if let Some(limit) = self.present.or(self.size).filter(|&limit| end > limit) {
            if self.present.is_none() {
                self.reset()?;
            }
            return Err(Error::SizeMismatch {
                what: self.what(),
                expected: limit,
                actual: end,
            });
        }
        if let Err(e) = self.file.write_all_at(data, self.written) {
            // Best effort: keep the file equal to what was hashed; commit truncates again.
            let _ = self.file.set_len(self.written);
            return Err(Error::io("write ingest", &self.path, e));
        }
        self.hasher.update(data);
        self.written = end;
        Ok(())
    }

    /// Whether every declared byte is there and their digest is the expected one: what
    /// [`commit`](Ingest::commit) will check, without committing.
    pub fn verified(&self) -> bool {
        self.present.is_some()
            || (self.size.is_none_or(|want| want == self.written)
                && self.hasher.clone().finish() == self.expected)
    }

    /// Truncates to offset 0 and restarts hashing, for a source that cannot serve ranges.
    pub fn reset(&mut self) -> Result<()> {
        self.truncate()?;
        self.present = None;
        Ok(())
    }

    /// Verifies size and digest, then makes the blob visible in `blobs/` and records it.
    ///
    /// Returns the blob's size. The bytes are fsynced, made read-only, renamed into place,
    /// and the directories fsynced before the record is written (STORE-2). On a mismatch the
    /// partial is deleted and the error is [`Error::SizeMismatch`] or
    /// [`Error::DigestMismatch`] naming the digest (STORE-3). If the blob was already
    /// committed, this only records it (`media_type` and `source` of an existing record are
    /// kept; its `last_used` is updated).
    pub fn commit(mut self, media_type: &str, source: Option<&str>) -> Result<u64> {
        if let Some(have) = self.present {
            self.store
                .record_blob(&self.expected, have, media_type, source)?;
            return Ok(have);
        }
        if let Some(want) = self.size.filter(|&want| want != self.written) {
            self.discard();
            return Err(Error::SizeMismatch {
                what: self.what(),
                expected: want,
                actual: self.written,
            });
        }
        let actual = self.hasher.clone().finish();
        if actual != self.expected {
            self.discard();
            return Err(Error::DigestMismatch {
                what: self.what(),
                expected: self.expected.clone(),
                actual,
            });
        }
        let io = |op| {
            let path = self.path.clone();
            move |e| Error::io(op, path, e)
        };
        // Drops any tail a failed write left behind: the file is exactly the hashed bytes.
        self.file
            .set_len(self.written)
            .map_err(io("truncate ingest"))?;
        self.file
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io("chmod ingest"))?;
        self.file.sync_all().map_err(io("fsync ingest"))?;
        let dest = self.store.blob_path(&self.expected);
        fs::rename(&self.path, &dest).map_err(|e| Error::io("commit blob", &dest, e))?;
        self.done = true;
        sync_parent(&dest)?;
        sync_parent(&self.path)?;
        self.store
            .record_blob(&self.expected, self.written, media_type, source)?;
        Ok(self.written)
    }

    fn what(&self) -> String {
        format!("blob {}", self.expected)
    }

    /// Empties the partial file and restarts hashing.
    fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| Error::io("truncate ingest", &self.path, e))?;
        self.hasher = Hasher::new(self.expected.algorithm());
        self.written = 0;
        Ok(())
    }

    /// Hashes the bytes a previous ingest left in the partial file.
    fn rehash(&mut self) -> Result<()> {
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = match (&self.file).read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read ingest", &self.path, e)),
            };
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
        }
    }

    /// Deletes the partial (its bytes are known bad) while still holding its lock.
    fn discard(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!("removing bad partial {}: {e}", self.path.display());
        }
        self.done = true;
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Nothing to resume from, or every byte there and the digest wrong (STORE-3): known
        // bad bytes are never kept for a resume to build on. Removed before the lock goes
        // with the file.
        let known_bad = self.written > 0
            && self.size == Some(self.written)
            && self.hasher.clone().finish() != self.expected;
        if self.written == 0 || known_bad {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::debug!("removing partial {}: {e}", self.path.display());
            }
        }
    }
}

impl fmt::Debug for Ingest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingest")
            .field("digest", &self.expected)
            .field("size", &self.size)
            .field("offset", &self.offset())
            .field("committed", &self.present.is_some())
            .finish()
    }
}

/// fsyncs the directory holding `path`, so a rename into or out of it is durable.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

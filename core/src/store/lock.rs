//! flock(2) locks: the exclusive lock on an ingest's partial file and the GC lock (STORE-5, STORE-10).
//!
//! A lock is held for as long as the `File` it was taken on stays open; closing the file
//! releases it, also when the process dies.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// The kind of flock to take.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    /// Many holders at once (pull leases).
    Shared,
    /// One holder (ingests, GC).
    Exclusive,
}

/// Whether to wait for a lock held elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Block until the lock is free.
    Block,
    /// Fail at once if it is held.
    Try,
}

/// Takes a flock on `file`; `Ok(false)` when `wait` is [`Wait::Try`] and the lock is held elsewhere.
pub(super) fn flock(file: &File, mode: Mode, wait: Wait, path: &Path) -> Result<bool> {
    let mut op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    };
    if wait == Wait::Try {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock(2) on a file descriptor that `file` owns and keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(Error::io("lock", path, err)),
        }
    }
}

/// Opens (creating) the partial file at `path` and locks it exclusively, waiting for other holders.
///
/// When this returns, the locked file is the one at `path`: a holder that renamed or removed
/// it while we waited makes us start over on the new file (STORE-5).
pub(super) fn lock_partial(path: &Path) -> Result<File> {
    let mut unfrozen = false;
    loop {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !unfrozen => {
                unfreeze_partial(path)?;
                unfrozen = true;
                continue;
            }
            Err(e) => return Err(Error::io("open ingest", path, e)),
        };
        flock(&file, Mode::Exclusive, Wait::Block, path)?;
        if still_at(&file, path)? {
            return Ok(file);
        }
    }
}

/// Makes a read-only partial writable again.
///
/// A commit makes the partial read-only just before renaming it into `blobs/`; a process
/// killed in between leaves a complete read-only partial that a non-root user cannot open
/// for writing. Holding its lock proves no commit is under way.
fn unfreeze_partial(path: &Path) -> Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open ingest", path, e)),
    };
    flock(&file, Mode::Exclusive, Wait::Block, path)?;
    if still_at(&file, path)? {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("chmod ingest", path, e))?;
    }
    Ok(())
}

/// Locks the existing partial at `path` without waiting; `None` if it is locked, gone or replaced.
pub(super) fn try_lock_partial(path: &Path) -> Result<Option<File>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open ingest", path, e)),
    };
    if flock(&file, Mode::Exclusive, Wait::Try, path)? && still_at(&file, path)? {
        Ok(Some(file))
    } else {
        Ok(None)
    }
}

/// Whether `file` is (still) the file at `path`.
fn still_at(file: &File, path: &Path) -> Result<bool> {
    let held = file
        .metadata()
        .map_err(|e| Error::io("stat ingest", path, e))?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("stat ingest", path, e)),
    }
}

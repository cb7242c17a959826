//! The tar stream an archive is written as: deterministic headers, exact entry sizes, and
//! no end-of-archive blocks after a failure.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use crate::{Error, ErrorKind, Result};

/// A tar being written with fixed metadata (mode 0644/0755, owner 0, mtime 0), so the same
/// images always give the same bytes (ARC-2). A failed archive is left unfinished.
pub(super) struct TarOut<W: Write> {
    builder: Option<tar::Builder<Guard<W>>>,
    poisoned: Rc<Cell<bool>>,
}

/// Refuses every write once poisoned, so that dropping a failed tar builder cannot append
/// the end-of-archive blocks.
struct Guard<W: Write> {
    inner: W,
    poisoned: Rc<Cell<bool>>,
}

impl<W: Write> Write for Guard<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned.get() {
            return Err(io::Error::other("archive abandoned"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned.get() {
            return Ok(());
        }
        self.inner.flush()
    }
}

impl<W: Write> TarOut<W> {
    pub(super) fn new(out: W) -> Self {
        let poisoned = Rc::new(Cell::new(false));
        let mut builder = tar::Builder::new(Guard {
            inner: out,
            poisoned: poisoned.clone(),
        });
        builder.mode(tar::HeaderMode::Deterministic);
        TarOut {
            builder: Some(builder),
            poisoned,
        }
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// Appends a file whose bytes are in memory.
    pub(super) fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.stream(path, bytes.len() as u64, bytes)
    }

    /// Appends a file of `size` bytes read from `data`; fails if `data` has another length.
    pub(super) fn stream(&mut self, path: &str, size: u64, data: impl Read) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, size);
        let builder = self.builder.as_mut().expect("tar open");
        let mut counted = Exact {
            inner: data,
            left: size,
        };
        builder
            .append_data(&mut header, path, &mut counted)
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                    Error::new(ErrorKind::Corrupt, "", format!("{path}: {e}"))
                }
                _ => write_error(e),
            })?;
        // The tar takes exactly `size` bytes; the reader must end there too (it verifies
        // its digest at its end).
        let mut probe = [0u8; 1];
        match counted.inner.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::new(
                ErrorKind::Corrupt,
                "",
                format!("{path}: more than the {size} bytes expected"),
            )),
            Err(e) => Err(Error::new(ErrorKind::Corrupt, "", format!("{path}: {e}"))),
        }
    }

    /// Appends a directory entry.
    pub(super) fn dir(&mut self, path: &str) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, 0);
        self.builder
            .as_mut()
            .expect("tar open")
            .append_data(&mut header, format!("{path}/"), io::empty())
            .map_err(write_error)
    }

    /// Writes the end-of-archive blocks and returns the writer.
    pub(super) fn finish(mut self) -> io::Result<W> {
        let builder = self.builder.take().expect("tar open");
        Ok(builder.into_inner()?.inner)
    }

    /// Leaves the archive unfinished.
    pub(super) fn abandon(mut self) {
        self.poisoned.set(true);
        drop(self.builder.take());
    }
}

/// A reader cut at `left` bytes that fails when its source ends before.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub(super) fn write_error(e: io::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "",
        format!("writing the archive: {e}"),
    )
}

//! Merging a staged layer into the tree of the layers below it (UNPACK-70…73): what the
//! layer recorded is done there, then its files are moved in by rename.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::super::path;
use super::super::root::{cstring, cvt, file_type, fstat, is, list, lstat_at, open_at};
use super::{io_fail, owned_ids, Applier, Deferred, DirMeta, Fail, StagedRecord, Step};

/// What the staged layer says about its directories: which had entries (by inode), and
/// where it replaced what lower layers have (by path).
struct Marks<'a> {
    explicit: &'a HashSet<(u64, u64)>,
    replaced: &'a HashSet<Vec<u8>>,
}

impl Applier {
    /// Merges the layer staged in `staged` (a directory on the same file system), which
    /// left `record`, into this applier's root, with the result applying the layer's stream
    /// there would have had (UNPACK-71). `staged` is emptied of what moved. An error names
    /// the path it happened at.
    pub fn merge(
        mut self,
        staged: BorrowedFd<'_>,
        record: StagedRecord,
    ) -> Result<(), (Vec<u8>, Fail)> {
        let StagedRecord { deferred, paths } = record;
        self.paths = paths;
        let Deferred {
            steps,
            explicit,
            replaced,
            ..
        } = deferred;
        let marks = Marks {
            explicit: &explicit,
            replaced: &replaced,
        };
        // What the layer's whiteouts, opaque markers and links to lower files do to the
        // layers below, in stream order, before any of its files replace theirs.
        for step in steps.into_iter().flatten() {
            match step {
                Step::Whiteout {
                    at,
                    literal,
                    physical,
                } => self
                    .hide(&literal, &physical, at)
                    .map_err(|f| (literal, f))?,
                Step::Opaque {
                    at,
                    literal,
                    physical,
                } => self
                    .hide_below(&literal, &physical, at)
                    .map_err(|f| (literal, f))?,
                Step::Link { path, target } => {
                    let (parent, name) = path::split(&path);
                    let name = cstring(name).map_err(|e| (path.clone(), io_fail("name")(e)))?;
                    self.link(&path, parent, &name, &target)
                        .map_err(|f| (path.clone(), f))?;
                }
            }
        }
        // Before its children move out, which changes its times.
        let root = fstat(staged).map_err(|e| (Vec::new(), io_fail("stat the staged layer")(e)))?;
        if !self.privileged {
            // Its children move out: the mode the layer gave it may not let its owner.
            cvt(unsafe { libc::fchmod(staged.as_raw_fd(), 0o700) })
                .map_err(|e| (Vec::new(), io_fail("chmod the staged layer")(e)))?;
        }
        self.move_children(staged, &mut Vec::new(), &marks)?;
        if explicit.contains(&(root.st_dev, root.st_ino)) {
            self.take_dir_meta(staged, &root, b"")
                .map_err(|f| (Vec::new(), f))?;
        }
        self.finish().map(drop).map_err(|f| (Vec::new(), f))
    }

    /// Moves the children of staged directory `from` into the root's directory at
    /// root-relative `at`: new ones whole, directories that exist there child by child.
    fn move_children(
        &mut self,
        from: BorrowedFd<'_>,
        at: &mut Vec<u8>,
        marks: &Marks<'_>,
    ) -> Result<(), (Vec<u8>, Fail)> {
        let mut children = list(from)
            .map_err(|e| (at.clone(), io_fail(format!("list staged {}", shown(at)))(e)))?;
        // Stream order is lost: what replaces a path first, then directories with entries,
        // then those the layer only wrote into, which may reach through what the others
        // made (a symlink or directory of this layer).
        let rank = |name: &CStr, is_dir: bool| -> u8 {
            if !is_dir {
                return 0;
            }
            match lstat_at(from, name) {
                Ok(Some(st)) if marks.explicit.contains(&(st.st_dev, st.st_ino)) => 1,
                _ => 2,
            }
        };
        children.sort_by_cached_key(|(name, is_dir)| rank(name, *is_dir));
        for (name, is_dir) in children {
            let len = at.len();
            if !at.is_empty() {
                at.push(b'/');
            }
            at.extend_from_slice(name.to_bytes());
            let moved = if is_dir {
                self.move_dir(from, &name, at, marks)
            } else {
                self.move_file(from, &name, at).map_err(|f| (at.clone(), f))
            };
            moved?;
            at.truncate(len);
        }
        Ok(())
    }

    /// Moves staged directory `from/name` to root-relative `at`.
    fn move_dir(
        &mut self,
        from: BorrowedFd<'_>,
        name: &CStr,
        at: &[u8],
        marks: &Marks<'_>,
    ) -> Result<(), (Vec<u8>, Fail)> {
        let here = |f| (at.to_vec(), f);
        let staged = open_at(from, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| here(io_fail(format!("open staged {}", shown(at)))(e)))?;
        let st = fstat(staged.as_fd())
            .map_err(|e| here(io_fail(format!("stat staged {}", shown(at)))(e)))?;
        let has_entry = marks.explicit.contains(&(st.st_dev, st.st_ino));
        let parent = self.parent(path::split(at).0).map_err(here)?;
        let there = lstat_at(parent.as_fd(), name)
            .map_err(|e| here(io_fail(format!("stat {}", shown(at)))(e)))?
            .map(|st| file_type(&st));
        match there {
            None => {
                return self
                    .rename_dir(from, name, &staged, &st, parent.as_fd(), at)
                    .map_err(here)
            }
            // A directory entry replaces what is not a directory, and a directory the
            // layer replaced by something else first (UNPACK-23).
            Some(kind) if has_entry && (kind != libc::S_IFDIR || marks.replaced.contains(at)) => {
                self.replace(parent.as_fd(), name).map_err(here)?;
                return self
                    .rename_dir(from, name, &staged, &st, parent.as_fd(), at)
                    .map_err(here);
            }
            // Without an entry the layer only wrote below `at`, through whatever is there:
            // a directory, or a symlink resolved inside the root (UNPACK-20, UNPACK-22).
            Some(_) => {}
        }
        if !self.privileged {
            // Its children move out: the mode the layer gave it may not let its owner.
            cvt(unsafe { libc::fchmod(staged.as_raw_fd(), 0o700) })
                .map_err(|e| here(io_fail(format!("chmod staged {}", shown(at)))(e)))?;
        }
        self.move_children(staged.as_fd(), &mut at.to_vec(), marks)?;
        if has_entry {
            self.take_dir_meta(staged.as_fd(), &st, at).map_err(here)?;
        }
        Ok(())
    }

    /// Moves staged directory `from/name` (open as `staged`, with `st`) whole to `at`. A
    /// directory moves only if its owner may write it, so one the layer made read-only is
    /// made writable for the move when ferry is not root.
    fn rename_dir(
        &mut self,
        from: BorrowedFd<'_>,
        name: &CStr,
        staged: &OwnedFd,
        st: &libc::stat,
        to: BorrowedFd<'_>,
        at: &[u8],
    ) -> Result<(), Fail> {
        // What was pending for a directory that was here went with it.
        self.forget_dirs_under(at);
        let mode = st.st_mode & 0o7777;
        let unlock = !self.privileged && mode & 0o200 == 0;
        if unlock {
            cvt(unsafe { libc::fchmod(staged.as_raw_fd(), mode | 0o200) })
                .map_err(io_fail(format!("chmod staged {}", shown(at))))?;
        }
        self.rename(from, name, to, at)?;
        if unlock {
            cvt(unsafe { libc::fchmod(staged.as_raw_fd(), mode) })
                .map_err(io_fail(format!("chmod {}", shown(at))))?;
        }
        Ok(())
    }

    /// Moves staged non-directory `from/name` to root-relative `at`, replacing what is
    /// there.
    fn move_file(&mut self, from: BorrowedFd<'_>, name: &CStr, at: &[u8]) -> Result<(), Fail> {
        self.forget_dirs_under(at);
        let parent = self.parent(path::split(at).0)?;
        let there = lstat_at(parent.as_fd(), name)
            .map_err(io_fail(format!("stat {}", shown(at))))?
            .map(|st| file_type(&st));
        match there {
            Some(libc::S_IFDIR) => self.replace(parent.as_fd(), name)?,
            Some(libc::S_IFLNK) => self.root.forget(),
            _ => {}
        }
        self.rename(from, name, parent.as_fd(), at)
    }

    fn rename(
        &mut self,
        from: BorrowedFd<'_>,
        name: &CStr,
        to: BorrowedFd<'_>,
        at: &[u8],
    ) -> Result<(), Fail> {
        cvt(unsafe {
            libc::renameat(
                from.as_raw_fd(),
                name.as_ptr(),
                to.as_raw_fd(),
                name.as_ptr(),
            )
        })
        .map(drop)
        .map_err(|e| {
            let op = if is(&e, libc::EXDEV) {
                format!(
                    "move {} into place (the staging directory is on another file system)",
                    shown(at)
                )
            } else {
                format!("move {} into place", shown(at))
            };
            io_fail(op)(e)
        })
    }

    /// A staged directory that had an entry, merged into the existing one at `at`: its
    /// owner and xattrs now, its mode and times when the layer is done (UNPACK-23, 41).
    fn take_dir_meta(
        &mut self,
        staged: BorrowedFd<'_>,
        st: &libc::stat,
        at: &[u8],
    ) -> Result<(), Fail> {
        let what = || format!("directory {}", shown(at));
        let fd = self
            .root
            .resolve(at, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(io_fail(format!("open {}", what())))?;
        if self.privileged {
            owned_ids(
                cvt(unsafe { libc::fchown(fd.as_raw_fd(), st.st_uid, st.st_gid) }),
                at,
                st.st_uid,
                st.st_gid,
            )?;
        }
        copy_xattrs(staged, fd.as_fd()).map_err(io_fail(format!("copy xattrs of {}", what())))?;
        let order = self.record();
        self.dirs.insert(
            at.to_vec(),
            DirMeta {
                mode: Some(st.st_mode & 0o7777),
                atime: (st.st_atime, st.st_atime_nsec as u32),
                mtime: (st.st_mtime, st.st_mtime_nsec as u32),
                order,
            },
        );
        Ok(())
    }
}

/// Copies the xattrs a layer can set (`user.*`, `trusted.*`, `security.capability`:
/// UNPACK-40) from directory `from` to `to`.
fn copy_xattrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> std::io::Result<()> {
    let names = xattr_names(from)?;
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let taken = key.starts_with(b"user.")
            || key.starts_with(b"trusted.")
            || key == b"security.capability";
        if !taken {
            continue;
        }
        let key = CString::new(key).expect("split on NUL");
        let value = xattr_value(from, &key)?;
        cvt(unsafe {
            libc::fsetxattr(
                to.as_raw_fd(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })?;
    }
    Ok(())
}

/// The NUL-separated xattr names of `fd`.
fn xattr_names(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u8>> {
    read_sized(|buf| unsafe {
        libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
    })
}

/// The value of xattr `key` of `fd`.
fn xattr_value(fd: BorrowedFd<'_>, key: &CStr) -> std::io::Result<Vec<u8>> {
    read_sized(|buf| unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// Calls a list/get-xattr style `call` with a buffer big enough for its answer.
fn read_sized(call: impl Fn(&mut [u8]) -> libc::ssize_t) -> std::io::Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if !is(&e, libc::ERANGE) {
            return Err(e);
        }
        // It grew between the calls: ask again.
    }
}

/// A root-relative path for messages.
fn shown(at: &[u8]) -> String {
    format!(
        "{:?}",
        String::from_utf8_lossy(if at.is_empty() { b"/" } else { at })
    )
}

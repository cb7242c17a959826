//! File-system access confined to one directory: every path is opened with `openat2`
//! and `RESOLVE_IN_ROOT`, every change is made with an `*at` call on the final
//! component, which is never followed (UNPACK-20…23).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use super::path;

/// Most symlinks followed while creating the directories behind a dangling one.
const MAX_SYMLINKS: u32 = 40;
/// Most steps creating one path's directories (a path has at most 2048 components).
const MAX_STEPS: u32 = 16 * 1024;

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Turns a `-1` return into the OS error.
pub(super) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether `e` is the OS error `code`.
pub(super) fn is(e: &io::Error, code: libc::c_int) -> bool {
    e.raw_os_error() == Some(code)
}

/// A C string of a path component or name.
pub(super) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in name"))
}

/// `openat(2)` relative to `dir`, never following a symlink in the final component.
pub(super) fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(2)` without following a final symlink; `None` if nothing is there.
pub(super) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    match cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }) {
        // SAFETY: fstatat succeeded and filled the struct.
        Ok(_) => Ok(Some(unsafe { st.assume_init() })),
        Err(e) if is(&e, libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat(2)` of an open file or directory.
pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// The file-type bits of a `stat`.
pub(super) fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// Removes `dir/name` whatever it is, a directory with all its content included; never
/// follows symlinks. Nothing there is not an error. Iterative: trees can be deep.
pub(super) fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
        Ok(_) => return Ok(()),
        Err(e) if is(&e, libc::ENOENT) => return Ok(()),
        Err(e) if is(&e, libc::EISDIR) => {}
        Err(e) => return Err(e),
    }
    // Open directories, each with the children left to remove; a child marked `true`
    // was emptied and only needs its rmdir.
    let top = open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let children = pending(top.as_fd())?;
    let mut stack: Vec<(OwnedFd, Vec<(CString, bool)>)> = vec![(top, children)];
    while let Some((fd, children)) = stack.last_mut() {
        let Some((child, emptied)) = children.pop() else {
            stack.pop();
            continue;
        };
        let at = fd.as_raw_fd();
        if emptied {
            cvt(unsafe { libc::unlinkat(at, child.as_ptr(), libc::AT_REMOVEDIR) })?;
            continue;
        }
        match cvt(unsafe { libc::unlinkat(at, child.as_ptr(), 0) }) {
            Ok(_) => {}
            Err(e) if is(&e, libc::ENOENT) => {}
            Err(e) if is(&e, libc::EISDIR) => {
                let sub = open_at(fd.as_fd(), &child, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                let grandchildren = pending(sub.as_fd())?;
                children.push((child, true));
                stack.push((sub, grandchildren));
            }
            Err(e) => return Err(e),
        }
    }
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
}

/// The children of `dir`, none removed yet.
fn pending(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, bool)>> {
    Ok(list(dir)?.into_iter().map(|(n, _)| (n, false)).collect())
}

/// The names in directory `dir` (without `.` and `..`), with whether each is a directory.
pub(super) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, bool)>> {
    let d = nix::dir::Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in d.into_iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(t) => t == nix::dir::Type::Directory,
            None => lstat_at(dir, name)?.is_some_and(|st| file_type(&st) == libc::S_IFDIR),
        };
        out.push((name.to_owned(), is_dir));
    }
    Ok(out)
}

/// A directory that stands for `/` of an image while it is being unpacked.
pub(super) struct Root {
    fd: OwnedFd,
    /// The directory last opened through [`Root::dir`], by its root-relative path.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
}

impl Root {
    /// Opens `dir`, which must exist.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let c = cstring(dir.as_os_str().as_bytes())?;
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        Ok(Root {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            cache: None,
        })
    }

    /// Opens the root-relative `path` as if the root were `/`: symlinks on the way,
    /// absolute or with `..`, stay inside (`RESOLVE_IN_ROOT`); magic links are refused.
    pub fn resolve(&self, path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
        let c = cstring(if path.is_empty() { b"." } else { path })?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        let mut tries = 0;
        loop {
            // SAFETY: `how` is a valid open_how of the size passed; `c` is NUL-terminated.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if r >= 0 {
                // SAFETY: openat2 returned a new descriptor that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) });
            }
            let e = io::Error::last_os_error();
            // EAGAIN: a concurrent rename or mount raced the lookup; try again.
            if is(&e, libc::EAGAIN) && tries < 16 {
                tries += 1;
                continue;
            }
            return Err(e);
        }
    }

    /// The directory at root-relative `path` (an `O_PATH` descriptor), creating missing
    /// directories with mode 0755, also behind dangling symlinks (UNPACK-22).
    /// `before_mkdir` is told of each directory (root-relative path, descriptor) just
    /// before a directory is made in it.
    pub fn dir(&mut self, path: &[u8], before_mkdir: BeforeMkdir<'_>) -> io::Result<Rc<OwnedFd>> {
        if let Some((key, fd)) = &self.cache {
            if key == path {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(self.ensure(path, before_mkdir)?);
        self.cache = Some((path.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Forgets cached directories: call after removing or replacing a directory or a
    /// symlink, which can change what a path resolves to.
    pub fn forget(&mut self) {
        self.cache = None;
    }

    /// Opens directory `path`, creating what is missing, following at most
    /// [`MAX_SYMLINKS`] dangling symlinks. Iterative: paths can be 2048 components deep.
    fn ensure(&self, path: &[u8], before_mkdir: BeforeMkdir<'_>) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let mut symlinks = 0;
        // Directories to make exist, the one needed first last.
        let mut todo: Vec<Vec<u8>> = vec![path.to_vec()];
        for _ in 0..MAX_STEPS {
            let Some(p) = todo.last() else { break };
            match self.resolve(p, flags) {
                Ok(fd) => {
                    todo.pop();
                    if todo.is_empty() {
                        return Ok(fd);
                    }
                    continue;
                }
                Err(e) if is(&e, libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let (parent, name) = path::split(p);
            let parent_fd = match self.resolve(parent, flags) {
                Ok(fd) => fd,
                Err(e) if is(&e, libc::ENOENT) => {
                    todo.push(parent.to_vec());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let c = cstring(name)?;
            before_mkdir(parent, parent_fd.as_fd())?;
            match cvt(unsafe { libc::mkdirat(parent_fd.as_raw_fd(), c.as_ptr(), 0o755) }) {
                Ok(_) => {}
                Err(e) if is(&e, libc::EEXIST) => {
                    // Something is there yet the path did not resolve: a dangling
                    // symlink. Create what it points to, resolved inside the root.
                    let Some(target) = read_link(parent_fd.as_fd(), &c)? else {
                        return self.resolve(p, flags);
                    };
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = path::lexical_target(parent, &target);
                    todo.push(target);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ELOOP))
    }
}

impl Root {
    /// `path` with the symlinks inside this root along it followed (as
    /// [`Root::resolve`] would) as far as they lead to something that exists: from the first
    /// missing component on, the rest is kept as it is. Paths a staged layer leaves for the
    /// merge are made physical with this, so they need not pass through the layer's own
    /// symlinks in the tree below (UNPACK-72).
    pub fn physical(&self, path: &[u8]) -> io::Result<Vec<u8>> {
        let mut done: Vec<u8> = Vec::new();
        let mut todo: Vec<Vec<u8>> = components(path);
        let mut symlinks = 0;
        while let Some(component) = todo.pop() {
            let dir = self.resolve(&done, libc::O_PATH | libc::O_DIRECTORY)?;
            let c = cstring(&component)?;
            match lstat_at(dir.as_fd(), &c)?.map(|st| file_type(&st)) {
                Some(libc::S_IFLNK) => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = read_link(dir.as_fd(), &c)?.unwrap_or_default();
                    let resolved = path::lexical_target(&done, &target);
                    todo.extend(components(&resolved));
                    done.clear();
                }
                Some(libc::S_IFDIR) => done = path::join(&done, &component),
                // Missing, or not a directory: the rest is looked up where it is used.
                _ => {
                    done = path::join(&done, &component);
                    while let Some(rest) = todo.pop() {
                        done = path::join(&done, &rest);
                    }
                }
            }
        }
        Ok(done)
    }
}

/// Told of a directory (root-relative path, descriptor) before [`Root::dir`] makes a
/// directory in it.
pub(super) type BeforeMkdir<'a> = &'a mut dyn FnMut(&[u8], BorrowedFd<'_>) -> io::Result<()>;

/// The components of normalized `path`, last first (a stack).
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

/// The target of symlink `dir/name`, or `None` if it is not a symlink.
fn read_link(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if is(&e, libc::EINVAL) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

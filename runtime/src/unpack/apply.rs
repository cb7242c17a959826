//! Applies tar entries to a [`Root`]: creation, replacement, whiteouts, metadata.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use super::path::{self, Target};
use super::root::{cstring, cvt, file_type, fstat, is, list, lstat_at, open_at, remove_all, Root};
use super::tar::{Entry, Kind, TarReader};
use super::{Fail, Whiteouts};

mod merge;

/// Largest uid or gid accepted: `2^32-1` is `(uid_t)-1`, "no change" to chown (UNPACK-15).
const MAX_ID: u64 = u32::MAX as u64 - 1;

/// Mode and times of a directory, applied once the layer's content is in (UNPACK-41):
/// those of its entry, or, for a directory the layer changes without an entry for it,
/// the times it had before.
#[derive(Clone, Copy)]
struct DirMeta {
    mode: Option<u32>,
    atime: (i64, u32),
    mtime: (i64, u32),
    /// When these were set or remembered, counted up in the layer (the applier's
    /// `recorded`): the later entry and the earlier memory win.
    order: usize,
}

/// Paths this layer wrote, with their ancestors, as 128-bit keyed hashes, each with the
/// position of the first entry that wrote it: whiteouts and opaque markers must spare them
/// (UNPACK-31).
struct LayerPaths {
    keys: (RandomState, RandomState),
    first: HashMap<u128, usize>,
}

impl LayerPaths {
    fn new() -> Self {
        LayerPaths {
            keys: (RandomState::new(), RandomState::new()),
            first: HashMap::new(),
        }
    }

    fn key(&self, path: &[u8]) -> u128 {
        u128::from(self.keys.0.hash_one(path)) << 64 | u128::from(self.keys.1.hash_one(path))
    }

    /// Whether an entry before position `before` wrote `path` or something below it.
    fn written_before(&self, path: &[u8], before: usize) -> bool {
        path.is_empty()
            || self
                .first
                .get(&self.key(path))
                .is_some_and(|&at| at < before)
    }

    /// Records `path` and its ancestors as written by the entry at position `at` (stopping
    /// at the first ancestor already known).
    fn insert(&mut self, mut path: &[u8], at: usize) {
        while !path.is_empty() {
            let key = self.key(path);
            if self.first.contains_key(&key) {
                break;
            }
            self.first.insert(key, at);
            path = path::split(path).0;
        }
    }
}

/// Every entry so far: whiteouts of an applied layer see all it wrote before them.
const NOW: usize = usize::MAX;

/// Applies the entries of one layer.
pub(super) struct Applier {
    root: Root,
    /// The layer, for log messages.
    layer: String,
    whiteouts: Whiteouts,
    privileged: bool,
    umask: u32,
    paths: LayerPaths,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// The position of the entry being applied in the layer, from 1.
    position: usize,
    /// How many directory metadata records were made (their `order`).
    recorded: usize,
    /// Regular files written below `/.wh..wh.plnk/`, which hard links may name; the
    /// store is removed when the layer is done (UNPACK-13).
    link_store: HashSet<Vec<u8>>,
    /// Staging a layer apart from the layers below it: what it leaves for the merge.
    deferred: Option<Deferred>,
}

/// What a layer staged on its own (UNPACK-70) leaves to be done where the layers below it
/// are: its whiteouts, opaque markers and hard links to files it does not have, in stream
/// order, and which of its directories had entries.
pub(super) struct Deferred {
    /// The steps in stream order; a link a later entry replaced is `None`.
    steps: Vec<Option<Step>>,
    /// The links among `steps`, by the path the layer names them with.
    links: HashMap<Vec<u8>, usize>,
    /// The staged directories that had an entry, by (device, inode).
    explicit: HashSet<(u64, u64)>,
    /// Where a directory entry replaced a non-directory of the layer: what lower layers
    /// have there was replaced too, so it is not merged into (UNPACK-23).
    replaced: HashSet<Vec<u8>>,
}

/// One thing a staged layer leaves for the merge. `at` is the entry's position in the
/// layer; `literal` the path as the layer names it (what UNPACK-31 compares); the other
/// paths are made physical through the layer's own symlinks (UNPACK-72).
enum Step {
    /// `.wh.NAME`: hide what lower layers have at `physical`.
    Whiteout {
        at: usize,
        literal: Vec<u8>,
        physical: Vec<u8>,
    },
    /// `.wh..wh..opq`: hide what lower layers have below `physical`.
    Opaque {
        at: usize,
        literal: Vec<u8>,
        physical: Vec<u8>,
    },
    /// A hard link at `path` to `target`, a file of a lower layer.
    Link { path: Vec<u8>, target: Vec<u8> },
}

impl Deferred {
    fn new() -> Self {
        Deferred {
            steps: Vec::new(),
            links: HashMap::new(),
            explicit: HashSet::new(),
            replaced: HashSet::new(),
        }
    }
}

/// A staged layer's record and the paths it wrote, handed from staging to the merge.
pub(super) struct StagedRecord {
    pub(super) deferred: Deferred,
    paths: LayerPaths,
}

/// Remembers the times directory `dir` (open as `fd`) has before it changes, unless they
/// are known already; `recorded` counts what the layer recorded.
fn remember(
    dirs: &mut HashMap<Vec<u8>, DirMeta>,
    dir: &[u8],
    fd: BorrowedFd<'_>,
    recorded: &mut usize,
) -> io::Result<()> {
    if !dirs.contains_key(dir) {
        let st = fstat(fd)?;
        *recorded += 1;
        let meta = DirMeta {
            mode: None,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            order: *recorded,
        };
        dirs.insert(dir.to_vec(), meta);
    }
    Ok(())
}

/// A directory for messages.
fn shown_dir(path: &[u8]) -> String {
    format!("directory {:?}", String::from_utf8_lossy(path))
}

fn io_fail(op: impl Into<String>) -> impl FnOnce(io::Error) -> Fail {
    let op = op.into();
    move |source| Fail::Io { op, source }
}

/// The result of chowning `e`'s file. In a user namespace an owner outside its id map
/// (EINVAL) leaves the file owned by the namespace's root, with a warning (RUN-47).
fn owned<T>(chown: io::Result<T>, e: &Entry) -> Result<(), Fail> {
    owned_ids(chown, &e.path, e.uid, e.gid)
}

/// [`owned`] for the file at `path` given owner `uid:gid`.
fn owned_ids<T>(
    chown: io::Result<T>,
    path: &[u8],
    uid: impl Into<u64>,
    gid: impl Into<u64>,
) -> Result<(), Fail> {
    match chown {
        Ok(_) => Ok(()),
        Err(err) if is(&err, libc::EINVAL) && crate::userns::in_user_namespace() => {
            tracing::warn!(entry = %String::from_utf8_lossy(path), uid = uid.into(), gid = gid.into(), "owner outside the user namespace's id map: the file stays root's");
            Ok(())
        }
        Err(err) => Err(io_fail("chown")(err)),
    }
}

fn reject<T>(why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Reject(why.into()))
}

impl Applier {
    /// An applier writing `layer` (its name in log messages) into `root`.
    pub fn new(root: Root, layer: String, whiteouts: Whiteouts) -> Self {
        Applier {
            root,
            layer,
            whiteouts,
            privileged: unsafe { libc::geteuid() } == 0,
            umask: process_umask(),
            paths: LayerPaths::new(),
            dirs: HashMap::new(),
            position: 0,
            recorded: 0,
            link_store: HashSet::new(),
            deferred: None,
        }
    }

    /// An applier staging `layer` into the empty `root`, apart from the layers below it:
    /// whiteouts, opaque markers and hard links to files the layer lacks are recorded for
    /// [`Applier::merge`] instead of applied (UNPACK-70).
    pub fn staging(root: Root, layer: String) -> Self {
        Applier {
            deferred: Some(Deferred::new()),
            ..Applier::new(root, layer, Whiteouts::Apply)
        }
    }

    /// Applies one entry, reading its data from `tar`.
    pub fn apply<R: BufRead>(&mut self, e: &Entry, tar: &mut TarReader<R>) -> Result<(), Fail> {
        self.position += 1;
        if e.kind == Kind::GlobalPax {
            tracing::debug!("ignoring a PAX global header");
            return Ok(());
        }
        for (what, id) in [("uid", e.uid), ("gid", e.gid)] {
            if id > MAX_ID {
                return reject(format!(
                    "{what} {id} is out of range (largest accepted is {MAX_ID})"
                ));
            }
        }
        let full = path::normalize(&e.path).map_err(Fail::Reject)?;
        match path::classify(&full).map_err(Fail::Reject)? {
            Target::AufsMeta => {
                tracing::debug!(layer = %self.layer, entry = %String::from_utf8_lossy(&e.path), "ignoring aufs metadata");
                Ok(())
            }
            Target::LinkStore { parent, name } if e.kind == Kind::File => {
                // The root changes (the store appears, then goes): keep its times.
                self.parent(b"")?;
                let c = cstring(name).map_err(io_fail("name"))?;
                self.file(parent, &c, e, tar)?;
                self.link_store.insert(full);
                Ok(())
            }
            Target::LinkStore { .. } => {
                tracing::debug!(layer = %self.layer, entry = %String::from_utf8_lossy(&e.path), "ignoring aufs metadata");
                Ok(())
            }
            Target::Whiteout { parent, name } => self.whiteout(parent, name),
            Target::Opaque { parent } => self.opaque(parent),
            Target::Path { parent, name } => {
                if name == b"." && e.kind != Kind::Dir {
                    return reject("only a directory can name the root");
                }
                if e.kind == Kind::Hardlink && path::normalize(&e.link).as_deref() == Ok(&full) {
                    return Ok(()); // a link to itself changes nothing
                }
                if e.kind != Kind::Dir {
                    self.dirs.remove(full.as_slice());
                }
                if let Some(deferred) = &mut self.deferred {
                    // A later entry replaces a hard link this layer left for the merge.
                    if let Some(i) = deferred.links.remove(full.as_slice()) {
                        deferred.steps[i] = None;
                    }
                }
                self.paths.insert(&full, self.position);
                let c = cstring(name).map_err(io_fail("name"))?;
                match e.kind {
                    Kind::Dir => self.dir(&full, parent, &c, e),
                    Kind::File => self.file(parent, &c, e, tar),
                    Kind::Symlink => self.symlink(parent, &c, e),
                    Kind::Hardlink => self.hardlink(&full, parent, &c, e),
                    Kind::Char | Kind::Block | Kind::Fifo => self.node(parent, &c, e),
                    Kind::GlobalPax => Ok(()),
                }
            }
        }
    }

    /// Removes aufs' hard-link store and applies modes and times of this layer's
    /// directories; call after the last entry. A staging applier returns what it left for
    /// the merge.
    pub fn finish(mut self) -> Result<Option<StagedRecord>, Fail> {
        if !self.link_store.is_empty() {
            let root = self
                .root
                .resolve(b"", libc::O_PATH | libc::O_DIRECTORY)
                .map_err(io_fail("open the root"))?;
            let store = cstring(path::LINK_STORE).map_err(io_fail("name"))?;
            remove_all(root.as_fd(), &store)
                .map_err(io_fail("remove the aufs hard-link store .wh..wh.plnk"))?;
            self.root.forget();
        }
        // One directory can be known by several paths (through symlinks): it gets what its
        // last entry said, else the times remembered first.
        let mut chosen: HashMap<(u64, u64), (Vec<u8>, DirMeta)> = HashMap::new();
        for (full, meta) in std::mem::take(&mut self.dirs) {
            let Some(fd) = self.open_dir(&full)? else {
                continue;
            };
            let st = fstat(fd.as_fd()).map_err(io_fail(format!("stat {}", shown_dir(&full))))?;
            let better = |old: &DirMeta| match (meta.mode, old.mode) {
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(_), Some(_)) => meta.order > old.order,
                (None, None) => meta.order < old.order,
            };
            match chosen.entry((st.st_dev, st.st_ino)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((full, meta));
                }
                std::collections::hash_map::Entry::Occupied(mut o) if better(&o.get().1) => {
                    o.insert((full, meta));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
            }
        }
        if let Some(deferred) = &mut self.deferred {
            // The directories that have an entry, as they are once the layer is in: an
            // inode a removed directory had may be another's now.
            deferred.explicit.extend(
                chosen
                    .iter()
                    .filter(|(_, (_, meta))| meta.mode.is_some())
                    .map(|(inode, _)| *inode),
            );
        }
        let mut dirs: Vec<_> = chosen.into_values().collect();
        // Deepest first, so a restrictive parent mode never blocks reaching a child.
        dirs.sort_by_key(|(p, _)| {
            std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count() + usize::from(!p.is_empty()))
        });
        for (full, meta) in dirs {
            let Some(fd) = self.open_dir(&full)? else {
                continue;
            };
            let what = || shown_dir(&full);
            if let Some(mode) = meta.mode {
                cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
                    .map_err(io_fail(format!("chmod {}", what())))?;
            }
            futimens(fd.as_fd(), meta.atime, meta.mtime)
                .map_err(io_fail(format!("set times of {}", what())))?;
        }
        Ok(self.deferred.map(|deferred| StagedRecord {
            deferred,
            paths: self.paths,
        }))
    }

    /// The directory at root-relative `full` (symlinks followed inside the root), for its
    /// pending metadata; `None` when a later entry removed it or put something else there.
    fn open_dir(&self, full: &[u8]) -> Result<Option<OwnedFd>, Fail> {
        match self.root.resolve(full, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if is(&e, libc::ENOENT) || is(&e, libc::ENOTDIR) || is(&e, libc::ELOOP) => {
                Ok(None)
            }
            Err(e) => Err(io_fail(format!("open {}", shown_dir(full)))(e)),
        }
    }

    /// The directory `parent`, to be changed: its times, and those of the directories its
    /// missing parents are made in, are remembered first, to be put back if the layer has
    /// no entry for them (as umoci does).
    fn parent(&mut self, parent: &[u8]) -> Result<Rc<OwnedFd>, Fail> {
        let (dirs, recorded) = (&mut self.dirs, &mut self.recorded);
        let fd = self
            .root
            .dir(parent, &mut |dir, fd| remember(dirs, dir, fd, recorded))
            .map_err(io_fail("open parent directory"))?;
        self.remember_times(parent, fd.as_fd())?;
        Ok(fd)
    }

    fn remember_times(&mut self, dir: &[u8], fd: BorrowedFd<'_>) -> Result<(), Fail> {
        remember(&mut self.dirs, dir, fd, &mut self.recorded)
            .map_err(io_fail("stat parent directory"))
    }

    fn dir(&mut self, full: &[u8], parent: &[u8], name: &CStr, e: &Entry) -> Result<(), Fail> {
        let parent_fd = self.parent(parent)?;
        if name.to_bytes() != b"." {
            loop {
                match cvt(unsafe { libc::mkdirat(parent_fd.as_raw_fd(), name.as_ptr(), 0o700) }) {
                    Ok(_) => break,
                    Err(err) if is(&err, libc::EEXIST) => {
                        let st = lstat_at(parent_fd.as_fd(), name).map_err(io_fail("stat"))?;
                        if st.is_some_and(|st| file_type(&st) == libc::S_IFDIR) {
                            break; // merge into the existing directory
                        }
                        self.replace(parent_fd.as_fd(), name)?;
                        if self.deferred.is_some() {
                            let at = path::join(&self.physical(parent)?, name.to_bytes());
                            self.deferred_mut().replaced.insert(at);
                        }
                    }
                    Err(err) => return Err(io_fail("mkdir")(err)),
                }
            }
        }
        if self.privileged || !e.xattrs.is_empty() {
            let fd = open_at(
                parent_fd.as_fd(),
                name,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .map_err(io_fail("open directory"))?;
            if self.privileged {
                owned(
                    cvt(unsafe { libc::fchown(fd.as_raw_fd(), e.uid as u32, e.gid as u32) }),
                    e,
                )?;
            }
            self.xattrs(XattrTarget::Fd(fd.as_fd()), e)?;
        }
        let order = self.record();
        self.dirs.insert(
            full.to_vec(),
            DirMeta {
                mode: Some(e.mode),
                atime: e.mtime,
                mtime: e.mtime,
                order,
            },
        );
        Ok(())
    }

    fn file<R: BufRead>(
        &mut self,
        parent: &[u8],
        name: &CStr,
        e: &Entry,
        tar: &mut TarReader<R>,
    ) -> Result<(), Fail> {
        let parent_fd = self.parent(parent)?;
        // Create with the final mode when the umask and chown cannot change it.
        let direct = e.mode & 0o7000 == 0 && e.mode & self.umask == 0;
        let create_mode = if direct { e.mode } else { 0o600 };
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let fd = loop {
            match open_at(parent_fd.as_fd(), name, flags, create_mode) {
                Ok(fd) => break fd,
                Err(err) if is(&err, libc::EEXIST) => self.replace(parent_fd.as_fd(), name)?,
                Err(err) => return Err(io_fail("create file")(err)),
            }
        };
        let mut file = File::from(fd);
        loop {
            let chunk = tar.data().map_err(Fail::Tar)?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            file.write_all(chunk).map_err(io_fail("write"))?;
            tar.consume(n);
        }
        if self.privileged {
            owned(
                cvt(unsafe { libc::fchown(file.as_raw_fd(), e.uid as u32, e.gid as u32) }),
                e,
            )?;
        }
        // After chown, which clears setuid and setgid.
        if !direct {
            cvt(unsafe { libc::fchmod(file.as_raw_fd(), e.mode) }).map_err(io_fail("chmod"))?;
        }
        // After chown and writing, which clear security.capability.
        self.xattrs(XattrTarget::Fd(file.as_fd()), e)?;
        futimens(file.as_fd(), e.mtime, e.mtime).map_err(io_fail("set times"))
    }

    fn symlink(&mut self, parent: &[u8], name: &CStr, e: &Entry) -> Result<(), Fail> {
        let parent_fd = self.parent(parent)?;
        let target = cstring(&e.link)
            .map_err(|_| Fail::Reject("symlink target contains a NUL byte".into()))?;
        if e.link.is_empty() {
            return reject("symlink with an empty target");
        }
        loop {
            match cvt(unsafe {
                libc::symlinkat(target.as_ptr(), parent_fd.as_raw_fd(), name.as_ptr())
            }) {
                Ok(_) => break,
                Err(err) if is(&err, libc::EEXIST) => self.replace(parent_fd.as_fd(), name)?,
                Err(err) => return Err(io_fail("symlink")(err)),
            }
        }
        self.node_meta(parent_fd.as_fd(), name, e, false)
    }

    fn hardlink(&mut self, full: &[u8], parent: &[u8], name: &CStr, e: &Entry) -> Result<(), Fail> {
        let target = path::normalize(&e.link)
            .map_err(|why| Fail::Reject(format!("hard link target: {why}")))?;
        if target.is_empty() {
            return reject("hard link to the root directory");
        }
        if target == full {
            return Ok(()); // a link to itself: nothing to change
        }
        if path::in_link_store(&target) && !self.link_store.contains(&target) {
            return reject(format!(
                "hard link to aufs metadata {:?}, which is no regular file of this layer",
                String::from_utf8_lossy(&target)
            ));
        }
        self.link(full, parent, name, &target)
    }

    /// Makes `parent/name` (`full`) a hard link to the normalized `target`; a staging
    /// applier records a link to a target the layer lacks for the merge (UNPACK-70).
    fn link(&mut self, full: &[u8], parent: &[u8], name: &CStr, target: &[u8]) -> Result<(), Fail> {
        let what = format!("hard link to {:?}", String::from_utf8_lossy(target));
        // A link to a link left for the merge names the same file below.
        let below = self.deferred.as_ref().and_then(|d| {
            d.links.get(target).and_then(|&i| match &d.steps[i] {
                Some(Step::Link { target, .. }) => Some(target.clone()),
                _ => None,
            })
        });
        let (tparent, tname) = path::split(target);
        let tname = cstring(tname).map_err(io_fail(what.clone()))?;
        let tparent_fd = match below {
            Some(_) => None,
            None => match self.root.resolve(tparent, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => Some(fd),
                Err(err) if is(&err, libc::ENOENT) && self.deferred.is_some() => None,
                Err(err) => return Err(io_fail(what)(err)),
            },
        };
        let parent_fd = self.parent(parent)?;
        let Some(tparent_fd) = tparent_fd else {
            let below = match below {
                Some(below) => below,
                None => self.physical(target)?,
            };
            return self.defer_link(full, parent, parent_fd.as_fd(), name, below);
        };
        loop {
            let r = unsafe {
                libc::linkat(
                    tparent_fd.as_raw_fd(),
                    tname.as_ptr(),
                    parent_fd.as_raw_fd(),
                    name.as_ptr(),
                    0,
                )
            };
            match cvt(r) {
                Ok(_) => return Ok(()),
                Err(err) if is(&err, libc::EEXIST) => {
                    let existing = lstat_at(parent_fd.as_fd(), name).map_err(io_fail("stat"))?;
                    let source =
                        lstat_at(tparent_fd.as_fd(), &tname).map_err(io_fail(what.clone()))?;
                    if let (Some(a), Some(b)) = (existing, source) {
                        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                            return Ok(()); // already this very file
                        }
                    }
                    self.replace(parent_fd.as_fd(), name)?;
                }
                // Missing here, or a directory made for the layer's entries below it: the
                // tree below decides what the link names.
                Err(err)
                    if (is(&err, libc::ENOENT) || is(&err, libc::EPERM))
                        && self.deferred.is_some() =>
                {
                    let below = self.physical(target)?;
                    return self.defer_link(full, parent, parent_fd.as_fd(), name, below);
                }
                Err(err) => return Err(io_fail(what)(err)),
            }
        }
    }

    /// Records the hard link `full` (in directory `parent`, open as `parent_fd`) to
    /// `target` below this staged layer, clearing what the layer put at `full` before (the
    /// link replaces it, UNPACK-23).
    fn defer_link(
        &mut self,
        full: &[u8],
        parent: &[u8],
        parent_fd: BorrowedFd<'_>,
        name: &CStr,
        target: Vec<u8>,
    ) -> Result<(), Fail> {
        self.replace(parent_fd, name)?;
        let path = path::join(&self.physical(parent)?, name.to_bytes());
        let deferred = self.deferred_mut();
        deferred.links.insert(full.to_vec(), deferred.steps.len());
        deferred.steps.push(Some(Step::Link { path, target }));
        Ok(())
    }

    /// `path` made physical: the symlinks of this root along it followed as far as they
    /// lead (UNPACK-72).
    fn physical(&self, path: &[u8]) -> Result<Vec<u8>, Fail> {
        self.root.physical(path).map_err(io_fail(format!(
            "follow {:?} through the layer's symlinks",
            String::from_utf8_lossy(path)
        )))
    }

    fn node(&mut self, parent: &[u8], name: &CStr, e: &Entry) -> Result<(), Fail> {
        let kind = match e.kind {
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
            _ => libc::S_IFIFO,
        };
        if kind != libc::S_IFIFO && !self.privileged {
            tracing::warn!(entry = %String::from_utf8_lossy(&e.path), "skipping a device node: creating one needs root");
            return Ok(());
        }
        let parent_fd = self.parent(parent)?;
        let dev = libc::makedev(e.dev.0, e.dev.1);
        loop {
            match cvt(unsafe {
                libc::mknodat(parent_fd.as_raw_fd(), name.as_ptr(), kind | 0o600, dev)
            }) {
                Ok(_) => break,
                Err(err) if is(&err, libc::EEXIST) => self.replace(parent_fd.as_fd(), name)?,
                Err(err) if is(&err, libc::EPERM) && kind != libc::S_IFIFO => {
                    tracing::warn!(entry = %String::from_utf8_lossy(&e.path), "skipping a device node: mknod not permitted");
                    return Ok(());
                }
                Err(err) => return Err(io_fail("mknod")(err)),
            }
        }
        self.node_meta(parent_fd.as_fd(), name, e, true)
    }

    /// Owner, mode, xattrs and times of a symlink (`chmod == false`) or a node at
    /// `dir/name`, none of them following a final symlink.
    fn node_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        e: &Entry,
        chmod: bool,
    ) -> Result<(), Fail> {
        if self.privileged {
            let r = unsafe {
                libc::fchownat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    e.uid as u32,
                    e.gid as u32,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            owned(cvt(r), e)?;
        }
        if chmod {
            // A fifo or device is never opened (that could block or touch hardware):
            // chmod it through an O_PATH descriptor's /proc path.
            let fd = open_at(dir, name, libc::O_PATH, 0).map_err(io_fail("open"))?;
            let proc = proc_path(fd.as_fd(), None);
            cvt(unsafe { libc::chmod(proc.as_ptr(), e.mode) }).map_err(io_fail("chmod"))?;
        }
        self.xattrs(XattrTarget::At(dir, name), e)?;
        let times = [timespec(e.mtime), timespec(e.mtime)];
        let r = unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        cvt(r).map(drop).map_err(io_fail("set times"))
    }

    /// Clears `dir/name` for a new entry: a directory goes with its content.
    fn replace(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Fail> {
        let st = lstat_at(dir, name).map_err(io_fail("stat"))?;
        let kind = st.map(|st| file_type(&st));
        remove_all(dir, name).map_err(io_fail("remove the existing entry"))?;
        if matches!(kind, Some(libc::S_IFDIR) | Some(libc::S_IFLNK)) {
            self.root.forget();
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &[u8], name: &[u8]) -> Result<(), Fail> {
        let c = cstring(name).map_err(io_fail("name"))?;
        let literal = path::join(parent, name);
        if self.deferred.is_some() {
            let physical = path::join(&self.physical(parent)?, name);
            let at = self.position;
            self.defer(Step::Whiteout {
                at,
                literal,
                physical,
            });
            return Ok(());
        }
        match self.whiteouts {
            Whiteouts::Apply => {
                let physical = path::join(&self.physical(parent)?, name);
                self.hide(&literal, &physical, NOW)
            }
            Whiteouts::Overlay => {
                self.paths.insert(&literal, self.position);
                let parent_fd = self.parent(parent)?;
                let dev = libc::makedev(0, 0);
                loop {
                    match cvt(unsafe {
                        libc::mknodat(parent_fd.as_raw_fd(), c.as_ptr(), libc::S_IFCHR, dev)
                    }) {
                        Ok(_) => return Ok(()),
                        Err(err) if is(&err, libc::EEXIST) => {
                            self.replace(parent_fd.as_fd(), &c)?
                        }
                        Err(err) => {
                            return Err(io_fail(
                                "create overlay whiteout (char device 0:0, needs root)",
                            )(err))
                        }
                    }
                }
            }
        }
    }

    /// Hides what lower layers have at `physical`, which the layer names `literal`
    /// (UNPACK-30, 31): all of it, or, when an entry before position `before` wrote it or
    /// something below it, only what lower layers put below it.
    fn hide(&mut self, literal: &[u8], physical: &[u8], before: usize) -> Result<(), Fail> {
        let (parent, name) = path::split(physical);
        let c = cstring(name).map_err(io_fail("name"))?;
        let parent_fd = match self.root.resolve(parent, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if is(&e, libc::ENOENT) || is(&e, libc::ENOTDIR) => return Ok(()),
            Err(e) => return Err(io_fail("open parent directory")(e)),
        };
        if self.paths.written_before(literal, before) {
            // Only a directory has lower content below it; a symlink is not followed.
            let dir = match open_at(parent_fd.as_fd(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(e) if is(&e, libc::ENOENT) || is(&e, libc::ENOTDIR) || is(&e, libc::ELOOP) => {
                    return Ok(())
                }
                Err(e) => return Err(io_fail("open whited-out directory")(e)),
            };
            return self.clear_dir(dir.as_fd(), literal, physical, before);
        }
        self.remember_times(parent, parent_fd.as_fd())?;
        remove_all(parent_fd.as_fd(), &c).map_err(io_fail("remove whited-out file"))?;
        self.root.forget();
        self.forget_dirs_under(literal);
        self.forget_dirs_under(physical);
        Ok(())
    }

    /// Removes what lower layers put below directory `physical` (named `literal` by the
    /// layer), sparing what entries before position `before` wrote.
    fn hide_below(&mut self, literal: &[u8], physical: &[u8], before: usize) -> Result<(), Fail> {
        let fd = match self
            .root
            .resolve(physical, libc::O_RDONLY | libc::O_DIRECTORY)
        {
            Ok(fd) => fd,
            Err(e) if is(&e, libc::ENOENT) || is(&e, libc::ENOTDIR) => return Ok(()),
            Err(e) => return Err(io_fail("open opaque directory")(e)),
        };
        self.clear_dir(fd.as_fd(), literal, physical, before)
    }

    /// Empties directory `dir` (at `physical`, named `literal` by the layer) of what lower
    /// layers put there, keeping its times.
    fn clear_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        literal: &[u8],
        physical: &[u8],
        before: usize,
    ) -> Result<(), Fail> {
        // By the path it is at: the layer may name it through a symlink it makes.
        self.remember_times(physical, dir)?;
        self.clear_lower(dir, &mut literal.to_vec(), &mut physical.to_vec(), before)?;
        self.root.forget();
        Ok(())
    }

    /// Adds `step` to what a staging applier leaves for the merge.
    fn defer(&mut self, step: Step) {
        self.deferred_mut().steps.push(Some(step));
    }

    /// The `order` of a directory metadata record made now.
    fn record(&mut self) -> usize {
        self.recorded += 1;
        self.recorded
    }

    /// What a staging applier leaves for the merge.
    fn deferred_mut(&mut self) -> &mut Deferred {
        self.deferred
            .as_mut()
            .expect("only a staging applier defers")
    }

    fn opaque(&mut self, parent: &[u8]) -> Result<(), Fail> {
        self.paths.insert(parent, self.position);
        if self.deferred.is_some() {
            let physical = self.physical(parent)?;
            let at = self.position;
            self.defer(Step::Opaque {
                at,
                literal: parent.to_vec(),
                physical,
            });
            return Ok(());
        }
        match self.whiteouts {
            Whiteouts::Apply => {
                let physical = self.physical(parent)?;
                self.hide_below(parent, &physical, NOW)
            }
            Whiteouts::Overlay => {
                self.parent(parent)?;
                let fd = self
                    .root
                    .resolve(parent, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(io_fail("open opaque directory"))?;
                let xattr = crate::userns::overlay_opaque_xattr();
                let r = unsafe {
                    libc::fsetxattr(fd.as_raw_fd(), xattr.as_ptr(), b"y".as_ptr().cast(), 1, 0)
                };
                cvt(r)
                    .map(drop)
                    .map_err(io_fail(format!("set {}", xattr.to_string_lossy())))
            }
        }
    }

    /// Removes everything under directory `dir` that no entry of this layer before position
    /// `before` wrote. The layer may name `dir` as `literal` or as `physical` (through its
    /// own symlinks): what it wrote by either name stays.
    fn clear_lower(
        &mut self,
        dir: BorrowedFd<'_>,
        literal: &mut Vec<u8>,
        physical: &mut Vec<u8>,
        before: usize,
    ) -> Result<(), Fail> {
        let children = list(dir).map_err(io_fail(format!(
            "list {:?}",
            String::from_utf8_lossy(physical)
        )))?;
        for (name, is_dir) in children {
            let (len, physical_len) = (literal.len(), physical.len());
            for prefix in [&mut *literal, &mut *physical] {
                if !prefix.is_empty() {
                    prefix.push(b'/');
                }
                prefix.extend_from_slice(name.to_bytes());
            }
            let written = self.paths.written_before(literal, before)
                || self.paths.written_before(physical, before);
            if !written {
                remove_all(dir, &name).map_err(io_fail(format!(
                    "remove {:?}",
                    String::from_utf8_lossy(physical)
                )))?;
                self.forget_dirs_under(literal);
                self.forget_dirs_under(physical);
            } else if is_dir {
                let sub = open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(io_fail("open directory"))?;
                self.remember_times(physical, sub.as_fd())?;
                self.clear_lower(sub.as_fd(), literal, physical, before)?;
            }
            literal.truncate(len);
            physical.truncate(physical_len);
        }
        Ok(())
    }

    /// Drops pending directory metadata at or below `path`, which was removed.
    fn forget_dirs_under(&mut self, path: &[u8]) {
        if self.dirs.is_empty() {
            return;
        }
        self.dirs.retain(|p, _| {
            !(p.starts_with(path) && (p.len() == path.len() || p[path.len()] == b'/'))
        });
    }

    fn xattrs(&self, target: XattrTarget<'_>, e: &Entry) -> Result<(), Fail> {
        for (key, value) in &e.xattrs {
            let shown = String::from_utf8_lossy(key);
            let refused =
                if key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.") {
                    // Opaque directories, redirects, metacopy: only ferry sets these (UNPACK-33).
                    Some("it would change what overlayfs shows")
                } else if key.starts_with(b"trusted.") {
                    (!self.privileged).then_some("trusted.* needs root")
                } else if key.starts_with(b"user.") || key == b"security.capability" {
                    None
                } else {
                    Some("its namespace is not taken from layers")
                };
            if let Some(why) = refused {
                tracing::warn!(layer = %self.layer, entry = %String::from_utf8_lossy(&e.path), xattr = %shown, "dropping xattr: {why}");
                continue;
            }
            let c = cstring(key)
                .map_err(|_| Fail::Reject(format!("xattr name {shown:?} contains a NUL byte")))?;
            let r = match target {
                XattrTarget::Fd(fd) => unsafe {
                    libc::fsetxattr(
                        fd.as_raw_fd(),
                        c.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                },
                XattrTarget::At(dir, name) => {
                    let p = proc_path(dir, Some(name));
                    unsafe {
                        libc::lsetxattr(
                            p.as_ptr(),
                            c.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            0,
                        )
                    }
                }
            };
            match cvt(r) {
                Ok(_) => {}
                // The file system or the file type does not take it (user.* on a symlink).
                Err(err) if is(&err, libc::ENOTSUP) || is(&err, libc::EPERM) => {
                    tracing::warn!(entry = %String::from_utf8_lossy(&e.path), xattr = %shown, error = %err, "xattr not applied");
                }
                Err(err) => return Err(io_fail(format!("set xattr {shown}"))(err)),
            }
        }
        Ok(())
    }
}

/// Where to set extended attributes.
#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// `dir/name`, not following a final symlink.
    At(BorrowedFd<'a>, &'a CStr),
}

/// `/proc/self/fd/N[/name]`: a path to what `fd` refers to (or to `name` inside it), for
/// the calls that have no `*at` form.
fn proc_path(fd: BorrowedFd<'_>, name: Option<&CStr>) -> CString {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name.to_bytes());
    }
    CString::new(p).expect("no NUL in a /proc path built from a C string")
}

fn timespec((sec, nsec): (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// Sets access and modification time of an open file.
fn futimens(fd: BorrowedFd<'_>, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// The process umask, read without changing it; 0o022 if /proc does not say.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

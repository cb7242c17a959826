//! Snapshot a directory tree (without following symlinks) and compare two of them:
//! type, mode, owner, size, content hash, link target, device numbers, hard-link groups,
//! xattrs and, optionally, mtimes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What a tree records about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `f` file, `d` directory, `l` symlink, `c`/`b` device, `p` fifo, `s` socket.
    pub kind: char,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size of regular files (0 for others).
    pub size: u64,
    /// sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// Target of a symlink.
    pub link: Option<String>,
    /// Major and minor of a device.
    pub rdev: Option<(u64, u64)>,
    /// All paths sharing this inode (for files with more than one link), sorted.
    pub links: Vec<String>,
    /// Extended attributes by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

/// What [`diff`] compares besides type, mode, owner, content, links and xattrs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Compare mtimes of directories.
    pub dir_mtimes: bool,
    /// Compare mtimes of everything else.
    pub other_mtimes: bool,
    /// Compare the top directory's own metadata.
    pub top: bool,
}

impl Options {
    /// Everything compared.
    pub fn exact() -> Self {
        Options {
            dir_mtimes: true,
            other_mtimes: true,
            top: true,
        }
    }
}

/// Every path under `root` (relative, `.` for `root` itself) with its [`Node`].
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    for paths in inodes.values() {
        if paths.len() > 1 {
            for p in paths {
                out.get_mut(p).unwrap().links = paths.clone();
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    path: &Path,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
) {
    let md = std::fs::symlink_metadata(path).unwrap();
    let rel = match path
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned()
    {
        s if s.is_empty() => ".".to_string(),
        s => s,
    };
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    if kind != 'd' {
        inodes
            .entry((md.dev(), md.ino()))
            .or_default()
            .push(rel.clone());
    }
    out.insert(
        rel,
        Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if kind == 'f' { md.len() } else { 0 },
            sha256: (kind == 'f')
                .then(|| ferry_core::Digest::sha256(&std::fs::read(path).unwrap()).to_string()),
            link: (kind == 'l').then(|| {
                std::fs::read_link(path)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            }),
            rdev: matches!(kind, 'c' | 'b')
                .then(|| (libc::major(md.rdev()) as u64, libc::minor(md.rdev()) as u64)),
            links: Vec::new(),
            xattrs: xattrs(path),
            mtime: (md.mtime(), md.mtime_nsec()),
        },
    );
    if kind == 'd' {
        let mut children: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            walk(root, &child, out, inodes);
        }
    }
}

/// The extended attributes of `path` (not following a symlink).
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if m >= 0 {
            value.truncate(m as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    out
}

/// Differences between two snapshots, one line each; empty when they match.
pub fn diff(
    expected: &BTreeMap<String, Node>,
    actual: &BTreeMap<String, Node>,
    opts: &Options,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in expected {
        let Some(a) = actual.get(path) else {
            out.push(format!("{path}: missing"));
            continue;
        };
        if path == "." && !opts.top {
            continue;
        }
        let mut field = |name: &str, e: String, a: String| {
            if e != a {
                out.push(format!("{path}: {name}: expected {e}, got {a}"));
            }
        };
        field("type", e.kind.to_string(), a.kind.to_string());
        field("mode", format!("{:o}", e.mode), format!("{:o}", a.mode));
        field(
            "owner",
            format!("{}:{}", e.uid, e.gid),
            format!("{}:{}", a.uid, a.gid),
        );
        field("size", e.size.to_string(), a.size.to_string());
        field(
            "content",
            format!("{:?}", e.sha256),
            format!("{:?}", a.sha256),
        );
        field("link", format!("{:?}", e.link), format!("{:?}", a.link));
        field("device", format!("{:?}", e.rdev), format!("{:?}", a.rdev));
        field(
            "hard links",
            format!("{:?}", e.links),
            format!("{:?}", a.links),
        );
        field(
            "xattrs",
            format!("{:?}", e.xattrs),
            format!("{:?}", a.xattrs),
        );
        let times = if e.kind == 'd' {
            opts.dir_mtimes
        } else {
            opts.other_mtimes
        };
        if times {
            field("mtime", format!("{:?}", e.mtime), format!("{:?}", a.mtime));
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        out.push(format!("{path}: unexpected"));
    }
    out
}

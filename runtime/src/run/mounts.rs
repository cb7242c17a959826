//! Mounts asked for on the command line: `-v HOST:CTR[:ro|rw]` bind mounts and
//! `--tmpfs CTR[:OPTIONS]` (specs/runtime.md RUN-31, RUN-32), and the resolution of a
//! container path inside the root filesystem.
//!
//! A container path is resolved with `openat2(RESOLVE_IN_ROOT)` relative to the rootfs, as
//! the image's account files are read (RUN-4): a symlink in the image (`/data -> /etc`)
//! leads to the container's `/etc`, never to the host's. The spec then names the resolved,
//! symlink-free path, so both runtimes mount exactly there.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use ferry_core::oci_spec::runtime::{Mount, MountBuilder};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::{Error, Result};

/// Options every `--tmpfs` mount gets before its own, as Docker gives them.
const TMPFS_DEFAULTS: [&str; 3] = ["nosuid", "nodev", "noexec"];

/// `-v HOST:CTR[:ro|rw]`: a host file or directory bind-mounted into the container (RUN-31).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The host path (absolute).
    pub host: PathBuf,
    /// The container path as given (absolute).
    pub container: String,
    /// Mounted read-only (`:ro`).
    pub read_only: bool,
}

impl Volume {
    /// Parses `HOST:CTR[:ro|rw]`; both paths must be absolute. Whether the host path exists
    /// is checked when the container is created.
    pub fn parse(arg: &str) -> Result<Volume> {
        let bad = |reason: &str| option_error(&format!("-v {arg}"), reason);
        let parts: Vec<&str> = arg.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(bad("expected HOST:CONTAINER[:ro|rw]")),
        };
        if !host.starts_with('/') {
            return Err(bad(
                "the host path must be absolute (named volumes are not supported)",
            ));
        }
        if !container.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => return Err(bad(&format!("unknown mode {other:?} (ro or rw)"))),
        };
        Ok(Volume {
            host: PathBuf::from(host),
            container: container.to_string(),
            read_only,
        })
    }
}

/// `--tmpfs CTR[:OPTIONS]`: an empty tmpfs in the container (RUN-32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    /// The container path as given (absolute).
    pub container: String,
    /// mount(8) options: Docker's defaults (`nosuid,nodev,noexec`) then the given ones.
    pub options: Vec<String>,
}

impl Tmpfs {
    /// Parses `CTR[:OPT,OPT…]`, with options among `size=`, `mode=`, `uid=`, `gid=`,
    /// `nr_inodes=`, `ro`, `rw`, `exec`, `noexec`, `suid`, `nosuid`, `dev`, `nodev`.
    pub fn parse(arg: &str) -> Result<Tmpfs> {
        let bad = |reason: &str| option_error(&format!("--tmpfs {arg}"), reason);
        let (container, given) = arg.split_once(':').unwrap_or((arg, ""));
        if !container.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let mut options: Vec<String> = TMPFS_DEFAULTS.map(String::from).to_vec();
        for option in given.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            match (key, value.is_empty()) {
                ("size" | "mode" | "uid" | "gid" | "nr_inodes", false) => {}
                ("ro" | "rw" | "nosuid" | "nodev" | "noexec", true) => {}
                ("exec" | "suid" | "dev", true) => {
                    options.retain(|o| o.strip_prefix("no") != Some(key));
                    continue;
                }
                _ => return Err(bad(&format!("unsupported tmpfs option {option:?}"))),
            }
            options.push(option.to_string());
        }
        Ok(Tmpfs {
            container: container.to_string(),
            options,
        })
    }
}

/// The OCI mount of a volume whose destination is already resolved inside the rootfs.
///
/// Fails when the host path does not exist.
pub(crate) fn bind_mount(volume: &Volume, destination: &Path) -> Result<Mount> {
    let shown = format!(
        "-v {}:{}{}",
        volume.host.display(),
        volume.container,
        if volume.read_only { ":ro" } else { "" }
    );
    match std::fs::symlink_metadata(&volume.host) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(option_error(
                &shown,
                &format!("host path {} does not exist", volume.host.display()),
            ))
        }
        Err(e) => return Err(option_error(&shown, &e.to_string())),
    }
    let mode = if volume.read_only { "ro" } else { "rw" };
    build_mount(
        destination,
        "bind",
        &volume.host,
        &["rbind", "rprivate", mode],
    )
}

/// The OCI mount of a tmpfs whose destination is already resolved inside the rootfs.
pub(crate) fn tmpfs_mount(tmpfs: &Tmpfs, destination: &Path) -> Result<Mount> {
    let options: Vec<&str> = tmpfs.options.iter().map(String::as_str).collect();
    build_mount(destination, "tmpfs", Path::new("tmpfs"), &options)
}

/// An OCI mount entry.
pub(crate) fn build_mount(
    destination: &Path,
    typ: &str,
    source: &Path,
    options: &[&str],
) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| Error::Spec(e.to_string()))
}

/// Resolves the absolute container path `path` inside `rootfs` (RUN-31): lexically cleaned
/// (`..` stops at `/`), then every existing component followed inside the rootfs with
/// `RESOLVE_IN_ROOT`, symlinks included; components that do not exist yet are appended as
/// they are. The result is absolute, free of symlinks, and never `/` itself.
pub(crate) fn resolve_in_rootfs(rootfs: &Path, path: &str, option: &str) -> Result<PathBuf> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => parts.push(c.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if parts.is_empty() {
        return Err(option_error(option, "cannot mount over the container's /"));
    }
    let root = std::fs::File::open(rootfs).map_err(|e| Error::Io {
        op: "open rootfs",
        path: rootfs.to_path_buf(),
        source: e,
    })?;
    let real_root = std::fs::canonicalize(rootfs).map_err(|e| Error::Io {
        op: "resolve rootfs",
        path: rootfs.to_path_buf(),
        source: e,
    })?;
    // The longest existing prefix, resolved; the rest does not exist yet.
    let mut resolved = PathBuf::from("/");
    let mut existing = 0;
    for n in 1..=parts.len() {
        let prefix = parts[..n].join("/");
        match open_in_root(&root, &prefix, OFlag::O_PATH) {
            Ok(Some(fd)) => {
                let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let real = std::fs::read_link(&link).map_err(|e| Error::Io {
                    op: "resolve in rootfs",
                    path: Path::new("/").join(&prefix),
                    source: e,
                })?;
                let inside = real.strip_prefix(&real_root).map_err(|_| {
                    option_error(option, "the path resolves outside the container's rootfs")
                })?;
                resolved = Path::new("/").join(inside);
                existing = n;
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Error::Io {
                    op: "resolve in rootfs",
                    path: Path::new("/").join(&prefix),
                    source: e,
                })
            }
        }
    }
    for part in &parts[existing..] {
        resolved.push(part);
    }
    if resolved == Path::new("/") {
        return Err(option_error(option, "cannot mount over the container's /"));
    }
    Ok(resolved)
}

/// Opens `path` relative to the directory `root` as if `root` were `/` (absolute symlinks
/// and `..` stay inside; magic links are refused); `None` if it does not exist. `flags`
/// get `O_CLOEXEC` added (openat2 refuses most other flags beside `O_PATH`).
pub(crate) fn open_in_root(
    root: &std::fs::File,
    path: &str,
    flags: OFlag,
) -> io::Result<Option<OwnedFd>> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root.as_raw_fd(), path, how) {
        // SAFETY: openat2 just returned this descriptor and nothing else owns it.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A detached copy of the mount tree at host path `source` (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`), read-only throughout if asked (`mount_setattr`), for the builtin runtime
/// to attach inside the container with `move_mount` after `pivot_root` (RUN-31).
pub(crate) fn clone_tree(source: &Path, read_only: bool) -> Result<OwnedFd> {
    let io_err = |op, e: Errno| Error::Io {
        op,
        path: source.to_path_buf(),
        source: e.into(),
    };
    let path = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Spec(format!("{} contains a NUL byte", source.display())))?;
    // SAFETY: open_tree(2) on a NUL-terminated path; the result is a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io_err("open_tree", Errno::last()));
    }
    // SAFETY: open_tree just returned this descriptor and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if read_only {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: mount_setattr(2) reads `attr` (of the size passed) on the tree's descriptor.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if ret < 0 {
            return Err(io_err("make read-only", Errno::last()));
        }
    }
    Ok(tree)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 1;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn option_error(option: &str, reason: &str) -> Error {
    Error::RunOption {
        option: option.chars().take(200).collect(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_as_docker_writes_them() {
        // RUN-31
        let v = Volume::parse("/srv/data:/data:ro").unwrap();
        assert_eq!(v.host, PathBuf::from("/srv/data"));
        assert_eq!(v.container, "/data");
        assert!(v.read_only);
        assert!(!Volume::parse("/a:/b").unwrap().read_only);
        assert!(!Volume::parse("/a:/b:rw").unwrap().read_only);
        for bad in ["/a", "a:/b", "/a:b", "/a:/b:rx", "/a:/b:ro:x"] {
            let err = Volume::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("-v {bad}: ")), "{err}");
        }
    }

    #[test]
    fn tmpfs_options_start_from_dockers_defaults() {
        // RUN-32
        let t = Tmpfs::parse("/run:size=10m,mode=1777,exec").unwrap();
        assert_eq!(t.container, "/run");
        assert_eq!(t.options, ["nosuid", "nodev", "size=10m", "mode=1777"]);
        assert_eq!(Tmpfs::parse("/tmp").unwrap().options, TMPFS_DEFAULTS);
        assert!(Tmpfs::parse("tmp").is_err());
        let err = Tmpfs::parse("/tmp:bogus=1").unwrap_err().to_string();
        assert!(err.contains("bogus=1"), "{err}");
    }

    #[test]
    fn container_paths_resolve_inside_the_rootfs() {
        // RUN-31: an image symlink to an absolute path, or `..` past the root, stays inside.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("srv/app")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("srv/up")).unwrap();
        let resolve = |p: &str| resolve_in_rootfs(root, p, "-v").unwrap();
        assert_eq!(resolve("/data"), PathBuf::from("/etc"));
        assert_eq!(resolve("/data/new/dir"), PathBuf::from("/etc/new/dir"));
        assert_eq!(resolve("/srv/up"), PathBuf::from("/etc"));
        assert_eq!(resolve("/../../srv/./app/"), PathBuf::from("/srv/app"));
        assert_eq!(resolve("/missing/x"), PathBuf::from("/missing/x"));
        assert!(resolve_in_rootfs(root, "/..", "-v").is_err());
    }

    #[test]
    fn a_missing_host_path_is_named() {
        // RUN-31
        let v = Volume::parse("/no/such/ferry/path:/data").unwrap();
        let err = bind_mount(&v, Path::new("/data")).unwrap_err().to_string();
        assert_eq!(
            err,
            "-v /no/such/ferry/path:/data: host path /no/such/ferry/path does not exist"
        );
    }
}

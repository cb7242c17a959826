//! The plan of a builtin container: everything its child will do, turned from the OCI
//! runtime spec into NUL-terminated strings, numbers and file descriptors before `clone`
//! (specs/runtime.md RUN-13), and the names of the steps it reports failures by.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ferry_core::oci_spec::runtime::{Capability, Spec};

use crate::run::{io_error, mounts, seccomp, Bundle, Stdio};
use crate::spec::{CAPABILITY_NAMES, DEFAULT_PATH};
use crate::{Error, Result};

/// Device nodes every container gets in its `/dev`: (name, major, minor), mode 0666.
const DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Symlinks every container gets in its `/dev`: (target, link).
const DEV_LINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// A step of the child's setup, as reported back when it fails.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(super) enum Step {
    Join,
    Stdio,
    Signals,
    MakePrivate,
    PivotRoot,
    MountDir,
    Mount,
    Device,
    DevLink,
    Mask,
    ReadOnly,
    Terminal,
    Hostname,
    RootReadOnly,
    Capabilities,
    Groups,
    Gid,
    Uid,
    NoNewPrivs,
    Cwd,
    Seccomp,
    Exec,
}

/// Every step, indexed by its number in a failure report.
pub(super) const STEPS: [Step; 22] = [
    Step::Join,
    Step::Stdio,
    Step::Signals,
    Step::MakePrivate,
    Step::PivotRoot,
    Step::MountDir,
    Step::Mount,
    Step::Device,
    Step::DevLink,
    Step::Mask,
    Step::ReadOnly,
    Step::Terminal,
    Step::Hostname,
    Step::RootReadOnly,
    Step::Capabilities,
    Step::Groups,
    Step::Gid,
    Step::Uid,
    Step::NoNewPrivs,
    Step::Cwd,
    Step::Seccomp,
    Step::Exec,
];

/// One mount of the spec, ready for mount(2).
pub(super) struct MountPlan {
    pub(super) source: CString,
    pub(super) target: CString,
    pub(super) fstype: CString,
    pub(super) flags: libc::c_ulong,
    pub(super) data: Option<CString>,
    /// `target` and each of its ancestors, shortest first, to create.
    pub(super) dirs: Vec<CString>,
    /// A bind mount's source, cloned as a detached tree, attached with move_mount.
    pub(super) tree: Option<OwnedFd>,
    /// The mount point is a file (a bind mount of a non-directory), not a directory.
    pub(super) file: bool,
    /// Rootless proc and sysfs: made with fsmount(2) before pivot_root, while the host's
    /// are still visible as the kernel wants, with these `MOUNT_ATTR_*` (RUN-46).
    pub(super) early: Option<libc::c_uint>,
}

/// Everything the child needs, computed before clone.
pub(super) struct Plan {
    /// Read end of the pipe on which the parent says the child is in its cgroup (RUN-41).
    pub(super) hold: Option<OwnedFd>,
    /// Copies of the streams to connect, numbered 3 or above so that dup2 cannot clobber them.
    pub(super) stdio: [Option<OwnedFd>; 3],
    pub(super) rootfs: CString,
    pub(super) mounts: Vec<MountPlan>,
    pub(super) devices: Vec<(CString, libc::dev_t)>,
    pub(super) dev_links: Vec<(CString, CString)>,
    pub(super) masked: Vec<CString>,
    pub(super) readonly: Vec<CString>,
    /// The container's end of the socket its terminal's master is sent on, and the
    /// window size to give it.
    pub(super) terminal: Option<(OwnedFd, Option<libc::winsize>)>,
    pub(super) hostname: CString,
    /// Make the root filesystem read-only once everything is mounted.
    pub(super) readonly_root: bool,
    /// Capability numbers to keep, as a bit mask; `last_cap` is the highest the kernel knows.
    pub(super) caps: u64,
    pub(super) last_cap: u32,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) groups: Vec<libc::gid_t>,
    /// False in a user namespace whose setgroups(2) is denied (only one gid mapped).
    pub(super) setgroups: bool,
    pub(super) no_new_privs: bool,
    pub(super) cwd: CString,
    pub(super) cwd_dirs: Vec<CString>,
    /// Seccomp filters, installed in order right before execve.
    pub(super) seccomp: Vec<seccompiler::BpfProgram>,
    /// Paths to try execve on, in order (the `PATH` search done ahead).
    pub(super) exec_paths: Vec<CString>,
    pub(super) argv: Vec<CString>,
    pub(super) env: Vec<CString>,
}

impl Plan {
    /// Plans the container of `bundle` with `stdio` as its standard streams; bind mount
    /// sources are cloned as detached trees and the seccomp filter compiled here.
    pub(super) fn new(bundle: &Bundle, stdio: Stdio) -> Result<Plan> {
        let spec: &Spec = &bundle.spec;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::Spec("no process".into()))?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(Error::NoCommand);
        }
        let env = process.env().clone().unwrap_or_default();
        let linux = spec.linux().clone().unwrap_or_default();

        let rootless = crate::userns::in_user_namespace();
        let mut mounts = Vec::new();
        for m in spec.mounts().as_deref().unwrap_or_default() {
            let options = m.options().as_deref().unwrap_or_default();
            let (flags, data) = mount_options(options);
            let target = m.destination();
            let (tree, file) = match (m.typ().as_deref(), m.source()) {
                (Some("bind"), Some(source)) => (
                    Some(mounts::clone_tree(
                        source,
                        options.iter().any(|o| o == "ro"),
                    )?),
                    !source.is_dir(),
                ),
                _ => (None, false),
            };
            let early = (rootless && matches!(m.typ().as_deref(), Some("proc" | "sysfs")))
                .then(|| mount_attrs(flags));
            mounts.push(MountPlan {
                early,
                tree,
                file,
                source: cstring(
                    m.source()
                        .as_deref()
                        .unwrap_or(Path::new("none"))
                        .as_os_str()
                        .as_bytes(),
                )?,
                target: cstring(target.as_os_str().as_bytes())?,
                fstype: cstring(m.typ().as_deref().unwrap_or("none").as_bytes())?,
                flags,
                data: (!data.is_empty())
                    .then(|| cstring(data.as_bytes()))
                    .transpose()?,
                dirs: ancestors(target)?,
            });
        }

        if rootless {
            // mknod needs root outside: bind the host's devices instead, as runc does (RUN-46).
            for (path, _, _) in DEVICES {
                mounts.push(MountPlan {
                    early: None,
                    tree: Some(mounts::clone_tree(Path::new(path), false)?),
                    file: true,
                    source: cstring(path.as_bytes())?,
                    target: cstring(path.as_bytes())?,
                    fstype: cstring(b"bind")?,
                    flags: 0,
                    data: None,
                    dirs: ancestors(Path::new(path))?,
                });
            }
        }
        if mounts.iter().filter(|m| m.early.is_some()).count() > EARLY_MOUNTS {
            return Err(Error::Spec("more than two proc or sysfs mounts".into()));
        }

        let mut caps = 0u64;
        let kept = process
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().clone())
            .unwrap_or_default();
        for cap in kept {
            caps |= 1 << capability_number(cap)?;
        }
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAPABILITY_NAMES.len() as u32 - 1);

        let user = process.user();
        let cwd = process.cwd();
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        Ok(Plan {
            hold: None,
            stdio: [
                high_fd(stdio.stdin)?,
                high_fd(stdio.stdout)?,
                high_fd(stdio.stderr)?,
            ],
            rootfs: cstring(bundle.rootfs().as_os_str().as_bytes())?,
            mounts,
            devices: DEVICES
                .iter()
                .filter(|_| !rootless)
                .map(|(path, major, minor)| {
                    Ok((
                        cstring(path.as_bytes())?,
                        libc::makedev(*major as u32, *minor as u32),
                    ))
                })
                .collect::<Result<_>>()?,
            dev_links: DEV_LINKS
                .iter()
                .map(|(target, link)| Ok((cstring(target.as_bytes())?, cstring(link.as_bytes())?)))
                .collect::<Result<_>>()?,
            masked: linux
                .masked_paths()
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|p| cstring(p.as_bytes()))
                .collect::<Result<_>>()?,
            readonly: linux
                .readonly_paths()
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|p| cstring(p.as_bytes()))
                .collect::<Result<_>>()?,
            terminal: None,
            hostname: cstring(spec.hostname().as_deref().unwrap_or_default().as_bytes())?,
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            caps,
            last_cap,
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
            setgroups: !rootless
                || std::fs::read_to_string("/proc/self/setgroups")
                    .map_or(true, |s| s.trim() != "deny"),
            no_new_privs: process.no_new_privileges().unwrap_or(true),
            cwd: cstring(cwd.as_os_str().as_bytes())?,
            cwd_dirs: ancestors(cwd)?,
            seccomp: match linux.seccomp() {
                Some(profile) => seccomp::compile(profile)?,
                None => Vec::new(),
            },
            exec_paths: exec_candidates(&args[0], path)?,
            argv: args
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<_>>()?,
            env: env
                .iter()
                .map(|e| cstring(e.as_bytes()))
                .collect::<Result<_>>()?,
        })
    }

    /// Names a failed step and what it acted on.
    pub(super) fn describe(&self, step: Step, index: usize) -> String {
        let show = |c: Option<&CString>| {
            c.map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match step {
            Step::Join => "wait to be put in the container's cgroup".into(),
            Step::Stdio => "connect standard streams".into(),
            Step::Signals => "reset signal handling".into(),
            Step::MakePrivate => "make mounts private".into(),
            Step::PivotRoot => format!("pivot_root to {}", show(Some(&self.rootfs))),
            Step::MountDir => format!(
                "create mount point {}",
                show(self.mounts.get(index).map(|m| &m.target))
            ),
            Step::Mount => self.mounts.get(index).map_or_else(String::new, |m| {
                format!(
                    "mount {} on {}",
                    m.fstype.to_string_lossy(),
                    m.target.to_string_lossy()
                )
            }),
            Step::Device => format!(
                "create device {}",
                show(self.devices.get(index).map(|d| &d.0))
            ),
            Step::DevLink => format!(
                "create symlink {}",
                show(self.dev_links.get(index).map(|l| &l.1))
            ),
            Step::Mask => format!("mask {}", show(self.masked.get(index))),
            Step::ReadOnly => format!("make {} read-only", show(self.readonly.get(index))),
            Step::Terminal => "open the container's terminal".into(),
            Step::Hostname => format!("set hostname {}", show(Some(&self.hostname))),
            Step::RootReadOnly => "make the root filesystem read-only".into(),
            Step::Capabilities => "set capabilities".into(),
            Step::Groups => format!("set supplementary groups {:?}", self.groups),
            Step::Gid => format!("set gid {}", self.gid),
            Step::Uid => format!("set uid {}", self.uid),
            Step::NoNewPrivs => "set no_new_privs".into(),
            Step::Cwd => format!("change to working directory {}", show(Some(&self.cwd))),
            Step::Seccomp => "install the seccomp filter".into(),
            Step::Exec => format!("exec {}", show(self.argv.first())),
        }
    }
}

/// Most proc and sysfs mounts made with fsmount(2) in a rootless container.
pub(super) const EARLY_MOUNTS: usize = 2;

/// `MOUNT_ATTR_*` for fsmount(2) from mount(2) flags.
fn mount_attrs(flags: libc::c_ulong) -> libc::c_uint {
    [
        (libc::MS_RDONLY, 0x1),
        (libc::MS_NOSUID, 0x2),
        (libc::MS_NODEV, 0x4),
        (libc::MS_NOEXEC, 0x8),
    ]
    .iter()
    .filter(|(ms, _)| flags & ms != 0)
    .map(|(_, attr)| attr)
    .sum()
}

/// A copy of `fd` numbered 3 or above (close-on-exec), so that dup2 onto 0–2 cannot clobber it.
fn high_fd(fd: Option<OwnedFd>) -> Result<Option<OwnedFd>> {
    // `try_clone` is fcntl(F_DUPFD_CLOEXEC, 3).
    fd.map(|fd| {
        fd.try_clone()
            .map_err(|e| io_error("duplicate", Path::new("standard stream"), e))
    })
    .transpose()
}

/// mount(2) flags and the data string for OCI mount options.
fn mount_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// `path`'s ancestors below `/` and `path` itself, shortest first.
fn ancestors(path: &Path) -> Result<Vec<CString>> {
    let mut dirs: Vec<CString> = path
        .ancestors()
        .filter(|p| p.parent().is_some())
        .map(|p| cstring(p.as_os_str().as_bytes()))
        .collect::<Result<_>>()?;
    dirs.reverse();
    Ok(dirs)
}

/// What to execve for `command`: itself if it has a `/`, else each `PATH` entry joined with it.
fn exec_candidates(command: &str, path: &str) -> Result<Vec<CString>> {
    if command.contains('/') {
        return Ok(vec![cstring(command.as_bytes())?]);
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            cstring(format!("{}/{command}", dir.trim_end_matches('/')).as_bytes())
        })
        .collect()
}

fn capability_number(cap: Capability) -> Result<u32> {
    let name = serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    CAPABILITY_NAMES
        .iter()
        .position(|c| *c == name)
        .map(|n| n as u32)
        .ok_or_else(|| Error::Spec(format!("unknown capability {name:?}")))
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| {
        Error::Spec(format!(
            "{:?} contains a NUL byte",
            String::from_utf8_lossy(bytes)
        ))
    })
}

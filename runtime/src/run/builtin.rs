//! ferry's own runtime: clone into new namespaces, set up mounts, pivot_root, drop
//! privileges and exec the spec's process (specs/runtime.md RUN-13).
//!
//! Everything the child does is planned in the parent first: after `clone` the child of a
//! multi-threaded process may only make system calls (no allocation, no locks, and no
//! glibc wrappers that talk to other threads, hence raw `setresuid` & co.). It reports a
//! failed step through a close-on-exec pipe; end-of-file there means the exec happened.
//! Bind mounts arrive as detached mount trees cloned in the parent, a terminal is opened in
//! the container's own `devpts` and its master sent back, and the seccomp filter is compiled
//! to BPF before the clone and installed right before `execve` (RUN-30…RUN-36).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ferry_core::oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use super::cgroup::Cgroup;
use super::{io_error, wait_exit, SignalForwarder, Stdio};
use super::{mounts, seccomp, terminal};
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

/// Stack of the cloned child until it execs.
const CHILD_STACK: usize = 256 * 1024;

/// A step of the child's setup, as reported back when it fails.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Step {
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

const STEPS: [Step; 22] = [
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
struct MountPlan {
    source: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// `target` and each of its ancestors, shortest first, to create.
    dirs: Vec<CString>,
    /// A bind mount's source, cloned as a detached tree, attached with move_mount.
    tree: Option<OwnedFd>,
    /// The mount point is a file (a bind mount of a non-directory), not a directory.
    file: bool,
    /// Rootless proc and sysfs: made with fsmount(2) before pivot_root, while the host's
    /// are still visible as the kernel wants, with these `MOUNT_ATTR_*` (RUN-46).
    early: Option<libc::c_uint>,
}

/// Everything the child needs, computed before clone.
struct Plan {
    /// Read end of the pipe on which the parent says the child is in its cgroup (RUN-41).
    hold: Option<OwnedFd>,
    /// Copies of the streams to connect, numbered 3 or above so that dup2 cannot clobber them.
    stdio: [Option<OwnedFd>; 3],
    rootfs: CString,
    mounts: Vec<MountPlan>,
    devices: Vec<(CString, libc::dev_t)>,
    dev_links: Vec<(CString, CString)>,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    /// The container's end of the socket its terminal's master is sent on, and the
    /// window size to give it.
    terminal: Option<(OwnedFd, Option<libc::winsize>)>,
    hostname: CString,
    /// Make the root filesystem read-only once everything is mounted.
    readonly_root: bool,
    /// Capability numbers to keep, as a bit mask; `last_cap` is the highest the kernel knows.
    caps: u64,
    last_cap: u32,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// False in a user namespace whose setgroups(2) is denied (only one gid mapped).
    setgroups: bool,
    no_new_privs: bool,
    cwd: CString,
    cwd_dirs: Vec<CString>,
    /// Seccomp filters, installed in order right before execve.
    seccomp: Vec<seccompiler::BpfProgram>,
    /// Paths to try execve on, in order (the `PATH` search done ahead).
    exec_paths: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
}

/// Runs `bundle` with ferry's runtime and returns the container's exit code.
pub(super) fn run(bundle: &super::Bundle, stdio: Stdio) -> Result<i32> {
    let wants_terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    // With a terminal the container's streams are the pty; ferry relays its own to it.
    let (stdio, host) = if wants_terminal {
        let host = terminal::host_streams(stdio.stdin, stdio.stdout)?;
        (Stdio::default(), Some(host))
    } else {
        (stdio, None)
    };
    let mut plan = Plan::new(bundle, stdio)?;
    let mut master_socket = None;
    if let Some((input, _)) = &host {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io_error("socketpair", Path::new("terminal"), e.into()))?;
        plan.terminal = Some((theirs, terminal::window_size(input.as_raw_fd())));
        master_socket = Some(ours);
    }
    let cgroup = Cgroup::for_spec(&bundle.spec)?;
    let release = match &cgroup {
        Some(_) => {
            let (hold, release) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| io_error("pipe", Path::new("container cgroup"), e.into()))?;
            plan.hold = Some(hold);
            Some(release)
        }
        None => None,
    };
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .env
        .iter()
        .map(|e| e.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    let namespaces = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    if namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Network)
    {
        flags |= CloneFlags::CLONE_NEWNET;
    }

    let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io_error("pipe", Path::new("container setup"), e.into()))?;
    let forwarder = SignalForwarder::start()?;
    let mut stack = vec![0u8; CHILD_STACK];
    let report_fd = report_write.as_raw_fd();
    let child = {
        let plan = &plan;
        let (argv, envp) = (&argv, &envp);
        let callback = Box::new(move || {
            let (step, index, errno) = match setup_and_exec(plan, argv, envp) {
                Err(failure) => failure,
                Ok(never) => match never {},
            };
            let mut record = [0u8; 12];
            record[..4].copy_from_slice(&(step as u32).to_ne_bytes());
            record[4..8].copy_from_slice(&index.to_ne_bytes());
            record[8..].copy_from_slice(&errno.to_ne_bytes());
            // SAFETY: write(2) and _exit(2) are async-signal-safe; `record` is on our stack.
            unsafe {
                libc::write(report_fd, record.as_ptr().cast(), record.len());
                libc::_exit(127)
            }
        });
        // SAFETY: the child only runs `setup_and_exec`, which makes raw system calls on data
        // prepared above, and then execs or `_exit`s; it never returns into Rust code.
        unsafe { nix::sched::clone(callback, &mut stack, flags, Some(Signal::SIGCHLD as i32)) }
            .map_err(|e| io_error("clone", &bundle.rootfs(), e.into()))?
    };
    forwarder.set(child);
    drop(report_write);
    if let (Some(cgroup), Some(release)) = (&cgroup, release) {
        if let Err(e) = cgroup.add(child) {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = wait_exit(child);
            return Err(e);
        }
        nix::unistd::write(&release, &[1])
            .map_err(|e| io_error("release container", &bundle.rootfs(), e.into()))?;
    }
    // The container has its streams now; ours must not keep pipes open.
    plan.stdio = Default::default();
    plan.terminal = None;
    let mut relay = None;
    let mut raw_mode = None;
    if let (Some(socket), Some((input, output))) = (master_socket, host) {
        let started = (|| -> Result<()> {
            if let Some(master) = terminal::receive_master(&socket)? {
                raw_mode = terminal::RawMode::enter(input.as_fd())?;
                relay = Some(terminal::Relay::start(master, input, output)?);
            }
            Ok(())
        })();
        if let Err(e) = started {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = wait_exit(child);
            return Err(e);
        }
    }

    let mut record = Vec::with_capacity(12);
    let read = std::fs::File::from(report_read).read_to_end(&mut record);
    let code = wait_exit(child);
    if let Some(relay) = relay {
        relay.finish();
    }
    drop(raw_mode);
    let code = code?;
    if let Some(cgroup) = cgroup {
        cgroup.finish(&bundle.id, code)?;
    }
    read.map_err(|e| io_error("read container setup report", &bundle.rootfs(), e))?;
    if record.len() == 12 {
        let step = u32::from_ne_bytes(record[..4].try_into().expect("4 bytes"));
        let index = u32::from_ne_bytes(record[4..8].try_into().expect("4 bytes")) as usize;
        let errno = i32::from_ne_bytes(record[8..].try_into().expect("4 bytes"));
        let step = STEPS.get(step as usize).copied().unwrap_or(Step::Exec);
        if let Step::Exec = step {
            return Err(Error::Exec {
                id: bundle.id.clone(),
                command: plan
                    .argv
                    .first()
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        return Err(Error::ContainerSetup {
            id: bundle.id.clone(),
            step: plan.describe(step, index),
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(code)
}

impl Plan {
    fn new(bundle: &super::Bundle, stdio: Stdio) -> Result<Plan> {
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
    fn describe(&self, step: Step, index: usize) -> String {
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

/// A failed step: which, the index of the item it acted on, errno.
type Failure = (Step, u32, i32);

/// Converts a libc return value into success or the failure of `step` on item `index`.
fn check(ret: libc::c_long, step: Step, index: usize) -> Result<(), Failure> {
    if ret < 0 {
        Err((step, index as u32, nix::errno::Errno::last_raw()))
    } else {
        Ok(())
    }
}

/// The child's whole life: set up the container per `plan` and exec its process.
///
/// Only raw system calls on prepared data: this runs between clone and exec.
fn setup_and_exec(
    plan: &Plan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Result<std::convert::Infallible, Failure> {
    use libc::c_long;
    // SAFETY (whole function): every call is a plain system call on NUL-terminated strings
    // and arrays owned by `plan`, `argv` and `envp`, which live until the exec.
    unsafe {
        if let Some(hold) = &plan.hold {
            let mut byte = 0u8;
            let n = libc::read(hold.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            if n != 1 {
                let errno = if n < 0 {
                    nix::errno::Errno::last_raw()
                } else {
                    libc::EPIPE
                };
                return Err((Step::Join, 0, errno));
            }
        }
        for (target, fd) in plan.stdio.iter().enumerate() {
            if let Some(fd) = fd {
                check(
                    libc::dup2(fd.as_raw_fd(), target as i32) as c_long,
                    Step::Stdio,
                    target,
                )?;
            }
        }
        // The parent's forwarding handler must not run here; the command starts clean.
        for signal in [libc::SIGINT, libc::SIGTERM] {
            if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                return Err((Step::Signals, 0, nix::errno::Errno::last_raw()));
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) as c_long,
            Step::Signals,
            0,
        )?;

        let root = c"/";
        let dot = c".";
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as c_long,
            Step::MakePrivate,
            0,
        )?;
        // Rootless proc and sysfs, made while the host's are in sight (RUN-46).
        let mut early: [libc::c_int; EARLY_MOUNTS] = [-1; EARLY_MOUNTS];
        for (i, m) in plan.mounts.iter().enumerate() {
            let Some(attrs) = m.early else { continue };
            let fs = libc::syscall(libc::SYS_fsopen, m.fstype.as_ptr(), FSOPEN_CLOEXEC);
            check(fs, Step::Mount, i)?;
            check(
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs,
                    FSCONFIG_CMD_CREATE,
                    std::ptr::null::<libc::c_char>(),
                    std::ptr::null::<libc::c_void>(),
                    0,
                ),
                Step::Mount,
                i,
            )?;
            let mnt = libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
            libc::close(fs as libc::c_int);
            check(mnt, Step::Mount, i)?;
            if let Some(slot) = early.iter_mut().find(|fd| **fd < 0) {
                *slot = mnt as libc::c_int;
            }
        }
        let mut early = early.iter().copied();
        // The overlay rootfs is already a mount point; pivot onto it and drop the old root.
        check(
            libc::chdir(plan.rootfs.as_ptr()) as c_long,
            Step::PivotRoot,
            0,
        )?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()),
            Step::PivotRoot,
            0,
        )?;
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH) as c_long,
            Step::PivotRoot,
            0,
        )?;
        check(libc::chdir(root.as_ptr()) as c_long, Step::PivotRoot, 0)?;

        // From here on, every path resolves inside the container: no symlink leads out.
        for (i, m) in plan.mounts.iter().enumerate() {
            if m.file {
                mkdir_all(&m.dirs[..m.dirs.len().saturating_sub(1)], Step::MountDir, i)?;
                let fd = libc::open(
                    m.target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o644,
                );
                check(fd as c_long, Step::MountDir, i)?;
                libc::close(fd);
            } else {
                mkdir_all(&m.dirs, Step::MountDir, i)?;
            }
            let tree = match (&m.tree, m.early) {
                (Some(tree), _) => Some(tree.as_raw_fd()),
                (None, Some(_)) => early.next(),
                (None, None) => None,
            };
            if let Some(tree) = tree {
                check(
                    libc::syscall(
                        libc::SYS_move_mount,
                        tree,
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        m.target.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    ),
                    Step::Mount,
                    i,
                )?;
                continue;
            }
            let data = m
                .data
                .as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast());
            check(
                libc::mount(
                    m.source.as_ptr(),
                    m.target.as_ptr(),
                    m.fstype.as_ptr(),
                    m.flags,
                    data,
                ) as c_long,
                Step::Mount,
                i,
            )?;
        }
        for (i, (path, dev)) in plan.devices.iter().enumerate() {
            let made = libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev);
            if made < 0 && nix::errno::Errno::last() != nix::errno::Errno::EEXIST {
                return Err((Step::Device, i as u32, nix::errno::Errno::last_raw()));
            }
            check(libc::chmod(path.as_ptr(), 0o666) as c_long, Step::Device, i)?;
        }
        for (i, (target, link)) in plan.dev_links.iter().enumerate() {
            let made = libc::symlink(target.as_ptr(), link.as_ptr());
            if made < 0 && nix::errno::Errno::last() != nix::errno::Errno::EEXIST {
                return Err((Step::DevLink, i as u32, nix::errno::Errno::last_raw()));
            }
        }
        if let Some((socket, winsize)) = &plan.terminal {
            if let Err(errno) =
                terminal::attach_in_container(socket.as_raw_fd(), winsize.as_ref(), plan.uid)
            {
                return Err((Step::Terminal, 0, errno));
            }
        }
        for (i, path) in plan.masked.iter().enumerate() {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(path.as_ptr(), &mut st) < 0 {
                if nix::errno::Errno::last() == nix::errno::Errno::ENOENT {
                    continue;
                }
                return Err((Step::Mask, i as u32, nix::errno::Errno::last_raw()));
            }
            let ret = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            } else {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            check(ret as c_long, Step::Mask, i)?;
        }
        for (i, path) in plan.readonly.iter().enumerate() {
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) < 0
            {
                if nix::errno::Errno::last() == nix::errno::Errno::ENOENT {
                    continue;
                }
                return Err((Step::ReadOnly, i as u32, nix::errno::Errno::last_raw()));
            }
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_REC
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            check(
                libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ) as c_long,
                Step::ReadOnly,
                i,
            )?;
        }
        let name = plan.hostname.as_bytes();
        check(
            libc::sethostname(name.as_ptr().cast(), name.len()) as c_long,
            Step::Hostname,
            0,
        )?;
        // Working directories the image lacks are created, as Docker does.
        mkdir_all(&plan.cwd_dirs, Step::Cwd, 0)?;
        if plan.readonly_root {
            check(
                libc::mount(
                    root.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ) as c_long,
                Step::RootReadOnly,
                0,
            )?;
        }

        // Credentials: keep capabilities across setuid, then trim them to the plan's set.
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as c_long,
            Step::Capabilities,
            0,
        )?;
        for cap in 0..=plan.last_cap.min(63) {
            if plan.caps & (1 << cap) == 0 {
                let dropped = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                if dropped < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
                    return Err((Step::Capabilities, cap, nix::errno::Errno::last_raw()));
                }
            }
        }
        if plan.setgroups {
            check(
                libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()),
                Step::Groups,
                0,
            )?;
        }
        check(
            libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid),
            Step::Gid,
            0,
        )?;
        check(
            libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid),
            Step::Uid,
            0,
        )?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let set = |word: u32| CapData {
            effective: word,
            permitted: word,
            inheritable: 0,
        };
        let data = [set(plan.caps as u32), set((plan.caps >> 32) as u32)];
        check(
            libc::syscall(libc::SYS_capset, &header, data.as_ptr()),
            Step::Capabilities,
            0,
        )?;
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) as c_long,
            Step::Capabilities,
            0,
        )?;
        if plan.no_new_privs {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as c_long,
                Step::NoNewPrivs,
                0,
            )?;
        }
        check(libc::chdir(plan.cwd.as_ptr()) as c_long, Step::Cwd, 0)?;
        for (i, program) in plan.seccomp.iter().enumerate() {
            let fprog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            check(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) as c_long,
                Step::Seccomp,
                i,
            )?;
        }

        let mut errno = libc::ENOENT;
        for path in &plan.exec_paths {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            match nix::errno::Errno::last_raw() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => errno = libc::EACCES,
                other => return Err((Step::Exec, 0, other)),
            }
        }
        Err((Step::Exec, 0, errno))
    }
}

/// Creates each directory of `dirs` (shortest first) that is missing.
///
/// # Safety
/// Only raw mkdir(2); callable between clone and exec.
unsafe fn mkdir_all(dirs: &[CString], step: Step, index: usize) -> Result<(), Failure> {
    for dir in dirs {
        if libc::mkdir(dir.as_ptr(), 0o755) < 0
            && nix::errno::Errno::last() != nix::errno::Errno::EEXIST
        {
            return Err((step, index as u32, nix::errno::Errno::last_raw()));
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// `move_mount(2)`: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Most proc and sysfs mounts made with fsmount(2) in a rootless container.
const EARLY_MOUNTS: usize = 2;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

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

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
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

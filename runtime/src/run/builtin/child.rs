//! The child side of a builtin container: between `clone` and `execve` it joins its
//! cgroup, connects its streams, mounts, pivots into the root filesystem, makes devices,
//! drops privileges, installs the seccomp filter and execs, or reports the step that failed
//! (specs/runtime.md RUN-13).
//!
//! Only raw system calls on the prepared [`Plan`]: the child of a multi-threaded process may
//! not allocate, take locks or call glibc wrappers that talk to other threads.

use std::ffi::CString;
use std::os::fd::AsRawFd;

use super::plan::{Plan, Step, EARLY_MOUNTS};
use crate::run::terminal;

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

/// The child's entry point: runs [`setup_and_exec`] and, if it returns, writes the failed
/// step, the index of its item and errno (three native-endian `u32`/`i32`) to `report_fd`
/// and exits with 127.
pub(super) fn main(
    plan: &Plan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    report_fd: libc::c_int,
) -> ! {
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
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

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

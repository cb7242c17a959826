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
//!
//! This module is the parent's side: clone, the cgroup join, the terminal relay, the wait
//! and the failure report; [`plan`] turns the spec into the child's plan and [`child`]
//! carries it out.

mod child;
mod plan;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use ferry_core::oci_spec::runtime::LinuxNamespaceType;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use self::plan::{Plan, Step, STEPS};
use super::cgroup::Cgroup;
use super::terminal;
use super::{io_error, wait_exit, SignalForwarder, Stdio};
use crate::{Error, Result};

/// Stack of the cloned child until it execs.
const CHILD_STACK: usize = 256 * 1024;

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
        let callback = Box::new(move || child::main(plan, argv, envp, report_fd));
        // SAFETY: the child only runs `child::main`, which makes raw system calls on data
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

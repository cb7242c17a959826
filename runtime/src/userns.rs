//! Rootless ferry: an ordinary user's `ferry unpack` and `ferry run` go on as root of a user
//! namespace that maps the user's own id and subordinate ids (specs/runtime.md RUN-44…RUN-48).
//!
//! As `podman unshare` does, ferry re-executes itself: the parent starts `/proc/self/exe`
//! with the same arguments, the child unshares a user and a mount namespace first thing and
//! waits, the parent writes the child's id maps (with `newuidmap`/`newgidmap` from the
//! `uidmap` package for the ranges of `/etc/subuid` and `/etc/subgid`, or itself for the one
//! id it owns), and the child goes on as root in its namespace.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::{Error, Result};

/// Environment variable that tells the re-executed ferry its end of the sync socket.
const SYNC_ENV: &str = "_FERRY_USERNS_SYNC";

/// One line of a user namespace's id map: `count` ids from `inside` are the ids from
/// `outside` of the parent namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id outside.
    pub outside: u32,
    /// How many ids.
    pub count: u32,
}

/// What [`enter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// This process goes on: it is root, or it is the child in the new namespace.
    Continue,
    /// This process was the parent; the ferry in the namespace ended with this exit code.
    Exited(i32),
}

/// Whether this process is in a user namespace other than the initial one: ferry runs
/// rootless (RUN-44).
pub fn in_user_namespace() -> bool {
    // The initial namespace maps every id to itself: "0 0 4294967295".
    fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields != ["0", "0", "4294967295"]
    })
}

/// Whether group `gid` has an id in this process's user namespace (always, outside one).
pub fn gid_mapped(gid: u32) -> bool {
    fs::read_to_string("/proc/self/gid_map").map_or(true, |map| in_map(&map, gid))
}

/// Whether `id` is inside one of the lines (`INSIDE OUTSIDE COUNT`) of an id map.
fn in_map(map: &str, id: u32) -> bool {
    map.lines().any(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(fields[..], [inside, _, count] if (inside..inside + count).contains(&u64::from(id)))
    })
}

/// The xattr that marks an opaque directory in a snapshot: `user.overlay.opaque` in a user
/// namespace, where overlayfs is mounted with `userxattr`, else `trusted.overlay.opaque`
/// (RUN-46).
pub fn overlay_opaque_xattr() -> &'static std::ffi::CStr {
    if in_user_namespace() {
        c"user.overlay.opaque"
    } else {
        c"trusted.overlay.opaque"
    }
}

/// Runs the rest of this ferry command as root of a new user namespace when the caller is
/// not root (RUN-44).
///
/// In the parent (an unprivileged caller) it re-executes ferry with the same arguments and
/// `env` added, maps its ids, waits for it and returns [`Entered::Exited`]; SIGINT, SIGTERM
/// and SIGHUP are passed on to it, so that it can clean up. In the re-executed child, and for root, it returns
/// [`Entered::Continue`]. Must be called while the process has a single thread.
pub fn enter(env: &[(&str, OsString)]) -> Result<Entered> {
    if let Some(fd) = std::env::var_os(SYNC_ENV) {
        std::env::remove_var(SYNC_ENV);
        let fd: i32 = fd
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| userns_error(format!("bad {SYNC_ENV} {fd:?}")))?;
        // SAFETY: the parent passed this socket to us and nothing else in this process owns it.
        let sync = unsafe { OwnedFd::from_raw_fd(fd) };
        child(UnixStream::from(sync))?;
        return Ok(Entered::Continue);
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(Entered::Continue);
    }
    parent(env).map(Entered::Exited)
}

/// The child: new user and mount namespaces, then wait for the parent to map the ids.
fn child(mut sync: UnixStream) -> Result<()> {
    // Nothing to do once the parent is gone: it holds the terminal and the exit code.
    // SAFETY: prctl(2) with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS,
    )
    .map_err(|e| {
        userns_error(format!(
            "unshare a user namespace: {e} (see sysctl user.max_user_namespaces)"
        ))
    })?;
    let mut byte = [0u8];
    sync.write_all(&byte)
        .and_then(|()| sync.read_exact(&mut byte))
        .map_err(|e| userns_error(format!("waiting for the id maps: {e}")))?;
    if byte[0] != 1 {
        return Err(userns_error("the parent could not map the ids".into()));
    }
    // Mounts made here (overlays, the containers') stay here.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| userns_error(format!("make mounts private: {e}")))?;
    Ok(())
}

/// Pid of the re-executed child, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The parent: start the child, map its ids, wait for it.
fn parent(env: &[(&str, OsString)]) -> Result<i32> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| userns_error(format!("socketpair: {e}")))?;
    let theirs = OwnedFd::from(theirs);
    let exe = fs::read_link("/proc/self/exe")
        .map_err(|e| userns_error(format!("find ferry's own binary: {e}")))?;
    let mut command = Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env(SYNC_ENV, theirs.as_raw_fd().to_string());
    for (key, value) in env {
        command.env(key, value);
    }
    let inherit = theirs.as_raw_fd();
    // SAFETY: the hook only makes fcntl(2) calls, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // UnixStream::pair makes close-on-exec sockets: keep the child's end.
            if libc::fcntl(inherit, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| userns_error(format!("re-execute {}: {e}", exe.display())))?;
    drop(theirs);
    let pid = child.id();
    CHILD.store(pid as i32, Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill(2).
        unsafe {
            libc::signal(
                signal,
                pass_on as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }

    let mut sync = ours;
    let mut byte = [0u8];
    // A child that ends before it asks has said why itself; its exit status tells.
    let mapped = match sync.read_exact(&mut byte) {
        Ok(()) => map_ids(pid),
        Err(_) => Ok(()),
    };
    let answer = [u8::from(mapped.is_ok())];
    let _ = sync.write_all(&answer);
    let status = child
        .wait()
        .map_err(|e| userns_error(format!("wait for the child: {e}")))?;
    mapped?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Writes the id maps of process `pid`'s new user namespace (RUN-45).
fn map_ids(pid: u32) -> Result<()> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let uids = id_maps(uid, name.as_deref(), &read("/etc/subuid"));
    let gids = id_maps(gid, name.as_deref(), &read("/etc/subgid"));
    for (maps, tool, file) in [
        (&uids, "newuidmap", "uid_map"),
        (&gids, "newgidmap", "gid_map"),
    ] {
        if maps.len() > 1 {
            match run_map_tool(tool, pid, maps) {
                Ok(()) => continue,
                Err(e) => tracing::warn!("{e}; mapping only the user's own id"),
            }
        }
        if file == "gid_map" {
            // An unprivileged process may map its own gid only after giving up setgroups.
            write_proc(pid, "setgroups", "deny")?;
        }
        write_proc(pid, file, &format!("0 {} 1\n", maps[0].outside))?;
    }
    Ok(())
}

fn run_map_tool(tool: &str, pid: u32, maps: &[IdMapping]) -> Result<()> {
    let mut command = Command::new(tool);
    command.arg(pid.to_string());
    for m in maps {
        command.args([m.inside, m.outside, m.count].map(|n| n.to_string()));
    }
    let out = command.output().map_err(|e| {
        userns_error(format!(
            "{tool}: {e} (install the uidmap package for subordinate ids)"
        ))
    })?;
    if !out.status.success() {
        return Err(userns_error(format!(
            "{tool} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn write_proc(pid: u32, file: &str, value: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, value).map_err(|e| Error::Io {
        op: "write",
        path: Path::new(&path).to_path_buf(),
        source: e,
    })
}

/// The id map of a rootless namespace for the user or group `id` named `name`: `id` is 0
/// inside, and the ranges `subids` (the text of `/etc/subuid` or `/etc/subgid`) gives the
/// name or the number follow from 1, in file order (RUN-45).
pub fn id_maps(id: u32, name: Option<&str>, subids: &str) -> Vec<IdMapping> {
    let mut maps = vec![IdMapping {
        inside: 0,
        outside: id,
        count: 1,
    }];
    let mut next = 1u32;
    for line in subids.lines() {
        let fields: Vec<&str> = line.trim().split(':').collect();
        let [owner, start, count] = fields[..] else {
            continue;
        };
        if Some(owner) != name && owner.parse() != Ok(id) {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        let Some(after) = next.checked_add(count) else {
            break;
        };
        maps.push(IdMapping {
            inside: next,
            outside: start,
            count,
        });
        next = after;
    }
    maps
}

fn userns_error(reason: String) -> Error {
    Error::Rootless { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_root_and_its_subordinate_ranges_follow() {
        // RUN-45
        let subuid = "alice:100000:65536\nbob:200000:65536\n1001:300000:10\n# junk\nbob:x:1\n";
        assert_eq!(
            id_maps(1001, Some("bob"), subuid),
            vec![
                IdMapping {
                    inside: 0,
                    outside: 1001,
                    count: 1
                },
                IdMapping {
                    inside: 1,
                    outside: 200000,
                    count: 65536
                },
                IdMapping {
                    inside: 65537,
                    outside: 300000,
                    count: 10
                },
            ]
        );
    }

    #[test]
    fn tty_gid_5_is_mapped_only_with_a_range() {
        // RUN-46: devpts keeps gid=5 only where gid 5 has an id.
        assert!(in_map("0 1001 1\n1 100000 65536\n", 5));
        assert!(!in_map("0 1001 1\n", 5));
        assert!(in_map("0 0 4294967295\n", 5));
    }

    #[test]
    fn without_subordinate_ids_only_the_user_is_mapped() {
        // RUN-45
        assert_eq!(
            id_maps(1000, Some("carol"), "alice:100000:65536\n"),
            vec![IdMapping {
                inside: 0,
                outside: 1000,
                count: 1
            }]
        );
    }
}

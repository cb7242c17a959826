//! Running a container in the foreground, with ferry's own runtime or with runc
//! (specs/runtime.md RUN-12…RUN-17).
//!
//! A container lives in `STORE_ROOT/containers/<id>/`: `upper/` and `work/` of its overlay,
//! `rootfs/` where the overlay of its snapshots and `upper/` is mounted, `config.json` (the
//! OCI runtime spec from [`crate::spec`]) and `container.json` (the snapshots it uses).

mod builtin;
pub mod cgroup;
mod etc_files;
pub mod init;
pub mod mounts;
mod runc;
pub mod seccomp;
mod terminal;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, PoisonError};

use ferry_core::oci_spec::image::ImageConfiguration;
use ferry_core::oci_spec::runtime::Spec;
use ferry_core::Store;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::spec::{runtime_spec, NetMode, RunOptions};
use crate::{Error, Result};

/// Which OCI runtime executes a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// ferry's own: namespaces, mounts, pivot_root, capabilities, exec (RUN-13).
    #[default]
    Builtin,
    /// `runc run` on the bundle (RUN-14).
    Runc,
}

/// Where a container's standard streams go; `None` passes ferry's own through.
#[derive(Debug, Default)]
pub struct Stdio {
    /// The container's standard input.
    pub stdin: Option<OwnedFd>,
    /// The container's standard output.
    pub stdout: Option<OwnedFd>,
    /// The container's standard error.
    pub stderr: Option<OwnedFd>,
}

/// A container's directory: its overlay root filesystem and OCI runtime spec (RUN-12).
#[derive(Debug)]
pub struct Bundle {
    id: String,
    dir: PathBuf,
    lowers: Vec<PathBuf>,
    spec: Spec,
}

/// `container.json`: what ferry needs to know about a container besides its spec.
#[derive(Debug, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    /// Snapshot `fs` directories, bottom first.
    lowers: Vec<PathBuf>,
}

impl Bundle {
    /// Creates a container of the image whose snapshots are `lowers` (bottom first, as
    /// [`crate::snapshot::prepare`] returns them): its directory under `STORE_ROOT/containers/`,
    /// its mounted overlay rootfs, and its `config.json` from `config` and `opts` (RUN-12).
    ///
    /// The hostname defaults to the first 12 characters of the container id (the host's
    /// with the host's network). `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` are
    /// written into the directory and bind-mounted (RUN-37). Needs root ([`Error::NotRoot`]).
    pub fn create(
        store: &Store,
        lowers: &[PathBuf],
        config: &ImageConfiguration,
        opts: &RunOptions,
    ) -> Result<Bundle> {
        require_root()?;
        if lowers.is_empty() {
            return Err(Error::Spec(
                "the image has no layers: nothing to run".into(),
            ));
        }
        let id = new_id()?;
        let dir = store.root().join("containers").join(&id);
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true).mode(0o711);
        for sub in ["upper", "work", "rootfs"] {
            builder
                .create(dir.join(sub))
                .map_err(|e| io_error("create directory", &dir.join(sub), e))?;
        }
        let mut bundle = Bundle {
            id,
            dir,
            lowers: lowers.to_vec(),
            spec: Spec::default(),
        };
        let result = (|| {
            let record = ContainerRecord {
                id: bundle.id.clone(),
                lowers: bundle.lowers.clone(),
            };
            write_json(&bundle.dir.join("container.json"), &record)?;
            bundle.mount_rootfs()?;
            let mut opts = opts.clone();
            if opts.hostname.is_none() {
                opts.hostname = Some(match opts.net {
                    NetMode::Host => nix::unistd::gethostname()
                        .map(|h| h.to_string_lossy().into_owned())
                        .map_err(|e| io_error("gethostname", Path::new("host"), e.into()))?,
                    NetMode::None => bundle.id[..12].to_string(),
                });
            }
            let hostname = opts.hostname.clone().unwrap_or_default();
            for (container, host) in etc_files::write(&bundle.dir, opts.net, &hostname)? {
                opts.generated_files.push(mounts::Volume {
                    host,
                    container,
                    read_only: false,
                });
            }
            bundle.spec = runtime_spec(config, &bundle.rootfs(), &opts)?;
            // Rootless ferry owns no cgroup: runc then leaves the container in ferry's (RUN-48).
            if let Some(linux) = bundle.spec.linux_mut() {
                if !crate::userns::in_user_namespace() {
                    linux.set_cgroups_path(Some(PathBuf::from(format!("/ferry/{}", bundle.id))));
                }
            }
            write_json(&bundle.dir.join("config.json"), &bundle.spec)
        })();
        match result {
            Ok(()) => Ok(bundle),
            Err(e) => {
                if let Err(cleanup) = bundle.remove_dir() {
                    tracing::warn!("removing failed container {}: {cleanup}", bundle.id);
                }
                Err(e)
            }
        }
    }

    /// The container id: 64 lowercase hex characters.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container directory, `STORE_ROOT/containers/<id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the container's root filesystem is mounted.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The OCI runtime spec the container runs with (also in `config.json`).
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Unmounts the rootfs and removes the container directory, for `--rm` (RUN-16).
    pub fn remove(self) -> Result<()> {
        self.remove_dir()
    }

    fn remove_dir(&self) -> Result<()> {
        self.unmount_rootfs()?;
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_error("remove container", &self.dir, e))
            }
            _ => Ok(()),
        }
    }

    /// Mounts the overlay of the snapshots and `upper/` on `rootfs/`, unless it is mounted.
    fn mount_rootfs(&self) -> Result<()> {
        let rootfs = self.rootfs();
        if is_mount_point(&rootfs)? {
            return Ok(());
        }
        let upper = self.dir.join("upper");
        let work = self.dir.join("work");
        // Rootless, overlayfs keeps its metadata in user.overlay.* xattrs (RUN-46).
        let userxattr = if crate::userns::in_user_namespace() {
            ",userxattr"
        } else {
            ""
        };
        let layers = |names: Vec<String>| {
            format!(
                "lowerdir={},upperdir={},workdir={}{userxattr}",
                names.join(":"),
                upper.display(),
                work.display()
            )
        };
        // overlayfs takes the top lower first.
        let mut data = layers(
            self.lowers
                .iter()
                .rev()
                .map(|l| l.display().to_string())
                .collect(),
        );
        // Mount options are limited to a page: name many layers by short fd paths instead.
        let mut fds = Vec::new();
        if data.len() >= 4000 {
            for lower in self.lowers.iter().rev() {
                let fd = open(
                    lower,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_error("open snapshot", lower, e.into()))?;
                // SAFETY: `open` just returned this descriptor and nothing else owns it.
                fds.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
            data = layers(
                fds.iter()
                    .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .collect(),
            );
        }
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| io_error("mount overlay", &rootfs, e.into()))
    }

    fn unmount_rootfs(&self) -> Result<()> {
        let rootfs = self.rootfs();
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_error("unmount", &rootfs, e.into())),
        }
    }
}

/// Runs the container in the foreground with its standard streams passed through, and
/// returns its exit code (128 + signal number if a signal killed it) (RUN-15).
///
/// SIGINT and SIGTERM sent to ferry meanwhile are forwarded to the container. The rootfs
/// is unmounted when the container exits; the directory stays until [`Bundle::remove`].
pub fn run(bundle: &Bundle, runtime: RuntimeKind) -> Result<i32> {
    run_with_stdio(bundle, runtime, Stdio::default())
}

/// [`run`], with the container's standard streams connected to `stdio`.
pub fn run_with_stdio(bundle: &Bundle, runtime: RuntimeKind, stdio: Stdio) -> Result<i32> {
    require_root()?;
    bundle.mount_rootfs()?;
    let result = match runtime {
        RuntimeKind::Builtin => builtin::run(bundle, stdio),
        RuntimeKind::Runc => runc::run(bundle, stdio),
    };
    let unmounted = bundle.unmount_rootfs();
    let code = result?;
    unmounted.map(|()| code)
}

/// Snapshot directories that containers in `store` use, so that GC keeps them (RUN-10).
pub(crate) fn lowers_in_use(store: &Store) -> Result<Vec<PathBuf>> {
    let root = store.root().join("containers");
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list containers", &root, e)),
    };
    let mut lowers = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| io_error("list containers", &root, e))?
            .path()
            .join("container.json");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // A container being created or removed right now.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let record: ContainerRecord = serde_json::from_slice(&bytes).map_err(|e| {
            io_error(
                "parse",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        lowers.extend(record.lowers);
    }
    Ok(lowers)
}

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// 32 random bytes in hex.
fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        match Errno::result(n) {
            Ok(n) => filled += n as usize,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_error("getrandom", Path::new("container id"), e.into())),
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
fn is_mount_point(path: &Path) -> Result<bool> {
    let dev = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| io_error("stat", p, e))
    };
    Ok(dev(path)? != dev(&path.join(".."))?)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Spec(format!("{}: {e}", path.display())))?;
    fs::write(path, bytes).map_err(|e| io_error("write", path, e))
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The exit code of a waited-for process: its status, or 128 + the signal that killed it.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Waits for `pid` to end and returns its exit code.
fn wait_exit(pid: Pid) -> Result<i32> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(io_error(
                    "wait for container",
                    Path::new(&pid.to_string()),
                    e.into(),
                ))
            }
        }
    }
}

/// Processes that SIGINT and SIGTERM are forwarded to; 0 marks a free slot.
static FORWARD_TO: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];
/// Slots taken, and the dispositions to restore when the last one is freed.
static FORWARDING: Mutex<(usize, Vec<(Signal, SigAction)>)> = Mutex::new((0, Vec::new()));
const FORWARDED: [Signal; 2] = [Signal::SIGINT, Signal::SIGTERM];

extern "C" fn forward_signal(signal: libc::c_int) {
    for slot in &FORWARD_TO {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// While it lives, ferry forwards SIGINT and SIGTERM to one process (RUN-15).
struct SignalForwarder {
    slot: usize,
}

impl SignalForwarder {
    /// Starts catching the signals; set the target with [`SignalForwarder::set`].
    fn start() -> Result<SignalForwarder> {
        let mut state = FORWARDING.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = (0..FORWARD_TO.len())
            .find(|&i| {
                FORWARD_TO[i]
                    .compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
            .ok_or_else(|| Error::Spec("too many containers running in this process".into()))?;
        if state.0 == 0 {
            let action = SigAction::new(
                SigHandler::Handler(forward_signal),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            for signal in FORWARDED {
                // SAFETY: the handler only reads atomics and calls kill(2).
                match unsafe { sigaction(signal, &action) } {
                    Ok(old) => state.1.push((signal, old)),
                    Err(e) => {
                        restore_handlers(&mut state.1);
                        FORWARD_TO[slot].store(0, Ordering::SeqCst);
                        let signal = Path::new(signal.as_str());
                        return Err(io_error("install signal handler", signal, e.into()));
                    }
                }
            }
        }
        state.0 += 1;
        Ok(SignalForwarder { slot })
    }

    /// Forwards to `pid` from now on.
    fn set(&self, pid: Pid) {
        FORWARD_TO[self.slot].store(pid.as_raw(), Ordering::SeqCst);
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        let mut state = FORWARDING.lock().unwrap_or_else(PoisonError::into_inner);
        FORWARD_TO[self.slot].store(0, Ordering::SeqCst);
        state.0 -= 1;
        if state.0 == 0 {
            restore_handlers(&mut state.1);
        }
    }
}

/// Puts back the signal dispositions saved by [`SignalForwarder::start`].
fn restore_handlers(saved: &mut Vec<(Signal, SigAction)>) {
    for (signal, old) in saved.drain(..) {
        // SAFETY: restores a disposition that was in place before.
        if let Err(e) = unsafe { sigaction(signal, &old) } {
            tracing::warn!("restoring the {signal} handler: {e}");
        }
    }
}

//! Running a bundle with `runc run` (specs/runtime.md RUN-14): `runc run` in the foreground
//! handles the terminal itself when the spec asks for one (RUN-30).
//!
//! runc keeps its state in `containers/<id>/runc/` and logs to `containers/<id>/runc.log`
//! (JSON lines), where ferry finds its error when it fails to start the container.

use std::process::{Command, Stdio as ProcessStdio};

use nix::unistd::Pid;

use super::cgroup::OomWatch;
use super::{io_error, wait_exit, Bundle, SignalForwarder, Stdio};
use crate::{Error, Result};

const RUNC: &str = "runc";

/// Runs `bundle` with runc and returns the container's exit code.
pub(super) fn run(bundle: &Bundle, stdio: Stdio) -> Result<i32> {
    let state = bundle.dir.join("runc");
    let log = bundle.dir.join("runc.log");
    let stream = |fd: Option<std::os::fd::OwnedFd>| {
        fd.map_or_else(ProcessStdio::inherit, ProcessStdio::from)
    };
    if let Err(e) = std::fs::remove_file(&log) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(io_error("remove old runc log", &log, e));
        }
    }
    let oom = OomWatch::for_spec(&bundle.spec)?;
    let rootless = crate::userns::in_user_namespace();
    let forwarder = SignalForwarder::start()?;
    let child = Command::new(RUNC)
        .arg("--root")
        .arg(&state)
        .arg("--log")
        .arg(&log)
        // In rootless ferry's user namespace runc is root but owns no cgroup (RUN-46).
        .args(["--rootless", if rootless { "true" } else { "false" }])
        .args(["--log-format", "json", "run", "--bundle"])
        .arg(&bundle.dir)
        .arg(&bundle.id)
        .stdin(stream(stdio.stdin))
        .stdout(stream(stdio.stdout))
        .stderr(stream(stdio.stderr))
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                runc_error("not found in PATH (install runc, or use the builtin runtime)")
            }
            _ => io_error("start runc", &bundle.dir, e),
        })?;
    let pid = Pid::from_raw(child.id() as i32);
    forwarder.set(pid);
    let code = wait_exit(pid);
    drop(forwarder);
    // `runc run` deletes the container when it ends; make sure nothing stays behind.
    if state.join(&bundle.id).exists() {
        let deleted = Command::new(RUNC)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force"])
            .arg(&bundle.id)
            .stdout(ProcessStdio::null())
            .stderr(ProcessStdio::null())
            .status();
        if !deleted.is_ok_and(|s| s.success()) {
            tracing::warn!("runc delete {} failed", bundle.id);
        }
    }
    let code = code?;
    if let Some(oom) = oom {
        oom.finish(&bundle.id, code);
    }
    if let Some(message) = start_error(&log) {
        return Err(match exec_errno(&message) {
            Some(errno) => Error::Exec {
                id: bundle.id.clone(),
                command: bundle
                    .spec
                    .process()
                    .as_ref()
                    .and_then(|p| p.args().as_ref()?.first().cloned())
                    .unwrap_or_default(),
                source: std::io::Error::from_raw_os_error(errno),
            },
            None => runc_error(&message),
        });
    }
    Ok(code)
}

/// runc's own error, if it logged one: it failed before or while starting the process.
fn start_error(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["level"] == "error")
        .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
        .next_back()
}

/// The errno behind runc's message when it is the container's `execve` that failed:
/// `ENOENT` (not found), `EACCES` or `ENOEXEC` (cannot be executed) (RUN-38).
fn exec_errno(message: &str) -> Option<i32> {
    let (_, detail) = message.split_once("unable to start container process: exec: ")?;
    if detail.contains("executable file not found") || detail.contains("no such file or directory")
    {
        Some(libc::ENOENT)
    } else if detail.contains("permission denied") {
        Some(libc::EACCES)
    } else if detail.contains("exec format error") {
        Some(libc::ENOEXEC)
    } else {
        None
    }
}

fn runc_error(reason: &str) -> Error {
    Error::ExternalRuntime {
        program: RUNC.into(),
        reason: reason.into(),
    }
}

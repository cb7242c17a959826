//! ferry's test kit: real servers (registry, S3) on 127.0.0.1, fixture images built with
//! umoci from busybox-static, and helpers to run the `ferry` binary.
//!
//! Everything here starts real programs; nothing is mocked.

pub mod clients;
pub mod conformance;
pub mod fixtures;
pub mod proxy;
pub mod registry;
pub mod s3;
pub mod serve;
pub mod token;
pub mod tree;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testkit lives two levels below the workspace root")
        .to_path_buf()
}

/// The cargo target directory tests were built into.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of the built `ferry` binary (`cargo build` puts it there before tests run).
pub fn ferry_bin() -> PathBuf {
    let bin = target_dir().join("debug").join("ferry");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test does)",
        bin.display()
    );
    bin
}

/// Whether the tests run as root (namespaces, overlayfs, chown need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Runs a command and returns its stdout; panics with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout: {}\nstderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its output, panicking only if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed? see .ci/run)"))
}

/// Runs a command with `input` on its stdin and returns its output.
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing stdin");
    child.wait_with_output().expect("waiting for the command")
}

/// Starts `pull`, a `ferry pull --json …` command (through a throttled proxy), and returns
/// once more than 1 MiB of a blob is in; its stdout keeps being drained so it never blocks.
pub fn spawn_pull_until_partly_in(pull: &mut Command) -> Child {
    let mut child = pull
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {pull:?}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    loop {
        let line = lines
            .next()
            .expect("pull ended before a layer was partly in")
            .expect("reading the pull's events");
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON event ({e}): {line}"));
        if event["event"] == "blob-progress" && event["done"].as_u64().unwrap_or(0) > 1 << 20 {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// A `ferry` command with its own store root and no inherited configuration.
pub fn ferry(root: &Path) -> Command {
    let mut cmd = Command::new(ferry_bin());
    cmd.env("FERRY_ROOT", root)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_POLICY")
        .env("NO_COLOR", "1");
    cmd
}

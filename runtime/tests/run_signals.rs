//! Signals and exit codes of running containers (specs/runtime.md RUN-15).
//!
//! Needs root, `/bin/busybox` and `runc`; without root it prints a notice and passes without
//! checking anything. One test only: it signals its own process, which must not disturb
//! other tests' containers.

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_core::oci_spec::image::ImageConfiguration;
use ferry_core::Store;
use ferry_runtime::run::{run_with_stdio, Bundle, RuntimeKind, Stdio};
use ferry_runtime::spec::RunOptions;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn busybox_rootfs(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

fn image() -> ImageConfiguration {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Cmd": ["/bin/sh"]},
    }))
    .unwrap()
}

/// Polls `check` for up to ten seconds.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<Pid> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .map(Pid::from_raw)
        .collect()
}

#[test]
fn signals_are_forwarded_and_deaths_by_signal_give_128_plus_n() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOTICE: skipping: running containers needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let lower = dir.path().join("layer");
    busybox_rootfs(&lower);
    let lowers = [lower];

    for (n, runtime) in [RuntimeKind::Builtin, RuntimeKind::Runc]
        .into_iter()
        .enumerate()
    {
        // SIGTERM to ferry reaches the container, whose trap decides the exit code.
        let script = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done";
        let opts = RunOptions {
            args_override: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        };
        let bundle = Bundle::create(&store, &lowers, &image(), &opts).unwrap();
        let out = tempfile::tempfile().unwrap();
        let stdio = Stdio {
            stdout: Some(out.try_clone().unwrap().into()),
            ..Default::default()
        };
        let code = std::thread::scope(|s| {
            let running = s.spawn(|| run_with_stdio(&bundle, runtime, stdio).unwrap());
            let mut watch = out.try_clone().unwrap();
            wait_for("the trap to be set", || {
                let mut text = String::new();
                watch.rewind().unwrap();
                watch.read_to_string(&mut text).unwrap();
                text.contains("ready")
            });
            kill(Pid::this(), Signal::SIGTERM).unwrap();
            running.join().unwrap()
        });
        assert_eq!(code, 42, "{runtime:?}");
        bundle.remove().unwrap();

        // A container killed by a signal reports 128 + its number.
        let marker = format!("31.{n}4159");
        let opts = RunOptions {
            args_override: vec!["sleep".into(), marker.clone()],
            ..Default::default()
        };
        let bundle = Bundle::create(&store, &lowers, &image(), &opts).unwrap();
        let code = std::thread::scope(|s| {
            let running = s.spawn(|| run_with_stdio(&bundle, runtime, Stdio::default()).unwrap());
            let mut found = Vec::new();
            wait_for("the container to start", || {
                found = processes_running(&["sleep", &marker]);
                !found.is_empty()
            });
            assert_eq!(found.len(), 1);
            kill(found[0], Signal::SIGKILL).unwrap();
            running.join().unwrap()
        });
        assert_eq!(code, 128 + 9, "{runtime:?}");
        bundle.remove().unwrap();
    }
}

//! Running containers with the builtin runtime and with runc (specs/runtime.md RUN-12…RUN-16).
//!
//! These tests need root (namespaces, overlayfs, mknod), `/bin/busybox` (busybox-static) and
//! `runc`; without root they print a notice and pass without checking anything.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use ferry_core::oci_spec::image::ImageConfiguration;
use ferry_core::Store;
use ferry_runtime::run::{run_with_stdio, Bundle, RuntimeKind, Stdio};
use ferry_runtime::spec::{NetMode, RunOptions};
use ferry_runtime::Error;

const RUNTIMES: [RuntimeKind; 2] = [RuntimeKind::Builtin, RuntimeKind::Runc];

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("NOTICE: skipping: running containers needs root");
    false
}

/// A store, and a one-layer "image" holding a static busybox, `/etc/passwd` and `/etc/group`.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    lower: PathBuf,
}

impl Fixture {
    fn lowers(&self) -> &[PathBuf] {
        std::slice::from_ref(&self.lower)
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let lower = dir.path().join("layer");
    busybox_rootfs(&lower);
    Fixture {
        _dir: dir,
        store,
        lower,
    }
}

fn busybox_rootfs(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "true", "id", "pwd", "env", "hostname", "ls", "cat", "grep", "sleep",
        "touch", "mount", "wc",
    ] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1001:\nextra:x:2000:app\n",
    )
    .unwrap();
}

fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": config,
    }))
    .unwrap()
}

/// What a container printed and how it ended.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_in(
    fx: &Fixture,
    runtime: RuntimeKind,
    config: serde_json::Value,
    opts: &RunOptions,
) -> Outcome {
    let bundle = Bundle::create(&fx.store, fx.lowers(), &image(config), opts).unwrap();
    let outcome = run_bundle(&bundle, runtime).unwrap();
    bundle.remove().unwrap();
    outcome
}

fn run_bundle(bundle: &Bundle, runtime: RuntimeKind) -> ferry_runtime::Result<Outcome> {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let stdio = Stdio {
        stdin: None,
        stdout: Some(out.try_clone().unwrap().into()),
        stderr: Some(err.try_clone().unwrap().into()),
    };
    let code = run_with_stdio(bundle, runtime, stdio)?;
    let read = |mut f: fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    Ok(Outcome {
        code,
        stdout: read(out),
        stderr: read(err),
    })
}

fn sh(script: &str) -> RunOptions {
    RunOptions {
        args_override: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn cmd_image() -> serde_json::Value {
    serde_json::json!({"Cmd": ["/bin/sh"]})
}

/// RUN-13, RUN-14
#[test]
fn echo_prints_to_stdout() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    for runtime in RUNTIMES {
        let opts = RunOptions {
            args_override: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        let out = run_in(&fx, runtime, cmd_image(), &opts);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "hi\n"),
            "{runtime:?}: {}",
            out.stderr
        );
    }
}

/// RUN-15
#[test]
fn exit_code_is_returned() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    for runtime in RUNTIMES {
        let out = run_in(&fx, runtime, cmd_image(), &sh("echo oops >&2; exit 3"));
        assert_eq!(out.code, 3, "{runtime:?}");
        assert_eq!(out.stderr, "oops\n", "{runtime:?}");
    }
}

/// RUN-1…RUN-4: the image's Entrypoint, Cmd, Env, WorkingDir and User apply with no command given.
#[test]
fn image_config_is_honoured_without_a_command() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    let config = serde_json::json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo \"$GREETING\"; pwd; id -u; id -g; id -G; echo $HOME; echo $PATH"],
        "Env": ["GREETING=hello from env"],
        "WorkingDir": "/srv/made/by/runtime",
        "User": "app",
    });
    for runtime in RUNTIMES {
        let out = run_in(&fx, runtime, config.clone(), &RunOptions::default());
        assert_eq!(out.code, 0, "{runtime:?}: {}", out.stderr);
        let want = "hello from env\n/srv/made/by/runtime\n1000\n1001\n1001 2000\n/home/app\n\
                    /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n";
        assert_eq!(out.stdout, want, "{runtime:?}");
    }
    // Command-line overrides: args replace Cmd, -e, -w and -u win.
    for runtime in RUNTIMES {
        let opts = RunOptions {
            args_override: vec!["echo $GREETING $EXTRA; pwd; id -u".into()],
            env: vec![
                ("GREETING".into(), "cli".into()),
                ("EXTRA".into(), "x".into()),
            ],
            workdir: Some("/tmp".into()),
            user: Some("0:0".into()),
            ..Default::default()
        };
        let out = run_in(&fx, runtime, config.clone(), &opts);
        assert_eq!(
            out.stdout, "cli x\n/tmp\n0\n",
            "{runtime:?}: {}",
            out.stderr
        );
    }
}

/// RUN-5: the command is PID 1 of its own PID namespace, with its own hostname.
#[test]
fn command_is_pid_1_with_its_own_hostname() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    for runtime in RUNTIMES {
        let opts = RunOptions {
            hostname: Some("box1".into()),
            ..sh("echo $$; hostname; ls /proc | grep -c '^[0-9]'")
        };
        let out = run_in(&fx, runtime, cmd_image(), &opts);
        // Only sh and ls (or grep) are in the namespace.
        assert!(
            out.stdout.starts_with("1\nbox1\n"),
            "{runtime:?}: {}{}",
            out.stdout,
            out.stderr
        );
        let count: u32 = out.stdout.lines().nth(2).unwrap().parse().unwrap();
        assert!(count <= 3, "{runtime:?}: {count} processes visible");

        let bundle =
            Bundle::create(&fx.store, fx.lowers(), &image(cmd_image()), &sh("hostname")).unwrap();
        let out = run_bundle(&bundle, runtime).unwrap();
        assert_eq!(
            out.stdout.trim(),
            &bundle.id()[..12],
            "{runtime:?}: default hostname"
        );
        bundle.remove().unwrap();
    }
}

/// RUN-5: --net none leaves only `lo`; host networking shows the host's devices.
#[test]
fn network_none_has_only_loopback() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    let host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for runtime in RUNTIMES {
        let out = run_in(&fx, runtime, cmd_image(), &sh("ls /sys/class/net"));
        assert_eq!(out.stdout, "lo\n", "{runtime:?}: {}", out.stderr);
        let opts = RunOptions {
            net: NetMode::Host,
            ..sh("ls /sys/class/net")
        };
        let out = run_in(&fx, runtime, cmd_image(), &opts);
        assert_eq!(
            out.stdout.lines().count(),
            host.len(),
            "{runtime:?}: {}",
            out.stdout
        );
    }
}

/// RUN-6, RUN-7: Docker's capabilities, no_new_privs, masked and read-only paths.
#[test]
fn process_is_confined() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    let script = "grep -E '^(CapBnd|CapEff|CapInh|CapAmb|NoNewPrivs)' /proc/self/status; \
                  wc -c < /proc/timer_list; ls /sys/firmware | wc -l; ls /proc/acpi | wc -l; \
                  touch /proc/sys/kernel/hostname 2>/dev/null && echo writable || echo readonly; \
                  touch /sys/x 2>/dev/null && echo writable || echo readonly; \
                  ls /dev; grep -c ' /proc/sys proc ro,' /proc/mounts";
    for runtime in RUNTIMES {
        let out = run_in(&fx, runtime, cmd_image(), &sh(script));
        assert_eq!(out.code, 0, "{runtime:?}: {}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            &lines[..5],
            [
                "CapInh:\t0000000000000000",
                "CapEff:\t00000000a80425fb",
                "CapBnd:\t00000000a80425fb",
                "CapAmb:\t0000000000000000",
                "NoNewPrivs:\t1",
            ],
            "{runtime:?}"
        );
        assert_eq!(
            &lines[5..10],
            ["0", "0", "0", "readonly", "readonly"],
            "{runtime:?}"
        );
        for dev in [
            "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx",
            "fd",
        ] {
            assert!(
                lines.contains(&dev),
                "{runtime:?}: /dev/{dev} missing: {lines:?}"
            );
        }
        assert_eq!(
            lines.last(),
            Some(&"1"),
            "{runtime:?}: /proc/sys read-only mount"
        );
    }
}

/// RUN-12: writes go to the container's upper directory, never to the snapshot.
#[test]
fn writes_land_in_upper_not_in_the_snapshot() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    for runtime in RUNTIMES {
        let bundle = Bundle::create(
            &fx.store,
            fx.lowers(),
            &image(cmd_image()),
            &sh("echo data > /etc/new; rm /bin/true; cat /etc/new"),
        )
        .unwrap();
        let out = run_bundle(&bundle, runtime).unwrap();
        assert_eq!(out.stdout, "data\n", "{runtime:?}: {}", out.stderr);
        assert_eq!(
            fs::read_to_string(bundle.dir().join("upper/etc/new")).unwrap(),
            "data\n"
        );
        assert!(
            fx.lower.join("bin/true").exists(),
            "{runtime:?}: snapshot was modified"
        );
        assert!(!fx.lower.join("etc/new").exists());
        let config: serde_json::Value =
            serde_json::from_slice(&fs::read(bundle.dir().join("config.json")).unwrap()).unwrap();
        assert_eq!(
            config["root"]["path"],
            bundle.rootfs().display().to_string()
        );
        bundle.remove().unwrap();
    }
}

/// RUN-16: removing a container unmounts it and deletes its directory.
#[test]
fn remove_unmounts_and_deletes_the_container() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    let bundle = Bundle::create(&fx.store, fx.lowers(), &image(cmd_image()), &sh("true")).unwrap();
    let dir = bundle.dir().to_path_buf();
    assert!(dir.starts_with(fx.store.root().join("containers")));
    for sub in ["upper", "work", "rootfs", "config.json", "container.json"] {
        assert!(dir.join(sub).exists(), "{sub}");
    }
    assert!(mounted(&bundle.rootfs()), "rootfs is mounted after create");
    assert_eq!(run_bundle(&bundle, RuntimeKind::Builtin).unwrap().code, 0);
    assert!(
        !mounted(&bundle.rootfs()),
        "rootfs is unmounted after the run"
    );
    // Running again remounts it.
    assert_eq!(run_bundle(&bundle, RuntimeKind::Runc).unwrap().code, 0);
    bundle.remove().unwrap();
    assert!(!dir.exists());
    // Failing to build the spec leaves nothing behind.
    let err = Bundle::create(
        &fx.store,
        fx.lowers(),
        &image(serde_json::json!({})),
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoCommand), "{err}");
    assert_eq!(
        fs::read_dir(fx.store.root().join("containers"))
            .unwrap()
            .count(),
        0
    );
}

/// RUN-13, RUN-14, RUN-38: a command that cannot start is an exec error naming it and its
/// errno (ENOENT: not found), not an exit code, with both runtimes.
#[test]
fn missing_command_is_a_clear_error() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    for runtime in RUNTIMES {
        let opts = RunOptions {
            args_override: vec!["no-such-command".into()],
            ..Default::default()
        };
        let bundle = Bundle::create(&fx.store, fx.lowers(), &image(cmd_image()), &opts).unwrap();
        let err = run_bundle(&bundle, runtime).err().expect("no error");
        let msg = err.to_string();
        assert!(msg.contains("no-such-command"), "{runtime:?}: {msg}");
        match &err {
            Error::Exec {
                command, source, ..
            } => {
                assert_eq!(command, "no-such-command", "{runtime:?}");
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{runtime:?}");
            }
            other => panic!("{runtime:?}: not an exec error: {other}"),
        }
        bundle.remove().unwrap();
    }
}

/// RUN-12: many layers still mount (the overlay options would not fit in a page).
#[test]
fn many_layers_mount_in_order() {
    if !is_root() {
        return;
    }
    let fx = fixture();
    let deep = fx.lower.parent().unwrap().join("x".repeat(120));
    let mut lowers = vec![fx.lower.clone()];
    for i in 0..60 {
        let layer = deep.join(format!("layer-{i:02}-{}", "y".repeat(60)));
        fs::create_dir_all(layer.join("layers")).unwrap();
        fs::write(layer.join("layers").join(format!("{i:02}")), "").unwrap();
        fs::write(layer.join("top"), format!("{i}\n")).unwrap();
        lowers.push(layer);
    }
    let bundle = Bundle::create(
        &fx.store,
        &lowers,
        &image(cmd_image()),
        &sh("cat /top; ls /layers | wc -l"),
    )
    .unwrap();
    let out = run_bundle(&bundle, RuntimeKind::Builtin).unwrap();
    assert_eq!(out.stdout, "59\n60\n", "{}", out.stderr);
    bundle.remove().unwrap();
}

fn mounted(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

/// RUN-17: without root, creating a container fails with an error that says so.
#[test]
fn non_root_is_told_that_run_needs_root() {
    const CHILD: &str = "FERRY_TEST_NOT_ROOT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let err = Bundle::create(
            &store,
            &[dir.path().to_path_buf()],
            &image(cmd_image()),
            &sh("true"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotRoot), "{err}");
        assert!(
            err.to_string().contains("running containers needs root"),
            "{err}"
        );
        assert!(!store.root().join("containers").exists());
        return;
    }
    if !is_root() {
        return;
    }
    // Run this very test again as nobody.
    use std::os::unix::process::CommandExt;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "non_root_is_told_that_run_needs_root",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("TMPDIR", "/tmp")
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}

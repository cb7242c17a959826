//! `ferry run`'s options for daily use, end to end, each through the builtin runtime and
//! runc (specs/runtime.md RUN-30…RUN-38): bind and tmpfs mounts, a hostile image symlink,
//! entrypoint, hostname, read-only root, capabilities, init, seccomp, the `/etc` files and
//! docker's exit codes.
//!
//! Needs root (namespaces, overlayfs, mounts): CI runs as root; elsewhere these tests print a
//! notice and return.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::fixtures::{Fixtures, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::{ferry, is_root, output, run_ok};

const RUNTIMES: [&str; 2] = ["builtin", "runc"];

struct Env {
    _registry: Registry,
    root: tempfile::TempDir,
    busybox: String,
    /// busybox plus `/data -> /etc`.
    symlinked: String,
}

fn env() -> Option<Env> {
    if !is_root() {
        eprintln!("skipped: ferry run needs root (CI runs as root)");
        return None;
    }
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &registry.host(), "busybox:1", false, None);
    let symlinked = format!("{}/symlinked:1", registry.host());
    push_symlinked_image(&fx, &symlinked);
    let env = Env {
        busybox: format!("{}/busybox:1", registry.host()),
        symlinked,
        _registry: registry,
        root: tempfile::tempdir().unwrap(),
    };
    // Pulled ahead, so that runs print only what the container and ferry's errors say.
    for image in [&env.busybox, &env.symlinked] {
        run_ok(ferry(env.root.path()).args(["pull", image]));
    }
    Some(env)
}

/// Builds busybox with an extra layer holding the symlink `/data -> /etc` (umoci) and
/// pushes it (skopeo).
fn push_symlinked_image(fx: &Fixtures, dest: &str) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    run_ok(Command::new("cp").arg("-a").arg(fx.layout()).arg(&layout));
    let link_dir = work.path().join("add");
    std::fs::create_dir(&link_dir).unwrap();
    std::os::unix::fs::symlink("/etc", link_dir.join("data")).unwrap();
    let image = format!("{}:{BUSYBOX}", layout.display());
    run_ok(
        Command::new("umoci")
            .args(["insert", "--image", &image, "--tag", "symlinked"])
            .arg(link_dir.join("data"))
            .arg("/data"),
    );
    run_ok(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:symlinked", layout.display()),
        &format!("docker://{dest}"),
    ]));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry run --rm --runtime RUNTIME ARGS…`.
fn run(env: &Env, runtime: &str, args: &[&str]) -> Output {
    output(
        ferry(env.root.path())
            .args(["run", "--rm", "--runtime", runtime])
            .args(args),
    )
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        stderr(out)
    );
    stdout(out)
}

#[test]
fn bind_mounts_read_and_write_and_ro_refuses_writes() {
    // RUN-31
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("in"), "from the host\n").unwrap();
        let rw = format!("{}:/mnt/share", host.path().display());
        let out = run(
            &env,
            runtime,
            &[
                "-v",
                &rw,
                &env.busybox,
                "sh",
                "-c",
                "cat /mnt/share/in; echo back > /mnt/share/out",
            ],
        );
        assert_eq!(ok(&out, runtime), "from the host\n", "{runtime}");
        assert_eq!(
            std::fs::read_to_string(host.path().join("out")).unwrap(),
            "back\n",
            "{runtime}"
        );

        let ro = format!("{}:/mnt/share:ro", host.path().display());
        let out = run(
            &env,
            runtime,
            &[
                "-v",
                &ro,
                &env.busybox,
                "sh",
                "-c",
                "cat /mnt/share/in; touch /mnt/share/new",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{runtime}: {}", stderr(&out));
        assert_eq!(stdout(&out), "from the host\n", "{runtime}");
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{runtime}: {}",
            stderr(&out)
        );
        assert!(!host.path().join("new").exists(), "{runtime}");
    }
}

#[test]
fn an_image_symlink_cannot_send_a_mount_onto_the_hosts_etc() {
    // RUN-31: the image's /data -> /etc resolves to the container's /etc.
    let Some(env) = env() else { return };
    let canary = Path::new("/etc").join(format!("ferry-canary-{}", std::process::id()));
    std::fs::write(&canary, "host\n").unwrap();
    let cleanup = Canary(&canary);
    for runtime in RUNTIMES {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("mounted"), "volume\n").unwrap();
        let volume = format!("{}:/data", host.path().display());
        let name = canary.file_name().unwrap().to_str().unwrap();
        let script = format!(
            "cat /etc/mounted; test -e /etc/{name} && echo host canary visible; echo c > /data/{name}"
        );
        let out = run(
            &env,
            runtime,
            &["-v", &volume, &env.symlinked, "sh", "-c", &script],
        );
        assert_eq!(ok(&out, runtime), "volume\n", "{runtime}");
        // The write through /data landed in the volume, not in the host's /etc.
        assert_eq!(
            std::fs::read_to_string(&canary).unwrap(),
            "host\n",
            "{runtime}"
        );
        assert_eq!(
            std::fs::read_to_string(host.path().join(name)).unwrap(),
            "c\n",
            "{runtime}"
        );
    }
    drop(cleanup);
}

/// Removes the host canary file even when an assertion fails.
struct Canary<'a>(&'a Path);

impl Drop for Canary<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

#[test]
fn a_missing_host_path_is_a_clear_error_with_125() {
    // RUN-31, RUN-38
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        let out = run(
            &env,
            runtime,
            &["-v", "/no/such/ferry-dir:/data", &env.busybox, "true"],
        );
        assert_eq!(out.status.code(), Some(125), "{runtime}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{runtime}: {err}");
        assert!(
            err.contains("host path /no/such/ferry-dir does not exist"),
            "{runtime}: {err}"
        );
    }
}

#[test]
fn tmpfs_mounts_get_their_options() {
    // RUN-32
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        let out = run(
            &env,
            runtime,
            &[
                "--tmpfs",
                "/scratch:size=1m,mode=0700",
                &env.busybox,
                "sh",
                "-c",
                "echo x > /scratch/f && cat /proc/mounts",
            ],
        );
        let mounts = ok(&out, runtime);
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some("/scratch"))
            .unwrap_or_else(|| panic!("{runtime}: no /scratch in {mounts}"));
        assert!(
            line.starts_with("tmpfs /scratch tmpfs "),
            "{runtime}: {line}"
        );
        for option in ["nosuid", "nodev", "noexec", "size=1024k", "mode=700"] {
            assert!(
                line.contains(option),
                "{runtime}: {option} missing in {line}"
            );
        }
    }
}

#[test]
fn entrypoint_hostname_and_read_only_root() {
    // RUN-33
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        let out = run(
            &env,
            runtime,
            &["--entrypoint", "echo", &env.busybox, "a", "b"],
        );
        assert_eq!(ok(&out, runtime), "a b\n", "{runtime}");

        let out = run(
            &env,
            runtime,
            &[
                "--hostname",
                "box7",
                &env.busybox,
                "sh",
                "-c",
                "hostname; cat /etc/hostname",
            ],
        );
        assert_eq!(ok(&out, runtime), "box7\nbox7\n", "{runtime}");

        let script = "touch /root-file; echo $?; touch /dev/shm/f && echo shm; \
                      touch /tmp/f && echo tmp";
        let out = run(
            &env,
            runtime,
            &[
                "--read-only",
                "--tmpfs",
                "/tmp",
                &env.busybox,
                "sh",
                "-c",
                script,
            ],
        );
        assert_eq!(ok(&out, runtime), "1\nshm\ntmp\n", "{runtime}");
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{runtime}: {}",
            stderr(&out)
        );
    }
}

/// The `CapBnd` mask a container shows in /proc/self/status.
fn bounding_set(env: &Env, runtime: &str, flags: &[&str]) -> String {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([env.busybox.as_str(), "cat", "/proc/self/status"]);
    let status = ok(&run(env, runtime, &args), runtime);
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap_or_else(|| panic!("{runtime}: no CapBnd in {status}"))
        .trim()
        .to_string()
}

#[test]
fn capabilities_are_added_and_dropped_as_docker_does() {
    // RUN-34: docker's default set is a80425fb (RUN-6).
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        assert_eq!(
            bounding_set(&env, runtime, &[]),
            "00000000a80425fb",
            "{runtime}"
        );
        assert_eq!(
            bounding_set(
                &env,
                runtime,
                &["--cap-drop", "chown", "--cap-drop", "CAP_KILL"]
            ),
            "00000000a80425da",
            "{runtime}"
        );
        assert_eq!(
            bounding_set(
                &env,
                runtime,
                &["--cap-drop", "ALL", "--cap-add", "NET_ADMIN"]
            ),
            "0000000000001000",
            "{runtime}"
        );
        assert_eq!(
            bounding_set(&env, runtime, &["--cap-add", "SYS_ADMIN"]),
            "00000000a82425fb",
            "{runtime}"
        );
        let out = run(&env, runtime, &["--cap-add", "FLY", &env.busybox, "true"]);
        assert_eq!(out.status.code(), Some(125), "{runtime}");
        assert!(
            stderr(&out).contains("--cap-add FLY: unknown capability"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn init_reaps_orphans_and_forwards_signals() {
    // RUN-35
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        // The inner shell exits at once, orphaning its background sleep to PID 1.
        let script = "sh -c 'sleep 0.2 &'; sleep 1; busybox ps -o pid,stat,comm";
        let out = run(&env, runtime, &["--init", &env.busybox, "sh", "-c", script]);
        let ps = ok(&out, runtime);
        let pid1 = ps
            .lines()
            .find(|l| l.split_whitespace().next() == Some("1"));
        assert!(
            pid1.is_some_and(|l| l.ends_with("init")),
            "{runtime}: PID 1 is not the init: {ps}"
        );
        assert!(
            !ps.lines().any(|l| l.split_whitespace().nth(1) == Some("Z")),
            "{runtime}: a zombie stayed: {ps}"
        );

        // SIGTERM to ferry reaches `sleep` through the init (as PID 1 it would ignore it).
        let mut child = ferry(env.root.path())
            .args([
                "run",
                "--rm",
                "--init",
                "--runtime",
                runtime,
                &env.busybox,
                "sleep",
                "60",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{runtime}: the container ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(143), "{runtime}");
    }
}

#[test]
fn seccomp_denies_unshare_by_default_and_unconfined_allows_it() {
    // RUN-36: unshare(2) needs CAP_SYS_ADMIN in the default profile.
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        let out = run(
            &env,
            runtime,
            &[&env.busybox, "busybox", "unshare", "-U", "true"],
        );
        assert_eq!(out.status.code(), Some(1), "{runtime}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("Operation not permitted"),
            "{runtime}: {}",
            stderr(&out)
        );
        let out = run(
            &env,
            runtime,
            &[
                "--security-opt",
                "seccomp=unconfined",
                &env.busybox,
                "busybox",
                "unshare",
                "-U",
                "true",
            ],
        );
        ok(&out, runtime);
    }
}

#[test]
fn seccomp_profile_files_are_docker_json_and_bad_ones_are_named() {
    // RUN-36
    let Some(env) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13, "comment": "EACCES"}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    for runtime in RUNTIMES {
        let out = run(
            &env,
            runtime,
            &[
                "--security-opt",
                &opt,
                &env.busybox,
                "sh",
                "-c",
                "mkdir /x; echo $?",
            ],
        );
        assert_eq!(ok(&out, runtime), "1\n", "{runtime}");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{runtime}: {}",
            stderr(&out)
        );
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscall": []}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", bad.display());
    let out = run(
        &env,
        "builtin",
        &["--security-opt", &opt, &env.busybox, "true"],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("seccomp profile {}", bad.display())) && err.contains("syscall"),
        "{err}"
    );
}

#[test]
fn etc_files_follow_the_network_mode() {
    // RUN-37
    let Some(env) = env() else { return };
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let host_name = run_ok(&mut Command::new("hostname")).trim().to_string();
    for runtime in RUNTIMES {
        let out = run(
            &env,
            runtime,
            &[
                "--hostname",
                "quiet",
                &env.busybox,
                "sh",
                "-c",
                "cat /etc/hosts; echo --; cat /etc/resolv.conf",
            ],
        );
        let text = ok(&out, runtime);
        let (hosts, resolv) = text.split_once("--\n").unwrap();
        assert!(
            hosts.contains("127.0.0.1\tlocalhost\n"),
            "{runtime}: {hosts}"
        );
        assert!(hosts.contains("\tquiet\n"), "{runtime}: {hosts}");
        assert!(
            hosts
                .lines()
                .all(|l| l.starts_with("127.") || l.starts_with("::1")),
            "{runtime}: {hosts}"
        );
        assert!(!resolv.contains("nameserver"), "{runtime}: {resolv}");

        let out = run(
            &env,
            runtime,
            &[
                "--net",
                "host",
                &env.busybox,
                "sh",
                "-c",
                "cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --; hostname",
            ],
        );
        let text = ok(&out, runtime);
        let parts: Vec<&str> = text.split("--\n").collect();
        assert_eq!(
            parts,
            [
                host_hosts.as_str(),
                host_resolv.as_str(),
                &format!("{host_name}\n")
            ],
            "{runtime}"
        );
    }
}

#[test]
fn exit_codes_are_dockers() {
    // RUN-38
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        let code = |args: &[&str]| {
            let out = run(&env, runtime, args);
            (out.status.code(), stderr(&out))
        };
        let (c, err) = code(&[&env.busybox, "no-such-command"]);
        assert_eq!(c, Some(127), "{runtime}: {err}");
        assert!(err.contains("no-such-command"), "{runtime}: {err}");
        let (c, err) = code(&[&env.busybox, "/etc/passwd"]);
        assert_eq!(c, Some(126), "{runtime}: {err}");
        // A signal's death is 128 + N (as PID 1 the shell could not be killed from inside,
        // so the init runs it).
        let (c, err) = code(&["--init", &env.busybox, "sh", "-c", "kill -9 $$"]);
        assert_eq!(c, Some(137), "{runtime}: {err}");
        let (c, _) = code(&[&env.busybox, "sh", "-c", "exit 7"]);
        assert_eq!(c, Some(7), "{runtime}");
        let (c, err) = code(&["--no-such-flag", &env.busybox, "true"]);
        assert_eq!(c, Some(125), "{runtime}: {err}");
        let (c, err) = code(&["127.0.0.1:1/nothing/here:1", "true"]);
        assert_eq!(c, Some(125), "{runtime}: {err}");
    }
}

#[test]
fn stdin_is_forwarded_only_with_i() {
    // RUN-30
    let Some(env) = env() else { return };
    for runtime in RUNTIMES {
        for (flags, expected) in [(&["-i"][..], "piped\n"), (&[][..], "")] {
            let mut child = ferry(env.root.path())
                .args(["run", "--rm", "--runtime", runtime])
                .args(flags)
                .args([&env.busybox, "cat"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            // Without -i the container reads /dev/null and may be gone already.
            let _ = stdin.write_all(b"piped\n");
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            assert_eq!(ok(&out, runtime), expected, "{runtime} {flags:?}");
        }
    }
}

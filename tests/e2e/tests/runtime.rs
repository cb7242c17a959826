//! `ferry run` and `ferry unpack` end to end: images pulled from a real registry, run with
//! the builtin runtime and with runc, unpacked and compared with umoci's rootfs.
//! Needs root (namespaces, overlayfs, chown): CI runs as root; elsewhere these tests print a
//! notice and return.

use std::process::Output;

use ferry_testkit::fixtures::{Fixtures, APP, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::{ferry, is_root, output, tree};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Env {
    _registry: Registry,
    root: tempfile::TempDir,
    busybox: String,
    app: String,
}

fn env() -> Option<Env> {
    if !is_root() {
        eprintln!("skipped: ferry run needs root (CI runs as root)");
        return None;
    }
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &registry.host(), "busybox:1", false, None);
    fx.push(APP, &registry.host(), "app:1", false, None);
    Some(Env {
        busybox: format!("{}/busybox:1", registry.host()),
        app: format!("{}/app:1", registry.host()),
        _registry: registry,
        root: tempfile::tempdir().unwrap(),
    })
}

#[test]
fn run_pulls_then_prints_and_returns_the_exit_code() {
    let Some(env) = env() else { return };
    for runtime in ["builtin", "runc"] {
        let out = output(ferry(env.root.path()).args([
            "run",
            "--rm",
            "--runtime",
            runtime,
            &env.busybox,
            "echo",
            "hi",
        ]));
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        assert_eq!(stdout(&out), "hi\n", "{runtime}");
        let out = output(ferry(env.root.path()).args([
            "run",
            "--rm",
            "--runtime",
            runtime,
            &env.busybox,
            "sh",
            "-c",
            "exit 3",
        ]));
        assert_eq!(out.status.code(), Some(3), "{runtime}: {}", stderr(&out));
    }
}

#[test]
fn image_config_is_honoured_without_a_command() {
    // Entrypoint + Cmd, Env, WorkingDir and User (a name from the image's /etc/passwd).
    let Some(env) = env() else { return };
    for runtime in ["builtin", "runc"] {
        let out =
            output(ferry(env.root.path()).args(["run", "--rm", "--runtime", runtime, &env.app]));
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "uid=1000 gid=1000 cwd=/work foo=bar\n",
            "{runtime}"
        );
    }
    // -e, -w and -u override the image; arguments replace Cmd and keep the Entrypoint.
    let out = output(ferry(env.root.path()).args([
        "run",
        "--rm",
        "-e",
        "FOO=baz",
        "-w",
        "/tmp",
        "-u",
        "0:0",
        &env.app,
        "echo $FOO $(pwd) $(id -u)",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "baz /tmp 0\n");
}

#[test]
fn containers_are_isolated_and_rm_leaves_nothing() {
    let Some(env) = env() else { return };
    let out = output(ferry(env.root.path()).args([
        "run",
        "--rm",
        &env.busybox,
        "sh",
        "-c",
        "echo $$; ls /sys/class/net",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "1\nlo\n",
        "pid 1 and only loopback with --net none"
    );
    let containers = env.root.path().join("containers");
    let left = std::fs::read_dir(&containers)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "--rm removes the container directory");
    // Writes land in the container's upper dir, never in the shared snapshots.
    let out = output(ferry(env.root.path()).args([
        "run",
        "--rm",
        &env.busybox,
        "sh",
        "-c",
        "rm /bin/echo && echo changed > /etc/passwd",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out =
        output(ferry(env.root.path()).args(["run", "--rm", &env.busybox, "echo", "still here"]));
    assert_eq!(stdout(&out), "still here\n", "{}", stderr(&out));
    let out =
        output(ferry(env.root.path()).args(["run", "--rm", &env.busybox, "cat", "/etc/passwd"]));
    assert!(stdout(&out).starts_with("root:"), "{}", stdout(&out));
}

#[test]
fn run_without_a_command_anywhere_is_a_clear_error() {
    let Some(env) = env() else { return };
    let out = output(ferry(env.root.path()).args(["run", "--rm", &env.busybox, "/no/such/binary"]));
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("/no/such/binary"), "{}", stderr(&out));
}

#[test]
fn unpack_gives_the_same_tree_as_umoci() {
    // UNPACK-2: for each fixture, `ferry pull` + `ferry unpack` against `umoci unpack` of the
    // same OCI layout: type, mode, owner, size, content, link targets, hard-link groups,
    // xattrs and mtimes.
    let Some(env) = env() else { return };
    let fx = Fixtures::get();
    let work = tempfile::tempdir().unwrap();
    for (tag, reference) in [(BUSYBOX, &env.busybox), (APP, &env.app)] {
        let ours = work.path().join(format!("ferry-{tag}"));
        let out = output(
            ferry(env.root.path())
                .args(["unpack", reference])
                .arg(&ours),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let bundle = work.path().join(format!("umoci-{tag}"));
        ferry_testkit::run_ok(
            std::process::Command::new("umoci")
                .args([
                    "unpack",
                    "--image",
                    &format!("{}:{tag}", fx.layout().display()),
                ])
                .arg(&bundle),
        );
        let expected = tree::snapshot(&bundle.join("rootfs"));
        let actual = tree::snapshot(&ours);
        let diffs = tree::diff(&expected, &actual, &tree::Options::exact());
        assert!(
            diffs.is_empty(),
            "{tag}: ferry unpack differs from umoci:\n{}",
            diffs.join("\n")
        );
        assert!(
            expected.len() > 20,
            "{tag}: the comparison saw {} paths",
            expected.len()
        );
    }
}

#[test]
fn run_and_unpack_refuse_an_image_the_policy_rejects_before_unpacking() {
    // POL: the policy is checked again on run, against the store.
    let Some(env) = env() else { return };
    let out = output(ferry(env.root.path()).args(["pull", &env.busybox]));
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = env.root.path().join("policy.toml");
    std::fs::write(&policy, "[default]\naction = \"reject\"\n").unwrap();
    let out = output(ferry(env.root.path()).arg("--policy").arg(&policy).args([
        "run",
        "--rm",
        &env.busybox,
        "true",
    ]));
    // RUN-38: a run ferry refuses exits with 125, as docker's own failures do.
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("busybox"),
        "names the image: {}",
        stderr(&out)
    );
    let dest = env.root.path().join("rootfs");
    let out = output(
        ferry(env.root.path())
            .arg("--policy")
            .arg(&policy)
            .args(["unpack", &env.busybox])
            .arg(&dest),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!dest.exists(), "nothing unpacked");
    let snapshots = env.root.path().join("snapshots/sha256");
    let count = std::fs::read_dir(&snapshots)
        .map(|d| {
            d.filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".lock")
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(count, 0, "no snapshot was prepared");
}

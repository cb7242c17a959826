//! Behaviour of the `ferry` binary itself, whatever the command.

use std::process::Command;

use ferry_testkit::ferry_bin;

/// Output into a pipe whose reader has gone (`ferry images | head -1`) ends ferry quietly,
/// as it ends coreutils: killed by SIGPIPE, nothing on stderr, no panic.
#[test]
fn writing_to_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    for args in [
        "images",
        "--json images",
        "config explain docker.io/library/busybox",
        "--help",
        "key generate k --dir KEYS",
    ] {
        let args = args.replace("KEYS", &dir.path().join("keys").display().to_string());
        let status = dir.path().join("status");
        let stderr = dir.path().join("stderr");
        // `true` has closed the pipe long before ferry, started half a second later, writes.
        let script = format!(
            "(sleep 0.5; FERRY_ROOT={root} {ferry} {args} 2>{stderr}; echo $? >{status}) | true; wait",
            root = root.display(),
            ferry = ferry_bin().display(),
            stderr = stderr.display(),
            status = status.display(),
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{args}: {out:?}");
        // The subshell's `echo` runs after ferry ended; wait for it.
        let mut code = String::new();
        for _ in 0..100 {
            code = std::fs::read_to_string(&status).unwrap_or_default();
            if !code.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        assert_eq!(err, "", "{args}: stderr");
        // 128 + SIGPIPE (13), as `ls | true` gives for ls.
        assert_eq!(code.trim(), "141", "{args}: exit status");
    }
}

/// `ferry images [PREFIX] [-q] [--digests]`: a prefix on whole path components, names only,
/// full digests, and CREATED as how long ago in tables (as recorded in `--json`).
#[test]
fn images_filter_by_prefix_print_names_only_or_full_digests() {
    use ferry_testkit::fixtures::{Fixtures, APP, BUSYBOX};
    use ferry_testkit::registry::{Registry, RegistryOptions};
    use ferry_testkit::{ferry, run_ok};

    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let host = registry.host();
    for (tag, name) in [(BUSYBOX, "team/busybox:1"), (APP, "teamwork/app:1")] {
        fx.push(tag, &host, name, false, None);
        run_ok(ferry(root.path()).args(["pull", &format!("{host}/{name}")]));
    }
    let images = |args: &[&str]| run_ok(ferry(root.path()).arg("images").args(args));
    assert_eq!(
        images(&["-q"]),
        format!("{host}/team/busybox:1\n{host}/teamwork/app:1\n")
    );
    // Whole components: `team` is not a prefix of `teamwork`.
    assert_eq!(
        images(&["-q", &format!("{host}/team")]),
        format!("{host}/team/busybox:1\n")
    );
    let table = images(&["--digests", &format!("{host}/team")]);
    assert!(table.contains(&fx.digest(BUSYBOX)), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");
    let short = images(&[&format!("{host}/team")]);
    assert!(!short.contains(&fx.digest(BUSYBOX)), "{short}");
    let row = short.lines().nth(1).unwrap();
    let json = run_ok(ferry(root.path()).args(["images", "--json"]));
    let created = serde_json::from_str::<serde_json::Value>(&json).unwrap()[0]["created"].clone();
    if created.is_string() {
        assert!(row.contains(" ago"), "CREATED is not relative: {row}");
        assert!(!row.contains(created.as_str().unwrap()), "{row}");
    }
}

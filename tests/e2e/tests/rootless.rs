//! Rootless ferry end to end: an unprivileged user pulls, unpacks and runs images, with the
//! store under `$XDG_DATA_HOME/ferry` and a user namespace mapping its subordinate ids
//! (specs/runtime.md RUN-44…RUN-48).
//!
//! Needs root to create the user (useradd with a subordinate id range) and to switch to it
//! (runuser): CI runs as root; elsewhere these tests print a notice and return. The user runs
//! a copy of the ferry binary from a directory it owns, with a clean environment, so the
//! workspace need not be readable by it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_testkit::fixtures::{Fixtures, APP, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::{ferry, ferry_bin, is_root, output, run_ok, tree};

/// A user with subordinate id ranges.
const USER: &str = "ferry-rootless";
/// A user without any: only its own id is mapped (RUN-45).
const SOLO_USER: &str = "ferry-solo";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An unprivileged user: its name, ids and first subordinate uid and gid ranges.
struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
    subuid: Option<(u32, u32)>,
    subgid: Option<(u32, u32)>,
}

/// `NAME:START:COUNT` of `file` for `name`.
fn subordinate(file: &str, name: &str) -> Option<(u32, u32)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then_some(())?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
}

/// Creates the user `name` unless it exists, with a subordinate id range or, without
/// `ranges`, none.
fn user(name: &'static str, ranges: bool) -> User {
    if !output(Command::new("id").arg(name)).status.success() {
        run_ok(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", name]));
    }
    let has = |file| subordinate(file, name).is_some();
    if ranges && !(has("/etc/subuid") && has("/etc/subgid")) {
        run_ok(Command::new("usermod").args([
            "--add-subuids",
            "200000-265535",
            "--add-subgids",
            "200000-265535",
            name,
        ]));
    }
    if !ranges && (has("/etc/subuid") || has("/etc/subgid")) {
        run_ok(Command::new("usermod").args([
            "--del-subuids",
            "1-4294967294",
            "--del-subgids",
            "1-4294967294",
            name,
        ]));
    }
    let id = |flag: &str| -> u32 {
        run_ok(Command::new("id").args([flag, name]))
            .trim()
            .parse()
            .unwrap()
    };
    User {
        name,
        uid: id("-u"),
        gid: id("-g"),
        subuid: subordinate("/etc/subuid", name),
        subgid: subordinate("/etc/subgid", name),
    }
}

struct Env {
    _registry: Registry,
    user: User,
    /// Owned by the user: `bin/ferry`, `home/`, `data/` (XDG_DATA_HOME), `config/`.
    dir: tempfile::TempDir,
    busybox: String,
    app: String,
}

fn env() -> Option<Env> {
    env_of(USER, true)
}

fn env_of(name: &'static str, ranges: bool) -> Option<Env> {
    if !is_root() {
        eprintln!("skipped: creating the unprivileged user needs root (CI runs as root)");
        return None;
    }
    let user = user(name, ranges);
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &registry.host(), "busybox:1", false, None);
    fx.push(APP, &registry.host(), "app:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    for sub in ["bin", "home", "data", "config"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    std::fs::copy(ferry_bin(), dir.path().join("bin/ferry")).unwrap();
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(dir.path()),
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Env {
        busybox: format!("{}/busybox:1", registry.host()),
        app: format!("{}/app:1", registry.host()),
        _registry: registry,
        user,
        dir,
    })
}

impl Env {
    /// `ferry ARGS…` as the unprivileged user, with only its own environment.
    fn ferry(&self, args: &[&str]) -> Output {
        let dir = self.dir.path();
        output(
            Command::new("runuser")
                .args(["-u", self.user.name, "--", "env", "-i"])
                .arg(format!("HOME={}", dir.join("home").display()))
                .arg(format!("XDG_DATA_HOME={}", dir.join("data").display()))
                .arg(format!("XDG_CONFIG_HOME={}", dir.join("config").display()))
                .args(["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NO_COLOR=1"])
                .arg(dir.join("bin/ferry"))
                .args(args)
                .current_dir(dir),
        )
    }

    /// `ferry run --rm --runtime RUNTIME ARGS…` as the user.
    fn run(&self, runtime: &str, args: &[&str]) -> Output {
        self.ferry(&[&["run", "--rm", "--runtime", runtime], args].concat())
    }

    /// The host id of `id` inside the namespace: the user's own for 0, else its range's.
    fn host_uid(&self, id: u32) -> u32 {
        match id {
            0 => self.user.uid,
            n => self.user.subuid.expect("a subordinate range").0 + n - 1,
        }
    }

    fn host_gid(&self, id: u32) -> u32 {
        match id {
            0 => self.user.gid,
            n => self.user.subgid.expect("a subordinate range").0 + n - 1,
        }
    }
}

#[test]
fn an_ordinary_user_pulls_unpacks_and_runs_into_its_own_store() {
    // RUN-44: the store is $XDG_DATA_HOME/ferry, owned by the user.
    let Some(env) = env() else { return };
    let out = env.ferry(&["pull", &env.busybox]);
    assert!(out.status.success(), "pull: {}", stderr(&out));
    let store = env.dir.path().join("data/ferry");
    let subuid = env.user.subuid.unwrap();
    let meta = std::fs::metadata(&store).expect("the store is under XDG_DATA_HOME");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), env.user.uid);
    for runtime in ["builtin", "runc"] {
        // RUN-45: root inside is the user outside; its subordinate ids follow from 1.
        let out = env.run(
            runtime,
            &[&env.busybox, "sh", "-c", "id -u; cat /proc/self/uid_map"],
        );
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        let text = stdout(&out);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("0"), "{runtime}: {text}");
        let map: Vec<Vec<u32>> = lines
            .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
            .collect();
        assert_eq!(
            map,
            vec![vec![0, env.user.uid, 1], vec![1, subuid.0, subuid.1]],
            "{runtime}: {text}"
        );
        // RUN-46: with the host's network, /sys is the host's, read-only.
        let out = env.run(
            runtime,
            &[
                "--net",
                "host",
                &env.busybox,
                "sh",
                "-c",
                "ls /sys/class/net; touch /sys/x || echo read-only",
            ],
        );
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.ends_with("read-only\n"), "{runtime}: {text}");
        assert!(
            text.lines().count() > 2,
            "{runtime}: the host's devices: {text}"
        );
        // RUN-47: inside, files take any mapped owner; outside it is the subordinate id.
        let out = env.ferry(&[
            "run",
            "--runtime",
            runtime,
            &env.busybox,
            "sh",
            "-c",
            "touch /owned && chown 1234:5678 /owned && stat -c %u:%g /owned",
        ]);
        assert_eq!(stdout(&out), "1234:5678\n", "{runtime}: {}", stderr(&out));
        let containers = store.join("containers");
        let id = std::fs::read_dir(&containers)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let meta = std::fs::metadata(id.join("upper/owned")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::uid(&meta),
                std::os::unix::fs::MetadataExt::gid(&meta)
            ),
            (env.host_uid(1234), env.host_gid(5678)),
            "{runtime}"
        );
        std::fs::remove_dir_all(&id).unwrap();
        // The image's own user (uid 1000) runs as a subordinate id, and its exit code passes.
        let out = env.run(runtime, &[&env.app]);
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "uid=1000 gid=1000 cwd=/work foo=bar\n",
            "{runtime}"
        );
        let out = env.run(runtime, &[&env.busybox, "sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7), "{runtime}: {}", stderr(&out));
    }
    let containers = store.join("containers");
    let left = std::fs::read_dir(&containers).map_or(0, |d| d.count());
    assert_eq!(left, 0, "--rm removed every container");
    // RUN-44: gc, in the namespace too, removes the snapshots of the removed images.
    let out = env.ferry(&["rm", &env.busybox, &env.app]);
    assert!(out.status.success(), "rm: {}", stderr(&out));
    let out = env.ferry(&["gc"]);
    assert!(out.status.success(), "gc: {}", stderr(&out));
    let snapshots: Vec<_> = std::fs::read_dir(store.join("snapshots/sha256"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(snapshots.is_empty(), "left: {snapshots:?}");
}

#[test]
fn an_ordinary_users_binds_and_tmpfs_mount_through_both_runtimes() {
    // RUN-31, RUN-32, RUN-46: in the user namespace the builtin clones the host tree with
    // open_tree and attaches it after pivot_root; runc binds it itself. Root inside is the
    // user outside, so the user's own directory is writable through the bind.
    let Some(env) = env() else { return };
    let out = env.ferry(&["pull", &env.busybox]);
    assert!(out.status.success(), "pull: {}", stderr(&out));
    let share = env.dir.path().join("home/share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("in"), "from the host\n").unwrap();
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", env.user.uid, env.user.gid))
            .arg(&share),
    );
    // Root's file: outside the map, so `nobody` inside, and only others' permissions apply.
    std::fs::write(share.join("roots"), "root's\n").unwrap();
    for runtime in ["builtin", "runc"] {
        let rw = format!("{}:/mnt/share", share.display());
        let script = "cd /mnt/share && cat in && echo back > out && stat -c %u roots && \
                      { echo x >> roots || echo refused; }";
        let out = env.run(runtime, &["-v", &rw, &env.busybox, "sh", "-c", script]);
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        assert_eq!(stdout(&out), "from the host\n65534\nrefused\n", "{runtime}");
        assert_eq!(
            std::fs::read_to_string(share.join("roots")).unwrap(),
            "root's\n"
        );
        let written = share.join("out");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "back\n");
        let meta = std::fs::metadata(&written).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            env.user.uid,
            "{runtime}: written by the namespace's root, the user outside"
        );
        std::fs::remove_file(&written).unwrap();

        let ro = format!("{}:/mnt/share:ro", share.display());
        let out = env.run(
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
        assert!(!share.join("new").exists(), "{runtime}");

        let out = env.run(
            runtime,
            &[
                "--tmpfs",
                "/scratch:size=1m",
                &env.busybox,
                "sh",
                "-c",
                "echo x > /scratch/f && cat /scratch/f && grep ' /scratch ' /proc/mounts",
            ],
        );
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        let text = stdout(&out);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("x"), "{runtime}: {text}");
        let mount = lines.next().unwrap_or_default();
        assert!(
            mount.starts_with("tmpfs /scratch tmpfs ") && mount.contains("size=1024k"),
            "{runtime}: {text}"
        );
    }
}

#[test]
fn a_rootless_unpack_matches_roots_up_to_the_id_map() {
    // RUN-47: the same tree as root's unpack, every owner shifted through the id map.
    let Some(env) = env() else { return };
    let root_store = tempfile::tempdir().unwrap();
    for reference in [&env.busybox, &env.app] {
        let name = reference.rsplit('/').next().unwrap().replace(':', "-");
        let theirs = env.dir.path().join(format!("rootfs-{name}"));
        // Pulled first: unpack then reads the store only.
        let out = env.ferry(&["pull", reference]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let out = output(ferry(root_store.path()).args(["pull", reference]));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let out = env.ferry(&["unpack", reference, theirs.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let ours: PathBuf = root_store.path().join(format!("rootfs-{name}"));
        let out = output(
            ferry(root_store.path())
                .args(["unpack", reference])
                .arg(&ours),
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));

        let expected: BTreeMap<String, tree::Node> = tree::snapshot(&ours)
            .into_iter()
            .map(|(path, mut node)| {
                node.uid = env.host_uid(node.uid);
                node.gid = env.host_gid(node.gid);
                (path, node)
            })
            .collect();
        let actual = tree::snapshot(&theirs);
        let diffs = tree::diff(&expected, &actual, &tree::Options::exact());
        assert!(
            diffs.is_empty(),
            "{name}: rootless unpack differs:\n{}",
            diffs.join("\n")
        );
    }
}

#[test]
fn limits_without_a_delegated_cgroup_are_a_clear_error() {
    // RUN-48: cgroup v1 delegates nothing to users.
    let Some(env) = env() else { return };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: cgroup v2 here; the refusal is for hierarchies without delegation");
        return;
    }
    let out = env.ferry(&["run", "--rm", "--memory", "64m", &env.busybox, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--memory"),
        "names the flag: {}",
        stderr(&out)
    );
}

#[test]
fn a_user_without_subordinate_ids_gets_its_own_id_only() {
    // RUN-45: no range in /etc/subuid: root inside is the user, and nothing else is mapped;
    // setgroups is denied, and an image of root's files still unpacks and runs.
    let Some(env) = env_of(SOLO_USER, false) else {
        return;
    };
    for runtime in ["builtin", "runc"] {
        let out = env.run(
            runtime,
            &[
                &env.busybox,
                "sh",
                "-c",
                "id -u; cat /proc/self/uid_map /proc/self/setgroups",
            ],
        );
        assert!(out.status.success(), "{runtime}: {}", stderr(&out));
        let text = stdout(&out);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            words,
            ["0", "0", &env.user.uid.to_string(), "1", "deny"],
            "{runtime}: {text}"
        );
    }
    let rootfs = env.dir.path().join("rootfs");
    let out = env.ferry(&["unpack", &env.busybox, rootfs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let owners: std::collections::BTreeSet<(u32, u32)> = tree::snapshot(&rootfs)
        .values()
        .map(|n| (n.uid, n.gid))
        .collect();
    assert_eq!(
        owners,
        [(env.user.uid, env.user.gid)].into_iter().collect(),
        "root's files are the user's"
    );
}

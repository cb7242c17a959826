//! Image config → OCI runtime spec (specs/runtime.md RUN-1…RUN-7). No root needed.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use ferry_core::oci_spec::image::ImageConfiguration;
use ferry_core::oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};
use ferry_runtime::spec::{runtime_spec, NetMode, RunOptions, DEFAULT_PATH};
use ferry_runtime::Error;

fn config(json: serde_json::Value) -> ImageConfiguration {
    let mut full = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    full["config"] = json;
    serde_json::from_value(full).unwrap()
}

/// A rootfs with only the account files given.
fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    if let Some(p) = passwd {
        fs::write(dir.path().join("etc/passwd"), p).unwrap();
    }
    if let Some(g) = group {
        fs::write(dir.path().join("etc/group"), g).unwrap();
    }
    dir
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    # a comment\n\
    daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
    app:x:1000:1001:App:/home/app:/bin/sh\n\
    broken line\n";
const GROUP: &str = "root:x:0:root\n\
    daemon:x:1:\n\
    staff:x:50:app,other\n\
    appgrp:x:1001:\n\
    audio:x:63:app\n";

fn spec_with(cfg: serde_json::Value, root: &Path, opts: &RunOptions) -> Spec {
    runtime_spec(&config(cfg), root, opts).unwrap()
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

fn ids(spec: &Spec) -> (u32, u32, Vec<u32>) {
    let u = spec.process().as_ref().unwrap().user();
    (
        u.uid(),
        u.gid(),
        u.additional_gids().clone().unwrap_or_default(),
    )
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// RUN-1
#[test]
fn entrypoint_and_cmd_combine_and_cli_args_replace_cmd_only() {
    let root = rootfs(None, None);
    let cfg = serde_json::json!({"Entrypoint": ["/bin/tini", "--"], "Cmd": ["nginx", "-g", "daemon off;"]});
    let s = spec_with(cfg.clone(), root.path(), &RunOptions::default());
    assert_eq!(
        args(&s),
        strings(&["/bin/tini", "--", "nginx", "-g", "daemon off;"])
    );

    let opts = RunOptions {
        args_override: strings(&["sh", "-c", "echo hi"]),
        ..Default::default()
    };
    let s = spec_with(cfg, root.path(), &opts);
    assert_eq!(
        args(&s),
        strings(&["/bin/tini", "--", "sh", "-c", "echo hi"])
    );

    let s = spec_with(serde_json::json!({"Cmd": ["/bin/sh"]}), root.path(), &opts);
    assert_eq!(args(&s), strings(&["sh", "-c", "echo hi"]));

    let s = spec_with(
        serde_json::json!({"Entrypoint": ["/bin/echo"]}),
        root.path(),
        &RunOptions::default(),
    );
    assert_eq!(args(&s), strings(&["/bin/echo"]));
}

/// RUN-1
#[test]
fn no_command_anywhere_is_a_clear_error() {
    let root = rootfs(None, None);
    for cfg in [
        serde_json::json!({}),
        serde_json::json!({"Cmd": [], "Env": ["A=b"]}),
    ] {
        let err = runtime_spec(&config(cfg), root.path(), &RunOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NoCommand), "{err}");
        assert!(err.to_string().contains("no Entrypoint or Cmd"), "{err}");
    }
    let no_config: ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    assert!(matches!(
        runtime_spec(&no_config, root.path(), &RunOptions::default()),
        Err(Error::NoCommand)
    ));
}

/// RUN-2
#[test]
fn env_merges_image_then_cli_and_defaults_path_and_home() {
    let root = rootfs(Some(PASSWD), Some(GROUP));
    let cfg = serde_json::json!({"Cmd": ["x"], "Env": ["A=1", "B=2", "EMPTY="], "User": "app"});
    let opts = RunOptions {
        env: vec![("B".into(), "cli".into()), ("C".into(), "3=x".into())],
        hostname: Some("box".into()),
        ..Default::default()
    };
    let s = spec_with(cfg, root.path(), &opts);
    assert_eq!(
        env(&s),
        strings(&[
            &format!("PATH={DEFAULT_PATH}"),
            "HOSTNAME=box",
            "A=1",
            "B=cli",
            "EMPTY=",
            "C=3=x",
            "HOME=/home/app",
        ])
    );

    let cfg = serde_json::json!({"Cmd": ["x"], "Env": ["PATH=/opt/bin", "HOME=/data"]});
    let opts = RunOptions {
        terminal: true,
        ..Default::default()
    };
    let s = spec_with(cfg, root.path(), &opts);
    assert_eq!(
        env(&s),
        strings(&[
            "PATH=/opt/bin",
            "HOSTNAME=ferry",
            "TERM=xterm",
            "HOME=/data"
        ])
    );
    assert_eq!(s.process().as_ref().unwrap().terminal(), Some(true));

    let opts = RunOptions {
        env: vec![("PATH".into(), "/cli".into())],
        ..Default::default()
    };
    let s = spec_with(serde_json::json!({"Cmd": ["x"]}), root.path(), &opts);
    assert_eq!(env(&s)[0], "PATH=/cli");
    assert!(env(&s).contains(&"HOME=/root".to_string()), "{:?}", env(&s));
}

/// RUN-3
#[test]
fn working_dir_defaults_to_root_and_cli_wins() {
    let root = rootfs(None, None);
    let cwd = |cfg, opts: &RunOptions| {
        spec_with(cfg, root.path(), opts)
            .process()
            .as_ref()
            .unwrap()
            .cwd()
            .clone()
    };
    assert_eq!(
        cwd(serde_json::json!({"Cmd": ["x"]}), &RunOptions::default()),
        Path::new("/")
    );
    assert_eq!(
        cwd(
            serde_json::json!({"Cmd": ["x"], "WorkingDir": "/srv/app"}),
            &RunOptions::default()
        ),
        Path::new("/srv/app")
    );
    let opts = RunOptions {
        workdir: Some("/tmp".into()),
        ..Default::default()
    };
    assert_eq!(
        cwd(
            serde_json::json!({"Cmd": ["x"], "WorkingDir": "/srv/app"}),
            &opts
        ),
        Path::new("/tmp")
    );
    assert_eq!(
        cwd(
            serde_json::json!({"Cmd": ["x"], "WorkingDir": "rel/dir"}),
            &RunOptions::default()
        ),
        Path::new("/rel/dir")
    );
}

/// RUN-4
#[test]
fn users_resolve_by_name_id_and_group_from_the_rootfs() {
    let root = rootfs(Some(PASSWD), Some(GROUP));
    let resolve = |user: &str| {
        let opts = RunOptions {
            user: Some(user.into()),
            ..Default::default()
        };
        runtime_spec(
            &config(serde_json::json!({"Cmd": ["x"]})),
            root.path(),
            &opts,
        )
        .map(|s| ids(&s))
    };
    // Root by default, with the groups that list it.
    let s = spec_with(
        serde_json::json!({"Cmd": ["x"]}),
        root.path(),
        &RunOptions::default(),
    );
    assert_eq!(ids(&s), (0, 0, vec![0]));
    // Names: primary gid from passwd, supplementary groups from group members.
    assert_eq!(resolve("app").unwrap(), (1000, 1001, vec![50, 63]));
    assert_eq!(resolve("daemon").unwrap(), (1, 1, vec![]));
    // A uid is a uid even if a name would match; unknown uids are fine with gid 0.
    assert_eq!(resolve("1000").unwrap(), (1000, 1001, vec![50, 63]));
    assert_eq!(resolve("4242").unwrap(), (4242, 0, vec![]));
    // Explicit groups: by name or number, and then no supplementary groups.
    assert_eq!(resolve("app:staff").unwrap(), (1000, 50, vec![]));
    assert_eq!(resolve("app:7777").unwrap(), (1000, 7777, vec![]));
    assert_eq!(resolve("4242:4343").unwrap(), (4242, 4343, vec![]));
    assert_eq!(resolve("daemon:appgrp").unwrap(), (1, 1001, vec![]));
    // The image's User applies when the command line gives none.
    let s = spec_with(
        serde_json::json!({"Cmd": ["x"], "User": "app:audio"}),
        root.path(),
        &RunOptions::default(),
    );
    assert_eq!(ids(&s), (1000, 63, vec![]));
}

/// RUN-4
#[test]
fn unknown_users_and_groups_are_errors() {
    let root = rootfs(Some(PASSWD), Some(GROUP));
    for (user, needle) in [
        ("nobody", "no such user"),
        ("app:nogroup", "no group \"nogroup\""),
    ] {
        let opts = RunOptions {
            user: Some(user.into()),
            ..Default::default()
        };
        let err = runtime_spec(
            &config(serde_json::json!({"Cmd": ["x"]})),
            root.path(),
            &opts,
        )
        .unwrap_err();
        assert!(matches!(err, Error::User { .. }), "{err}");
        assert!(
            err.to_string().contains(needle) && err.to_string().contains(user),
            "{err}"
        );
    }
    // No /etc/passwd at all: numeric ids still work, names do not.
    let empty = rootfs(None, None);
    let opts = |u: &str| RunOptions {
        user: Some(u.into()),
        ..Default::default()
    };
    let s = runtime_spec(
        &config(serde_json::json!({"Cmd": ["x"]})),
        empty.path(),
        &opts("12:34"),
    )
    .unwrap();
    assert_eq!(ids(&s), (12, 34, vec![]));
    assert!(runtime_spec(
        &config(serde_json::json!({"Cmd": ["x"]})),
        empty.path(),
        &opts("root")
    )
    .is_err());
}

/// RUN-4: symlinks in the image resolve inside the rootfs, never on the host.
#[test]
fn account_files_are_never_read_through_symlinks_to_the_host() {
    // The host's /etc/passwd knows `daemon` (uid 1 on Debian) and root; this rootfs does not.
    assert!(fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("daemon:"));
    let opts = RunOptions {
        user: Some("daemon".into()),
        ..Default::default()
    };
    let cfg = config(serde_json::json!({"Cmd": ["x"]}));
    for target in [
        "/etc/passwd",
        "../../../../../../../../etc/passwd",
        "/proc/1/root/etc/passwd",
    ] {
        let root = rootfs(None, None);
        symlink(target, root.path().join("etc/passwd")).unwrap();
        let result = runtime_spec(&cfg, root.path(), &opts);
        assert!(
            result.is_err(),
            "{target}: read the host's passwd: {:?}",
            result.map(|s| ids(&s))
        );
    }
    // A directory symlink to the host's /etc resolves inside the rootfs too.
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("real")).unwrap();
    fs::write(
        root.path().join("real/passwd"),
        "daemon:x:4242:4343::/:/bin/sh\n",
    )
    .unwrap();
    symlink("/real", root.path().join("etc")).unwrap();
    let s = runtime_spec(&cfg, root.path(), &opts).unwrap();
    assert_eq!(ids(&s), (4242, 4343, vec![]));
}

/// RUN-5, RUN-6, RUN-7
#[test]
fn spec_confines_the_container_like_docker_and_runc() {
    let root = rootfs(None, None);
    let s = spec_with(
        serde_json::json!({"Cmd": ["x"]}),
        root.path(),
        &RunOptions::default(),
    );
    assert_eq!(s.root().as_ref().unwrap().path(), root.path());
    assert_eq!(s.hostname().as_deref(), Some("ferry"));
    let linux = s.linux().as_ref().unwrap();
    let ns: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(
        ns,
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network
        ]
    );
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/kcore".to_string()));
    assert!(linux
        .readonly_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/sys".to_string()));

    let process = s.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(true));
    let caps = process.capabilities().as_ref().unwrap();
    let bounding = caps.bounding().as_ref().unwrap();
    assert_eq!(bounding.len(), 14);
    assert!(
        bounding.contains(&Capability::NetBindService) && bounding.contains(&Capability::Chown)
    );
    assert!(!bounding.contains(&Capability::SysAdmin) && !bounding.contains(&Capability::NetAdmin));
    assert_eq!(caps.effective(), caps.bounding());
    assert_eq!(caps.permitted(), caps.bounding());
    assert!(caps.inheritable().as_ref().unwrap().is_empty());
    assert!(caps.ambient().as_ref().unwrap().is_empty());

    let mounts: Vec<(String, String)> = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.typ().clone().unwrap(),
            )
        })
        .collect();
    let want = [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
    ];
    assert_eq!(mounts, want.map(|(d, t)| (d.to_string(), t.to_string())));
    let sys = &s.mounts().as_ref().unwrap()[5];
    assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));

    let host = RunOptions {
        net: NetMode::Host,
        hostname: Some("h1".into()),
        ..Default::default()
    };
    let s = spec_with(serde_json::json!({"Cmd": ["x"]}), root.path(), &host);
    assert_eq!(s.hostname().as_deref(), Some("h1"));
    let ns = s.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(
        ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network),
        "{ns:?}"
    );
    assert_eq!(ns.len(), 4);
}

/// RUN-31, RUN-32, RUN-33, RUN-35, RUN-36: options land in the one spec both runtimes run.
#[test]
fn run_options_become_part_of_the_spec() {
    use ferry_runtime::run::init::INIT_PATH;
    use ferry_runtime::run::mounts::{Tmpfs, Volume};
    use ferry_runtime::run::seccomp::Seccomp;

    let root = rootfs(None, None);
    symlink("/etc", root.path().join("data")).unwrap();
    let host = tempfile::tempdir().unwrap();
    let mut opts = RunOptions {
        entrypoint: Some("/bin/echo".into()),
        args_override: strings(&["hi"]),
        volumes: vec![Volume::parse(&format!("{}:/data:ro", host.path().display())).unwrap()],
        tmpfs: vec![Tmpfs::parse("/run/x:size=1m").unwrap()],
        read_only: true,
        ..Default::default()
    };
    let s = spec_with(serde_json::json!({"Cmd": ["ignored"]}), root.path(), &opts);
    assert_eq!(args(&s), strings(&["/bin/echo", "hi"]));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    let mounts = s.mounts().as_ref().unwrap();
    let tail: Vec<(String, String)> = mounts[mounts.len() - 2..]
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.options().clone().unwrap().join(","),
            )
        })
        .collect();
    // The image's /data -> /etc resolves to the container's /etc; tmpfs is deeper, so later.
    assert_eq!(
        tail,
        [
            ("/etc".to_string(), "rbind,rprivate,ro".to_string()),
            (
                "/run/x".to_string(),
                "nosuid,nodev,noexec,size=1m".to_string()
            ),
        ]
    );
    let seccomp = s.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
    assert_eq!(seccomp.default_errno_ret(), Some(1));

    // --init needs the host's static tini (Debian's tini, which docker.io depends on).
    opts.seccomp = Seccomp::Unconfined;
    opts.volumes.clear();
    opts.init = true;
    let s = spec_with(serde_json::json!({}), root.path(), &opts);
    assert!(s.linux().as_ref().unwrap().seccomp().is_none());
    assert_eq!(args(&s)[..3], strings(&[INIT_PATH, "--", "/bin/echo"]));
    let last = s.mounts().as_ref().unwrap().last().unwrap();
    assert_eq!(last.destination().display().to_string(), INIT_PATH);
    assert_eq!(last.options().clone().unwrap(), strings(&["bind", "ro"]));
}

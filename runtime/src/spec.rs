//! Image config → OCI runtime spec: command, environment, user, mounts and confinement
//! (specs/runtime.md, RUN-1…RUN-9, RUN-31…RUN-37).
//!
//! User and group names are resolved in the image's own `/etc/passwd` and `/etc/group`,
//! opened with `openat2(RESOLVE_IN_ROOT)` so that no symlink in the image can make ferry
//! read a host file; mount destinations are resolved the same way.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_core::oci_spec::image::ImageConfiguration;
use ferry_core::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use nix::fcntl::OFlag;

use crate::run::init::{init_binary, INIT_PATH};
use crate::run::mounts::{
    bind_mount, build_mount, open_in_root, resolve_in_rootfs, tmpfs_mount, Tmpfs, Volume,
};
use crate::run::seccomp::{Profile, Seccomp};
use crate::{Error, Result};

/// `PATH` given to a container whose image and command line set none (RUN-2).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Hostname of a container when [`RunOptions::hostname`] is `None` (RUN-5).
pub const DEFAULT_HOSTNAME: &str = "ferry";

/// Capabilities a container keeps: Docker's default set (RUN-6).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Capability names in kernel order: the index is the capability's number (RUN-34).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths hidden from the container, as `runc spec` lists them (RUN-7).
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths made read-only in the container, as `runc spec` lists them (RUN-7).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Largest `/etc/passwd` or `/etc/group` ferry reads from an image.
const MAX_ACCOUNT_FILE: u64 = 16 * 1024 * 1024;

/// Which network a container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetMode {
    /// A new network namespace with only a loopback device.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// What the command line adds to or overrides in the image config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Arguments replacing the image's `Cmd` (its `Entrypoint` is kept); empty keeps `Cmd`.
    pub args_override: Vec<String>,
    /// Environment variables set over the image's `Env`, in order.
    pub env: Vec<(String, String)>,
    /// Working directory replacing the image's `WorkingDir`.
    pub workdir: Option<String>,
    /// `user[:group]` (names or ids) replacing the image's `User`.
    pub user: Option<String>,
    /// The container's network.
    pub net: NetMode,
    /// The container's hostname ([`DEFAULT_HOSTNAME`] when `None`).
    pub hostname: Option<String>,
    /// Whether the process gets a terminal (RUN-30).
    pub terminal: bool,
    /// Replaces the image's `Entrypoint` and drops its `Cmd`; `Some("")` clears it (RUN-33).
    pub entrypoint: Option<String>,
    /// Bind mounts, `-v` (RUN-31).
    pub volumes: Vec<Volume>,
    /// tmpfs mounts, `--tmpfs` (RUN-32).
    pub tmpfs: Vec<Tmpfs>,
    /// Bind mounts ferry adds itself (the `/etc` files of RUN-37): skipped where a volume or
    /// tmpfs covers their destination.
    pub generated_files: Vec<Volume>,
    /// Root filesystem read-only (RUN-33).
    pub read_only: bool,
    /// Capabilities added to Docker's default set; `ALL` adds every one (RUN-34).
    pub cap_add: Vec<String>,
    /// Capabilities removed from the set; `ALL` removes every one not added (RUN-34).
    pub cap_drop: Vec<String>,
    /// Run a small init as PID 1 that forwards signals and reaps zombies (RUN-35).
    pub init: bool,
    /// The seccomp filter (RUN-36).
    pub seccomp: Seccomp,
    /// Resource limits, written to `linux.resources` (RUN-40).
    pub resources: crate::run::cgroup::Resources,
}

/// Builds the OCI runtime spec for running `config`'s image on the root filesystem `rootfs`.
///
/// `rootfs` must be the image's assembled root filesystem: users and groups are looked up
/// in it, and mount destinations resolved inside it. Fails with [`Error::NoCommand`] when
/// neither the image nor `opts` names a command, with [`Error::User`] when the user or
/// group cannot be resolved, and with [`Error::RunOption`] for a bad mount or capability.
pub fn runtime_spec(config: &ImageConfiguration, rootfs: &Path, opts: &RunOptions) -> Result<Spec> {
    let image = config.config().clone().unwrap_or_default();
    let mut args = match &opts.entrypoint {
        Some(entrypoint) => command(
            &[entrypoint.clone()]
                .into_iter()
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>(),
            &[],
            &opts.args_override,
        )?,
        None => command(
            image.entrypoint().as_deref().unwrap_or_default(),
            image.cmd().as_deref().unwrap_or_default(),
            &opts.args_override,
        )?,
    };
    let user_spec = opts
        .user
        .as_deref()
        .or(image.user().as_deref())
        .unwrap_or("");
    let user = resolve_user(rootfs, user_spec)?;
    let hostname = opts.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    let env = environment(
        image.env().as_deref().unwrap_or_default(),
        &opts.env,
        hostname,
        &user.home,
        opts.terminal,
    );
    let cwd = working_dir(opts.workdir.as_deref().or(image.working_dir().as_deref()));

    let mut mounts = default_mounts(opts.net)?;
    mounts.extend(option_mounts(rootfs, opts)?);
    if opts.init {
        let binary = init_binary()?;
        mounts.push(build_mount(
            Path::new(INIT_PATH),
            "bind",
            &binary,
            &["bind", "ro"],
        )?);
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }

    let caps = capabilities(&opts.cap_add, &opts.cap_drop)?;
    let seccomp = match &opts.seccomp {
        Seccomp::Default => Some(Profile::docker_default().to_oci(&caps)?),
        Seccomp::Unconfined => None,
        Seccomp::Profile(profile) => Some(profile.to_oci(&caps)?),
    };
    let process = ProcessBuilder::default()
        .terminal(opts.terminal)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()
                .map_err(spec_error)?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .map_err(spec_error)?,
        )
        .no_new_privileges(true)
        .build()
        .map_err(spec_error)?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if opts.net == NetMode::None {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_error)?;
    let deny_all_devices = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(spec_error)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .resources({
            let mut resources = LinuxResourcesBuilder::default()
                .devices(vec![deny_all_devices])
                .build()
                .map_err(spec_error)?;
            opts.resources.apply_to(&mut resources)?;
            resources
        });
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    let linux = linux.build().map_err(spec_error)?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(opts.read_only)
                .build()
                .map_err(spec_error)?,
        )
        .mounts(mounts)
        .process(process)
        .hostname(hostname)
        .linux(linux)
        .build()
        .map_err(spec_error)
}

/// `--tmpfs` and `-v` mounts, then the generated files no option mount covers; each
/// destination resolved inside `rootfs`, parents before children (RUN-31, RUN-32, RUN-37).
fn option_mounts(rootfs: &Path, opts: &RunOptions) -> Result<Vec<Mount>> {
    let mut mounts: Vec<(PathBuf, Mount)> = Vec::new();
    for tmpfs in &opts.tmpfs {
        let shown = format!("--tmpfs {}", tmpfs.container);
        let dest = resolve_in_rootfs(rootfs, &tmpfs.container, &shown)?;
        mounts.push((dest.clone(), tmpfs_mount(tmpfs, &dest)?));
    }
    for volume in &opts.volumes {
        let shown = format!("-v {}:{}", volume.host.display(), volume.container);
        let dest = resolve_in_rootfs(rootfs, &volume.container, &shown)?;
        mounts.push((dest.clone(), bind_mount(volume, &dest)?));
    }
    // Docker's order: fewer path components first, so a mount inside another lands on it.
    mounts.sort_by_key(|(dest, _)| dest.components().count());
    let covered: Vec<PathBuf> = mounts.iter().map(|(d, _)| d.clone()).collect();
    for file in &opts.generated_files {
        let dest = resolve_in_rootfs(rootfs, &file.container, &file.container)?;
        if !covered.iter().any(|c| dest.starts_with(c)) {
            mounts.push((dest.clone(), bind_mount(file, &dest)?));
        }
    }
    Ok(mounts.into_iter().map(|(_, m)| m).collect())
}

/// Docker's default set with `cap_add` added and `cap_drop` removed (RUN-34).
///
/// Names are case-insensitive, with or without `CAP_`. `ALL` in `cap_drop` starts from
/// nothing; `ALL` in `cap_add` starts from every capability.
fn capabilities(cap_add: &[String], cap_drop: &[String]) -> Result<HashSet<Capability>> {
    let parse = |flag: &str, names: &[String]| -> Result<(bool, HashSet<Capability>)> {
        let mut all = false;
        let mut caps = HashSet::new();
        for name in names {
            let upper = name.to_ascii_uppercase();
            if upper == "ALL" {
                all = true;
                continue;
            }
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap = CAPABILITY_NAMES
                .contains(&full.as_str())
                .then(|| serde_json::from_value::<Capability>(serde_json::Value::String(full)))
                .and_then(|c| c.ok())
                .ok_or_else(|| Error::RunOption {
                    option: format!("{flag} {name}"),
                    reason: "unknown capability".into(),
                })?;
            caps.insert(cap);
        }
        Ok((all, caps))
    };
    let (add_all, add) = parse("--cap-add", cap_add)?;
    let (drop_all, drop) = parse("--cap-drop", cap_drop)?;
    if drop_all {
        return Ok(add);
    }
    let mut caps: HashSet<Capability> = if add_all {
        CAPABILITY_NAMES
            .iter()
            .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.to_string())).ok())
            .collect()
    } else {
        DEFAULT_CAPABILITIES.into_iter().chain(add).collect()
    };
    caps.retain(|c| !drop.contains(c));
    Ok(caps)
}

fn spec_error(e: impl std::fmt::Display) -> Error {
    Error::Spec(e.to_string())
}

/// Entrypoint + Cmd, with command-line arguments replacing Cmd (RUN-1).
fn command(entrypoint: &[String], cmd: &[String], args_override: &[String]) -> Result<Vec<String>> {
    let tail = if args_override.is_empty() {
        cmd
    } else {
        args_override
    };
    let args: Vec<String> = entrypoint.iter().chain(tail).cloned().collect();
    if args.is_empty() {
        return Err(Error::NoCommand);
    }
    Ok(args)
}

/// Defaults, then the image's `Env`, then the command line's; `HOME` last if unset (RUN-2).
fn environment(
    image: &[String],
    overrides: &[(String, String)],
    hostname: &str,
    home: &str,
    terminal: bool,
) -> Vec<String> {
    fn set(env: &mut Vec<String>, entry: String) {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        match env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(i) => env[i] = entry,
            None => env.push(entry),
        }
    }
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={hostname}"),
    ];
    if terminal {
        env.push("TERM=xterm".to_string());
    }
    for entry in image.iter().cloned() {
        set(&mut env, entry);
    }
    for (k, v) in overrides {
        set(&mut env, format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

/// The working directory, absolute; `/` when unset (RUN-3).
fn working_dir(dir: Option<&str>) -> PathBuf {
    match dir {
        Some(d) if !d.is_empty() => Path::new("/").join(d),
        _ => PathBuf::from("/"),
    }
}

/// The mounts every container gets, in order (RUN-7).
fn default_mounts(net: NetMode) -> Result<Vec<Mount>> {
    let mut table: [(&str, &str, &str, &[&str]); 6] = [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        (
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ];
    // Rootless with the host's network, whose sysfs the user namespace may not mount: the
    // host's /sys, read-only (RUN-46).
    if net == NetMode::Host && crate::userns::in_user_namespace() {
        table[5] = (
            "/sys",
            "bind",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        );
    }
    // Rootless with only the user's own gid mapped, devpts cannot give ptys gid 5 (RUN-46).
    let tty_gid = crate::userns::gid_mapped(5);
    table
        .iter()
        .map(|(destination, typ, source, options)| {
            let options: Vec<&str> = options
                .iter()
                .copied()
                .filter(|o| tty_gid || *o != "gid=5")
                .collect();
            build_mount(Path::new(destination), typ, Path::new(source), &options)
        })
        .collect()
}

/// A user resolved in a root filesystem.
#[derive(Debug, PartialEq, Eq)]
struct ResolvedUser {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    home: String,
}

/// An `/etc/passwd` line.
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// An `/etc/group` line.
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user[:group]` as runc's `GetExecUser` does, in `rootfs`'s own account files (RUN-4).
///
/// A numeric user is always a uid (with gid 0 unless its passwd entry says otherwise); a
/// name must exist. Without an explicit group, the user's supplementary groups are the
/// groups of `/etc/group` that list its name.
fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser> {
    let bad = |reason: String| Error::User {
        user: spec.chars().take(100).collect(),
        reason,
    };
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let group_arg = group_arg.filter(|g| !g.is_empty());
    let numeric_user = user_arg.parse::<u32>().ok();

    let passwd = read_account_file(rootfs, "etc/passwd")?;
    let matched = passwd
        .as_deref()
        .map(parse_passwd)
        .unwrap_or_default()
        .into_iter()
        .find(|u| match numeric_user {
            Some(uid) => u.uid == uid,
            None => u.name == user_arg,
        });
    let mut user = match (&matched, numeric_user) {
        (Some(u), _) => ResolvedUser {
            uid: u.uid,
            gid: u.gid,
            additional_gids: Vec::new(),
            home: u.home.clone(),
        },
        (None, Some(uid)) => ResolvedUser {
            uid,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/".to_string(),
        },
        (None, None) => return Err(bad("no such user in the image's /etc/passwd".into())),
    };
    let user_name = matched.map(|u| u.name);
    if group_arg.is_none() && user_name.is_none() {
        return Ok(user);
    }

    let group = read_account_file(rootfs, "etc/group")?;
    let groups = group.as_deref().map(parse_group).unwrap_or_default();
    match group_arg {
        Some(g) => {
            let numeric_group = g.parse::<u32>().ok();
            let found = groups.iter().find(|e| match numeric_group {
                Some(gid) => e.gid == gid,
                None => e.name == g,
            });
            user.gid = match (found, numeric_group) {
                (Some(e), _) => e.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(bad(format!("no group {g:?} in the image's /etc/group")))
                }
            };
        }
        None => {
            let name = user_name.unwrap_or_default();
            user.additional_gids = groups
                .iter()
                .filter(|e| e.members.contains(&name))
                .map(|e| e.gid)
                .collect();
        }
    }
    Ok(user)
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    account_lines(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f
                    .get(5)
                    .filter(|h| !h.is_empty())
                    .unwrap_or(&"/")
                    .to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    account_lines(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The `:`-separated fields of each non-blank, non-comment line.
fn account_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// Reads `path` inside `rootfs` as if `rootfs` were `/`; `None` if it does not exist.
///
/// Symlinks (absolute ones and `..` included) resolve inside `rootfs`; only a regular
/// file of at most [`MAX_ACCOUNT_FILE`] bytes is read.
fn read_account_file(rootfs: &Path, path: &str) -> Result<Option<String>> {
    let shown = Path::new("/").join(path);
    let io_err = |op, e: std::io::Error| Error::Io {
        op,
        path: shown.clone(),
        source: e,
    };
    let root = std::fs::File::open(rootfs).map_err(|e| Error::Io {
        op: "open rootfs",
        path: rootfs.to_path_buf(),
        source: e,
    })?;
    let file = match open_in_root(
        &root,
        path,
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
    ) {
        Ok(Some(fd)) => std::fs::File::from(fd),
        Ok(None) => return Ok(None),
        Err(e) => return Err(io_err("open in rootfs", e)),
    };
    let meta = file.metadata().map_err(|e| io_err("stat in rootfs", e))?;
    if !meta.is_file() {
        return Err(io_err(
            "read in rootfs",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ACCOUNT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("read in rootfs", e))?;
    if bytes.len() as u64 > MAX_ACCOUNT_FILE {
        return Err(io_err(
            "read in rootfs",
            std::io::Error::new(std::io::ErrorKind::InvalidData, "larger than 16 MiB"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

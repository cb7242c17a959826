//! Seccomp profiles (specs/runtime.md RUN-36): ferry's default profile (the meaning of
//! Docker's), Docker's JSON profile format for `--security-opt seccomp=FILE`, their
//! evaluation into the OCI spec's `linux.seccomp` for a container's capabilities, and the
//! compilation of `linux.seccomp` into BPF for the builtin runtime.
//!
//! The BPF comes from `seccompiler` (rust-vmm, Firecracker's filter compiler) and syscall
//! numbers from `syscalls`: both pure Rust, so the filter is built in the parent before
//! `clone` and the child only installs it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use ferry_core::oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;

use crate::{Error, Result};

/// The only architecture ferry filters for; other ABIs' system calls are refused.
const ARCH: &str = "amd64";
/// Largest profile file ferry reads.
const MAX_PROFILE: u64 = 4 * 1024 * 1024;

/// Which seccomp filter a container runs under (RUN-36).
#[derive(Debug, Clone, Default)]
pub enum Seccomp {
    /// ferry's default profile: Docker's default in meaning.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile read from a file in Docker's format (`--security-opt seccomp=FILE`).
    Profile(Profile),
}

/// A seccomp profile in Docker's JSON format (`defaultAction`, `syscalls` with `names`,
/// `action`, `args`, `includes`/`excludes`), parsed strictly: unknown fields are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

/// One entry of `syscalls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    /// Free text for people; accepted and ignored.
    #[serde(default, rename = "comment")]
    _comment: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// When a rule applies (`includes`) or does not (`excludes`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// System calls every container may make, whatever its capabilities (Docker's default
/// profile, x86_64 names).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "arch_prctl", "bind", "brk", "capget",
    "capset", "chdir", "chmod", "chown", "clock_adjtime", "clock_getres", "clock_gettime",
    "clock_nanosleep", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchownat", "fcntl",
    "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr",
    "fstat", "fstatfs", "fsync", "ftruncate", "futex", "futex_waitv", "futimesat", "getcpu",
    "getcwd", "getdents", "getdents64", "getegid", "geteuid", "getgid", "getgroups",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresuid", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "ioprio_get", "ioprio_set", "io_setup", "io_submit", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "madvise", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "modify_ldt", "mprotect", "mq_getsetattr", "mq_notify",
    "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink", "mremap", "msgctl", "msgget",
    "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at",
    "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease",
    "process_vm_readv", "process_vm_writev", "pselect6", "ptrace", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recvfrom", "recvmmsg",
    "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat", "renameat2",
    "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "sendfile", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsuid", "setgid", "setgroups", "setitimer", "setpgid",
    "setpriority", "setregid", "setresgid", "setresuid", "setreuid", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "socketpair", "splice", "stat", "statfs", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime", "timerfd_create",
    "timerfd_gettime", "timerfd_settime", "times", "tkill", "truncate", "umask", "uname",
    "unlink", "unlinkat", "utime", "utimensat", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "write", "writev",
];

/// System calls a capability unlocks: (capability, names).
#[rustfmt::skip]
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_ADMIN", &[
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
        "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns",
        "syslog", "umount2", "unshare",
    ]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "clock_settime"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `personality(2)` personas allowed without capabilities: Linux, 32-bit, `UNAME26`
/// variants, and the query `0xffffffff`.
const PERSONAS: [u64; 5] = [0, 8, 0x20000, 0x20008, 0xffff_ffff];
/// `AF_VSOCK`: the one socket family refused.
const AF_VSOCK: u64 = 40;
/// Namespace flags `clone(2)` may not carry without `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `ENOSYS`, returned for `clone3` without `CAP_SYS_ADMIN` so that libcs fall back to `clone`.
const ENOSYS: u32 = 38;

impl Profile {
    /// Reads a profile file in Docker's format; errors name the file (and line and column).
    pub fn load(path: &Path) -> Result<Profile> {
        use std::io::Read;
        let bad = |reason: String| Error::RunOption {
            option: format!("seccomp profile {}", path.display()),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut text = Vec::new();
        file.take(MAX_PROFILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_PROFILE {
            return Err(bad("larger than 4 MiB".into()));
        }
        let profile: Profile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        for rule in &profile.syscalls {
            if rule.name.is_none() && rule.names.is_empty() {
                return Err(bad("a syscalls entry has neither name nor names".into()));
            }
        }
        Ok(profile)
    }

    /// ferry's default profile: Docker's default (RUN-36).
    pub fn docker_default() -> Profile {
        let allow = |names: &[&str]| Rule {
            names: names.iter().map(|n| n.to_string()).collect(),
            action: LinuxSeccompAction::ScmpActAllow,
            ..Rule::default()
        };
        let arg = |index: usize, value: u64, op| {
            LinuxSeccompArgBuilder::default()
                .index(index)
                .value(value)
                .op(op)
                .build()
                .expect("index, value and op are set")
        };
        let sys_admin = || Filter {
            caps: vec!["CAP_SYS_ADMIN".into()],
            ..Filter::default()
        };
        let mut rules = vec![
            allow(ALLOWED),
            Rule {
                args: vec![arg(0, AF_VSOCK, LinuxSeccompOperator::ScmpCmpNe)],
                ..allow(&["socket"])
            },
        ];
        for persona in PERSONAS {
            rules.push(Rule {
                args: vec![arg(0, persona, LinuxSeccompOperator::ScmpCmpEq)],
                ..allow(&["personality"])
            });
        }
        for (cap, names) in BY_CAPABILITY {
            rules.push(Rule {
                includes: Filter {
                    caps: vec![cap.to_string()],
                    ..Filter::default()
                },
                ..allow(names)
            });
        }
        rules.push(Rule {
            args: vec![arg(
                0,
                CLONE_NAMESPACE_FLAGS,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )],
            excludes: sys_admin(),
            ..allow(&["clone"])
        });
        rules.push(Rule {
            action: LinuxSeccompAction::ScmpActErrno,
            errno_ret: Some(ENOSYS),
            excludes: sys_admin(),
            ..allow(&["clone3"])
        });
        Profile {
            default_action: LinuxSeccompAction::ScmpActErrno,
            default_errno_ret: Some(libc::EPERM as u32),
            architectures: vec![Arch::ScmpArchX86_64],
            arch_map: Vec::new(),
            syscalls: rules,
        }
    }

    /// The OCI `linux.seccomp` of this profile for a process whose bounding set is `caps`:
    /// rules whose `includes` do not hold, or whose `excludes` do, are left out (RUN-36).
    pub fn to_oci(&self, caps: &HashSet<Capability>) -> Result<LinuxSeccomp> {
        let cap_names: HashSet<String> = caps.iter().map(|c| capability_name(*c)).collect();
        let kernel = kernel_version();
        let applies = |rule: &Rule| {
            let inc = &rule.includes;
            let exc = &rule.excludes;
            inc.caps.iter().all(|c| cap_names.contains(c))
                && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == ARCH))
                && inc
                    .min_kernel
                    .as_deref()
                    .is_none_or(|min| kernel >= parse_version(min))
                && !exc.caps.iter().any(|c| cap_names.contains(c))
                && !exc.arches.iter().any(|a| a == ARCH)
                && exc
                    .min_kernel
                    .as_deref()
                    .is_none_or(|min| kernel < parse_version(min))
        };
        let mut syscalls: Vec<LinuxSyscall> = Vec::new();
        for rule in self.syscalls.iter().filter(|r| applies(r)) {
            let names: Vec<String> = rule.name.iter().chain(&rule.names).cloned().collect();
            let mut builder = LinuxSyscallBuilder::default()
                .names(names)
                .action(rule.action);
            if let Some(errno) = rule.errno_ret {
                builder = builder.errno_ret(errno);
            }
            if !rule.args.is_empty() {
                builder = builder.args(rule.args.clone());
            }
            syscalls.push(builder.build().map_err(spec_error)?);
        }
        let mut architectures = self.architectures.clone();
        if let Some(map) = self
            .arch_map
            .iter()
            .find(|m| m.architecture == Arch::ScmpArchX86_64)
        {
            architectures = std::iter::once(map.architecture)
                .chain(map.sub_architectures.clone().unwrap_or_default())
                .collect();
        }
        let mut builder = LinuxSeccompBuilder::default()
            .default_action(self.default_action)
            .syscalls(syscalls);
        if let Some(errno) = self.default_errno_ret {
            builder = builder.default_errno_ret(errno);
        }
        if !architectures.is_empty() {
            builder = builder.architectures(architectures);
        }
        builder.build().map_err(spec_error)
    }
}

/// Compiles `linux.seccomp` into BPF programs for x86_64, to be installed together (RUN-36).
///
/// seccompiler gives each filter one action on match: one program per action other than
/// allow applies it to its rules' system calls and allows everything else; the last program
/// allows every system call some rule names (under its conditions) and applies the default
/// action to the rest. The kernel takes the strictest answer, so a rule's action wins
/// over the allowance and the default applies where no rule matches. Names this kernel
/// table does not know are skipped, as runc (libseccomp) skips them.
pub(crate) fn compile(seccomp: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
    let mut every: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional: BTreeSet<i64> = BTreeSet::new();
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    for syscall in seccomp.syscalls().as_deref().unwrap_or_default() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        let conditions = conditions(syscall.args().as_deref().unwrap_or_default())?;
        for name in syscall.names() {
            let Ok(nr) = name.parse::<syscalls::Sysno>() else {
                continue;
            };
            let nr = nr.id() as i64;
            add_rule(&mut every, &mut unconditional, nr, &conditions)?;
            if act != SeccompAction::Allow {
                let slot = match by_action.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        by_action.push((act.clone(), BTreeMap::new()));
                        by_action.len() - 1
                    }
                };
                add_rule(
                    &mut by_action[slot].1,
                    &mut BTreeSet::new(),
                    nr,
                    &conditions,
                )?;
            }
        }
    }
    let mut programs = Vec::new();
    for (act, rules) in by_action {
        programs.push(program(rules, SeccompAction::Allow, act)?);
    }
    // Last: once it is in place, a profile that does not allow prctl(2) allows no more.
    if default != SeccompAction::Allow {
        programs.push(program(every, default, SeccompAction::Allow)?);
    }
    Ok(programs)
}

/// Adds one rule (`conditions` all holding; none = always) for system call `nr`.
fn add_rule(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    unconditional: &mut BTreeSet<i64>,
    nr: i64,
    conditions: &[SeccompCondition],
) -> Result<()> {
    // An empty chain matches the system call whatever its arguments.
    if conditions.is_empty() {
        unconditional.insert(nr);
        rules.insert(nr, Vec::new());
    } else if !unconditional.contains(&nr) {
        let rule = SeccompRule::new(conditions.to_vec()).map_err(seccomp_error)?;
        rules.entry(nr).or_default().push(rule);
    }
    Ok(())
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram> {
    let filter =
        SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64).map_err(seccomp_error)?;
    BpfProgram::try_from(filter).map_err(seccomp_error)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Spec(
                "seccomp action SCMP_ACT_NOTIFY is not supported by the builtin runtime".into(),
            ))
        }
    })
}

fn conditions(args: &[LinuxSeccompArg]) -> Result<Vec<SeccompCondition>> {
    args.iter()
        .map(|a| {
            let op = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
                LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
                LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
                LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
                LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
                LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
                // libseccomp: (arg & value) == valueTwo.
                LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
            };
            let value = match a.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                _ => a.value(),
            };
            let index = u8::try_from(a.index()).unwrap_or(u8::MAX);
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(seccomp_error)
        })
        .collect()
}

/// `CAP_CHOWN` for [`Capability::Chown`].
fn capability_name(cap: Capability) -> String {
    serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The running kernel's `major.minor`.
fn kernel_version() -> (u32, u32) {
    nix::sys::utsname::uname()
        .map(|u| parse_version(&u.release().to_string_lossy()))
        .unwrap_or((0, 0))
}

fn parse_version(text: &str) -> (u32, u32) {
    let mut parts = text
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn spec_error(e: impl std::fmt::Display) -> Error {
    Error::Spec(format!("seccomp: {e}"))
}

fn seccomp_error(e: seccompiler::BackendError) -> Error {
    Error::Spec(format!("seccomp filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DEFAULT_CAPABILITIES;

    fn names(seccomp: &LinuxSeccomp) -> HashSet<String> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn default_profile_denies_namespaces_unless_sys_admin() {
        // RUN-36: Docker's default: unshare and mount need CAP_SYS_ADMIN, chroot needs
        // CAP_SYS_CHROOT (in the default set), clone3 answers ENOSYS.
        let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        let oci = Profile::docker_default().to_oci(&caps).unwrap();
        assert_eq!(oci.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(oci.default_errno_ret(), Some(1));
        let allowed = names(&oci);
        assert!(allowed.contains("read") && allowed.contains("chroot"));
        assert!(!allowed.contains("unshare") && !allowed.contains("mount"));
        assert!(!allowed.contains("reboot") && !allowed.contains("keyctl"));
        let clone3 = oci
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone3"])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(38));

        let mut admin = caps.clone();
        admin.insert(Capability::SysAdmin);
        let oci = Profile::docker_default().to_oci(&admin).unwrap();
        assert!(names(&oci).contains("unshare"));
        assert!(!oci
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.names() == &["clone3"]));
    }

    #[test]
    fn every_default_name_is_an_x86_64_system_call() {
        // RUN-36: a typo would silently deny a call.
        for name in ALLOWED
            .iter()
            .chain(BY_CAPABILITY.iter().flat_map(|(_, n)| n.iter()))
        {
            assert!(name.parse::<syscalls::Sysno>().is_ok(), "{name}");
        }
    }

    #[test]
    fn profiles_compile_to_one_program_per_action() {
        // RUN-36
        let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        let oci = Profile::docker_default().to_oci(&caps).unwrap();
        // Default EPERM with allowances, and clone3's ENOSYS.
        assert_eq!(compile(&oci).unwrap().len(), 2);
    }

    #[test]
    fn profile_files_are_parsed_strictly() {
        // RUN-36: Docker's format; an unknown field is an error naming the file.
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["keyctl"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"comment":"no keys"},
                {"name":"personality","action":"SCMP_ACT_ERRNO",
                 "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}],
                 "excludes":{"caps":["CAP_SYS_ADMIN"]}}]}"#,
        )
        .unwrap();
        let oci = Profile::load(&good)
            .unwrap()
            .to_oci(&HashSet::new())
            .unwrap();
        assert_eq!(oci.syscalls().as_ref().unwrap().len(), 2);
        // Allow by default: one program, for the ERRNO rules.
        assert_eq!(compile(&oci).unwrap().len(), 1);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_ERRNO","sycalls":[]}"#).unwrap();
        let err = Profile::load(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("seccomp profile {}: ", bad.display())),
            "{err}"
        );
        assert!(err.contains("sycalls") && !err.contains('\n'), "{err}");
    }
}

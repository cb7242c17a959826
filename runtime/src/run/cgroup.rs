//! A container's cgroup: the resource limits of its spec (`linux.resources`) written into a
//! cgroup of its own at `linux.cgroupsPath`, on cgroup v1 or v2, and removed when the
//! container ends (specs/runtime.md RUN-40…RUN-43).
//!
//! The builtin runtime uses this module; runc reads the same spec and does the same itself.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_core::oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, Spec,
};
use nix::unistd::Pid;

use super::io_error;
use crate::{Error, Result};

/// Where the kernel's cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long [`Cgroup::remove`] retries a cgroup that still holds exiting processes.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// CFS period ferry's CPU quota is given over, in microseconds (docker's).
pub const CPU_PERIOD: u64 = 100_000;

/// A container's resource limits, with `docker run`'s meaning (RUN-40).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// `--memory`: bytes of memory; no swap is allowed beyond it.
    pub memory: Option<u64>,
    /// `--cpus`: how many CPUs' worth of time, as a quota per [`CPU_PERIOD`].
    pub cpus: Option<f64>,
    /// `--pids-limit`: most processes (and threads) at once.
    pub pids: Option<u64>,
}

impl Resources {
    /// Sets these limits in `resources` (a spec's `linux.resources`), leaving its other
    /// fields alone (RUN-40).
    pub fn apply_to(&self, resources: &mut LinuxResources) -> Result<()> {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let spec_error = |e: ferry_core::oci_spec::OciSpecError| Error::Spec(e.to_string());
        if let Some(memory) = self.memory {
            // Memory + swap = memory: the container gets no swap.
            let memory = LinuxMemoryBuilder::default()
                .limit(clamp(memory))
                .swap(clamp(memory))
                .build()
                .map_err(spec_error)?;
            resources.set_memory(Some(memory));
        }
        if let Some(cpus) = self.cpus {
            // The kernel's smallest quota is 1 ms.
            let quota = (cpus * CPU_PERIOD as f64).round().max(1000.0) as i64;
            let cpu = LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD)
                .build()
                .map_err(spec_error)?;
            resources.set_cpu(Some(cpu));
        }
        if let Some(pids) = self.pids {
            let pids = LinuxPidsBuilder::default()
                .limit(clamp(pids))
                .build()
                .map_err(spec_error)?;
            resources.set_pids(Some(pids));
        }
        Ok(())
    }
}

/// A resource controller ferry writes limits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// `memory`: memory and swap limits, OOM kill counts.
    Memory,
    /// `cpu`: the CFS bandwidth quota.
    Cpu,
    /// `pids`: the number of tasks.
    Pids,
}

impl Controller {
    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }

    const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];
}

/// The machine's cgroup layout, as far as ferry's controllers are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: each controller in a hierarchy of its own (some may share one mount).
    V1 {
        /// Mount point of each controller that is mounted.
        mounts: Vec<(Controller, PathBuf)>,
    },
    /// cgroup v2: one unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Hierarchy {
    /// The hierarchy of this machine: v2 when [`CGROUP_ROOT`] itself is a cgroup2 mount (the
    /// test runc makes), else v1 with the controllers' mount points from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Hierarchy> {
        let root = Path::new(CGROUP_ROOT);
        let fs = nix::sys::statfs::statfs(root).map_err(|e| io_error("statfs", root, e.into()))?;
        if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Ok(Hierarchy::V2 {
                root: root.to_path_buf(),
            });
        }
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(mountinfo).map_err(|e| io_error("read", mountinfo, e))?;
        Ok(Hierarchy::V1 {
            mounts: v1_mounts(&text),
        })
    }
}

/// The v1 mount point of each of ferry's controllers in a `mountinfo` text.
fn v1_mounts(mountinfo: &str) -> Vec<(Controller, PathBuf)> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS…] - FSTYPE SOURCE SUPER_OPTIONS
        let Some((fields, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut tail = tail.split(' ');
        if tail.next() != Some("cgroup") {
            continue;
        }
        let options: Vec<&str> = tail.nth(1).unwrap_or_default().split(',').collect();
        let Some(mount_point) = fields.split(' ').nth(4) else {
            continue;
        };
        for controller in Controller::ALL {
            if options.contains(&controller.name()) && !mounts.iter().any(|(c, _)| *c == controller)
            {
                mounts.push((controller, PathBuf::from(unescape_octal(mount_point))));
            }
        }
    }
    mounts
}

/// mountinfo's escapes (`\040` for a space) undone.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The limits of a spec's `linux.resources` that ferry applies (RUN-40).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.limit`: bytes of memory.
    pub memory: Option<i64>,
    /// `memory.swap`: bytes of memory and swap together.
    pub memory_swap: Option<i64>,
    /// `cpu.quota`: microseconds of CPU time per period.
    pub cpu_quota: Option<i64>,
    /// `cpu.period`: the period of the quota, in microseconds.
    pub cpu_period: Option<u64>,
    /// `pids.limit`: most tasks at once.
    pub pids: Option<i64>,
}

impl Limits {
    /// The limits `resources` sets (device rules and other fields are not limits here).
    pub fn of(resources: &LinuxResources) -> Limits {
        let memory = resources.memory().as_ref();
        let cpu = resources.cpu().as_ref();
        Limits {
            memory: memory.and_then(|m| m.limit()).filter(|&l| l > 0),
            memory_swap: memory.and_then(|m| m.swap()).filter(|&s| s > 0),
            cpu_quota: cpu.and_then(|c| c.quota()).filter(|&q| q > 0),
            cpu_period: cpu.and_then(|c| c.period()).filter(|&p| p > 0),
            pids: resources
                .pids()
                .as_ref()
                .map(|p| p.limit())
                .filter(|&l| l > 0),
        }
    }

    /// The limits of `spec`'s `linux.resources`; none when it has none.
    pub fn of_spec(spec: &Spec) -> Limits {
        spec.linux()
            .as_ref()
            .and_then(|linux| linux.resources().as_ref())
            .map(Limits::of)
            .unwrap_or_default()
    }

    /// Whether nothing is limited (then a container gets no cgroup of its own).
    pub fn is_empty(&self) -> bool {
        self.controllers().is_empty()
    }

    /// The controllers these limits need.
    fn controllers(&self) -> Vec<Controller> {
        let mut needed = Vec::new();
        if self.memory.is_some() || self.memory_swap.is_some() {
            needed.push(Controller::Memory);
        }
        if self.cpu_quota.is_some() {
            needed.push(Controller::Cpu);
        }
        if self.pids.is_some() {
            needed.push(Controller::Pids);
        }
        needed
    }
}

/// A container's cgroup, created with its limits written; removed on [`Cgroup::remove`] or
/// when dropped.
#[derive(Debug)]
pub struct Cgroup {
    /// Whether the directories are v2 ones.
    v2: bool,
    /// The cgroup's directory in each hierarchy it is in (one on v2), memory first if limited.
    dirs: Vec<PathBuf>,
    /// The directory with the memory controller's files, if memory is limited.
    memory_dir: Option<PathBuf>,
    /// The memory limit, for messages.
    memory_limit: Option<i64>,
}

impl Cgroup {
    /// The cgroup of a container run from `spec`, created with the limits of its
    /// `linux.resources` at its `linux.cgroupsPath` on this machine's hierarchy; `None` when
    /// the spec limits nothing (RUN-40, RUN-41).
    pub fn for_spec(spec: &Spec) -> Result<Option<Cgroup>> {
        let limits = Limits::of_spec(spec);
        if limits.is_empty() {
            return Ok(None);
        }
        refuse_rootless()?;
        let path = cgroups_path(spec).ok_or_else(|| Error::Cgroup {
            path: PathBuf::new(),
            reason: "the spec sets resource limits but no linux.cgroupsPath".into(),
        })?;
        Cgroup::create(&Hierarchy::detect()?, &path, &limits).map(Some)
    }

    /// Creates the cgroup `path` (a spec's `cgroupsPath`, such as `/ferry/<id>`) in every
    /// hierarchy `limits` needs and writes the limits (RUN-40, RUN-41).
    ///
    /// Missing parents are created and, on v2, get the controllers enabled for their
    /// children. Fails if a needed controller is not mounted or a write is refused; what
    /// was created is removed again.
    pub fn create(hierarchy: &Hierarchy, path: &Path, limits: &Limits) -> Result<Cgroup> {
        let relative = relative_path(path)?;
        let needed = limits.controllers();
        let mut cgroup = Cgroup {
            v2: matches!(hierarchy, Hierarchy::V2 { .. }),
            dirs: Vec::new(),
            memory_dir: None,
            memory_limit: limits.memory,
        };
        // Each (mount point, controllers in it) to create the cgroup in.
        let mut places: Vec<(PathBuf, Vec<Controller>)> = Vec::new();
        match hierarchy {
            Hierarchy::V2 { root } => places.push((root.clone(), needed.clone())),
            Hierarchy::V1 { mounts } => {
                for &controller in &needed {
                    let mount = mounts
                        .iter()
                        .find(|(c, _)| *c == controller)
                        .map(|(_, m)| m.clone())
                        .ok_or_else(|| Error::Cgroup {
                            path: path.to_path_buf(),
                            reason: format!(
                                "the {} controller is not mounted (cgroup v1)",
                                controller.name()
                            ),
                        })?;
                    match places.iter_mut().find(|(m, _)| *m == mount) {
                        Some((_, controllers)) => controllers.push(controller),
                        None => places.push((mount, vec![controller])),
                    }
                }
            }
        }
        for (mount, controllers) in places {
            let dir = mount.join(&relative);
            if cgroup.v2 {
                enable_controllers(&mount, &relative, &controllers)?;
            }
            let parent = dir.parent().unwrap_or(&mount).to_path_buf();
            fs::create_dir_all(&parent).map_err(|e| io_error("create cgroup", &parent, e))?;
            match fs::create_dir(&dir) {
                Ok(()) => {}
                // Left by a container of the same id that ferry could not clean up.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("create cgroup", &dir, e)),
            }
            cgroup.dirs.push(dir.clone());
            if controllers.contains(&Controller::Memory) {
                cgroup.memory_dir = Some(dir.clone());
            }
            for controller in controllers {
                for (file, value) in limit_files(cgroup.v2, controller, limits, &parent) {
                    write_file(&dir.join(file), &value)?;
                }
            }
        }
        Ok(cgroup)
    }

    /// Moves the process `pid` (with all its threads) into the cgroup (RUN-41).
    pub fn add(&self, pid: Pid) -> Result<()> {
        for dir in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer has killed in the cgroup because of its
    /// memory limit; 0 when memory is not limited (RUN-42).
    pub fn oom_kills(&self) -> Result<u64> {
        let Some(dir) = &self.memory_dir else {
            return Ok(0);
        };
        // v1 `memory.oom_control` and v2 `memory.events` both have an "oom_kill N" line.
        let file = dir.join(if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        });
        let text = fs::read_to_string(&file).map_err(|e| io_error("read", &file, e))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// After the container `id` ended with `code`: warns on stderr when the OOM killer
    /// ended it (RUN-42), then removes the cgroup (RUN-43).
    pub fn finish(self, id: &str, code: i32) -> Result<()> {
        if code == 128 + libc::SIGKILL && self.oom_kills()? > 0 {
            warn_oom(id, self.memory_limit);
        }
        self.remove()
    }

    /// The cgroup's directories, one per hierarchy it is in.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the cgroup's directories, retrying while its last processes are still
    /// exiting (RUN-43).
    pub fn remove(mut self) -> Result<()> {
        self.remove_dirs()
    }

    fn remove_dirs(&mut self) -> Result<()> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        while let Some(dir) = self.dirs.last() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(io_error("remove cgroup", dir, e)),
            }
            self.dirs.pop();
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_dirs() {
            tracing::warn!("{e}");
        }
    }
}

/// OOM kills of a container whose cgroup runc makes and removes: ferry creates the memory
/// cgroup first and counts its OOM notifications through an eventfd, which outlives the
/// cgroup (cgroup v1; RUN-42).
#[derive(Debug)]
pub struct OomWatch {
    /// Signalled once per OOM event, and once more when the cgroup is removed.
    events: OwnedFd,
    /// Removes the memory cgroup if runc left it; knows the limit.
    cgroup: Cgroup,
}

impl OomWatch {
    /// Starts watching the memory cgroup of a container run from `spec` by another runtime;
    /// `None` when the spec sets no memory limit or the hierarchy is v2.
    pub fn for_spec(spec: &Spec) -> Result<Option<OomWatch>> {
        let limits = Limits::of_spec(spec);
        if limits.memory.is_none() {
            return Ok(None);
        }
        refuse_rootless()?;
        let Some(path) = cgroups_path(spec) else {
            return Ok(None);
        };
        let hierarchy = Hierarchy::detect()?;
        if matches!(hierarchy, Hierarchy::V2 { .. }) {
            return Ok(None);
        }
        let memory_only = Limits {
            memory: limits.memory,
            memory_swap: limits.memory_swap,
            ..Limits::default()
        };
        let cgroup = Cgroup::create(&hierarchy, &path, &memory_only)?;
        let dir = cgroup.memory_dir.clone().expect("memory is limited");
        // SAFETY: eventfd(2) has no memory preconditions; the descriptor is owned below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io_error("eventfd", &dir, io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let events = unsafe { OwnedFd::from_raw_fd(raw) };
        let control = dir.join("memory.oom_control");
        let oom_control = fs::File::open(&control).map_err(|e| io_error("open", &control, e))?;
        write_file(
            &dir.join("cgroup.event_control"),
            &format!("{} {}", events.as_raw_fd(), oom_control.as_raw_fd()),
        )?;
        Ok(Some(OomWatch { events, cgroup }))
    }

    /// After the container `id` ended with `code` and its cgroup was removed: warns on
    /// stderr when the OOM killer ended it.
    ///
    /// The removal adds one notification, delivered a little after runc's `rmdir`; more
    /// than one means an OOM. Only a 137 is looked into, waiting at most 300 ms.
    pub fn finish(self, id: &str, code: i32) {
        if code != 128 + libc::SIGKILL {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut count = 0u64;
        while count < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut poll = libc::pollfd {
                fd: self.events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; read(2) of 8 bytes into a u64, as eventfd wants.
            unsafe {
                if libc::poll(&mut poll, 1, left.as_millis() as i32) <= 0 {
                    continue;
                }
                let mut value = 0u64;
                if libc::read(self.events.as_raw_fd(), (&mut value as *mut u64).cast(), 8) == 8 {
                    count += value;
                }
            }
        }
        if count >= 2 {
            warn_oom(id, self.cgroup.memory_limit);
        }
    }
}

/// Rootless ferry has no cgroup of its own to put limits in (RUN-48).
fn refuse_rootless() -> Result<()> {
    if !crate::userns::in_user_namespace() {
        return Ok(());
    }
    Err(Error::Rootless {
        reason: "--memory, --cpus and --pids-limit need root: no cgroup is delegated to \
                 rootless ferry"
            .into(),
    })
}

fn warn_oom(id: &str, limit: Option<i64>) {
    let limit = limit.map_or_else(String::new, |l| format!(" of {l} bytes"));
    tracing::warn!(
        "container {id} was killed by the kernel's OOM killer: it reached its memory limit{limit}"
    );
}

/// The files and values that set `limits` for `controller` (RUN-40).
///
/// Swap files are written only where the parent cgroup `parent` has them (swap accounting
/// on); on v1 memory+swap is written after memory, which it may not be below.
fn limit_files(
    v2: bool,
    controller: Controller,
    limits: &Limits,
    parent: &Path,
) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    match (controller, v2) {
        (Controller::Memory, false) => {
            if let Some(memory) = limits.memory {
                files.push(("memory.limit_in_bytes", memory.to_string()));
            }
            if let Some(swap) = limits.memory_swap {
                if parent.join("memory.memsw.limit_in_bytes").exists() {
                    files.push(("memory.memsw.limit_in_bytes", swap.to_string()));
                }
            }
        }
        (Controller::Memory, true) => {
            if let Some(memory) = limits.memory {
                files.push(("memory.max", memory.to_string()));
            }
            // v2 limits swap alone: memory+swap minus memory.
            if let (Some(swap), Some(memory)) = (limits.memory_swap, limits.memory) {
                if parent.join("memory.swap.max").exists() {
                    files.push(("memory.swap.max", (swap - memory).max(0).to_string()));
                }
            }
        }
        (Controller::Cpu, false) => {
            if let Some(quota) = limits.cpu_quota {
                if let Some(period) = limits.cpu_period {
                    files.push(("cpu.cfs_period_us", period.to_string()));
                }
                files.push(("cpu.cfs_quota_us", quota.to_string()));
            }
        }
        (Controller::Cpu, true) => {
            if let Some(quota) = limits.cpu_quota {
                let period = limits.cpu_period.unwrap_or(100_000);
                files.push(("cpu.max", format!("{quota} {period}")));
            }
        }
        (Controller::Pids, _) => {
            if let Some(pids) = limits.pids {
                files.push(("pids.max", pids.to_string()));
            }
        }
    }
    files
}

/// On v2, enables `controllers` in `cgroup.subtree_control` of the root and of every
/// ancestor of the cgroup `relative` below it.
fn enable_controllers(root: &Path, relative: &Path, controllers: &[Controller]) -> Result<()> {
    let value = controllers
        .iter()
        .map(|c| format!("+{}", c.name()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut dir = root.to_path_buf();
    let mut components = relative.components().peekable();
    loop {
        write_file(&dir.join("cgroup.subtree_control"), &value)?;
        match components.next() {
            Some(c) if components.peek().is_some() => {
                dir.push(c);
                fs::create_dir_all(&dir).map_err(|e| io_error("create cgroup", &dir, e))?;
            }
            _ => return Ok(()),
        }
    }
}

/// `cgroupsPath` below a hierarchy's root: no `..`, not empty.
fn relative_path(path: &Path) -> Result<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => relative.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Cgroup {
                    path: path.to_path_buf(),
                    reason: "a cgroups path may not contain \"..\"".into(),
                })
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(Error::Cgroup {
            path: path.to_path_buf(),
            reason: "a container's cgroup cannot be the root cgroup".into(),
        });
    }
    Ok(relative)
}

/// The spec's `linux.cgroupsPath`, if it has one.
fn cgroups_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|linux| linux.cgroups_path().clone())
}

/// Writes `value` to the cgroup file `path` in one write(2), as the kernel wants.
fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--memory 32m --cpus 0.5 --pids-limit 20` puts in the spec.
    fn limits() -> Limits {
        let mut resources = LinuxResources::default();
        Resources {
            memory: Some(32 << 20),
            cpus: Some(0.5),
            pids: Some(20),
        }
        .apply_to(&mut resources)
        .unwrap();
        Limits::of(&resources)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn v1_limits_are_written_in_each_controllers_hierarchy() {
        // RUN-40, RUN-41: a temp dir laid out like /sys/fs/cgroup on v1, with swap accounting.
        let root = tempfile::tempdir().unwrap();
        let mount = |name: &str| root.path().join(name);
        for name in ["memory", "cpu,cpuacct", "pids"] {
            fs::create_dir_all(mount(name).join("ferry")).unwrap();
        }
        fs::write(mount("memory/ferry/memory.memsw.limit_in_bytes"), "max").unwrap();
        let hierarchy = Hierarchy::V1 {
            mounts: vec![
                (Controller::Memory, mount("memory")),
                (Controller::Cpu, mount("cpu,cpuacct")),
                (Controller::Pids, mount("pids")),
            ],
        };
        let cgroup = Cgroup::create(&hierarchy, Path::new("/ferry/abc"), &limits()).unwrap();
        let memory = mount("memory/ferry/abc");
        assert_eq!(read(&memory.join("memory.limit_in_bytes")), "33554432");
        assert_eq!(
            read(&memory.join("memory.memsw.limit_in_bytes")),
            "33554432"
        );
        let cpu = mount("cpu,cpuacct/ferry/abc");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&mount("pids/ferry/abc/pids.max")), "20");

        cgroup.add(Pid::from_raw(4242)).unwrap();
        for dir in ["memory", "cpu,cpuacct", "pids"] {
            assert_eq!(read(&mount(dir).join("ferry/abc/cgroup.procs")), "4242");
        }
        fs::write(
            memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cgroup.oom_kills().unwrap(), 1);
    }

    #[test]
    fn v1_without_swap_accounting_leaves_memsw_alone() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V1 {
            mounts: vec![(Controller::Memory, root.path().join("memory"))],
        };
        let only_memory = Limits {
            memory: Some(1 << 20),
            memory_swap: Some(1 << 20),
            ..Limits::default()
        };
        let _cgroup = Cgroup::create(&hierarchy, Path::new("/ferry/x"), &only_memory).unwrap();
        let dir = root.path().join("memory/ferry/x");
        assert_eq!(read(&dir.join("memory.limit_in_bytes")), "1048576");
        assert!(!dir.join("memory.memsw.limit_in_bytes").exists());
    }

    #[test]
    fn v1_missing_controller_is_named() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V1 {
            mounts: vec![(Controller::Memory, root.path().join("memory"))],
        };
        let err = Cgroup::create(&hierarchy, Path::new("/ferry/x"), &limits()).unwrap_err();
        assert!(
            err.to_string()
                .contains("the cpu controller is not mounted"),
            "{err}"
        );
    }

    #[test]
    fn v2_limits_are_written_in_the_unified_hierarchy() {
        // RUN-40, RUN-41: a temp dir laid out like a v2 /sys/fs/cgroup with swap accounting.
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("ferry")).unwrap();
        fs::write(root.path().join("ferry/memory.swap.max"), "max").unwrap();
        let hierarchy = Hierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        let cgroup = Cgroup::create(&hierarchy, Path::new("/ferry/abc"), &limits()).unwrap();
        for dir in [root.path(), &root.path().join("ferry")] {
            assert_eq!(
                read(&dir.join("cgroup.subtree_control")),
                "+memory +cpu +pids"
            );
        }
        let dir = root.path().join("ferry/abc");
        assert_eq!(cgroup.dirs(), std::slice::from_ref(&dir));
        assert_eq!(read(&dir.join("memory.max")), "33554432");
        assert_eq!(read(&dir.join("memory.swap.max")), "0");
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("pids.max")), "20");
        cgroup.add(Pid::from_raw(7)).unwrap();
        assert_eq!(read(&dir.join("cgroup.procs")), "7");
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cgroup.oom_kills().unwrap(), 1);
    }

    #[test]
    fn remove_deletes_the_cgroup_and_keeps_its_parent() {
        // RUN-43. A fake tree's directories hold the files ferry wrote, which rmdir refuses
        // (on cgroupfs they vanish with the directory): remove the files first.
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        let pids = Limits {
            pids: Some(5),
            ..Limits::default()
        };
        let cgroup = Cgroup::create(&hierarchy, Path::new("/ferry/gone"), &pids).unwrap();
        let dir = root.path().join("ferry/gone");
        fs::remove_file(dir.join("pids.max")).unwrap();
        cgroup.remove().unwrap();
        assert!(!dir.exists());
        assert!(root.path().join("ferry").is_dir());
    }

    #[test]
    fn limits_come_from_the_spec_and_nothing_set_means_no_cgroup() {
        assert_eq!(
            limits(),
            Limits {
                memory: Some(32 << 20),
                memory_swap: Some(32 << 20),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                pids: Some(20),
            }
        );
        assert!(Limits::of(&LinuxResources::default()).is_empty());
    }

    #[test]
    fn cgroups_paths_stay_below_the_root() {
        assert_eq!(
            relative_path(Path::new("/ferry/abc")).unwrap(),
            Path::new("ferry/abc")
        );
        for bad in ["/ferry/../../etc", "/"] {
            assert!(relative_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_mount_points_come_from_mountinfo() {
        let text = "\
25 20 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids\\040x rw - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
";
        assert_eq!(
            v1_mounts(text),
            vec![
                (Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                (Controller::Memory, PathBuf::from("/sys/fs/cgroup/memory")),
                (Controller::Pids, PathBuf::from("/sys/fs/cgroup/pids x")),
            ]
        );
    }
}

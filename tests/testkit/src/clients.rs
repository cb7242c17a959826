//! The container runtimes sysadmins keep, as private instances for tests: containerd
//! (`ctr`), dockerd and podman, each with its own root, state and socket, nothing shared
//! with the host's. Each is stopped and cleaned up on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `program` can be run here (tests that need it skip, saying so, when not).
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until `ready` holds, or panics naming `what` and its log.
fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not start: {log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unmounts everything below `dir` (daemons leave overlay and shm mounts behind).
fn unmount_below(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-R")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in below {
        let _ = Command::new("umount")
            .args(["-l", m])
            .stderr(Stdio::null())
            .status();
    }
}

/// A private containerd (own root, state and socket; CRI off), killed on drop.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/sock\"\n",
                d.display()
            ),
        )
        .expect("containerd config");
        let log = d.join("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("containerd");
        let ctr = Containerd { dir, child };
        wait_until("containerd", &log, || {
            ctr.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        ctr
    }

    /// `ctr` talking to this containerd, in namespace `ferry`.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.path().join("sock"))
            .args(["-n", "ferry"]);
        cmd
    }

    /// A directory of this instance's, for `hosts.toml` files and the like.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(&self.dir.path().join("root"));
    }
}

/// A private dockerd (own data root, exec root and socket; no bridge, no iptables), stopped
/// on drop. Needs root.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    /// Starts dockerd with `extra` options (e.g. `--registry-mirror URL`) and waits until
    /// `docker version` answers.
    pub fn start(extra: &[&str]) -> Dockerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let log = d.join("log");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("sock").display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--storage-driver=vfs",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("dockerd");
        let docker = Dockerd { dir, child };
        wait_until("dockerd", &log, || {
            docker
                .docker()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        docker
    }

    /// `docker` (Debian's client, beside the daemon) talking to this dockerd.
    pub fn docker(&self) -> Command {
        let client = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let mut cmd = Command::new(client);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.path().join("client"));
        cmd
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount what it mounted.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(self.dir.path());
    }
}

/// podman with its own root and run root (vfs storage) and a registries.conf of the test's.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// A podman whose `registries.conf` is `registries_conf`.
    pub fn new(registries_conf: &str) -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("registries.conf"), registries_conf)
            .expect("registries.conf");
        std::fs::write(dir.path().join("auth.json"), "{}").expect("auth.json");
        Podman { dir }
    }

    /// `podman` on this instance's storage.
    pub fn podman(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        unmount_below(self.dir.path());
    }
}

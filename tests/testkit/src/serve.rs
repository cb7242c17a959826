//! `ferry serve` nodes for tests: the built binary as a child on a free port of 127.0.0.1,
//! killed on drop; and the conformance harness of the peer driver over such a node.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Reference, Store};
use ferry_drivers::Driver;

use crate::conformance::{Harness, Seed, SeedBlob, EXAMPLE_HOST, REPOSITORY};
use crate::ferry;

/// How long a node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ferry serve` over a store root; killed on drop.
pub struct ServeNode {
    child: Option<Child>,
    url: String,
    root: PathBuf,
    log: PathBuf,
}

impl ServeNode {
    /// Starts `ferry serve --listen 127.0.0.1:0 EXTRA…` on `root` and waits for its address.
    pub fn start(root: &Path, extra: &[&str]) -> io::Result<ServeNode> {
        Self::start_at(root, "127.0.0.1:0", extra)
    }

    /// Starts `ferry [GLOBAL…] serve --listen LISTEN EXTRA…` on `root` and waits for its
    /// address; `extra` may hold global options such as `--config FILE` too.
    pub fn start_at(root: &Path, listen: &str, extra: &[&str]) -> io::Result<ServeNode> {
        std::fs::create_dir_all(root)?;
        let log = root.join("serve.log");
        let mut cmd = ferry(root);
        cmd.args(["serve", "--listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining, so the node never blocks on a full pipe.
            let _ = io::copy(&mut reader, &mut io::sink());
        });
        let line: String = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .map(str::to_string);
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut err));
            return Err(io::Error::other(format!(
                "ferry serve did not print its address (got {line:?}); stderr: {}",
                err.trim()
            )));
        };
        Ok(ServeNode {
            child: Some(child),
            url,
            root: root.to_path_buf(),
            log,
        })
    }

    /// `http://127.0.0.1:PORT` (or `https://…`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, h)| h)
            .to_string()
    }

    /// The store root it serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the node wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running node").id()
    }

    /// Whether the node's process is still running (it has neither exited nor been killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The most memory the node's process has held so far (`VmHWM`, peak RSS), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status of ferry serve");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Stops the node (SIGSTOP) without killing it: its port still accepts connections
    /// but nothing answers, as from a hung machine. Dropping the node kills it.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("a running node").id();
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP to ferry serve {pid}");
    }

    /// Kills the node (SIGKILL) and waits for it: its port then refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Replaces the bytes of committed blob `digest` in the store at `root` (blobs are 0444:
/// made writable first), to simulate corruption at rest.
pub fn tamper_blob(root: &Path, digest: &Digest, bytes: &[u8]) {
    let path = root
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("tamper {}: {e}", path.display()));
}

/// Puts every seed image into the store at `root` as `name:TAG` (blobs through the store's
/// ingest, then the names).
pub fn seed_store(root: &Path, seed: &Seed, name: &str) {
    let store = Store::open(root).expect("open store");
    let put = |blob: &SeedBlob| {
        let mut ingest = store
            .ingest(&blob.digest, Some(blob.size))
            .expect("ingest seed blob");
        if ingest.offset() != blob.size {
            ingest.reset().expect("reset");
            let mut file = std::fs::File::open(seed.blob_path(&blob.digest)).expect("seed blob");
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).expect("read seed blob");
                if n == 0 {
                    break;
                }
                ingest.write_all(&buf[..n]).expect("write seed blob");
            }
        }
        ingest
            .commit(&blob.media_type, Some("seed"))
            .expect("commit seed blob");
    };
    for image in seed.images() {
        image.blobs().for_each(put);
        let name = Reference::parse(name).expect("name").name();
        store
            .set_image(&ImageRecord {
                name,
                tag: Some(image.tag.clone()),
                digest: image.manifest.digest.clone(),
                media_type: image.manifest.media_type.clone(),
                size: image.blobs().map(|b| b.size).sum(),
                created: None,
                platform: None,
                updated: 0,
            })
            .expect("name seed image");
    }
}

/// The peer driver in front of one `ferry serve` node whose store holds the seed.
pub struct PeerHarness {
    _dir: tempfile::TempDir,
    node: ServeNode,
    driver: Arc<dyn Driver>,
}

impl PeerHarness {
    /// Starts a node on an empty store and builds the driver under test for it with `make`.
    pub fn start(make: impl FnOnce(&ServeNode) -> Arc<dyn Driver>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ferry-peer-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("store");
        Store::open(&root).expect("create store");
        let node = ServeNode::start(&root, &[]).expect("start ferry serve");
        let driver = make(&node);
        PeerHarness {
            _dir: dir,
            node,
            driver,
        }
    }
}

#[async_trait]
impl Harness for PeerHarness {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }

    fn name(&self) -> String {
        format!("{EXAMPLE_HOST}/{REPOSITORY}")
    }

    async fn seed(&self, seed: &'static Seed) {
        let (root, name) = (self.node.root().to_path_buf(), self.name());
        tokio::task::spawn_blocking(move || seed_store(&root, seed, &name))
            .await
            .expect("seed task");
    }

    async fn tamper(&self, digest: &Digest, bytes: Vec<u8>) {
        tamper_blob(self.node.root(), digest, &bytes);
    }
}

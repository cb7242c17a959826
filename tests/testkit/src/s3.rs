//! S3 on 127.0.0.1: a moto server per test, buckets, raw object access, and a CNCF
//! distribution registry that stores its content in a moto bucket.
//!
//! `moto_server` is looked up in `$FERRY_MOTO_VENV/bin`, then `<workspace>/target/moto-venv/bin`
//! (where `scripts/install-moto` puts it), then on `PATH`.

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_drivers::sources::s3::{S3Config, S3Credentials, S3Layout};
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

use crate::{free_port, workspace_root};

/// Access key ID moto is started with (moto accepts any; the tests use this one).
pub const ACCESS_KEY_ID: &str = "testing";
/// Secret access key moto is started with.
pub const SECRET_ACCESS_KEY: &str = "testing";
/// Region of every test bucket.
pub const REGION: &str = "us-east-1";

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `moto_server` program: from `$FERRY_MOTO_VENV`, the workspace's `target/moto-venv`,
/// or `PATH`.
pub fn moto_server_bin() -> io::Result<PathBuf> {
    let venvs = std::env::var_os("FERRY_MOTO_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace_root().join("target/moto-venv")]);
    for venv in venvs {
        let bin = venv.join("bin/moto_server");
        if bin.exists() {
            return Ok(bin);
        }
    }
    let on_path = std::env::var_os("PATH").map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("moto_server"))
            .find(|b| b.exists())
    });
    on_path.flatten().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "moto_server not found in $FERRY_MOTO_VENV/bin, target/moto-venv/bin or PATH (run scripts/install-moto)",
        )
    })
}

/// A running moto S3 server on 127.0.0.1; killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl S3Server {
    /// Starts `moto_server` on a free port and waits until it answers.
    pub fn start() -> io::Result<S3Server> {
        let bin = moto_server_bin()?;
        let mut last_err = None;
        // A port freed just now may be taken before moto binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::Builder::new()
                .prefix("ferry-moto-")
                .suffix(".log")
                .tempfile()?;
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
                .env("AWS_DEFAULT_REGION", REGION)
                .env_remove("AWS_CA_BUNDLE")
                .stdin(Stdio::null())
                .stdout(log.reopen()?)
                .stderr(log.reopen()?)
                .spawn()
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot run {}: {e}", bin.display()))
                })?;
            let mut server = S3Server { child, port, log };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("moto did not start")))
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "moto_server exited ({status}): {}",
                    self.log()
                )));
            }
            if http_status("GET", self.port, "/").is_ok_and(|s| s == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "moto_server not ready after {READY_TIMEOUT:?}: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto's log so far, for failing tests to print.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        match http_status("PUT", self.port, &format!("/{name}"))? {
            200 => Ok(()),
            status => Err(io::Error::other(format!(
                "creating bucket {name} on moto: HTTP {status}"
            ))),
        }
    }

    /// A driver configuration for `bucket` on this server with the test keys.
    pub fn config(&self, source_name: &str, bucket: &str, layout: S3Layout) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: REGION.into(),
            layout,
            allow_http: true,
            credentials: S3Credentials::Keys {
                access_key_id: ACCESS_KEY_ID.into(),
                secret_access_key: SECRET_ACCESS_KEY.into(),
                session_token: None,
            },
            ..S3Config::new(source_name, bucket)
        }
    }

    /// Direct access to `bucket`'s objects, for seeding and tampering behind a driver's back.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .build()
            .expect("object_store S3 client for moto");
        Arc::new(store)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CNCF distribution registry (`docker-registry`) whose storage is a bucket on moto.
///
/// Killed on drop; the bucket keeps what it wrote.
pub struct S3Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl S3Registry {
    /// Starts a registry on a free port storing into `bucket` (created if missing) below
    /// `root_directory` (`""` for the bucket's root), and waits until `/v2/` answers.
    pub fn start(s3: &S3Server, bucket: &str, root_directory: &str) -> io::Result<S3Registry> {
        s3.create_bucket(bucket)?;
        let rootdir = if root_directory.is_empty() {
            String::new()
        } else {
            format!("    rootdirectory: /{}\n", root_directory.trim_matches('/'))
        };
        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("ferry-s3-registry-")
                .tempdir()?;
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  s3:\n    region: {REGION}\n    bucket: {bucket}\n    regionendpoint: {}\n    secure: false\n    v4auth: true\n    accesskey: {ACCESS_KEY_ID}\n    secretkey: {SECRET_ACCESS_KEY}\n{rootdir}  delete:\n    enabled: true\n  redirect:\n    disable: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: ferry-testkit\n",
                    s3.endpoint()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            // The registry's s3 driver dies at start-up on the AWS_CA_BUNDLE these machines set.
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .env_remove("AWS_CA_BUNDLE")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot run docker-registry (apt-get install docker-registry): {e}"
                        ),
                    )
                })?;
            let mut registry = S3Registry { child, port, dir };
            match registry.wait_ready() {
                Ok(()) => return Ok(registry),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "docker-registry exited ({status}): {}",
                    self.log()
                )));
            }
            if http_status("GET", self.port, "/v2/").is_ok_and(|s| s == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "docker-registry not ready after {READY_TIMEOUT:?}: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far, for failing tests to print.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (what it wrote stays in the bucket).
    pub fn stop(self) {}
}

impl Drop for S3Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request with an S3-style `Authorization` header (moto checks its presence,
/// not its signature) to 127.0.0.1:`port` and returns the HTTP status.
fn http_status(method: &str, port: u16, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::other(format!(
                "not an HTTP response: {:?}",
                response.chars().take(100).collect::<String>()
            ))
        })
}

//! A real OCI registry (CNCF distribution, `docker-registry`) on 127.0.0.1 for tests:
//! open, behind htpasswd Basic auth, or behind bearer tokens from [`crate::token`].
//!
//! Each run writes its own config (never the Debian default), keeps its storage in a temp
//! dir, and is killed on drop.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;
use crate::token::{self, TokenPolicy, TokenServer};

/// How a test registry authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// No authentication: everyone may pull and push.
    #[default]
    Open,
    /// htpasswd (bcrypt) Basic auth with one user.
    Basic {
        /// The user.
        username: String,
        /// Its password.
        password: String,
    },
    /// Bearer tokens from a token server the test kit runs, under this policy.
    Token(TokenPolicy),
}

/// Options for [`Registry::start`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// How clients authenticate.
    pub auth: RegistryAuth,
}

impl RegistryOptions {
    /// An open registry.
    pub fn open() -> Self {
        Self::default()
    }

    /// A registry behind htpasswd Basic auth for one user.
    pub fn basic(username: &str, password: &str) -> Self {
        RegistryOptions {
            auth: RegistryAuth::Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
        }
    }

    /// A registry behind bearer-token auth under `policy`.
    pub fn token(policy: TokenPolicy) -> Self {
        RegistryOptions {
            auth: RegistryAuth::Token(policy),
        }
    }
}

/// A running `docker-registry` process; killed (and its storage removed) on drop.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
    token: Option<TokenServer>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Registry {
    /// Starts a registry on a free port of 127.0.0.1 and waits until `/v2/` answers.
    pub fn start(opts: RegistryOptions) -> io::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let mut auth_yaml = String::new();
        let mut credentials = None;
        let mut token = None;
        match &opts.auth {
            RegistryAuth::Open => {}
            RegistryAuth::Basic { username, password } => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", username, password])
                    .output()
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot run htpasswd (apt-get install apache2-utils): {e}"),
                        )
                    })?;
                if !out.status.success() {
                    return Err(io::Error::other(format!(
                        "htpasswd failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                std::fs::write(&htpasswd, &out.stdout)?;
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n",
                    htpasswd.display()
                );
                credentials = Some((username.clone(), password.clone()));
            }
            RegistryAuth::Token(policy) => {
                token::make_signing_cert(dir.path())?;
                let server = TokenServer::start(
                    policy.clone(),
                    &dir.path().join("key.pem"),
                    &dir.path().join("cert.pem"),
                )?;
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    dir.path().join("cert.pem").display()
                );
                credentials = Some((policy.username.clone(), policy.password.clone()));
                token = Some(server);
            }
        }
        // A port freed just now may be taken by someone else before the registry binds it:
        // try a few.
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: ferry-testkit\n{auth_yaml}",
                    storage.display()
                ),
            )?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
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
            match wait_ready(child, port, dir.path()) {
                Ok(child) => {
                    return Ok(Registry {
                        child,
                        port,
                        dir,
                        credentials,
                        token,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("registry did not start")))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The storage root (`docker/registry/v2/...` lives below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding the bytes of blob (or manifest) `digest` (`sha256:<hex>`).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.storage_dir()
            .join("docker/registry/v2/blobs")
            .join(alg)
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// `(username, password)` the registry accepts, if it wants any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The token server, for registries started with [`RegistryAuth::Token`].
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The registry's log so far (warnings and errors), for failing tests to print.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host())
            .field("storage", &self.storage_dir())
            .finish_non_exhaustive()
    }
}

/// Waits until the registry `child` on `port` answers `/v2/`; kills it if it does not.
fn wait_ready(mut child: Child, port: u16, dir: &Path) -> io::Result<Child> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let host = format!("127.0.0.1:{port}");
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        Err(io::Error::other(format!("{why}: {tail}")))
    };
    loop {
        if let Some(status) = child.try_wait()? {
            return fail(
                &mut child,
                format!("docker-registry exited ({status}) before answering"),
            );
        }
        if http_status(&host, "/v2/").is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            return fail(
                &mut child,
                format!("docker-registry did not answer /v2/ on {host} within {READY_TIMEOUT:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound and released just now).
pub fn closed_port() -> io::Result<u16> {
    Ok(free_port())
}

/// The HTTP status of `GET path` on `host` (plain HTTP/1.0, no auth).
fn http_status(host: &str, path: &str) -> io::Result<u16> {
    let mut conn = TcpStream::connect(host)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {text:?}")))
}

/// Rewrites the file at `path` with the same length but different bytes (each byte
/// flipped), to simulate corruption at rest.
pub fn flip_bytes(path: &Path) -> io::Result<()> {
    let bytes: Vec<u8> = std::fs::read(path)?.iter().map(|b| !b).collect();
    std::fs::write(path, bytes)
}

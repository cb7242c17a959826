//! Where registry credentials come from: the auth files podman and docker write, read in
//! podman's order, and the credential-helper protocol (`docker-credential-NAME`).
//!
//! Rules: `specs/credentials.md` (CRED-1 … CRED-6).

use std::ffi::OsString;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sources::registry::auth::Scope;
use crate::sources::registry::DockerConfig;
use crate::{Error, ErrorKind, Result};

/// How long a credential helper may run before it is killed (CRED-4).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes read from a helper's stdout or stderr (CRED-4).
const MAX_HELPER_OUTPUT: u64 = 1 << 20;
/// What helpers print when they hold nothing for a server (docker-credential-helpers).
const NOT_FOUND: &str = "credentials not found in native keychain";
/// The `Username` helpers and config files use to mark an identity (refresh) token.
pub const TOKEN_USERNAME: &str = "<token>";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Login {
    /// A username and password (or access token), sent as HTTP Basic or to the token
    /// server's GET endpoint.
    Password {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token server's POST endpoint (CRED-5).
    IdentityToken(String),
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        match self {
            Login::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Login::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Login {
    /// A login from a helper's or a config entry's username and secret: an identity
    /// token when the username is `<token>`.
    pub fn from_parts(username: &str, secret: &str) -> Self {
        if username == TOKEN_USERNAME {
            Login::IdentityToken(secret.to_string())
        } else {
            Login::Password {
                username: username.to_string(),
                password: secret.to_string(),
            }
        }
    }
}

/// The server string helpers file credentials under: the host, or for Docker Hub the
/// docker CLI's `https://index.docker.io/v1/` (so ferry and docker share entries).
pub fn helper_server(host: &str) -> String {
    match host.to_ascii_lowercase().as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".into()
        }
        _ => host.to_string(),
    }
}

/// The OAuth2 client id ferry names at token servers (CRED-5).
pub const CLIENT_ID: &str = "ferry";

/// The form of an OAuth2 refresh-token grant (distribution's token spec, "oauth"): a new
/// access token for `scope` at `service`, in exchange for the refresh `token` (CRED-5).
pub(crate) fn refresh_form(
    token: &str,
    service: Option<&str>,
    scope: &Scope,
) -> Vec<(&'static str, String)> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", token.to_string()),
        ("client_id", CLIENT_ID.to_string()),
    ];
    if let Some(service) = service {
        form.push(("service", service.to_string()));
    }
    if !scope.items().is_empty() {
        form.push(("scope", scope.items().join(" ")));
    }
    form
}

/// A credential helper: the program `docker-credential-NAME` on `$PATH`.
#[derive(Debug, Clone)]
pub struct CredentialHelper {
    program: OsString,
    timeout: Duration,
}

impl CredentialHelper {
    /// The helper `docker-credential-NAME`, killed after [`HELPER_TIMEOUT`].
    pub fn new(name: &str) -> Self {
        CredentialHelper {
            program: format!("docker-credential-{name}").into(),
            timeout: HELPER_TIMEOUT,
        }
    }

    /// The same helper killed after `timeout` instead.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program run, e.g. `docker-credential-pass`.
    pub fn program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// The credentials the helper holds for registry `host`; `None` when it holds none.
    pub fn get(&self, host: &str) -> Result<Option<Login>> {
        let server = helper_server(host);
        let out = self.call("get", host, server.as_bytes())?;
        if !out.success {
            if out.says_not_found() {
                return Ok(None);
            }
            return Err(self.failed("get", host, &out));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            #[serde(rename = "ServerURL")]
            _server_url: Option<String>,
            username: String,
            secret: String,
        }
        let answer: Answer = serde_json::from_slice(&out.stdout).map_err(|e| {
            self.error(
                host,
                format!("get: answer is not {{\"ServerURL\",\"Username\",\"Secret\"}} JSON: {e}"),
            )
        })?;
        if answer.secret.is_empty() {
            // Some helpers (docker-credential-pass 0.6) answer an erased server so.
            if answer.username.is_empty() {
                return Ok(None);
            }
            return Err(self.error(host, "get: answer has an empty Secret".into()));
        }
        Ok(Some(Login::from_parts(&answer.username, &answer.secret)))
    }

    /// Stores `login` for registry `host` in the helper.
    pub fn store(&self, host: &str, login: &Login) -> Result<()> {
        let (username, secret) = match login {
            Login::Password { username, password } => (username.as_str(), password.as_str()),
            Login::IdentityToken(token) => (TOKEN_USERNAME, token.as_str()),
        };
        let input = serde_json::json!({
            "ServerURL": helper_server(host),
            "Username": username,
            "Secret": secret,
        });
        let out = self.call("store", host, input.to_string().as_bytes())?;
        if out.success {
            Ok(())
        } else {
            Err(self.failed("store", host, &out))
        }
    }

    /// Erases what the helper holds for registry `host`; `false` when it held nothing.
    pub fn erase(&self, host: &str) -> Result<bool> {
        // Helpers differ in how they refuse to erase what they do not hold: ask first.
        if self.get(host)?.is_none() {
            return Ok(false);
        }
        let out = self.call("erase", host, helper_server(host).as_bytes())?;
        match (out.success, out.says_not_found()) {
            (true, _) => Ok(true),
            (false, true) => Ok(false),
            (false, false) => Err(self.failed("erase", host, &out)),
        }
    }

    /// Runs `PROGRAM action` with `input` on stdin; kills its process group after the
    /// timeout; reads at most [`MAX_HELPER_OUTPUT`] of each output.
    fn call(&self, action: &str, host: &str, input: &[u8]) -> Result<HelperOutput> {
        use std::os::unix::process::CommandExt as _;
        let program = self.program();
        let mut child = Command::new(&self.program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills what it started too.
            .process_group(0)
            .spawn()
            .map_err(|e| self.error(host, format!("{action}: cannot run {program}: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        // A helper that does not read its input must not block us: write from a thread.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let readers = [
            read_bounded(child.stdout.take().expect("stdout is piped")),
            read_bounded(child.stderr.take().expect("stderr is piped")),
        ];
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.wait();
                    return Err(self.error(
                        host,
                        format!(
                            "{action}: no answer within {} s; killed",
                            self.timeout.as_secs_f32()
                        ),
                    ));
                }
                Err(e) => return Err(self.error(host, format!("{action}: waiting: {e}"))),
            }
        };
        let _ = writer.join();
        let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
        Ok(HelperOutput {
            success: status.success(),
            status: status.to_string(),
            stdout,
            stderr,
        })
    }

    fn failed(&self, action: &str, host: &str, out: &HelperOutput) -> Error {
        self.error(
            host,
            format!("{action}: {}: {}", out.status, out.first_line()),
        )
    }

    fn error(&self, host: &str, message: String) -> Error {
        Error::new(
            ErrorKind::Invalid,
            host,
            format!("credential helper {}: {message}", self.program()),
        )
    }
}

/// What a helper run produced.
struct HelperOutput {
    success: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl HelperOutput {
    /// Whether the helper said it holds nothing for the server.
    fn says_not_found(&self) -> bool {
        [&self.stdout, &self.stderr]
            .iter()
            .any(|o| String::from_utf8_lossy(o).trim() == NOT_FOUND)
    }

    /// The first non-empty line of its output (stdout, else stderr), for errors.
    fn first_line(&self) -> String {
        [&self.stdout, &self.stderr]
            .iter()
            .map(|o| String::from_utf8_lossy(o).to_string())
            .find_map(|t| {
                t.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .map(|l| l.escape_default().to_string())
            })
            .unwrap_or_else(|| "no output".into())
    }
}

/// Reads at most [`MAX_HELPER_OUTPUT`] bytes of `from` on a thread, then drains the rest.
fn read_bounded(from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut from = from;
        let mut buf = Vec::new();
        let _ = (&mut from).take(MAX_HELPER_OUTPUT).read_to_end(&mut buf);
        let _ = std::io::copy(&mut from, &mut std::io::sink());
        buf
    })
}

/// The auth files read for credentials, in the order podman reads them (CRED-1).
#[derive(Debug, Clone)]
pub struct AuthFiles {
    files: Vec<PathBuf>,
}

impl AuthFiles {
    /// The files the environment points at: `$REGISTRY_AUTH_FILE` (else
    /// `$XDG_RUNTIME_DIR/containers/auth.json`), `$XDG_CONFIG_HOME/containers/auth.json`
    /// (else `~/.config/…`), then docker's `$DOCKER_CONFIG/config.json` (else
    /// `~/.docker/config.json`).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
    }

    fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let home = var("HOME").map(PathBuf::from);
        let mut files = Vec::new();
        match var("REGISTRY_AUTH_FILE") {
            Some(file) => files.push(PathBuf::from(file)),
            None => files
                .extend(var("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("containers/auth.json"))),
        }
        let config_home = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".config")));
        files.extend(config_home.map(|d| d.join("containers/auth.json")));
        match var("DOCKER_CONFIG") {
            Some(dir) => files.push(Path::new(&dir).join("config.json")),
            None => files.extend(home.map(|h| h.join(".docker/config.json"))),
        }
        AuthFiles { files }
    }

    /// The files, in the order they are read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The first credentials for registry `host` and the file they were found through
    /// (CRED-2); `None` when no file has any.
    pub fn lookup(&self, host: &str) -> Result<Option<(Login, PathBuf)>> {
        for path in &self.files {
            let config = DockerConfig::load_from(path)?;
            if let Some(helper) = config.helper_for(host) {
                if let Some(login) = CredentialHelper::new(&helper).get(host)? {
                    return Ok(Some((login, path.clone())));
                }
            }
            if let Some(login) = config.credentials(host)? {
                return Ok(Some((login, path.clone())));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt as _;

    fn files(vars: &[(&str, &str)]) -> Vec<String> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        AuthFiles::from_vars(|n| vars.get(n).cloned())
            .files()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn auth_files_follow_podman_order() {
        // CRED-1
        assert_eq!(
            files(&[("HOME", "/h"), ("XDG_RUNTIME_DIR", "/run/user/7")]),
            [
                "/run/user/7/containers/auth.json",
                "/h/.config/containers/auth.json",
                "/h/.docker/config.json"
            ]
        );
        assert_eq!(
            files(&[
                ("HOME", "/h"),
                ("XDG_RUNTIME_DIR", "/run/user/7"),
                ("REGISTRY_AUTH_FILE", "/etc/auth.json"),
                ("XDG_CONFIG_HOME", "/cfg"),
                ("DOCKER_CONFIG", "/d"),
            ]),
            [
                "/etc/auth.json",
                "/cfg/containers/auth.json",
                "/d/config.json"
            ]
        );
        assert!(files(&[]).is_empty());
    }

    /// Writes an executable helper script `docker-credential-NAME` into `dir` and returns
    /// it as a helper (run by path: changing PATH would race with other tests).
    fn script(dir: &Path, name: &str, body: &str) -> CredentialHelper {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        CredentialHelper {
            program: path.into_os_string(),
            timeout: HELPER_TIMEOUT,
        }
    }

    #[test]
    fn helper_get_reads_the_answer_and_marks_identity_tokens() {
        // CRED-3
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdin");
        let h = script(
            dir.path(),
            "ok",
            &format!(
                r#"cat > {}; echo '{{"ServerURL":"r.example.com","Username":"bob","Secret":"pw"}}'"#,
                log.display()
            ),
        );
        let login = h.get("r.example.com").unwrap().unwrap();
        assert_eq!(
            login,
            Login::Password {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "r.example.com");
        h.get("docker.io").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "https://index.docker.io/v1/"
        );
        let t = script(
            dir.path(),
            "tok",
            r#"echo '{"ServerURL":"r","Username":"<token>","Secret":"refresh-1"}'"#,
        );
        assert_eq!(
            t.get("r").unwrap(),
            Some(Login::IdentityToken("refresh-1".into()))
        );
    }

    #[test]
    fn helper_not_found_is_no_credentials_and_other_failures_are_one_line_errors() {
        // CRED-3
        let dir = tempfile::tempdir().unwrap();
        let none = script(
            dir.path(),
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(none.get("r.example.com").unwrap(), None);
        assert!(!none.erase("r.example.com").unwrap());
        let broken = script(
            dir.path(),
            "broken",
            "echo 'gpg: decryption failed: No secret key' >&2; echo more >&2; exit 2",
        );
        let err = broken.get("r.example.com").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-broken")
                && err.contains("r.example.com")
                && err.contains("gpg: decryption failed"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        let garbage = script(dir.path(), "garbage", "echo '{\"Username\": 3}'");
        let err = garbage.get("r.example.com").unwrap_err().to_string();
        assert!(err.contains("not {\"ServerURL\""), "{err}");
        let empty = script(
            dir.path(),
            "empty",
            r#"echo '{"ServerURL":"r","Username":"u","Secret":""}'"#,
        );
        assert!(empty
            .get("r")
            .unwrap_err()
            .to_string()
            .contains("empty Secret"));
        let erased = script(
            dir.path(),
            "erased",
            r#"echo '{"ServerURL":"r","Username":"","Secret":""}'"#,
        );
        assert_eq!(erased.get("r").unwrap(), None);
        let missing = CredentialHelper::new("ferry-test-no-such-helper");
        let err = missing.get("r.example.com").unwrap_err().to_string();
        assert!(
            err.contains("cannot run docker-credential-ferry-test-no-such-helper"),
            "{err}"
        );
    }

    #[test]
    fn hanging_helper_is_killed_and_endless_output_is_bounded() {
        // CRED-4
        let dir = tempfile::tempdir().unwrap();
        let hang = script(dir.path(), "hang", "sleep 30").with_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = hang.get("r.example.com").unwrap_err().to_string();
        assert!(err.contains("killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let flood = script(dir.path(), "flood", "yes '{' | head -c 50000000");
        let err = flood.get("r.example.com").unwrap_err().to_string();
        assert!(err.len() < 400, "{}", err.len());
    }

    #[test]
    fn helper_store_sends_the_protocol_json() {
        // CRED-3
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdin");
        let h = script(dir.path(), "store", &format!("cat > {}", log.display()));
        h.store("r.example.com", &Login::IdentityToken("rt".into()))
            .unwrap();
        let sent: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"ServerURL": "r.example.com", "Username": "<token>", "Secret": "rt"})
        );
    }
}

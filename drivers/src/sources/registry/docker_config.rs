//! The docker CLI's `config.json` (and podman's `auth.json`, the same format), as far as
//! ferry uses it: `auths.<host>`, `credHelpers`, `credsStore` (`specs/credentials.md`).

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::sources::registry::credentials::{helper_server, CredentialHelper, Login};
use crate::{Error, ErrorKind, Result};

/// Source name used in errors about the config file itself.
const SOURCE: &str = "docker-config";

/// A docker `config.json` or podman `auth.json`: read for registry credentials, written
/// by `ferry login` and `ferry logout`.
///
/// `auths` entries with an `auth` (base64 `user:password`), `username`/`password` or an
/// `identitytoken` are read; `credHelpers`/`credsStore` name the helper for a host. Other
/// keys are kept as they are when the file is written back.
#[derive(Clone)]
pub struct DockerConfig {
    path: PathBuf,
    doc: Map<String, Value>,
}

impl std::fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the credentials.
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DockerConfig {
    /// Where the docker CLI keeps its config: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`; `None` when neither variable is set.
    pub fn default_path() -> Option<PathBuf> {
        config_path(std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))
    }

    /// Loads the config from [`DockerConfig::default_path`] (empty if the file is missing).
    pub fn load() -> Result<Self> {
        let path = Self::default_path().ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                SOURCE,
                "neither DOCKER_CONFIG nor HOME is set",
            )
        })?;
        Self::load_from(path)
    }

    /// Loads the config at `path` (empty if the file is missing).
    pub fn load_from(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let doc = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(bad(&path, "not a JSON object")),
                Err(e) => return Err(bad(&path, &e.to_string())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(bad(&path, &e.to_string())),
        };
        Ok(DockerConfig { path, doc })
    }

    /// The file this config was loaded from (and is written to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials in this file's `auths` entry for registry `host` (`host[:port]`),
    /// if any: an identity token when the entry has an `identitytoken`.
    ///
    /// Keys written as URLs (`https://host/v1/`) match too; `docker.io` also matches the
    /// docker CLI's `https://index.docker.io/v1/` entry.
    pub fn credentials(&self, host: &str) -> Result<Option<Login>> {
        let Some(Value::Object(auths)) = self.doc.get("auths") else {
            return Ok(None);
        };
        let wanted = canonical_host(host);
        let Some(entry) = auths
            .iter()
            .find(|(key, _)| canonical_host(key) == wanted)
            .map(|(_, v)| v)
        else {
            return Ok(None);
        };
        if let Some(token) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(Login::IdentityToken(token.to_string())));
        }
        if let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let decoded = STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| bad(&self.path, &format!("auths.{host}.auth is not base64 text")))?;
            let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                bad(
                    &self.path,
                    &format!("auths.{host}.auth is not user:password"),
                )
            })?;
            return Ok(Some(Login::from_parts(user, pass)));
        }
        let field = |name: &str| entry.get(name).and_then(Value::as_str);
        Ok(field("username")
            .zip(field("password"))
            .map(|(u, p)| Login::from_parts(u, p)))
    }

    /// The credential helper this file names for registry `host`: its `credHelpers`
    /// entry, else its `credsStore` (CRED-2).
    pub fn helper_for(&self, host: &str) -> Option<String> {
        let wanted = canonical_host(host);
        let named = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(Value::Object(helpers)) = self.doc.get("credHelpers") {
            if let Some(name) = helpers
                .iter()
                .find(|(key, _)| canonical_host(key) == wanted)
                .and_then(|(_, v)| named(v))
            {
                return Some(name);
            }
        }
        self.doc.get("credsStore").and_then(named)
    }

    /// Stores `username`/`password` for `host` as the default config file says (CRED-6):
    /// through its credential helper for `host` if it names one (and any plain `auths`
    /// entry for `host` is removed), else in the file itself. Returns where they went.
    pub fn store_auth(host: &str, username: &str, password: &str) -> Result<String> {
        let mut config = Self::load()?;
        if let Some(helper) = config.helper_for(host) {
            let helper = CredentialHelper::new(&helper);
            helper.store(host, &Login::from_parts(username, password))?;
            config.remove_auth(host)?;
            return Ok(format!("credential helper {}", helper.program()));
        }
        config.set_auth(host, username, password)?;
        Ok(config.path.display().to_string())
    }

    /// Erases the credentials for `host` from the default config file and its credential
    /// helper (CRED-6); returns where they were erased from (empty when nowhere).
    pub fn erase_auth(host: &str) -> Result<Vec<String>> {
        let mut config = Self::load()?;
        let mut erased = Vec::new();
        if let Some(helper) = config.helper_for(host) {
            let helper = CredentialHelper::new(&helper);
            if helper.erase(host)? {
                erased.push(format!("credential helper {}", helper.program()));
            }
        }
        if config.remove_auth(host)? {
            erased.push(config.path.display().to_string());
        }
        Ok(erased)
    }

    /// Removes the `auths` entry for `host` (whatever form its key has) and writes the
    /// file if there was one; `false` when there was none.
    pub fn remove_auth(&mut self, host: &str) -> Result<bool> {
        let Some(Value::Object(auths)) = self.doc.get_mut("auths") else {
            return Ok(false);
        };
        let wanted = canonical_host(host);
        let before = auths.len();
        auths.retain(|key, _| canonical_host(key) != wanted);
        if auths.len() == before {
            return Ok(false);
        }
        self.write()?;
        Ok(true)
    }

    /// Sets `auths.<host>.auth` (base64 `user:password`; Docker Hub's key is the docker
    /// CLI's `https://index.docker.io/v1/`) and writes this config's file (mode 0600,
    /// created with its directory if missing, other keys kept).
    pub fn set_auth(&mut self, host: &str, username: &str, password: &str) -> Result<()> {
        if username.contains(':') {
            return Err(Error::new(
                ErrorKind::Invalid,
                host,
                "a username must not contain ':'",
            ));
        }
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            return Err(bad(&self.path, "`auths` is not an object"));
        }
        let auths = auths.as_object_mut().expect("checked to be an object");
        // Replace any entry for the same host written another way (e.g. as a URL).
        let wanted = canonical_host(host);
        auths.retain(|key, _| canonical_host(key) != wanted);
        let mut entry = Map::new();
        entry.insert(
            "auth".into(),
            Value::String(STANDARD.encode(format!("{username}:{password}"))),
        );
        // Docker Hub under the key the docker CLI looks up.
        auths.insert(helper_server(host), Value::Object(entry));
        self.write()
    }

    fn write(&self) -> Result<()> {
        let fail = |op: &str, e: std::io::Error| bad(&self.path, &format!("cannot {op}: {e}"));
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(|e| fail("create its directory", e))?;
        let mut text = serde_json::to_vec_pretty(&Value::Object(self.doc.clone()))
            .map_err(|e| fail("serialize", std::io::Error::other(e)))?;
        text.push(b'\n');
        let tmp = dir.join(format!(".config.json.ferry-{}", std::process::id()));
        let written = (|| {
            let mut f = open_private(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| fail("write", e))
    }
}

fn bad(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Invalid,
        SOURCE,
        format!("{}: {why}", path.display()),
    )
}

/// The config path for the given `DOCKER_CONFIG` and `HOME` values.
fn config_path(docker_config: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    match (
        docker_config.filter(|d| !d.is_empty()),
        home.filter(|h| !h.is_empty()),
    ) {
        (Some(dir), _) => Some(PathBuf::from(dir).join("config.json")),
        (None, Some(home)) => Some(PathBuf::from(home).join(".docker").join("config.json")),
        (None, None) => None,
    }
}

/// An `auths` key or a host reduced to `host[:port]`, with Docker Hub's aliases merged.
fn canonical_host(key: &str) -> String {
    let no_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = no_scheme
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_prefers_docker_config_then_home() {
        assert_eq!(
            config_path(Some("/d".into()), Some("/h".into())),
            Some(PathBuf::from("/d/config.json"))
        );
        assert_eq!(
            config_path(None, Some("/h".into())),
            Some(PathBuf::from("/h/.docker/config.json"))
        );
        assert_eq!(config_path(Some("".into()), None), None);
    }

    #[test]
    fn keys_match_by_host_whatever_their_form() {
        assert_eq!(canonical_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(canonical_host("registry-1.docker.io"), "docker.io");
        assert_eq!(canonical_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(canonical_host("Reg.Example.com"), "reg.example.com");
    }

    #[test]
    fn reads_username_password_fields_and_rejects_bad_auth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"a.example.com":{"username":"u","password":"p"},"b.example.com":{"auth":"!!"}}}"#,
        )
        .unwrap();
        let cfg = DockerConfig::load_from(&path).unwrap();
        assert_eq!(
            cfg.credentials("a.example.com").unwrap(),
            Some(Login::Password {
                username: "u".into(),
                password: "p".into()
            })
        );
        let err = cfg.credentials("b.example.com").unwrap_err().to_string();
        assert!(err.contains("not base64"), "{err}");
        assert_eq!(cfg.credentials("c.example.com").unwrap(), None);
    }

    #[test]
    fn identity_tokens_and_helpers_are_read_per_host() {
        // CRED-2, CRED-5
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"credsStore":"pass","credHelpers":{"gcr.example.com":"gcloud"},
               "auths":{"t.example.com":{"auth":"PHRva2VuPjo=","identitytoken":"rt-1"},
                        "h.example.com":{"auth":"PHRva2VuPjpydC0y"}}}"#,
        )
        .unwrap();
        let cfg = DockerConfig::load_from(&path).unwrap();
        assert_eq!(
            cfg.credentials("t.example.com").unwrap(),
            Some(Login::IdentityToken("rt-1".into()))
        );
        assert_eq!(
            cfg.credentials("h.example.com").unwrap(),
            Some(Login::IdentityToken("rt-2".into()))
        );
        assert_eq!(cfg.helper_for("gcr.example.com").as_deref(), Some("gcloud"));
        assert_eq!(cfg.helper_for("other.example.com").as_deref(), Some("pass"));
    }

    #[test]
    fn docker_hub_is_stored_under_the_docker_cli_key() {
        // CRED-6
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut cfg = DockerConfig::load_from(&path).unwrap();
        cfg.set_auth("docker.io", "u", "p").unwrap();
        let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(
            raw["auths"]["https://index.docker.io/v1/"]["auth"].is_string(),
            "{raw}"
        );
        assert!(DockerConfig::load_from(&path)
            .unwrap()
            .credentials("registry-1.docker.io")
            .unwrap()
            .is_some());
    }

    #[test]
    fn remove_auth_drops_the_entry_in_any_key_form() {
        // CRED-6
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"b.example.com":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        let mut cfg = DockerConfig::load_from(&path).unwrap();
        assert!(cfg.remove_auth("docker.io").unwrap());
        assert!(!cfg.remove_auth("docker.io").unwrap());
        let again = DockerConfig::load_from(&path).unwrap();
        assert_eq!(again.credentials("docker.io").unwrap(), None);
        assert!(again.credentials("b.example.com").unwrap().is_some());
    }
}

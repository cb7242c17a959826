//! Registry credentials as docker and podman keep them (`specs/credentials.md`): Debian's
//! `docker-credential-pass` as the config's `credsStore` against the htpasswd registry,
//! identity tokens exchanged by the OAuth2 refresh-token grant at the test kit's token
//! server, and the order of podman's and docker's auth files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use ferry_testkit::fixtures::{Fixtures, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::token::TokenPolicy;
use ferry_testkit::{ferry, output, output_with_stdin, run_ok};

const USER: &str = "alice";
const PASS: &str = "s3cret-pw";

/// A home of its own: every auth-file variable points into it or is unset.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ferry` with this home and no other auth file in its environment.
    fn ferry(&self, root: &Path) -> Command {
        let mut cmd = ferry(root);
        cmd.env("HOME", self.path())
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME");
        cmd
    }

    /// Writes `~/REL` (creating directories).
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// An auth file with `auths.HOST.auth = base64(user:password)`.
fn auth_file(host: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({"auths": {host: {"auth": auth}}}).to_string()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A gpg key made in batch mode without a passphrase and a `pass` store initialised with
/// it, in temporary directories; the gpg agent is stopped on drop.
struct PassStore {
    gnupg: tempfile::TempDir,
    store: tempfile::TempDir,
}

impl PassStore {
    fn new() -> Self {
        let gnupg = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let s = PassStore { gnupg, store };
        run_ok(s.env(&mut Command::new("gpg")).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "ferry test <ferry@test.invalid>",
            "default",
            "default",
            "never",
        ]));
        run_ok(
            s.env(&mut Command::new("pass"))
                .args(["init", "ferry@test.invalid"]),
        );
        s
    }

    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("GNUPGHOME", self.gnupg.path())
            .env("PASSWORD_STORE_DIR", self.store.path())
    }

    /// What `docker-credential-pass get` answers for `server` (stdout, exit success).
    fn get(&self, server: &str) -> (String, bool) {
        let mut child = self
            .env(&mut Command::new("docker-credential-pass"))
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(server.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = self
            .env(&mut Command::new("gpgconf"))
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[test]
fn login_pull_logout_through_docker_credential_pass() {
    // CRED-2, CRED-3, CRED-6
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::basic(USER, PASS)).unwrap();
    fx.push(
        BUSYBOX,
        &reg.host(),
        "team/busybox:1",
        false,
        Some((USER, PASS)),
    );
    let pass = PassStore::new();
    let home = Home::new();
    let config = home.write(".docker/config.json", r#"{"credsStore": "pass"}"#);
    let root = tempfile::tempdir().unwrap();
    let ferry = |args: &[&str]| {
        let mut cmd = home.ferry(root.path());
        pass.env(&mut cmd).args(args);
        cmd
    };

    let out = output_with_stdin(&mut ferry(&["login", &reg.host(), "-u", USER]), PASS);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("docker-credential-pass"), "{said}");
    // The secret is in the pass store, not in the file.
    let (answer, ok) = pass.get(&reg.host());
    assert!(ok, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["Username"], USER);
    assert_eq!(answer["Secret"], PASS);
    assert!(!std::fs::read_to_string(&config).unwrap().contains("auth\""));

    let name = format!("{}/team/busybox:1", reg.host());
    let pulled = output(&mut ferry(&["pull", &name]));
    assert!(pulled.status.success(), "{}", stderr_of(&pulled));

    let out = run_ok(&mut ferry(&["logout", &reg.host()]));
    assert!(out.contains("docker-credential-pass"), "{out}");
    let (answer, _) = pass.get(&reg.host());
    assert!(!answer.contains(PASS), "{answer}");
    let again = run_ok(&mut ferry(&["logout", &reg.host()]));
    assert!(again.contains("not logged in"), "{again}");

    // Without credentials the registry refuses the pull.
    let root2 = tempfile::tempdir().unwrap();
    let mut cmd = home.ferry(root2.path());
    pass.env(&mut cmd).args(["pull", &name]);
    let refused = output(&mut cmd);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr_of(&refused).contains("credentials required"),
        "{}",
        stderr_of(&refused)
    );
}

#[test]
fn a_failing_helper_is_one_line_naming_it_and_the_host() {
    // CRED-3
    let home = Home::new();
    home.write(
        ".docker/config.json",
        r#"{"credHelpers": {"127.0.0.1:9": "ferry-test-missing"}}"#,
    );
    let root = tempfile::tempdir().unwrap();
    let out = output(
        home.ferry(root.path())
            .args(["pull", "127.0.0.1:9/team/app:1"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("docker-credential-ferry-test-missing") && err.contains("127.0.0.1:9"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn identity_token_is_exchanged_with_the_refresh_token_grant() {
    // CRED-5
    let fx = Fixtures::get();
    let policy = TokenPolicy::new(USER, PASS)
        .anonymous_actions(&[])
        .refresh_token("refresh-abc");
    let reg = Registry::start(RegistryOptions::token(policy)).unwrap();
    fx.push(
        BUSYBOX,
        &reg.host(),
        "team/busybox:1",
        false,
        Some((USER, PASS)),
    );
    let tokens = reg.token_server().unwrap();
    let name = format!("{}/team/busybox:1", reg.host());
    let entry = |token: &str| {
        serde_json::json!({"auths": {reg.host(): {
            "auth": base64::engine::general_purpose::STANDARD.encode("<token>:"),
            "identitytoken": token,
        }}})
        .to_string()
    };

    let home = Home::new();
    home.write(".docker/config.json", &entry("refresh-abc"));
    let root = tempfile::tempdir().unwrap();
    let before = tokens.refresh_grants();
    let out = output(home.ferry(root.path()).args(["pull", &name]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(tokens.refresh_grants() > before, "no refresh-token grant");

    home.write(".docker/config.json", &entry("revoked"));
    let root = tempfile::tempdir().unwrap();
    let out = output(home.ferry(root.path()).args(["pull", &name]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("token from") && err.contains("rejected"),
        "{err}"
    );
}

#[test]
fn auth_files_are_read_in_podman_order() {
    // CRED-1
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::basic(USER, PASS)).unwrap();
    fx.push(
        BUSYBOX,
        &reg.host(),
        "team/busybox:1",
        false,
        Some((USER, PASS)),
    );
    let name = format!("{}/team/busybox:1", reg.host());
    let right = auth_file(&reg.host(), USER, PASS);
    let wrong = auth_file(&reg.host(), USER, "wrong");
    let pull = |home: &Home, env: &[(&str, &Path)]| {
        let root = tempfile::tempdir().unwrap();
        let mut cmd = home.ferry(root.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        output(cmd.args(["pull", &name]))
    };

    // $REGISTRY_AUTH_FILE comes before docker's config.
    let home = Home::new();
    let explicit = home.write("explicit.json", &right);
    home.write(".docker/config.json", &wrong);
    let out = pull(&home, &[("REGISTRY_AUTH_FILE", &explicit)]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // The first file with an entry wins, even when its credentials are wrong.
    let home = Home::new();
    let explicit = home.write("explicit.json", &wrong);
    home.write(".docker/config.json", &right);
    let out = pull(&home, &[("REGISTRY_AUTH_FILE", &explicit)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("401 Unauthorized"),
        "{}",
        stderr_of(&out)
    );

    // $XDG_RUNTIME_DIR/containers/auth.json, then ~/.config/containers/auth.json, then
    // $DOCKER_CONFIG/config.json.
    let home = Home::new();
    let runtime = home.path().join("run");
    home.write("run/containers/auth.json", &right);
    home.write(".config/containers/auth.json", &wrong);
    let out = pull(&home, &[("XDG_RUNTIME_DIR", &runtime)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let home = Home::new();
    let docker = home.path().join("docker");
    home.write(".config/containers/auth.json", &right);
    home.write("docker/config.json", &wrong);
    let out = pull(&home, &[("DOCKER_CONFIG", &docker)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    // $DOCKER_CONFIG replaces ~/.docker.
    let home = Home::new();
    let docker = home.path().join("docker");
    home.write("docker/config.json", &right);
    home.write(".docker/config.json", &wrong);
    let out = pull(&home, &[("DOCKER_CONFIG", &docker)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

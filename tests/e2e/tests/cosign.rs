//! ferry and cosign check each other's signatures, proven with an independent client: the
//! sigstore project's own cosign implementation (the `sigstore` crate, built as
//! `tests/cosign-peer`), against a real registry (CNCF distribution) on 127.0.0.1.
//! Spec: specs/signature.md (SIG-6, SIG-8, SIG-10, SIG-13..15, SIG-19), specs/policy.md
//! (POL-6, POL-11).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_signing::PublicKey;
use ferry_testkit::fixtures::{Fixtures, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::serve::ServeNode;
use ferry_testkit::{ferry, output, run_ok, target_dir};

/// The passphrase of the cosign keys the peer generates.
const PASSWORD: &str = "correct horse";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The sigstore crate's cosign client (`cargo build -p cosign-peer` builds it; so does
/// `cargo test --workspace`).
fn peer() -> Command {
    let bin = target_dir().join("debug").join("cosign-peer");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cosign-peer` before the tests",
        bin.display()
    );
    Command::new(bin)
}

/// `cosign-peer verify --key KEY IMAGE`: whether the sigstore client verifies `image`.
fn sigstore_verifies(key: &Path, image: &str) -> bool {
    let out = output(peer().arg("verify").arg("--key").arg(key).arg(image));
    out.status.success()
}

/// `ferry` on `root` with an optional `--policy` and no user configuration.
fn fy(root: &Path, policy: Option<&Path>) -> Command {
    let mut cmd = ferry(root);
    cmd.env("XDG_CONFIG_HOME", root.join("no-config"));
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    cmd
}

/// A registry with busybox pushed as `team/app:1`, a ferry key `ferry` (Ed25519), and two
/// cosign key pairs the sigstore client generated (`cosign`, `other`: ECDSA P-256,
/// encrypted private keys).
struct Scene {
    _fx: Fixtures,
    reg: Registry,
    dir: tempfile::TempDir,
    digest: String,
}

impl Scene {
    fn new() -> Scene {
        let fx = Fixtures::get();
        let reg = Registry::start(RegistryOptions::open()).unwrap();
        let digest = fx.push(BUSYBOX, &reg.host(), "team/app:1", false, None);
        let dir = tempfile::tempdir().unwrap();
        for pair in ["cosign", "other"] {
            let at = dir.path().join(pair);
            std::fs::create_dir(&at).unwrap();
            run_ok(
                peer()
                    .arg("generate")
                    .arg(&at)
                    .args(["--password", PASSWORD]),
            );
        }
        run_ok(
            fy(dir.path(), None)
                .args(["key", "generate", "ferry", "--dir"])
                .arg(dir.path().join("keys")),
        );
        Scene {
            _fx: fx,
            reg,
            dir,
            digest,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `HOST/team/app`.
    fn name(&self) -> String {
        format!("{}/team/app", self.reg.host())
    }

    /// `HOST/team/app:1`.
    fn image(&self) -> String {
        format!("{}:1", self.name())
    }

    /// The key id ferry gives a public key file.
    fn key_id(&self, public: &str) -> String {
        PublicKey::load(&self.path(public))
            .unwrap()
            .id()
            .to_string()
    }

    /// The sigstore client signs the image with the cosign key pair `pair`.
    fn sigstore_signs(&self, pair: &str) {
        run_ok(
            peer()
                .arg("sign")
                .arg("--key")
                .arg(self.path(&format!("{pair}/cosign.key")))
                .args(["--password", PASSWORD, &self.image()]),
        );
    }

    /// A policy requiring signatures by `threshold` of `keys` (paths below the scene) for
    /// `HOST/team`, rejecting everything else.
    fn policy(&self, file: &str, keys: &[&str], threshold: usize) -> PathBuf {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("\"{}\"", self.path(k).display()))
            .collect();
        let path = self.path(file);
        std::fs::write(
            &path,
            format!(
                "[default]\naction = \"reject\"\n\n[[rule]]\nprefix = \"{}/team\"\naction = \"signed-by\"\nkeys = [{}]\nthreshold = {threshold}\n",
                self.reg.host(),
                keys.join(", ")
            ),
        )
        .unwrap();
        path
    }

    /// Pulls the image into a fresh store and signs it there with ferry key `key`, pushing
    /// the signature to the registry; returns the store.
    fn ferry_signs_and_pushes(&self, key: &Path) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        run_ok(fy(root.path(), None).args(["pull", &self.image()]));
        let out = json(&run_ok(
            fy(root.path(), None)
                .args(["sign", &self.image(), "--key"])
                .arg(key)
                .args(["--push", "--json"]),
        ));
        assert_eq!(out["pushed"]["added"], true, "{out}");
        root
    }
}

#[test]
fn sigstore_verifies_a_ferry_signature_and_rejects_it_with_another_key_sig_8_sig_13() {
    let s = Scene::new();
    s.ferry_signs_and_pushes(&s.path("keys/ferry.key"));
    assert!(sigstore_verifies(&s.path("keys/ferry.pub"), &s.image()));
    assert!(!sigstore_verifies(&s.path("cosign/cosign.pub"), &s.image()));
    assert!(!sigstore_verifies(&s.path("other/cosign.pub"), &s.image()));
}

#[test]
fn ferry_accepts_a_sigstore_signature_and_rejects_it_naming_nothing_pol_6_sig_10() {
    let s = Scene::new();
    s.sigstore_signs("cosign");
    let cosign_id = s.key_id("cosign/cosign.pub");

    let policy = s.policy("cosign.toml", &["cosign/cosign.pub"], 1);
    let root = tempfile::tempdir().unwrap();
    let out = output(fy(root.path(), Some(&policy)).args(["pull", &s.image()]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("signed by {cosign_id}")),
        "{}",
        stderr(&out)
    );
    let rows = json(&run_ok(
        fy(root.path(), Some(&policy)).args(["images", "--json"]),
    ));
    assert_eq!(rows[0]["digest"], s.digest.as_str());
    assert_eq!(rows[0]["verified"], format!("signed:{cosign_id}").as_str());
    assert_eq!(rows[0]["proves_tag"], true);
    let table = run_ok(fy(root.path(), Some(&policy)).arg("images"));
    assert!(table.contains(&format!("signed:{cosign_id}")), "{table}");

    // Another key: refused, and the store names nothing.
    let other = s.policy("other.toml", &["other/cosign.pub"], 1);
    let fresh = tempfile::tempdir().unwrap();
    let out = output(fy(fresh.path(), Some(&other)).args(["pull", &s.image()]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("trusted keys [{}]", s.key_id("other/cosign.pub"))),
        "{}",
        stderr(&out)
    );
    let rows = json(&run_ok(fy(fresh.path(), None).args(["images", "--json"])));
    assert_eq!(rows, serde_json::json!([]), "a rejected image was named");
}

#[test]
fn ferry_sign_push_adds_to_a_set_sigstore_wrote_and_both_verify_sig_15() {
    let s = Scene::new();
    s.sigstore_signs("cosign");
    s.ferry_signs_and_pushes(&s.path("keys/ferry.key"));
    // The sigstore client still verifies its own signature, and ferry's.
    assert!(sigstore_verifies(&s.path("cosign/cosign.pub"), &s.image()));
    assert!(sigstore_verifies(&s.path("keys/ferry.pub"), &s.image()));

    // A fresh store under a policy requiring both keys: accepted, and `ferry verify` lists
    // both signatures with their key ids.
    let both = s.policy("both.toml", &["cosign/cosign.pub", "keys/ferry.pub"], 2);
    let root = tempfile::tempdir().unwrap();
    run_ok(fy(root.path(), Some(&both)).args(["pull", &s.image()]));
    let (cosign_id, ferry_id) = (s.key_id("cosign/cosign.pub"), s.key_id("keys/ferry.pub"));
    let verify = run_ok(fy(root.path(), Some(&both)).args(["verify", &s.image()]));
    assert!(
        verify.contains(&format!("key id {cosign_id}"))
            && verify.contains(&format!("key id {ferry_id}"))
            && verify.contains(&format!("signed by {cosign_id}, {ferry_id}")),
        "{verify}"
    );
    assert!(!verify.contains("not the tag"), "{verify}");
    let verify = json(&run_ok(fy(root.path(), Some(&both)).args([
        "verify",
        "--json",
        &s.image(),
    ])));
    assert_eq!(
        verify["signatures"].as_array().unwrap().len(),
        2,
        "{verify}"
    );
    assert_eq!(verify["proves_tag"], true);
}

#[test]
fn an_imported_cosign_key_signs_and_sigstore_verifies_sig_19() {
    let s = Scene::new();
    let keys = s.path("keys");
    let pass_file = s.path("pass");
    std::fs::write(&pass_file, format!("{PASSWORD}\n")).unwrap();

    // A wrong passphrase on standard input: refused, nothing written.
    let mut wrong = fy(s.dir.path(), None);
    wrong
        .args(["key", "import"])
        .arg(s.path("cosign/cosign.key"))
        .arg("imported")
        .arg("--dir")
        .arg(&keys)
        .stdin(std::fs::File::open(s.path("cosign/cosign.pub")).unwrap());
    let out = output(&mut wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    assert!(!keys.join("imported.key").exists());

    let out = json(&run_ok(
        fy(s.dir.path(), None)
            .args(["key", "import"])
            .arg(s.path("cosign/cosign.key"))
            .arg("imported")
            .arg("--dir")
            .arg(&keys)
            .arg("--passphrase-file")
            .arg(&pass_file)
            .arg("--json"),
    ));
    assert_eq!(out["key_id"], s.key_id("cosign/cosign.pub").as_str());

    // The imported key signs with ferry; the sigstore client verifies with cosign.pub.
    s.ferry_signs_and_pushes(&keys.join("imported.key"));
    assert!(sigstore_verifies(&s.path("cosign/cosign.pub"), &s.image()));
    assert!(!sigstore_verifies(&s.path("other/cosign.pub"), &s.image()));

    // Exported again in cosign's form under a new passphrase, the sigstore client signs
    // with it.
    let new_pass = s.path("new-pass");
    std::fs::write(&new_pass, "another one\n").unwrap();
    let exported = output(
        fy(s.dir.path(), None)
            .args(["key", "export"])
            .arg(keys.join("imported.key"))
            .args(["--format", "cosign", "--passphrase-file"])
            .arg(&new_pass),
    );
    assert!(exported.status.success(), "{}", stderr(&exported));
    std::fs::write(s.path("exported.key"), &exported.stdout).unwrap();
    run_ok(
        peer()
            .arg("sign")
            .arg("--key")
            .arg(s.path("exported.key"))
            .args(["--password", "another one", &s.image()]),
    );
    assert!(sigstore_verifies(&s.path("cosign/cosign.pub"), &s.image()));
}

#[test]
fn both_signatures_cross_the_air_gap_and_sigstore_verifies_after_push_arc_5() {
    let s = Scene::new();
    s.sigstore_signs("cosign");
    // The near side: pulled (the store keeps the sigstore signature), signed by ferry, saved.
    let near = tempfile::tempdir().unwrap();
    run_ok(fy(near.path(), None).args(["pull", &s.image()]));
    run_ok(
        fy(near.path(), None)
            .args(["sign", &s.image(), "--key"])
            .arg(s.path("keys/ferry.key")),
    );
    let archive = s.path("bundle.tar");
    let saved = output(
        fy(near.path(), None)
            .args(["save", &s.image(), "-o"])
            .arg(&archive),
    );
    assert!(saved.status.success(), "{}", stderr(&saved));
    assert!(
        stderr(&saved).contains("2 signatures"),
        "{}",
        stderr(&saved)
    );

    // The far side loads it under a policy requiring both keys, then pushes it to its own
    // registry.
    let both = s.policy("both.toml", &["cosign/cosign.pub", "keys/ferry.pub"], 2);
    let far = tempfile::tempdir().unwrap();
    run_ok(
        fy(far.path(), Some(&both))
            .args(["load", "-i"])
            .arg(&archive),
    );
    let verify = run_ok(fy(far.path(), Some(&both)).args(["verify", &s.image()]));
    assert!(verify.contains("accepted"), "{verify}");
    let far_registry = Registry::start(RegistryOptions::open()).unwrap();
    let config = s.path("far.toml");
    std::fs::write(
        &config,
        format!(
            "[source.far]\ndriver = \"registry\"\nurl = \"{}\"\n",
            far_registry.url()
        ),
    )
    .unwrap();
    run_ok(
        fy(far.path(), Some(&both))
            .arg("--config")
            .arg(&config)
            .args(["push", &s.image(), "--to", "far"]),
    );
    let pushed = format!("{}/team/app:1", far_registry.host());
    assert!(sigstore_verifies(&s.path("cosign/cosign.pub"), &pushed));
    assert!(sigstore_verifies(&s.path("keys/ferry.pub"), &pushed));
    assert!(!sigstore_verifies(&s.path("other/cosign.pub"), &pushed));
}

#[test]
fn a_repository_only_signature_counts_only_under_match_repository_pol_11() {
    let s = Scene::new();
    // cosign's usual form: the payload names the repository, no tag.
    run_ok(
        peer()
            .arg("sign")
            .arg("--key")
            .arg(s.path("cosign/cosign.key"))
            .args(["--password", PASSWORD, "--identity", &s.name(), &s.image()]),
    );
    assert!(sigstore_verifies(&s.path("cosign/cosign.pub"), &s.image()));

    // The default (exact) match refuses it, naming what it is for.
    let exact = s.policy("exact.toml", &["cosign/cosign.pub"], 1);
    let root = tempfile::tempdir().unwrap();
    let out = output(fy(root.path(), Some(&exact)).args(["pull", &s.image()]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("is for {}, not {}", s.name(), s.image())),
        "{}",
        stderr(&out)
    );

    // match = "repository" accepts it, and `ferry verify` says what it proves.
    let repository = s.path("repository.toml");
    std::fs::write(
        &repository,
        std::fs::read_to_string(&exact).unwrap() + "match = \"repository\"\n",
    )
    .unwrap();
    let out = output(fy(root.path(), Some(&repository)).args(["pull", &s.image()]));
    assert!(
        out.status.success()
            && stderr(&out).contains("(for the repository: the signatures do not name the tag"),
        "{}",
        stderr(&out)
    );
    let verify = run_ok(fy(root.path(), Some(&repository)).args(["verify", &s.image()]));
    assert!(
        verify.contains(&format!("names {}", s.name()))
            && verify.contains("prove the digest and the repository, not the tag"),
        "{verify}"
    );
    let verify = json(&run_ok(fy(root.path(), Some(&repository)).args([
        "verify",
        "--json",
        &s.image(),
    ])));
    assert_eq!(verify["verdict"], "accepted");
    assert_eq!(verify["proves_tag"], false);
    // So does `ferry images`: the VERIFIED cell, and `proves_tag` with --json.
    let cosign_id = s.key_id("cosign/cosign.pub");
    let table = run_ok(fy(root.path(), Some(&repository)).arg("images"));
    assert!(
        table.contains(&format!("signed:{cosign_id} (repository only)")),
        "{table}"
    );
    let rows = json(&run_ok(
        fy(root.path(), Some(&repository)).args(["images", "--json"]),
    ));
    assert_eq!(rows[0]["verified"], format!("signed:{cosign_id}").as_str());
    assert_eq!(rows[0]["proves_tag"], false);
    // The stored signature is refused again when the policy goes back to exact.
    let out = output(fy(root.path(), Some(&exact)).args(["verify", &s.image()]));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn ferry_serve_keeps_a_sigstore_signature_pushed_to_it_and_serves_it_back_serve_5_sig_15() {
    let fx = Fixtures::get();
    let root = tempfile::tempdir().unwrap();
    let node = ServeNode::start(root.path(), &["--allow-push"]).unwrap();
    fx.push(BUSYBOX, &node.host(), "team/app:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        peer()
            .arg("generate")
            .arg(dir.path())
            .args(["--password", PASSWORD]),
    );
    let image = format!("{}/team/app:1", node.host());
    run_ok(
        peer()
            .arg("sign")
            .arg("--key")
            .arg(dir.path().join("cosign.key"))
            .args(["--password", PASSWORD, &image]),
    );
    // The set sigstore pushed (no subject, an OCI config) became a signature the store
    // keeps; the set served back is made from the store, and sigstore verifies it.
    let verify = json(&run_ok(fy(root.path(), None).args([
        "verify",
        "--json",
        "localhost/team/app:1",
    ])));
    assert_eq!(
        verify["signatures"].as_array().map(Vec::len),
        Some(1),
        "{verify}"
    );
    assert!(sigstore_verifies(&dir.path().join("cosign.pub"), &image));
    let other = tempfile::tempdir().unwrap();
    run_ok(
        peer()
            .arg("generate")
            .arg(other.path())
            .args(["--password", PASSWORD]),
    );
    assert!(!sigstore_verifies(&other.path().join("cosign.pub"), &image));
}

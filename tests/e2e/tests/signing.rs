//! Signed names end to end: keys from `ferry key`, signatures from `ferry sign --push`, and
//! pulls under a trust policy through a real registry (CNCF distribution), an OCI layout and
//! an S3 bucket (moto) in ferry's layout; then the attacks a transport can try, each of which
//! must end in a rejection with nothing named in the store.
//! Spec: specs/signature.md (SIG-10, SIG-12..18), specs/policy.md (POL-3, POL-6, POL-9).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ferry_core::manifest::descriptor_digest;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{media, Digest, Manifest, ManifestBlob};
use ferry_drivers::sources::oci_layout::OciLayoutDriver;
use ferry_drivers::sources::registry::{Credentials, RegistryConfig, RegistryDriver};
use ferry_drivers::sources::s3::{S3Driver, S3Layout};
use ferry_drivers::transfer::signatures::{
    fetch_signatures, push_signature, signature_set_manifest, signature_tag,
};
use ferry_drivers::{ByteRange, Driver};
use ferry_signing::SignatureEnvelope;
use ferry_testkit::fixtures::{Fixtures, APP, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::s3::{S3Server, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use ferry_testkit::{ferry, output, run_ok};

/// The name the route tests pull: its host does not exist; only routes make it reachable.
const NAME: &str = "registry.example.com/team/app";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

/// Runs async driver work (an attacker's, or seeding) on a small runtime of its own.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Keys, policies and site configs of one test, in one directory.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `ferry key generate NAME --dir WORK/keys`; returns the key id.
    fn key(&self, name: &str) -> String {
        let root = tempfile::tempdir().unwrap();
        let out = run_ok(
            fy(root.path(), None, None)
                .args(["key", "generate", name, "--dir"])
                .arg(self.path("keys"))
                .arg("--json"),
        );
        let out = json(&out);
        assert_eq!(
            out["private_key"],
            self.path(&format!("keys/{name}.key"))
                .display()
                .to_string()
                .as_str()
        );
        out["key_id"].as_str().unwrap().to_string()
    }

    fn key_file(&self, name: &str) -> PathBuf {
        self.path(&format!("keys/{name}.key"))
    }

    /// A policy rejecting everything but `prefix`, which needs a signature by one of `keys`
    /// (names of keys in WORK/keys, given relative to the policy file).
    fn policy(&self, file: &str, prefix: &str, keys: &[&str]) -> PathBuf {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"keys/{k}.pub\"")).collect();
        self.write(
            file,
            &format!(
                "[default]\naction = \"reject\"\n\n[[rule]]\nprefix = \"{prefix}\"\naction = \"signed-by\"\nkeys = [{}]\n",
                keys.join(", ")
            ),
        )
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.path(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// `ferry` on `root` with an optional `--policy` and `--config`, and no user configuration.
fn fy(root: &Path, policy: Option<&Path>, config: Option<&Path>) -> Command {
    let mut cmd = ferry(root);
    cmd.env("XDG_CONFIG_HOME", root.join("no-config"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY);
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd
}

/// `ferry images --json` rows.
fn images(root: &Path, policy: Option<&Path>) -> Vec<serde_json::Value> {
    json(&run_ok(fy(root, policy, None).args(["images", "--json"])))
        .as_array()
        .unwrap()
        .clone()
}

/// Pulls `image` into a fresh store without a policy, signs it with key `key` and pushes
/// the signature; returns the signature's payload (layer) digest.
fn sign_and_push(work: &Work, image: &str, key: &str, config: Option<&Path>) -> String {
    let root = tempfile::tempdir().unwrap();
    run_ok(fy(root.path(), None, config).args(["pull", image]));
    let out = json(&run_ok(
        fy(root.path(), None, config)
            .args(["sign", image, "--key"])
            .arg(work.key_file(key))
            .args(["--push", "--json"]),
    ));
    assert_eq!(out["pushed"]["added"], true, "{out}");
    out["signature"].as_str().unwrap().to_string()
}

/// Pulls `image` into a fresh store under `policy`: it must be refused (exit 1) and the
/// store must name nothing. Returns stderr.
fn pull_rejected(image: &str, policy: &Path, config: Option<&Path>) -> String {
    let root = tempfile::tempdir().unwrap();
    let out = output(fy(root.path(), Some(policy), config).args(["pull", image]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{image} was not refused: {err}");
    assert!(
        images(root.path(), None).is_empty(),
        "a refused image was named: {err}"
    );
    err
}

/// A driver for the registry, as an attacker with push access uses it.
fn registry_driver(reg: &Registry) -> RegistryDriver {
    RegistryDriver::new(RegistryConfig {
        source_name: "attacker".into(),
        base_url: reg.url().parse().unwrap(),
        insecure: false,
        credentials: Credentials::Anonymous,
        repository: None,
    })
    .unwrap()
}

/// The descriptor of fixture manifest `digest`.
fn subject(fx: &Fixtures, digest: &str) -> Descriptor {
    let digest = Digest::parse(digest).unwrap();
    ManifestBlob::parse(fx.blob(&digest.to_string()), None, Some(&digest))
        .unwrap()
        .descriptor()
}

/// Copies every signature of manifest `from` of image `from_name` into the signature set of
/// `to` of `to_name`, at the same source.
fn graft(driver: &dyn Driver, from_name: &str, from: &str, to_name: &str, to: &Descriptor) {
    block_on(async {
        let envelopes = fetch_signatures(driver, from_name, &Digest::parse(from).unwrap())
            .await
            .unwrap();
        assert!(
            !envelopes.is_empty(),
            "nothing to graft from {from_name}@{from}"
        );
        for envelope in envelopes {
            push_signature(driver, to_name, to, &envelope)
                .await
                .unwrap();
        }
    });
}

/// Copies image `from_tag` of `name` from one driver to another as `name:to_tag`; returns
/// its manifest digest.
async fn copy_image(
    from: &dyn Driver,
    to: &dyn Driver,
    name: &str,
    from_tag: &str,
    to_tag: &str,
) -> String {
    let digest = descriptor_digest(&from.resolve(name, from_tag).await.unwrap()).unwrap();
    let fetched = from.fetch_manifest(name, &digest).await.unwrap();
    let blob = ManifestBlob::parse(
        fetched.bytes,
        fetched.content_type.as_deref(),
        Some(&digest),
    )
    .unwrap();
    let Manifest::Image(manifest) = &blob.manifest else {
        panic!("{name}:{from_tag} is not an image manifest")
    };
    for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let d = descriptor_digest(desc).unwrap();
        let body = from.fetch_blob(name, &d, ByteRange::WHOLE).await.unwrap();
        to.put_blob(name, &d, desc.size(), body.stream)
            .await
            .unwrap();
    }
    to.put_manifest(name, Some(to_tag), &blob.media_type, &blob.bytes)
        .await
        .unwrap();
    digest.to_string()
}

/// A test's registry with fixtures pushed to it, a key `team`, and a policy requiring it
/// for `HOST/team`.
struct Signed {
    fx: Fixtures,
    reg: Registry,
    work: Work,
    team: String,
    policy: PathBuf,
}

impl Signed {
    fn new() -> Self {
        let reg = Registry::start(RegistryOptions::open()).unwrap();
        let work = Work::new();
        let team = work.key("team");
        let policy = work.policy("policy.toml", &format!("{}/team", reg.host()), &["team"]);
        Signed {
            fx: Fixtures::get(),
            reg,
            work,
            team,
            policy,
        }
    }

    /// Pushes fixture `fixture` as `team/<repo_tag>`; returns its digest.
    fn push(&self, fixture: &str, repo_tag: &str) -> String {
        self.fx.push(
            fixture,
            &self.reg.host(),
            &format!("team/{repo_tag}"),
            false,
            None,
        )
    }

    /// `HOST/team/<repo>`.
    fn name(&self, repo: &str) -> String {
        format!("{}/team/{repo}", self.reg.host())
    }
}

#[test]
fn signed_in_one_store_pushed_to_the_registry_and_accepted_in_another_sig_18() {
    let s = Signed::new();
    let digest = s.push(BUSYBOX, "app:1");
    let name = s.name("app");
    let image = format!("{name}:1");
    let signature = sign_and_push(&s.work, &image, "team", None);

    // SIG-12: the set is in the image's repository under sha256-<hex>.sig.
    let tags = block_on(registry_driver(&s.reg).list_tags(&name)).unwrap();
    let tag = signature_tag(&Digest::parse(&digest).unwrap());
    assert_eq!(tag, format!("sha256-{}.sig", &digest[7..]));
    assert!(tags.contains(&tag), "{tags:?}");

    // Root B requires the key: accepted, and the store says by which key.
    let b = tempfile::tempdir().unwrap();
    let out = output(fy(b.path(), Some(&s.policy), None).args(["pull", &image]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        last_line(&String::from_utf8_lossy(&out.stdout)),
        format!("{name}@{digest}")
    );
    assert!(
        stderr(&out).contains(&format!("signed by {}", s.team)),
        "{}",
        stderr(&out)
    );
    let rows = images(b.path(), Some(&s.policy));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["verified"], format!("signed:{}", s.team).as_str());
    assert_eq!(rows[0]["signed_by"], serde_json::json!([s.team]));
    let table = run_ok(fy(b.path(), Some(&s.policy), None).arg("images"));
    assert!(
        table.lines().next().unwrap().ends_with("VERIFIED"),
        "{table}"
    );
    assert!(table.contains(&format!("signed:{}", s.team)), "{table}");
    let verify = run_ok(fy(b.path(), Some(&s.policy), None).args(["verify", &image]));
    assert!(
        verify.contains(&format!("key id {}", s.team)) && verify.contains(&signature),
        "{verify}"
    );
    assert!(
        verify.contains(&format!("accepted {image}@{digest}: signed by {}", s.team)),
        "{verify}"
    );
    let verify = json(&run_ok(
        fy(b.path(), Some(&s.policy), None).args(["verify", "--json", &image]),
    ));
    assert_eq!(verify["verdict"], "accepted");
    assert_eq!(verify["signatures"][0]["digest"], signature.as_str());

    // Without a policy the image is accepted unsigned; with another key it is rejected.
    assert_eq!(images(b.path(), None)[0]["verified"], "unsigned");
    let other = s.work.key("other");
    let strict = s
        .work
        .policy("other.toml", &format!("{}/team", s.reg.host()), &["other"]);
    assert_eq!(images(b.path(), Some(&strict))[0]["verified"], "rejected");
    let out = output(fy(b.path(), Some(&strict), None).args(["verify", &image]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rejected"),
        "{out:?}"
    );

    // A pull under the other key is refused, naming the image and the keys tried.
    let err = pull_rejected(&image, &strict, None);
    assert!(err.contains(&format!("{image}@{digest}")), "{err}");
    assert!(err.contains(&format!("trusted keys [{other}]")), "{err}");

    // SIG-17: the signature (its payload blob) lives while the image is named and goes with
    // the name.
    let blob = b.path().join("blobs/sha256").join(&signature[7..]);
    run_ok(fy(b.path(), None, None).arg("gc"));
    assert!(blob.exists(), "gc removed the signature of a named image");
    run_ok(fy(b.path(), None, None).args(["rm", &image]));
    let gc = run_ok(fy(b.path(), None, None).arg("gc"));
    assert!(gc.contains(&signature), "{gc}");
    assert!(!blob.exists());
}

#[test]
fn signed_through_an_oci_layout_source_sig_13() {
    let fx = Fixtures::get();
    let work = Work::new();
    let team = work.key("team");
    let layout = work.path("usb");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        &fx.oci_ref(BUSYBOX),
        &format!("oci:{}:{NAME}:1", layout.display()),
    ]));
    let config = work.write(
        "sites.toml",
        &format!(
            "[[route]]\nprefix = \"registry.example.com/team\"\nsources = [\"usb\"]\n\n[source.usb]\ndriver = \"oci-layout\"\npath = \"{}\"\n",
            layout.display()
        ),
    );
    let image = format!("{NAME}:1");
    sign_and_push(&work, &image, "team", Some(&config));
    let digest = fx.digest(BUSYBOX);
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(
        index.contains(&format!("{NAME}:sha256-{}.sig", &digest[7..])),
        "{index}"
    );

    let policy = work.policy("policy.toml", "registry.example.com/team", &["team"]);
    let b = tempfile::tempdir().unwrap();
    let out = run_ok(fy(b.path(), Some(&policy), Some(&config)).args(["pull", &image]));
    assert_eq!(last_line(&out), format!("{NAME}@{digest}"));
    assert_eq!(
        images(b.path(), Some(&policy))[0]["verified"],
        format!("signed:{team}").as_str()
    );
    // Unsigned in another layout: refused.
    let bare = work.path("bare");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        &fx.oci_ref(APP),
        &format!("oci:{}:{NAME}:1", bare.display()),
    ]));
    let config = work.write(
        "bare.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace(&layout.display().to_string(), &bare.display().to_string()),
    );
    let err = pull_rejected(&image, &policy, Some(&config));
    assert!(err.contains("no signatures were found"), "{err}");
}

#[test]
fn signed_through_an_s3_bucket_in_ferry_layout_sig_13() {
    let fx = Fixtures::get();
    let work = Work::new();
    let team = work.key("team");
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("images").unwrap();
    let digest = block_on(async {
        let fixtures = OciLayoutDriver::new("fixtures", fx.layout())
            .with_plain_tags_of(NAME)
            .unwrap();
        let bucket = S3Driver::new(s3.config("s3", "images", S3Layout::Ferry)).unwrap();
        copy_image(&fixtures, &bucket, NAME, BUSYBOX, "1").await
    });
    let config = work.write(
        "sites.toml",
        &format!(
            "[[route]]\nprefix = \"registry.example.com/team\"\nsources = [\"s3\"]\n\n[source.s3]\ndriver = \"s3\"\nbucket = \"images\"\nendpoint = \"{}\"\nlayout = \"ferry\"\n",
            s3.endpoint()
        ),
    );
    let image = format!("{NAME}:1");
    sign_and_push(&work, &image, "team", Some(&config));

    let policy = work.policy("policy.toml", "registry.example.com/team", &["team"]);
    let b = tempfile::tempdir().unwrap();
    let out = run_ok(fy(b.path(), Some(&policy), Some(&config)).args(["pull", &image]));
    assert_eq!(last_line(&out), format!("{NAME}@{digest}"));
    assert_eq!(
        images(b.path(), Some(&policy))[0]["verified"],
        format!("signed:{team}").as_str()
    );
    let verify = json(&run_ok(
        fy(b.path(), Some(&policy), Some(&config)).args(["verify", "--json", &image]),
    ));
    assert_eq!(verify["signed_by"], serde_json::json!([team]));
}

#[test]
fn a_signature_for_another_name_is_rejected_sig_10() {
    let s = Signed::new();
    let digest = s.push(BUSYBOX, "app:1");
    s.push(BUSYBOX, "other:1");
    sign_and_push(&s.work, &format!("{}:1", s.name("other")), "team", None);
    // The attacker copies other:1's valid signature next to app (same digest).
    graft(
        &registry_driver(&s.reg),
        &s.name("other"),
        &digest,
        &s.name("app"),
        &subject(&s.fx, &digest),
    );
    let err = pull_rejected(&format!("{}:1", s.name("app")), &s.policy, None);
    assert!(
        err.contains(&format!(
            "is for {}:1, not {}:1",
            s.name("other"),
            s.name("app")
        )),
        "{err}"
    );
}

#[test]
fn a_signature_for_another_digest_is_rejected_sig_10() {
    let s = Signed::new();
    let signed = s.push(APP, "app:1");
    sign_and_push(&s.work, &format!("{}:1", s.name("app")), "team", None);
    // The tag moves to another image; the attacker puts the old signature next to it.
    let moved = s.push(BUSYBOX, "app:1");
    graft(
        &registry_driver(&s.reg),
        &s.name("app"),
        &signed,
        &s.name("app"),
        &subject(&s.fx, &moved),
    );
    let err = pull_rejected(&format!("{}:1", s.name("app")), &s.policy, None);
    assert!(
        err.contains(&format!(
            "binds {}:1 to {signed}, not {moved}",
            s.name("app")
        )),
        "{err}"
    );
}

#[test]
fn a_signature_by_an_unknown_key_is_rejected_pol_6() {
    let s = Signed::new();
    s.push(BUSYBOX, "app:1");
    let rogue = s.work.key("rogue");
    sign_and_push(&s.work, &format!("{}:1", s.name("app")), "rogue", None);
    let err = pull_rejected(&format!("{}:1", s.name("app")), &s.policy, None);
    assert!(
        err.contains("verifies with none of the trusted keys")
            && err.contains(&format!("trusted keys [{}]", s.team))
            && !err.contains(&rogue),
        "{err}"
    );
}

#[test]
fn a_signature_whose_bytes_changed_in_registry_storage_is_refused_sig_14() {
    let s = Signed::new();
    s.push(BUSYBOX, "app:1");
    let image = format!("{}:1", s.name("app"));
    let signature = sign_and_push(&s.work, &image, "team", None);
    // One byte of the payload (the layer blob) changes at rest; the registry serves it as is.
    let path = s.reg.blob_data_path(&signature);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = String::from_utf8_lossy(&bytes)
        .find("docker-manifest-digest")
        .unwrap();
    bytes[at] = b'D';
    std::fs::write(&path, &bytes).unwrap();
    let err = pull_rejected(&image, &s.policy, None);
    assert!(
        err.contains(&signature[7..]) && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(err.contains("no signatures were found"), "{err}");
}

#[test]
fn a_payload_changed_and_uploaded_as_a_new_layer_fails_verification_sig_10() {
    let s = Signed::new();
    let digest = s.push(BUSYBOX, "app:1");
    s.push(BUSYBOX, "app:2");
    sign_and_push(&s.work, &format!("{}:1", s.name("app")), "team", None);
    // The attacker rewrites the payload's tag from 1 to 2 and uploads it as a well-formed
    // layer with the original signature.
    let driver = registry_driver(&s.reg);
    let forged = block_on(fetch_signatures(
        &driver,
        &s.name("app"),
        &Digest::parse(&digest).unwrap(),
    ))
    .unwrap()
    .remove(0);
    let payload = String::from_utf8(forged.payload().to_vec())
        .unwrap()
        .replace("/team/app:1\"", "/team/app:2\"");
    assert_ne!(payload.as_bytes(), forged.payload());
    let forged =
        SignatureEnvelope::from_layer(payload.into_bytes(), &forged.signature_base64()).unwrap();
    block_on(push_signature(
        &driver,
        &s.name("app"),
        &subject(&s.fx, &digest),
        &forged,
    ))
    .unwrap();
    let err = pull_rejected(&format!("{}:2", s.name("app")), &s.policy, None);
    assert!(
        err.contains("signature 2") && err.contains("verifies with none of the trusted keys"),
        "{err}"
    );
}

/// A source replacing the set under `sha256-<hex>.sig` with `real` and `garbage` envelopes:
/// the real signature's payload with signatures no key made (the payload blob is there).
fn replace_set(
    driver: &dyn Driver,
    name: &str,
    subject: &Descriptor,
    envelopes: &[SignatureEnvelope],
) {
    let digest = descriptor_digest(subject).unwrap();
    block_on(driver.put_manifest(
        name,
        Some(&signature_tag(&digest)),
        media::OCI_MANIFEST,
        &signature_set_manifest(subject, envelopes),
    ))
    .unwrap();
}

#[test]
fn garbage_signatures_from_a_source_cannot_grow_the_store_without_bound_sig_17() {
    let s = Signed::new();
    let digest = s.push(BUSYBOX, "app:1");
    let image = format!("{}:1", s.name("app"));
    sign_and_push(&s.work, &image, "team", None);
    let driver = registry_driver(&s.reg);
    let subject = subject(&s.fx, &digest);
    let real = block_on(fetch_signatures(
        &driver,
        &s.name("app"),
        &Digest::parse(&digest).unwrap(),
    ))
    .unwrap()
    .remove(0);
    // Each round the source offers the real signature and 63 signatures no key made, new
    // ones every time; the store keeps the real one and at most 64 in all.
    let root = tempfile::tempdir().unwrap();
    let mut forged = 0u32;
    for _round in 0..3 {
        let mut set = vec![real.clone()];
        for _ in 0..63 {
            forged += 1;
            let bogus = STANDARD.encode([forged.to_be_bytes().as_slice(), &[7u8; 60]].concat());
            set.push(SignatureEnvelope::from_layer(real.payload().to_vec(), &bogus).unwrap());
        }
        replace_set(&driver, &s.name("app"), &subject, &set);
        run_ok(fy(root.path(), Some(&s.policy), None).args(["pull", &image]));
        let verified = json(&run_ok(
            fy(root.path(), Some(&s.policy), None).args(["verify", &image, "--json"]),
        ));
        assert_eq!(verified["verdict"], "accepted", "{verified}");
        let kept = verified["signatures"].as_array().unwrap();
        assert!(
            kept.len() <= 64,
            "the store holds {} signatures",
            kept.len()
        );
        assert_eq!(
            kept.iter()
                .filter(|k| k["key_id"] == s.team.as_str())
                .count(),
            1,
            "{verified}"
        );
    }
}

#[test]
fn a_signature_for_app_1_does_not_vouch_for_app_2_sig_10() {
    let s = Signed::new();
    let one = s.push(BUSYBOX, "app:1");
    let two = s.push(APP, "app:2");
    sign_and_push(&s.work, &format!("{}:1", s.name("app")), "team", None);
    // Replayed under app:2's digest.
    graft(
        &registry_driver(&s.reg),
        &s.name("app"),
        &one,
        &s.name("app"),
        &subject(&s.fx, &two),
    );
    let err = pull_rejected(&format!("{}:2", s.name("app")), &s.policy, None);
    assert!(
        err.contains(&format!(
            "is for {}:1, not {}:2",
            s.name("app"),
            s.name("app")
        )),
        "{err}"
    );
    // Even when both tags name the same digest.
    s.push(BUSYBOX, "app:3");
    let err = pull_rejected(&format!("{}:3", s.name("app")), &s.policy, None);
    assert!(
        err.contains(&format!(
            "is for {}:1, not {}:3",
            s.name("app"),
            s.name("app")
        )),
        "{err}"
    );
}

#[test]
fn signature_sets_swapped_between_two_images_are_refused_sig_14() {
    let s = Signed::new();
    let one = s.push(BUSYBOX, "app:1");
    let two = s.push(APP, "app:2");
    for tag in ["1", "2"] {
        sign_and_push(&s.work, &format!("{}:{tag}", s.name("app")), "team", None);
    }
    let accepted = tempfile::tempdir().unwrap();
    run_ok(
        fy(accepted.path(), Some(&s.policy), None).args(["pull", &format!("{}:1", s.name("app"))]),
    );
    // The attacker swaps the two sets' manifests under their tags.
    let driver = registry_driver(&s.reg);
    let name = s.name("app");
    block_on(async {
        let tag_one = signature_tag(&Digest::parse(&one).unwrap());
        let tag_two = signature_tag(&Digest::parse(&two).unwrap());
        let set = |tag: String| {
            let (driver, name) = (&driver, &name);
            async move {
                let d = descriptor_digest(&driver.resolve(name, &tag).await.unwrap()).unwrap();
                driver.fetch_manifest(name, &d).await.unwrap().bytes
            }
        };
        let (set_one, set_two) = (set(tag_one.clone()).await, set(tag_two.clone()).await);
        driver
            .put_manifest(&name, Some(&tag_one), media::OCI_MANIFEST, &set_two)
            .await
            .unwrap();
        driver
            .put_manifest(&name, Some(&tag_two), media::OCI_MANIFEST, &set_one)
            .await
            .unwrap();
    });
    for (tag, digest) in [("1", &one), ("2", &two)] {
        let err = pull_rejected(&format!("{name}:{tag}"), &s.policy, None);
        assert!(
            err.contains(&format!(
                "is {}, not {digest}",
                if digest == &one { &two } else { &one }
            )) && err.contains("subject"),
            "{err}"
        );
        assert!(err.contains("no signatures were found"), "{err}");
    }
}

#[test]
fn a_mirror_cannot_answer_a_signed_name_with_another_signed_image_pol_9() {
    let fx = Fixtures::get();
    let work = Work::new();
    work.key("team");
    let origin = Registry::start(RegistryOptions::open()).unwrap();
    let mirror = Registry::start(RegistryOptions::open()).unwrap();
    let route = |sources: &str, resolve: &str, defs: &[(&str, &Registry)]| {
        let mut text = format!("[[route]]\nprefix = \"registry.example.com/team\"\nsources = [{sources}]\nresolve = [{resolve}]\n");
        for (source, reg) in defs {
            text.push_str(&format!(
                "[source.{source}]\ndriver = \"registry\"\nurl = \"{}\"\n",
                reg.url()
            ));
        }
        text
    };
    let origin_only = work.write(
        "origin.toml",
        &route("\"origin\"", "\"origin\"", &[("origin", &origin)]),
    );
    // NAME:2 is signed at the origin.
    let two = fx.push(APP, &origin.host(), "team/app:2", false, None);
    sign_and_push(&work, &format!("{NAME}:2"), "team", Some(&origin_only));
    // The mirror answers NAME:1 with that image and carries its (valid, but :2) signature.
    fx.push(APP, &mirror.host(), "team/app:1", false, None);
    let origin_driver = registry_driver(&origin);
    let mirror_driver = registry_driver(&mirror);
    block_on(async {
        for e in fetch_signatures(&origin_driver, NAME, &Digest::parse(&two).unwrap())
            .await
            .unwrap()
        {
            push_signature(&mirror_driver, NAME, &subject(&fx, &two), &e)
                .await
                .unwrap();
        }
    });
    let both = work.write(
        "both.toml",
        &route(
            "\"mirror\", \"origin\"",
            "\"origin\"",
            &[("mirror", &mirror), ("origin", &origin)],
        ),
    );
    let policy = work.policy("policy.toml", "registry.example.com/team", &["team"]);
    let err = pull_rejected(&format!("{NAME}:1"), &policy, Some(&both));
    assert!(
        err.contains(&format!("source \"mirror\" answered {NAME}:1 with {two}"))
            && err.contains(&format!("is for {NAME}:2, not {NAME}:1")),
        "{err}"
    );

    // Once the origin has a signed :1, it is asked first and its answer wins.
    let one = fx.push(BUSYBOX, &origin.host(), "team/app:1", false, None);
    sign_and_push(&work, &format!("{NAME}:1"), "team", Some(&origin_only));
    let root = tempfile::tempdir().unwrap();
    let out =
        run_ok(fy(root.path(), Some(&policy), Some(&both)).args(["pull", &format!("{NAME}:1")]));
    assert_eq!(last_line(&out), format!("{NAME}@{one}"));
    // With the mirror as the first resolver, it is refused with a warning and the origin wins.
    let mirror_first = work.write(
        "mirror-first.toml",
        &route(
            "\"mirror\", \"origin\"",
            "\"mirror\", \"origin\"",
            &[("mirror", &mirror), ("origin", &origin)],
        ),
    );
    let root = tempfile::tempdir().unwrap();
    let out = output(
        fy(root.path(), Some(&policy), Some(&mirror_first)).args(["pull", &format!("{NAME}:1")]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        last_line(&String::from_utf8_lossy(&out.stdout)),
        format!("{NAME}@{one}")
    );
    assert!(
        stderr(&out).contains("source \"mirror\" answered"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unsigned_image_under_signed_by_and_a_name_under_reject_are_rejected_pol_6() {
    let s = Signed::new();
    let digest = s.push(BUSYBOX, "app:1");
    let err = pull_rejected(&format!("{}:1", s.name("app")), &s.policy, None);
    assert!(
        err.contains(&format!("{}:1@{digest}", s.name("app")))
            && err.contains("no signatures were found"),
        "{err}"
    );
    assert!(
        err.contains(&s.policy.display().to_string()),
        "the rejection names the policy file: {err}"
    );
    s.fx.push(BUSYBOX, &s.reg.host(), "elsewhere/app:1", false, None);
    let err = pull_rejected(
        &format!("{}/elsewhere/app:1", s.reg.host()),
        &s.policy,
        None,
    );
    assert!(err.contains("rejected by the default rule"), "{err}");
}

#[test]
fn a_policy_with_a_missing_or_unreadable_key_is_an_error_not_accept_pol_3() {
    let s = Signed::new();
    s.push(BUSYBOX, "app:1");
    let image = format!("{}:1", s.name("app"));
    s.work.write(
        "keys/garbage.pub",
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    );
    std::fs::create_dir(s.work.path("keys/dir.pub")).unwrap();
    for key in ["missing", "garbage", "dir"] {
        let policy = s.work.policy(
            &format!("{key}.toml"),
            &format!("{}/team", s.reg.host()),
            &[key],
        );
        let err = pull_rejected(&image, &policy, None);
        let last = last_line(&err);
        assert!(
            last.contains(&policy.display().to_string())
                && last.contains(&format!("keys/{key}.pub")),
            "{err}"
        );
        let out =
            output(fy(tempfile::tempdir().unwrap().path(), Some(&policy), None).arg("images"));
        assert_eq!(
            out.status.code(),
            Some(1),
            "ferry images accepted a broken policy"
        );
    }
}

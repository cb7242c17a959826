//! `ferry config import` from the files podman and containerd keep, in the forms their
//! manuals document (containers-registries.conf(5), containers-policy.json(5), containerd's
//! hosts.md), checked with `ferry config check`/`explain` and by pulling through the result
//! (`specs/site-config.md` SITE-9 … SITE-12, `specs/policy.md` POL-12); and what `explain`
//! and `pull` say about the hosts they really use (SITE-7, SITE-4).

use std::path::{Path, PathBuf};

use ferry_testkit::fixtures::{Fixtures, BUSYBOX};
use ferry_testkit::registry::{closed_port, Registry, RegistryOptions};
use ferry_testkit::{ferry, output, run_ok};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// `ferry config import INPUT -o OUT` with the store at `root`.
fn import_to(root: &Path, input: &Path, out: &Path) -> std::process::Output {
    output(
        ferry(root)
            .args(["config", "import"])
            .arg(input)
            .arg("-o")
            .arg(out),
    )
}

/// containers-registries.conf(5)'s own example, plus a blocked entry.
const MANUAL_REGISTRIES_CONF: &str = r#"
unqualified-search-registries = ["example.com"]

[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"

[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true

[[registry]]
location = "registry.com"

[[registry.mirror]]
location = "mirror.registry.com"

[[registry]]
prefix = "docker.io"
mirror-by-digest-only = true

[[registry.mirror]]
location = "ferry.internal:5000/docker.io"

[[registry]]
prefix = "blocked.example.com/evil"
blocked = true
"#;

#[test]
fn registries_conf_rewrites_mirrors_blocked_and_short_names_are_carried_or_listed() {
    // SITE-10
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let conf = write(dir.path(), "registries.conf", MANUAL_REGISTRIES_CONF);
    write(
        dir.path(),
        "registries.conf.d/shortnames.conf",
        "[aliases]\n\"busybox\" = \"docker.io/library/busybox\"\n",
    );
    let sites = dir.path().join("sites.toml");
    let policy = dir.path().join("policy.toml");

    // A blocked registry gives a policy too: ferry asks where to write it.
    let out = output(ferry(root.path()).args(["config", "import"]).arg(&conf));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("--policy-out"),
        "{}",
        stderr_of(&out)
    );

    let out = output(
        ferry(root.path())
            .args(["config", "import"])
            .arg(&conf)
            .arg("-o")
            .arg(&sites)
            .arg("--policy-out")
            .arg(&policy),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    // Listed, never dropped: short-name search and the rewrites ferry cannot express.
    for listed in [
        "unqualified-search-registries",
        "docker.io/library/busybox",
        "internal-registry-for-example.com/bar",
        "example-mirror-0.local/mirror-for-foo",
        "registries.conf.d/shortnames.conf",
    ] {
        assert!(err.contains(listed), "{listed} not listed: {err}");
    }
    let text = std::fs::read_to_string(&sites).unwrap();
    assert!(
        text.contains("# Not carried over") && text.contains("unqualified-search-registries"),
        "{text}"
    );

    let check = run_ok(
        ferry(root.path())
            .arg("--config")
            .arg(&sites)
            .args(["config", "check"]),
    );
    assert!(check.contains(": ok (2 routes"), "{check}");
    // Mirrors first, the registry last; mirror-by-digest-only keeps tags at the registry.
    let explain = run_ok(ferry(root.path()).arg("--config").arg(&sites).args([
        "config",
        "explain",
        "docker.io/library/busybox:1",
    ]));
    let mirror = explain
        .find("https://ferry.internal:5000/v2/docker.io/library/busybox")
        .unwrap_or_else(|| panic!("{explain}"));
    let origin = explain
        .find("https://registry-1.docker.io/v2/library/busybox")
        .unwrap_or_else(|| panic!("{explain}"));
    assert!(mirror < origin, "{explain}");
    assert!(explain.contains("[content]") && explain.contains("[resolve, content]"));
    let explain = run_ok(ferry(root.path()).arg("--config").arg(&sites).args([
        "config",
        "explain",
        "registry.com/app",
    ]));
    assert!(
        explain.find("mirror.registry.com").unwrap()
            < explain.find("https://registry.com").unwrap(),
        "{explain}"
    );

    // blocked = true is a reject rule of the trust policy.
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("[default]\naction = \"accept\""), "{text}");
    assert!(
        text.contains("prefix = \"blocked.example.com/evil\"\naction = \"reject\""),
        "{text}"
    );
    ferry_signing::Policy::load(&policy).unwrap();
}

#[test]
fn registries_conf_location_rewrite_pulls_from_the_location() {
    // SITE-10, SITE-6: the image keeps the name asked for.
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &reg.host(), "mirrors/team/busybox:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "registries.conf",
        &format!(
            "[[registry]]\nprefix = \"registry.example.com/team\"\nlocation = \"{}/mirrors/team\"\ninsecure = true\n",
            reg.host()
        ),
    );
    let sites = dir.path().join("sites.toml");
    run_ok(
        ferry(root.path())
            .args(["config", "import"])
            .arg(&conf)
            .arg("-o")
            .arg(&sites),
    );
    let out = run_ok(
        ferry(root.path())
            .arg("--config")
            .arg(&sites)
            .args(["pull", "registry.example.com/team/busybox:1"]),
    );
    assert_eq!(
        out.lines().last().unwrap(),
        format!("registry.example.com/team/busybox@{digest}")
    );
}

#[test]
fn certs_d_hosts_keep_their_order_capabilities_and_serve_pulls() {
    // SITE-11
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &reg.host(), "team/busybox:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    // containerd's hosts.md examples.
    write(
        &certs,
        "docker.io/hosts.toml",
        r#"server = "https://registry-1.docker.io"    # Exclude this to not use upstream

[host."https://public-mirror.gcr.io"]
  capabilities = ["pull"]

[host."https://docker-mirror.internal"]
  capabilities = ["pull", "resolve"]
  ca = "docker-mirror.crt"    # Or absolute path /etc/containerd/certs.d/docker.io/docker-mirror.crt
"#,
    );
    write(
        &certs,
        "192.168.31.250:5000/hosts.toml",
        r#"server = "http://192.168.31.250:5000"

[host."http://192.168.31.250:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
"#,
    );
    write(
        &certs,
        "registry.example.com/hosts.toml",
        &format!(
            "server = \"https://registry.example.com\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"https://cache.example.com/api/v2\"]\n  override_path = true\n  capabilities = [\"pull\"]\n",
            reg.host()
        ),
    );
    let sites = dir.path().join("sites.toml");
    let out = import_to(root.path(), &certs, &sites);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("ca: not used by ferry"), "{err}");
    assert!(err.contains("push"), "{err}");

    // Hosts in file order (not alphabetical), pull-only hosts never answer tags.
    let explain = run_ok(ferry(root.path()).arg("--config").arg(&sites).args([
        "config",
        "explain",
        "docker.io/library/busybox",
    ]));
    let public = explain.find("public-mirror.gcr.io").unwrap();
    let internal = explain.find("docker-mirror.internal").unwrap();
    let server = explain.find("registry-1.docker.io").unwrap();
    assert!(public < internal && internal < server, "{explain}");
    assert!(
        explain.contains("public-mirror.gcr.io (registry) [content]"),
        "{explain}"
    );
    // override_path: the URL is the API root, ferry's url is what comes before /v2.
    let explain = run_ok(ferry(root.path()).arg("--config").arg(&sites).args([
        "config",
        "explain",
        "registry.example.com/team/busybox",
    ]));
    assert!(
        explain.contains("https://cache.example.com/api/v2/team/busybox"),
        "{explain}"
    );
    // The first host answers the tag and the content: no request reaches the server.
    let out = run_ok(
        ferry(root.path())
            .arg("--config")
            .arg(&sites)
            .args(["pull", "registry.example.com/team/busybox:1"]),
    );
    assert_eq!(
        out.lines().last().unwrap(),
        format!("registry.example.com/team/busybox@{digest}")
    );
}

/// containers-policy.json(5)-style policy with every kind of entry.
const POLICY_JSON: &str = r#"{
    "default": [{"type": "reject"}],
    "transports": {
        "docker": {
            "private-registry.example.com": [{"type": "insecureAcceptAnything"}],
            "docker.io/library": [{"type": "insecureAcceptAnything"}],
            "registry.example.com/openshift": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/path/to/key.gpg"}],
            "quay.io/sigstore": [{"type": "sigstoreSigned", "fulcio": {"caPath": "/path/to/fulcio_v1.crt.pem", "oidcIssuer": "https://github.com/login/oauth", "subjectEmail": "test-user@example.com"}, "rekorPublicKeyPath": "/path/to/rekor.pub"}],
            "*.example.org": [{"type": "insecureAcceptAnything"}]
        },
        "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
    }
}"#;

#[test]
fn policy_json_maps_reject_and_accept_and_names_each_signature_entry_it_cannot() {
    // POL-12
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "policy.json", POLICY_JSON);
    let policy = dir.path().join("policy.toml");
    let out = import_to(root.path(), &json, &policy);
    assert_eq!(out.status.code(), Some(1), "signature entries are errors");
    let err = stderr_of(&out);
    for entry in [
        r#"transports.docker["registry.example.com/openshift"][0]: signedBy"#,
        r#"transports.docker["quay.io/sigstore"][0]: sigstoreSigned"#,
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains("error") && l.contains(entry)),
            "{entry}: {err}"
        );
    }
    assert!(
        err.contains("*.example.org") && err.contains("docker-daemon"),
        "{err}"
    );

    // What maps is carried; what cannot fails closed (reject), never open.
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("[default]\naction = \"reject\""), "{text}");
    for (prefix, action) in [
        ("private-registry.example.com", "accept"),
        ("docker.io/library", "accept"),
        ("registry.example.com/openshift", "reject"),
        ("quay.io/sigstore", "reject"),
    ] {
        assert!(
            text.contains(&format!("prefix = \"{prefix}\"\naction = \"{action}\"")),
            "{prefix}: {text}"
        );
    }
    ferry_signing::Policy::load(&policy).unwrap();
}

/// An ECDSA P-256 key pair made by openssl: `NAME.key` (PKCS#8, 0600) and `NAME.pub` (SPKI).
fn openssl_p256(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    run_ok(
        std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key),
    );
    run_ok(
        std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
    );
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, public)
}

/// A policy.json in the manual's form: everything rejected but `scope`, which needs a
/// sigstore signature by the key at `key_path`.
fn sigstore_policy_json(scope: &str, key_path: &Path) -> String {
    format!(
        r#"{{
    "default": [{{"type": "reject"}}],
    "transports": {{
        "docker": {{
            "{scope}": [
                {{
                    "type": "sigstoreSigned",
                    "keyPath": "{}"
                }}
            ]
        }}
    }}
}}"#,
        key_path.display()
    )
}

#[test]
fn policy_json_sigstore_signed_by_key_becomes_signed_by_and_pulls_accept_only_that_key() {
    // POL-12, POL-6: an openssl P-256 key, ferry signs with its private half.
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &reg.host(), "team/app:1", false, None);
    let image = format!("{}/team/app:1", reg.host());
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = openssl_p256(dir.path(), "release");
    let (_, other) = openssl_p256(dir.path(), "other");
    let scope = format!("{}/team", reg.host());

    // Import: a signed-by rule with the key, nothing left over, exit 0.
    let imported = |name: &str, public: &Path| {
        let json = write(
            dir.path(),
            &format!("{name}.json"),
            &sigstore_policy_json(&scope, public),
        );
        let policy = dir.path().join(format!("{name}.toml"));
        let out = import_to(dir.path(), &json, &policy);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let text = std::fs::read_to_string(&policy).unwrap();
        assert!(
            text.contains(&format!(
                "prefix = \"{scope}\"\naction = \"signed-by\"\nkeys = [\"{}\"]\nthreshold = 1\n",
                public.display()
            )),
            "{text}"
        );
        assert!(text.contains("[default]\naction = \"reject\""), "{text}");
        policy
    };
    let policy = imported("release", &public);
    let other_policy = imported("other", &other);

    // Unsigned: refused.
    let fresh = tempfile::tempdir().unwrap();
    let pull = |root: &Path, policy: &Path| {
        output(
            ferry(root)
                .arg("--policy")
                .arg(policy)
                .args(["pull", &image]),
        )
    };
    let out = pull(fresh.path(), &policy);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));

    // Signed with the openssl key by ferry, pushed beside the image.
    let signer = tempfile::tempdir().unwrap();
    run_ok(ferry(signer.path()).args(["pull", &image]));
    run_ok(
        ferry(signer.path())
            .args(["sign", &image, "--key"])
            .arg(&key)
            .arg("--push"),
    );
    let key_id = ferry_signing::PublicKey::load(&public)
        .unwrap()
        .id()
        .to_string();
    let root = tempfile::tempdir().unwrap();
    let out = pull(root.path(), &policy);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("signed by {key_id}")),
        "{}",
        stderr_of(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&digest),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The policy imported with another key refuses the same signature.
    let refused = tempfile::tempdir().unwrap();
    let out = pull(refused.path(), &other_policy);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let other_id = ferry_signing::PublicKey::load(&other)
        .unwrap()
        .id()
        .to_string();
    assert!(
        stderr_of(&out).contains(&format!("trusted keys [{other_id}]")),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn policy_json_inline_keys_are_saved_beside_the_policy_file_relative_paths_resolved_printed_listed()
{
    // POL-12
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = openssl_p256(dir.path(), "inline");
    let data = run_ok(
        std::process::Command::new("openssl")
            .args(["base64", "-A", "-in"])
            .arg(&public),
    );
    let json = write(
        dir.path(),
        "policy.json",
        &format!(
            r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"registry.example.com/team": [{{"type": "sigstoreSigned", "keyData": "{}", "signedIdentity": {{"type": "matchRepository"}}}}]}}}}}}"#,
            data.trim()
        ),
    );
    let out_dir = dir.path().join("etc");
    std::fs::create_dir(&out_dir).unwrap();
    let policy = out_dir.join("policy.toml");
    let out = import_to(dir.path(), &json, &policy);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.contains(
            "prefix = \"registry.example.com/team\"\naction = \"signed-by\"\nkeys = [\"policy-key-1.pub\"]\nthreshold = 1\nmatch = \"repository\"\n"
        ),
        "{text}"
    );
    // The saved key is the inline one, and the policy loads with it.
    let saved = ferry_signing::PublicKey::load(&out_dir.join("policy-key-1.pub")).unwrap();
    assert_eq!(saved, ferry_signing::PublicKey::load(&public).unwrap());
    ferry_signing::Policy::load(&policy).unwrap();

    // Beside a registries.conf, the key goes beside --policy-out's file.
    let containers = dir.path().join("containers");
    std::fs::create_dir(&containers).unwrap();
    std::fs::copy(&json, containers.join("policy.json")).unwrap();
    write(
        &containers,
        "registries.conf",
        "unqualified-search-registries = []\n",
    );
    let trust = out_dir.join("trust.toml");
    let out = output(
        ferry(dir.path())
            .args(["config", "import"])
            .arg(&containers)
            .arg("-o")
            .arg(out_dir.join("sites.toml"))
            .arg("--policy-out")
            .arg(&trust),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        ferry_signing::PublicKey::load(&out_dir.join("trust-key-1.pub")).unwrap(),
        saved
    );
    ferry_signing::Policy::load(&trust).unwrap();

    // A relative keyPath is read from the working directory, as containers/image reads it.
    let relative = write(
        dir.path(),
        "relative.json",
        &sigstore_policy_json("registry.example.com/team", Path::new("inline.pub")),
    );
    let out = output(
        ferry(dir.path())
            .current_dir(dir.path())
            .args(["config", "import"])
            .arg(&relative),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("keys = [\"{}\"]", public.display())),
        "{printed}"
    );
    assert!(
        stderr_of(&out).contains("relative key path \"inline.pub\""),
        "{}",
        stderr_of(&out)
    );

    // Printed, the policy has nowhere to keep the key: listed, and the scope rejects.
    let out = output(ferry(dir.path()).args(["config", "import"]).arg(&json));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).lines().any(|l| l.contains("error")
            && l.contains(
                r#"transports.docker["registry.example.com/team"][0]: sigstoreSigned keyData"#
            )),
        "{}",
        stderr_of(&out)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("prefix = \"registry.example.com/team\"\naction = \"reject\""),
        "{printed}"
    );
}

#[test]
fn broken_files_fail_on_one_line_naming_file_line_and_key() {
    // SITE-9
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (
            "a/registries.conf",
            "[[registry]]\nprefix = \"a.example.com\"\ninsecure = \"yes\"\n",
            "line 3: insecure",
        ),
        ("b/registries.conf", "[[registry]\nprefix = 1\n", "line 1"),
        (
            "c/registry.example.com/hosts.toml",
            "[host.\"https://m\"]\ncapabilities = \"pull\"\n",
            "line 2: capabilities",
        ),
        ("d/policy.json", "{\"default\": [", "line 1 column"),
        (
            "e/policy.json",
            r#"{"default": [{"type": "reject"}], "transports": {"docker": {"a.com": {}}}}"#,
            r#"transports.docker["a.com"]"#,
        ),
        (
            "f/registries.conf",
            "[registries.search]\nregistries = [\"docker.io\"]\n",
            "version 1",
        ),
    ];
    for (rel, text, want) in cases {
        let path = write(dir.path(), rel, text);
        let out = output(ferry(root.path()).args(["config", "import"]).arg(&path));
        assert_eq!(out.status.code(), Some(1), "{rel}");
        let err = stderr_of(&out);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(want),
            "{rel}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{rel}: {err}");
    }
}

#[test]
fn explain_names_the_host_really_contacted_and_pull_mentions_a_next_source_only_if_any() {
    // SITE-7, SITE-4
    let root = tempfile::tempdir().unwrap();
    let explain = run_ok(ferry(root.path()).args(["config", "explain", "busybox"]));
    assert!(
        explain.contains("https://registry-1.docker.io/v2/library/busybox"),
        "{explain}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (closed_port().unwrap(), closed_port().unwrap());
    let config = |sources: &str| {
        write(
            dir.path(),
            "sites.toml",
            &format!(
                "[[route]]\nprefix = \"registry.example.com\"\nsources = [{sources}]\n\
                 [source.a]\ndriver = \"registry\"\nurl = \"http://127.0.0.1:{a}\"\n\
                 [source.b]\ndriver = \"registry\"\nurl = \"http://127.0.0.1:{b}\"\n"
            ),
        )
    };
    let pull = |sites: &Path| {
        output(
            ferry(root.path())
                .arg("--config")
                .arg(sites)
                .args(["pull", "registry.example.com/app:1"]),
        )
    };
    let one = pull(&config("\"a\""));
    assert_eq!(one.status.code(), Some(1));
    assert!(
        !stderr_of(&one).contains("trying the next source"),
        "{}",
        stderr_of(&one)
    );
    let two = pull(&config("\"a\", \"b\""));
    assert_eq!(two.status.code(), Some(1));
    assert_eq!(
        stderr_of(&two).matches("trying the next source").count(),
        1,
        "{}",
        stderr_of(&two)
    );
}

//! `ferry pull` end to end against a real registry (CNCF distribution), with fixture images
//! pushed by skopeo. Spec: specs/store.md; issue "Verified store and registry pull".

use std::path::Path;
use std::process::{Command, Stdio};

use ferry_testkit::fixtures::{Fixtures, APP, BIG, BUSYBOX, INDEX};
use ferry_testkit::proxy::Proxy;
use ferry_testkit::registry::{closed_port, flip_bytes, Registry, RegistryOptions};
use ferry_testkit::{ferry, output, output_with_stdin, run_ok, spawn_pull_until_partly_in};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// Last line of stdout, which `ferry pull` keeps for `NAME@DIGEST`.
fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

fn images(root: &Path) -> Vec<serde_json::Value> {
    let out = run_ok(ferry(root).args(["images", "--json"]));
    json(&out).as_array().expect("array").clone()
}

fn committed_blobs(root: &Path) -> Vec<String> {
    let dir = root.join("blobs/sha256");
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn layer_digests(fixtures: &Fixtures, tag: &str) -> Vec<String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&fixtures.blob(&fixtures.digest(tag))).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pull_stores_image_under_its_name_and_prints_name_at_digest() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &reg.host(), "team/busybox:1", false, None);
    let root = tempfile::tempdir().unwrap();
    let name = format!("{}/team/busybox", reg.host());

    let out = run_ok(ferry(root.path()).args(["pull", &format!("{name}:1")]));
    assert_eq!(last_line(&out), format!("{name}@{digest}"));

    let list = images(root.path());
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], name.as_str());
    assert_eq!(list[0]["tag"], "1");
    assert_eq!(list[0]["digest"], digest.as_str());
    assert_eq!(list[0]["platform"], "linux/amd64");
    // The exact manifest bytes are kept.
    let raw = output(ferry(root.path()).args(["inspect", "--raw", &format!("{name}:1")]));
    assert_eq!(raw.stdout, fx.blob(&digest));
    // Every layer is committed under its digest; nothing is left in ingest.
    let blobs = committed_blobs(root.path());
    for layer in layer_digests(&fx, BUSYBOX) {
        assert!(
            blobs.contains(&layer[7..].to_string()),
            "{layer} missing from {blobs:?}"
        );
    }
    let table = run_ok(ferry(root.path()).arg("images"));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&digest[7..19]), "{table}");
}

#[test]
fn pull_docker_schema2_image() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(APP, &reg.host(), "team/app:v2s2", true, None);
    let root = tempfile::tempdir().unwrap();
    let name = format!("{}/team/app", reg.host());
    let out = run_ok(ferry(root.path()).args(["pull", &format!("{name}:v2s2")]));
    assert_eq!(last_line(&out), format!("{name}@{digest}"));
    let list = images(root.path());
    assert_eq!(
        list[0]["media_type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn pull_index_picks_host_platform_or_the_one_asked_for() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(INDEX, &reg.host(), "multi:1", false, None);
    let name = format!("{}/multi:1", reg.host());

    let host_root = tempfile::tempdir().unwrap();
    let out = run_ok(ferry(host_root.path()).args(["pull", &name]));
    assert!(last_line(&out).ends_with(&digest), "{out}");
    assert_eq!(images(host_root.path())[0]["platform"], "linux/amd64");

    let arm_root = tempfile::tempdir().unwrap();
    run_ok(ferry(arm_root.path()).args(["pull", "--platform", "linux/arm64/v8", &name]));
    assert_eq!(images(arm_root.path())[0]["platform"], "linux/arm64/v8");
    let inspect = json(&run_ok(ferry(arm_root.path()).args(["inspect", &name])));
    assert_eq!(inspect["config"]["architecture"], "arm64");

    let none = output(ferry(tempfile::tempdir().unwrap().path()).args([
        "pull",
        "--platform",
        "linux/s390x",
        &name,
    ]));
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr_of(&none).contains("linux/s390x"),
        "{}",
        stderr_of(&none)
    );
}

#[test]
fn repull_of_present_image_transfers_nothing() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(APP, &reg.host(), "app:1", false, None);
    let root = tempfile::tempdir().unwrap();
    let name = format!("{}/app:1", reg.host());
    run_ok(ferry(root.path()).args(["pull", &name]));
    let events = run_ok(ferry(root.path()).args(["pull", "--json", &name]));
    let done = events
        .lines()
        .map(json)
        .find(|e| e["event"] == "done")
        .expect("done event");
    assert_eq!(done["transferred"], 0, "{events}");
    assert!(
        events.lines().map(json).all(|e| e["event"] != "blob-start"),
        "{events}"
    );
}

#[test]
fn tampered_layer_in_registry_is_rejected_and_nothing_of_it_is_kept() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "bad:1", false, None);
    let layer = layer_digests(&fx, BUSYBOX).remove(0);
    flip_bytes(&reg.blob_data_path(&layer)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = output(ferry(root.path()).args(["pull", &format!("{}/bad:1", reg.host())]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&layer) && err.contains("digest mismatch"),
        "{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("ferry: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(
        errors[0].contains(&layer) && errors[0].contains("digest mismatch"),
        "{err}"
    );
    assert!(!committed_blobs(root.path()).contains(&layer[7..].to_string()));
    assert!(images(root.path()).is_empty());
}

#[test]
fn truncated_layer_is_rejected_by_size() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "short:1", false, None);
    let layer = layer_digests(&fx, BUSYBOX).remove(0);
    let path = reg.blob_data_path(&layer);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = output(ferry(root.path()).args(["pull", &format!("{}/short:1", reg.host())]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains(&layer), "{err}");
    assert!(!committed_blobs(root.path()).contains(&layer[7..].to_string()));
    assert!(images(root.path()).is_empty());
}

#[test]
fn missing_blob_and_unknown_tag_say_not_found() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "gone:1", false, None);
    let layer = layer_digests(&fx, BUSYBOX).remove(0);
    std::fs::remove_file(reg.blob_data_path(&layer)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = output(ferry(root.path()).args(["pull", &format!("{}/gone:1", reg.host())]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains(&layer), "{}", stderr_of(&out));
    assert!(images(root.path()).is_empty());

    let name = format!("{}/gone:nope", reg.host());
    let out = output(ferry(root.path()).args(["pull", &name]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains(&format!("not found: {}/gone:nope", reg.host())),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn unknown_layer_media_type_is_refused_before_transfer() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "weird:base", false, None);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fx.blob(&fx.digest(BUSYBOX))).unwrap();
    manifest["layers"][0]["mediaType"] = "application/x-unknown-layer".into();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&manifest).unwrap()).unwrap();
    run_ok(Command::new("curl").args([
        "-fsS",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("{}/v2/weird/manifests/odd", reg.url()),
    ]));
    let root = tempfile::tempdir().unwrap();
    let out = output(ferry(root.path()).args(["pull", &format!("{}/weird:odd", reg.host())]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("application/x-unknown-layer"),
        "{}",
        stderr_of(&out)
    );
    assert!(images(root.path()).is_empty());
}

#[test]
fn auth_required_names_host_and_login_then_login_works() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::basic("alice", "s3cret")).unwrap();
    fx.push(
        BUSYBOX,
        &reg.host(),
        "private/bb:1",
        false,
        Some(("alice", "s3cret")),
    );
    let root = tempfile::tempdir().unwrap();
    let docker = tempfile::tempdir().unwrap();
    let name = format!("{}/private/bb:1", reg.host());

    let out = output(
        ferry(root.path())
            .env("DOCKER_CONFIG", docker.path())
            .args(["pull", &name]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&reg.host()) && err.contains("ferry login"),
        "{err}"
    );

    // Wrong password: refused, nothing saved.
    let mut login = ferry(root.path());
    login
        .env("DOCKER_CONFIG", docker.path())
        .args(["login", &reg.host(), "-u", "alice"]);
    let bad = output_with_stdin(&mut login, "wrong\n");
    assert_eq!(bad.status.code(), Some(1));
    assert!(!docker.path().join("config.json").exists());

    let mut login = ferry(root.path());
    login
        .env("DOCKER_CONFIG", docker.path())
        .args(["login", &reg.host(), "-u", "alice"]);
    let good = output_with_stdin(&mut login, "s3cret\n");
    assert!(good.status.success(), "{}", stderr_of(&good));
    let out = run_ok(
        ferry(root.path())
            .env("DOCKER_CONFIG", docker.path())
            .args(["pull", &name]),
    );
    assert!(last_line(&out).starts_with(&reg.host()), "{out}");
}

#[test]
fn connection_refused_names_the_registry() {
    let port = closed_port().unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = output(ferry(root.path()).args(["pull", &format!("127.0.0.1:{port}/x:1")]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn bad_reference_names_the_bad_part() {
    let root = tempfile::tempdir().unwrap();
    let out = output(ferry(root.path()).args(["pull", "Reg.io/UPPER:tag"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("UPPER"), "{}", stderr_of(&out));
}

#[test]
fn killed_pull_resumes_from_offset() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BIG, &reg.host(), "big:1", false, None);
    let proxy = Proxy::start(&reg.host(), Some(2 << 20));
    let root = tempfile::tempdir().unwrap();

    let mut child = spawn_pull_until_partly_in(ferry(root.path()).args([
        "pull",
        "--json",
        &format!("{}/big:1", proxy.host()),
    ]));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        images(root.path()).is_empty(),
        "a killed pull names nothing"
    );

    let events =
        run_ok(ferry(root.path()).args(["pull", "--json", &format!("{}/big:1", proxy.host())]));
    let resumed: Vec<u64> = events
        .lines()
        .map(json)
        .filter(|e| e["event"] == "blob-start")
        .map(|e| e["resumed_from"].as_u64().unwrap())
        .collect();
    assert!(
        resumed.iter().any(|&r| r > 1 << 20),
        "no blob resumed: {events}"
    );
    let done = events
        .lines()
        .map(json)
        .find(|e| e["event"] == "done")
        .unwrap();
    assert!(
        done["transferred"].as_u64().unwrap() < done["size"].as_u64().unwrap(),
        "{done}"
    );
    assert_eq!(images(root.path()).len(), 1);
}

#[test]
fn gc_never_races_a_pull_in_progress() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BIG, &reg.host(), "big:1", false, None);
    let proxy = Proxy::start(&reg.host(), Some(4 << 20));
    let root = tempfile::tempdir().unwrap();
    let mut child = spawn_pull_until_partly_in(ferry(root.path()).args([
        "pull",
        "--json",
        &format!("{}/big:1", proxy.host()),
    ]));

    let refused = output(ferry(root.path()).args(["gc", "--no-wait"]));
    assert_eq!(
        refused.status.code(),
        Some(1),
        "gc --no-wait must refuse during a pull"
    );
    // A waiting gc runs after the pull and removes nothing the pull named.
    let gc = run_ok(ferry(root.path()).arg("gc"));
    assert!(child.wait().unwrap().success());
    assert!(gc.contains("freed"), "{gc}");
    let list = images(root.path());
    assert_eq!(list.len(), 1);
    let blobs = committed_blobs(root.path());
    for layer in layer_digests(&fx, BIG) {
        assert!(
            blobs.contains(&layer[7..].to_string()),
            "gc removed {layer}"
        );
    }
}

#[test]
fn two_processes_pulling_one_image_into_one_root_both_succeed() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BIG, &reg.host(), "big:1", false, None);
    let proxy = Proxy::start(&reg.host(), Some(16 << 20));
    let root = tempfile::tempdir().unwrap();
    let name = format!("{}/big:1", proxy.host());
    let a = ferry(root.path())
        .args(["pull", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = ferry(root.path())
        .args(["pull", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(last_line(&String::from_utf8_lossy(&out.stdout)).ends_with(&digest));
    }
    assert_eq!(images(root.path()).len(), 1);
    // Every committed blob hashes to its name.
    for hex in committed_blobs(root.path()) {
        let sum =
            run_ok(Command::new("sha256sum").arg(root.path().join("blobs/sha256").join(&hex)));
        assert!(sum.starts_with(&hex), "{hex}: {sum}");
    }
}

#[test]
fn rm_then_gc_frees_the_blobs_only_that_image_used() {
    // STORE-11, STORE-12: busybox and app share the busybox layer.
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "busybox:1", false, None);
    fx.push(APP, &reg.host(), "app:1", false, None);
    let root = tempfile::tempdir().unwrap();
    for name in ["busybox:1", "app:1"] {
        run_ok(ferry(root.path()).args(["pull", &format!("{}/{name}", reg.host())]));
    }
    let shared = layer_digests(&fx, BUSYBOX).remove(0);
    let app_only = layer_digests(&fx, APP).pop().unwrap();
    assert_ne!(shared, app_only);
    let out = run_ok(ferry(root.path()).args(["rm", &format!("{}/app:1", reg.host())]));
    assert!(out.contains("removed"), "{out}");
    let gc = json(&run_ok(ferry(root.path()).args(["gc", "--json"])));
    let removed: Vec<&str> = gc["removed_blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(removed.contains(&app_only.as_str()), "{gc}");
    assert!(!removed.contains(&shared.as_str()), "{gc}");
    let blobs = committed_blobs(root.path());
    assert!(
        blobs.contains(&shared[7..].to_string()) && !blobs.contains(&app_only[7..].to_string())
    );
    let missing = output(ferry(root.path()).args(["rm", &format!("{}/app:1", reg.host())]));
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(images(root.path()).len(), 1);
}

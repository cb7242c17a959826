//! Names apart from transports: the site config routes one name through registry, mirror,
//! s3 (distribution layout) and oci-layout sources, and the name never changes.
//! Spec: specs/site-config.md (SITE-1…7).

use std::path::Path;
use std::process::Command;

use ferry_testkit::fixtures::{Fixtures, APP, BUSYBOX};
use ferry_testkit::registry::{closed_port, flip_bytes, Registry, RegistryOptions};
use ferry_testkit::s3::{S3Registry, S3Server, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use ferry_testkit::{ferry, output, run_ok};

/// The name every test pulls: its host does not exist; only routes make it reachable.
const NAME: &str = "registry.example.com/team/app";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("sites.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Pulls NAME:1 through `config` into a fresh root; returns (root, printed line, images row).
fn pull_via(config: &Path) -> (tempfile::TempDir, String, serde_json::Value) {
    let root = tempfile::tempdir().unwrap();
    let out = run_ok(
        ferry(root.path())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .arg("--config")
            .arg(config)
            .args(["pull", &format!("{NAME}:1")]),
    );
    let images = json(&run_ok(ferry(root.path()).args(["images", "--json"])));
    let row = images[0].clone();
    (root, out.lines().last().unwrap_or("").to_string(), row)
}

fn route(sources: &str, extra: &str) -> String {
    format!("[[route]]\nprefix = \"registry.example.com/team\"\nsources = [{sources}]\n{extra}\n")
}

#[test]
fn one_name_through_every_driver_gives_one_digest_and_one_row() {
    // SITE-4, SITE-6
    let fx = Fixtures::get();
    let dir = tempfile::tempdir().unwrap();
    let origin = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &origin.host(), "team/app:1", false, None);

    // oci-layout: ref names are full image names.
    let layout = dir.path().join("usb");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--preserve-digests",
        &fx.oci_ref(BUSYBOX),
        &format!("oci:{}:{NAME}:1", layout.display()),
    ]));
    // s3, distribution layout: a registry writes the bucket, then stops.
    let s3 = S3Server::start().unwrap();
    let s3_registry = S3Registry::start(&s3, "registry-bucket", "").unwrap();
    fx.push(BUSYBOX, &s3_registry.host(), "team/app:1", false, None);
    s3_registry.stop();

    let configs = [
        (
            "registry",
            format!(
                "{}[source.origin]\ndriver = \"registry\"\nurl = \"{}\"\n",
                route("\"origin\"", ""),
                origin.url()
            ),
        ),
        (
            "mirror",
            format!(
                "{}[source.lan]\ndriver = \"mirror\"\nendpoints = [\"http://127.0.0.1:{}\", \"{}\"]\n",
                route("\"lan\"", ""),
                closed_port().unwrap(),
                origin.url()
            ),
        ),
        (
            "oci-layout",
            format!(
                "{}[source.usb]\ndriver = \"oci-layout\"\npath = \"{}\"\n",
                route("\"usb\"", ""),
                layout.display()
            ),
        ),
        (
            "s3 distribution",
            format!(
                "{}[source.bucket]\ndriver = \"s3\"\nbucket = \"registry-bucket\"\nendpoint = \"{}\"\nlayout = \"distribution\"\n",
                route("\"bucket\"", ""),
                s3.endpoint()
            ),
        ),
    ];
    let mut rows = Vec::new();
    for (driver, text) in configs {
        let config = write_config(&tempfile::tempdir_in(dir.path()).unwrap().keep(), &text);
        let (_root, printed, row) = pull_via(&config);
        assert_eq!(printed, format!("{NAME}@{digest}"), "via {driver}");
        rows.push((driver, row));
    }
    for (driver, row) in &rows[1..] {
        for key in ["name", "tag", "digest", "size", "platform", "created"] {
            assert_eq!(row[key], rows[0].1[key], "{key} differs via {driver}");
        }
    }
}

#[test]
fn dead_then_tampered_source_falls_through_to_the_good_one() {
    // SITE-4: Unavailable and Corrupt move on; corrupt bytes are never kept.
    let fx = Fixtures::get();
    let bad = Registry::start(RegistryOptions::open()).unwrap();
    let good = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &good.host(), "team/app:1", false, None);
    fx.push(BUSYBOX, &bad.host(), "team/app:1", false, None);
    let manifest: serde_json::Value = serde_json::from_slice(&fx.blob(&digest)).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    flip_bytes(&bad.blob_data_path(&layer)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[source.dead]\ndriver = \"registry\"\nurl = \"http://127.0.0.1:{}\"\n\
         [source.bad]\ndriver = \"registry\"\nurl = \"{}\"\n\
         [source.good]\ndriver = \"registry\"\nurl = \"{}\"\n",
        route("\"dead\", \"bad\", \"good\"", "resolve = [\"good\"]"),
        closed_port().unwrap(),
        bad.url(),
        good.url()
    );
    let config = write_config(dir.path(), &text);
    let root = tempfile::tempdir().unwrap();
    let out = output(
        ferry(root.path())
            .arg("--config")
            .arg(&config)
            .args(["pull", &format!("{NAME}:1")]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"dead\"") && stderr.contains("\"bad\""),
        "a warning per skipped source: {stderr}"
    );
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    let inspect = json(&run_ok(
        ferry(root.path()).args(["inspect", &format!("{NAME}:1")]),
    ));
    let served_by = inspect["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == layer.as_str())
        .map(|b| b["source"].clone())
        .unwrap();
    assert_eq!(served_by, "good", "{inspect}");
    assert_eq!(inspect["name"], NAME, "the name is never altered");

    // With only the dead and the bad source, the error lists each source's failure.
    let text = text.replace("\"dead\", \"bad\", \"good\"", "\"dead\", \"bad\"");
    let config = write_config(dir.path(), &text);
    let root = tempfile::tempdir().unwrap();
    let out = output(
        ferry(root.path())
            .arg("--config")
            .arg(&config)
            .args(["pull", &format!("{NAME}:1")]),
    );
    assert_eq!(out.status.code(), Some(1));
    let last = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    assert!(
        last.contains("\"dead\"") && last.contains("\"bad\"") && last.contains(&layer),
        "{last}"
    );
    let images = json(&run_ok(ferry(root.path()).args(["images", "--json"])));
    assert_eq!(images.as_array().unwrap().len(), 0);
    let blobs = root.path().join("blobs/sha256").join(&layer[7..]);
    assert!(!blobs.exists(), "corrupt bytes were kept");
}

#[test]
fn only_resolve_sources_answer_tags() {
    // SITE-5: a mirror that serves a different manifest under the tag cannot redirect it.
    let fx = Fixtures::get();
    let origin = Registry::start(RegistryOptions::open()).unwrap();
    let mirror = Registry::start(RegistryOptions::open()).unwrap();
    let wanted = fx.push(BUSYBOX, &origin.host(), "team/app:1", false, None);
    let other = fx.push(APP, &mirror.host(), "team/app:1", false, None);
    assert_ne!(wanted, other);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[source.mirror]\ndriver = \"registry\"\nurl = \"{}\"\n[source.origin]\ndriver = \"registry\"\nurl = \"{}\"\n",
        route("\"mirror\", \"origin\"", "resolve = [\"origin\"]"),
        mirror.url(),
        origin.url()
    );
    let (_root, printed, _) = pull_via(&write_config(dir.path(), &text));
    assert_eq!(printed, format!("{NAME}@{wanted}"));
    // Letting the mirror resolve too (it comes first) gives its manifest: the rule matters.
    let (_root, printed, _) = pull_via(&write_config(
        dir.path(),
        &text.replace("resolve = [\"origin\"]", ""),
    ));
    assert_eq!(printed, format!("{NAME}@{other}"));
}

#[test]
fn repository_rewrite_keeps_the_name() {
    // SITE-1: `repository = "mirror/{name}"`.
    let fx = Fixtures::get();
    let origin = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BUSYBOX, &origin.host(), "mirror/team/app:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[source.origin]\ndriver = \"registry\"\nurl = \"{}\"\nrepository = \"mirror/{{name}}\"\n",
        route("\"origin\"", ""),
        origin.url()
    );
    let (_root, printed, row) = pull_via(&write_config(dir.path(), &text));
    assert_eq!(printed, format!("{NAME}@{digest}"));
    assert_eq!(row["name"], NAME);
}

#[test]
fn config_check_names_file_and_line_and_explain_hides_secrets() {
    // SITE-3, SITE-7
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2-secret\n").unwrap();
    let good = format!(
        "{}[source.origin]\ndriver = \"registry\"\nurl = \"https://origin.example.com\"\n\
         repository = \"mirror/{{name}}\"\ncredentials = {{ username = \"bot\", password_file = \"{}\" }}\n\
         [source.usb]\ndriver = \"oci-layout\"\npath = \"/media/usb\"\n",
        route("\"usb\", \"origin\"", "resolve = [\"origin\"]"),
        pw.display()
    );
    let config = write_config(dir.path(), &good);
    let ok = run_ok(
        ferry(root.path())
            .arg("--config")
            .arg(&config)
            .args(["config", "check"]),
    );
    assert!(ok.contains(": ok"), "{ok}");
    let explain = run_ok(ferry(root.path()).arg("--config").arg(&config).args([
        "config",
        "explain",
        &format!("{NAME}:1"),
    ]));
    assert!(
        explain.contains("https://origin.example.com/v2/mirror/team/app"),
        "{explain}"
    );
    assert!(explain.contains("/media/usb"), "{explain}");
    assert!(
        explain.contains(&pw.display().to_string()) && !explain.contains("hunter2"),
        "{explain}"
    );
    assert!(
        explain.contains("[resolve, content]") && explain.contains("[content]"),
        "{explain}"
    );

    let broken = good.replace("path = \"/media/usb\"", "path = \"/media/usb\"\nspeed = 9");
    let config = write_config(dir.path(), &broken);
    let out = output(
        ferry(root.path())
            .arg("--config")
            .arg(&config)
            .args(["config", "check"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", config.display())) && err.contains("speed"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

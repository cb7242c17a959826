//! Across the air gap: `ferry save`/`ferry load` against skopeo's archives, two stores with
//! no network between them, incremental bundles, damaged archives, and `ferry push`/`ferry
//! copy` through a site config. Spec: specs/archive.md (ARC-n); issue "Across the air gap".

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_testkit::fixtures::{Fixtures, APP, BUSYBOX};
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::{ferry, output, run_ok};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry` on `root` with no user configuration (policy, site config) and an optional
/// `--config`.
fn fy(root: &Path, config: Option<&Path>) -> Command {
    let mut cmd = ferry(root);
    cmd.env("XDG_CONFIG_HOME", root.join("no-config"));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd
}

/// `ferry images --json` rows without their `updated` time.
fn rows(root: &Path) -> Vec<serde_json::Value> {
    json(&run_ok(fy(root, None).args(["images", "--json"])))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("updated");
            r
        })
        .collect()
}

/// Everything `ferry images --json` and `ferry store digests` say, and the partials left.
fn state(root: &Path) -> (String, String, Vec<String>) {
    let images = run_ok(fy(root, None).args(["images", "--json"]));
    let digests = run_ok(fy(root, None).args(["store", "digests"]));
    let mut partials: Vec<String> = ["ingest/sha256", "."]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).into_iter().flatten())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !matches!(n.as_str(), "blobs" | "ingest" | "gc.lock" | "open.lock")
                && !n.starts_with("metadata.db")
        })
        .collect();
    partials.sort();
    (images, digests, partials)
}

/// The digest stored under `reference` in `root`.
fn digest_of(root: &Path, reference: &str) -> String {
    let name = reference.rsplit_once(':').unwrap().0;
    let tag = reference.rsplit_once(':').unwrap().1;
    let list = json(&run_ok(fy(root, None).args(["images", "--json"])));
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name && r["tag"] == tag)
        .unwrap_or_else(|| panic!("{reference} not in {list}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn skopeo(args: &[&str]) -> String {
    run_ok(Command::new("skopeo").args(args))
}

/// The entries (path, size) of a plain tar file.
fn entries(path: &Path) -> Vec<(String, u64)> {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(file);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), e.size())
        })
        .collect()
}

/// A registry with fixture `tag` pushed as `repo:1` (digests kept); (registry, full name, digest).
fn registry_with(fx: &Fixtures, tag: &str, repo: &str) -> (Registry, String, String) {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(tag, &reg.host(), &format!("{repo}:1"), false, None);
    let name = format!("{}/{repo}:1", reg.host());
    (reg, name, digest)
}

/// Pipes `file` into `ferry load -i -` on `root`.
fn load_stdin(root: &Path, file: &Path) -> Output {
    let mut child = fy(root, None)
        .args(["load", "-i", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(file).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn skopeo_oci_and_docker_archives_load_with_skopeos_digests_arc_9_11_12() {
    let fx = Fixtures::get();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");

    // oci-archive with a full name: the same manifest digest skopeo reports.
    let oci = dir.path().join("busybox-oci.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        &fx.oci_ref(BUSYBOX),
        &format!("oci-archive:{}:docker.io/library/busybox:1", oci.display()),
    ]);
    let reported = json(&skopeo(&[
        "inspect",
        &format!("oci-archive:{}:docker.io/library/busybox:1", oci.display()),
    ]))["Digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run_ok(fy(&root, None).args(["load", "-i"]).arg(&oci));
    assert_eq!(
        out.trim(),
        format!("docker.io/library/busybox:1@{reported}")
    );
    assert_eq!(reported, fx.digest(BUSYBOX));

    // docker-archive: the same config (image ID) and the same layer diff IDs.
    let docker = dir.path().join("app-docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &fx.oci_ref(APP),
        &format!("docker-archive:{}:example.org/team/app:1", docker.display()),
    ]);
    let docker_ref = format!("docker-archive:{}", docker.display());
    let inspect = json(&skopeo(&["inspect", &docker_ref]));
    let raw = json(&skopeo(&["inspect", "--raw", &docker_ref]));
    run_ok(fy(&root, None).args(["load", "-i"]).arg(&docker));
    let stored = json(&run_ok(
        fy(&root, None).args(["inspect", "example.org/team/app:1"]),
    ));
    let layers: Vec<&str> = stored["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let diff_ids: Vec<&str> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, diff_ids);
    assert_eq!(
        stored["manifest"]["config"]["digest"],
        raw["config"]["digest"]
    );
    assert_eq!(stored["config"]["rootfs"]["diff_ids"], inspect["Layers"]);

    // The same docker archive gzip-compressed, from standard input: the same digest.
    let gz = dir.path().join("app-docker.tar.gz");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "gzip -c {} > {}",
        docker.display(),
        gz.display()
    )));
    let other = dir.path().join("other");
    let out = load_stdin(&other, &gz);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        digest_of(&other, "example.org/team/app:1"),
        digest_of(&root, "example.org/team/app:1")
    );

    // A plain tag (skopeo's oci-archive:FILE:TAG) needs --name.
    let plain = dir.path().join("plain.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        &fx.oci_ref(BUSYBOX),
        &format!("oci-archive:{}:v1", plain.display()),
    ]);
    let fresh = dir.path().join("fresh");
    let refused = output(fy(&fresh, None).args(["load", "-i"]).arg(&plain));
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--name"), "{}", stderr(&refused));
    let out = run_ok(
        fy(&fresh, None)
            .args(["load", "--name", "example.org/bb", "-i"])
            .arg(&plain),
    );
    assert_eq!(
        out.trim(),
        format!("example.org/bb:v1@{}", fx.digest(BUSYBOX))
    );
}

#[test]
fn ferry_oci_archive_goes_to_a_registry_with_skopeo_unchanged_arc_7() {
    let fx = Fixtures::get();
    let (reg, name, digest) = registry_with(&fx, APP, "team/app");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    run_ok(fy(&root, None).args(["pull", &name]));
    let file = dir.path().join("app-oci.tar");
    run_ok(
        fy(&root, None)
            .args(["save", "--format", "oci-archive", &name, "-o"])
            .arg(&file),
    );
    let dest = format!("docker://{}/copied/app:2", reg.host());
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}:{name}", file.display()),
        &dest,
    ]);
    let inspected = json(&skopeo(&["inspect", "--tls-verify=false", &dest]));
    assert_eq!(inspected["Digest"], digest.as_str());
    let original = json(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    assert_eq!(inspected["Layers"], original["Layers"]);
    assert_eq!(inspected["Env"], original["Env"]);
}

#[test]
fn ferry_docker_archive_is_read_by_skopeo_with_the_configs_diff_ids_arc_8() {
    let fx = Fixtures::get();
    let (_reg, name, _) = registry_with(&fx, APP, "team/app");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    run_ok(fy(&root, None).args(["pull", &name]));
    let file = dir.path().join("app-docker.tar");
    run_ok(
        fy(&root, None)
            .args(["save", "--format", "docker-archive", &name, "-o"])
            .arg(&file),
    );
    let stored = json(&run_ok(fy(&root, None).args(["inspect", &name])));
    let inspected = json(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", file.display()),
    ]));
    assert_eq!(inspected["Layers"], stored["config"]["rootfs"]["diff_ids"]);
    assert_eq!(
        inspected["RepoTags"],
        serde_json::json!([]),
        "skopeo lists no tags here"
    );
    // Each layer tar is uncompressed: its sha256 is its diff ID.
    for (path, _) in entries(&file) {
        if let Some(hex) = path.strip_suffix("/layer.tar") {
            let mut data = Vec::new();
            let mut archive = tar::Archive::new(std::fs::File::open(&file).unwrap());
            for e in archive.entries().unwrap() {
                let mut e = e.unwrap();
                if e.path().unwrap().to_string_lossy() == path {
                    e.read_to_end(&mut data).unwrap();
                }
            }
            assert_eq!(ferry_core::Digest::sha256(&data).hex(), hex);
        }
    }
    // And ferry loads it back under the same name, config and diff IDs.
    let other = dir.path().join("other");
    run_ok(fy(&other, None).args(["load", "-i"]).arg(&file));
    let back = json(&run_ok(fy(&other, None).args(["inspect", &name])));
    assert_eq!(back["config"], stored["config"]);
}

#[test]
fn two_stores_without_network_get_the_same_image_row_arc_2_10() {
    let fx = Fixtures::get();
    let (_reg, name, digest) = registry_with(&fx, BUSYBOX, "team/busybox");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(fy(&a, None).args(["pull", &name]));
    let file = dir.path().join("bundle.tar");
    run_ok(fy(&a, None).args(["save", &name, "-o"]).arg(&file));
    assert_eq!(entries(&file)[0].0, "ferry-archive.json");
    let out = run_ok(fy(&b, None).args(["load", "-i"]).arg(&file));
    let bare = name.rsplit_once(':').unwrap().0;
    assert_eq!(out.trim(), format!("{bare}:1@{digest}"));
    assert_eq!(rows(&a), rows(&b));
    // The same bytes again: the archive is reproducible.
    let again = dir.path().join("again.tar");
    run_ok(fy(&a, None).args(["save", &name, "-o"]).arg(&again));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // Through a pipe, zstd-compressed: the same.
    let c = dir.path().join("c");
    let piped = run_ok(Command::new("sh").arg("-c").arg(format!(
        "FERRY_ROOT={a} {f} save --zstd {name} -o - | FERRY_ROOT={c} {f} load -i -",
        a = a.display(),
        c = c.display(),
        f = ferry_testkit::ferry_bin().display()
    )));
    assert_eq!(piped.trim(), format!("{bare}:1@{digest}"));
    assert_eq!(rows(&a), rows(&c));
}

#[test]
fn an_incremental_bundle_carries_only_the_blobs_the_far_side_lacks_arc_6() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "team/busybox:1", false, None);
    fx.push(APP, &reg.host(), "team/app:1", false, None);
    let (busybox, app) = (
        format!("{}/team/busybox:1", reg.host()),
        format!("{}/team/app:1", reg.host()),
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(fy(&a, None).args(["pull", &busybox]));
    let first = dir.path().join("first.tar");
    run_ok(fy(&a, None).args(["save", &busybox, "-o"]).arg(&first));
    run_ok(fy(&b, None).args(["load", "-i"]).arg(&first));

    // The far side says what it has; the near side pulls a new image sharing the base layer.
    let have = dir.path().join("have.txt");
    std::fs::write(&have, run_ok(fy(&b, None).args(["store", "digests"]))).unwrap();
    run_ok(fy(&a, None).args(["pull", &app]));
    let full = dir.path().join("full.tar");
    run_ok(fy(&a, None).args(["save", &app, "-o"]).arg(&full));
    let inc = dir.path().join("inc.tar");
    run_ok(
        fy(&a, None)
            .args(["save", &app, "--exclude-digests"])
            .arg(&have)
            .arg("-o")
            .arg(&inc),
    );
    let have_text = std::fs::read_to_string(&have).unwrap();
    let blob_entries: Vec<(String, u64)> = entries(&inc)
        .into_iter()
        .filter(|(p, _)| p.starts_with("blobs/sha256/") && !p.ends_with('/'))
        .collect();
    // app's manifest, config and its own layer; not busybox's layer.
    assert_eq!(blob_entries.len(), 3, "{blob_entries:?}");
    for (p, _) in &blob_entries {
        let digest = format!("sha256:{}", p.rsplit('/').next().unwrap());
        assert!(!have_text.contains(&digest), "{digest} was in have.txt");
    }
    let (full_size, inc_size) = (
        std::fs::metadata(&full).unwrap().len(),
        std::fs::metadata(&inc).unwrap().len(),
    );
    assert!(
        inc_size * 10 < full_size,
        "incremental {inc_size} bytes vs full {full_size}"
    );
    let toc = json(
        &String::from_utf8(
            Command::new("tar")
                .arg("-xOf")
                .arg(&inc)
                .arg("ferry-archive.json")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap(),
    );
    assert_eq!(toc["excluded"].as_array().unwrap().len(), 1);

    run_ok(fy(&b, None).args(["load", "-i"]).arg(&inc));
    assert_eq!(rows(&a), rows(&b));
    // A store that lacks the excluded base layer refuses it at once, changing nothing.
    let c = dir.path().join("c");
    let before = state(&c);
    let out = output(fy(&c, None).args(["load", "-i"]).arg(&inc));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("leaves out blob"), "{}", stderr(&out));
    assert_eq!(state(&c), before);
}

#[test]
fn truncated_or_flipped_archives_fail_in_one_line_and_change_nothing_arc_10() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    fx.push(BUSYBOX, &reg.host(), "team/busybox:1", false, None);
    fx.push(APP, &reg.host(), "team/app:1", false, None);
    let (busybox, app) = (
        format!("{}/team/busybox:1", reg.host()),
        format!("{}/team/app:1", reg.host()),
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(fy(&a, None).args(["pull", &busybox]));
    run_ok(fy(&a, None).args(["pull", &app]));
    // B has busybox already, so a failed load has something to leave alone.
    let first = dir.path().join("first.tar");
    run_ok(fy(&a, None).args(["save", &busybox, "-o"]).arg(&first));
    run_ok(fy(&b, None).args(["load", "-i"]).arg(&first));
    let file = dir.path().join("app.tar");
    run_ok(fy(&a, None).args(["save", &app, "-o"]).arg(&file));
    let bytes = std::fs::read(&file).unwrap();
    let before = state(&b);

    let mut damaged: Vec<(&str, Vec<u8>)> = vec![
        ("half", bytes[..bytes.len() / 2].to_vec()),
        ("header", bytes[..700].to_vec()),
        ("last entry", bytes[..bytes.len() - 1536].to_vec()),
    ];
    // A flipped byte inside the last layer, and inside the table of contents' JSON.
    let mut flipped = bytes.clone();
    let at = bytes.len() - 4000;
    flipped[at] ^= 0x01;
    damaged.push(("flipped layer byte", flipped));
    let mut flipped = bytes.clone();
    flipped[520] ^= 0x01;
    damaged.push(("flipped TOC byte", flipped));
    for (what, data) in damaged {
        let path = dir.path().join("damaged.tar");
        std::fs::write(&path, &data).unwrap();
        let out = output(fy(&b, None).args(["load", "-i"]).arg(&path));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.starts_with("ferry: loading"), "{what}: {err}");
        assert_eq!(state(&b), before, "{what}: the store changed ({err})");
        // And through a pipe.
        let out = load_stdin(&b, &path);
        assert_eq!(out.status.code(), Some(1), "{what} (stdin)");
        assert_eq!(state(&b), before, "{what} (stdin)");
    }
}

#[test]
fn loading_the_same_archive_twice_changes_nothing_arc_13() {
    let fx = Fixtures::get();
    let (_reg, name, _) = registry_with(&fx, APP, "team/app");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(fy(&a, None).args(["pull", &name]));
    let file = dir.path().join("app.tar");
    run_ok(fy(&a, None).args(["save", &name, "-o"]).arg(&file));
    run_ok(fy(&b, None).args(["load", "-i"]).arg(&file));
    let before = state(&b);
    let out = output(fy(&b, None).args(["load", "-i"]).arg(&file));
    assert!(out.status.success());
    assert!(stderr(&out).contains("0 blobs added"), "{}", stderr(&out));
    assert_eq!(
        state(&b),
        before,
        "names (with their times) and blobs unchanged"
    );
}

/// A site config with an oci-layout source `usb` and a registry source `origin`, routing
/// `registry.example.com/team` through `sources`.
fn site(dir: &Path, reg: &Registry, sources: &str) -> PathBuf {
    let path = dir.join(format!(
        "sites-{}.toml",
        sources.replace(['"', ',', ' '], "")
    ));
    std::fs::write(
        &path,
        format!(
            "[[route]]\nprefix = \"registry.example.com/team\"\nsources = [{sources}]\n\n\
             [source.usb]\ndriver = \"oci-layout\"\npath = \"{}\"\n\n\
             [source.origin]\ndriver = \"registry\"\nurl = \"{}\"\n",
            dir.join("usb").display(),
            reg.url()
        ),
    )
    .unwrap();
    path
}

const NAME: &str = "registry.example.com/team/app:1";

#[test]
fn push_to_an_oci_layout_and_a_registry_then_pull_back_on_a_fresh_store() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The image arrives by archive under the name the site routes.
    let archive = dir.path().join("app.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        &fx.oci_ref(APP),
        &format!("oci-archive:{}:{NAME}", archive.display()),
    ]);
    let a = dir.path().join("a");
    run_ok(fy(&a, None).args(["load", "-i"]).arg(&archive));
    let digest = fx.digest(APP);

    let both = site(dir.path(), &reg, "\"usb\", \"origin\"");
    // Default: the route's first writable source (usb).
    let out = run_ok(fy(&a, Some(&both)).args(["push", NAME]));
    assert_eq!(out.trim(), format!("{NAME}@{digest}"));
    let out = run_ok(fy(&a, Some(&both)).args(["push", NAME, "--to", "origin"]));
    assert_eq!(out.trim(), format!("{NAME}@{digest}"));
    // Pushing again sends nothing.
    let again = output(fy(&a, Some(&both)).args(["push", NAME, "--to", "origin"]));
    assert!(
        stderr(&again).contains("0 blobs sent"),
        "{}",
        stderr(&again)
    );

    for only in ["\"usb\"", "\"origin\""] {
        let config = site(dir.path(), &reg, only);
        let fresh = tempfile::tempdir().unwrap();
        let out = run_ok(fy(fresh.path(), Some(&config)).args(["pull", NAME]));
        assert_eq!(
            out.lines().last().unwrap(),
            format!("registry.example.com/team/app@{digest}"),
            "through {only}"
        );
    }
    // skopeo sees the same digest in the registry.
    let inspected = json(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/team/app:1", reg.host()),
    ]));
    assert_eq!(inspected["Digest"], digest.as_str());

    let unknown = output(fy(&a, Some(&both)).args(["push", NAME, "--to", "nowhere"]));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no source named \"nowhere\""));
}

#[test]
fn copy_from_a_registry_to_an_oci_layout_keeps_the_digest() {
    let fx = Fixtures::get();
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(APP, &reg.host(), "team/app:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    let both = site(dir.path(), &reg, "\"origin\", \"usb\"");
    let root = dir.path().join("root");
    let out = run_ok(
        fy(&root, Some(&both)).args(["copy", NAME, NAME, "--from", "origin", "--to", "usb"]),
    );
    assert_eq!(out.trim(), format!("{NAME}@{digest}"));
    // Nothing went through the store.
    assert_eq!(run_ok(fy(&root, None).args(["store", "digests"])), "");
    // skopeo reads the layout; a fresh store pulls from it.
    let layout = dir.path().join("usb");
    let inspected = json(&skopeo(&[
        "inspect",
        &format!("oci:{}:{NAME}", layout.display()),
    ]));
    assert_eq!(inspected["Digest"], digest.as_str());
    let usb = site(dir.path(), &reg, "\"usb\"");
    let fresh = tempfile::tempdir().unwrap();
    let out = run_ok(fy(fresh.path(), Some(&usb)).args(["pull", NAME]));
    assert!(out.trim_end().ends_with(&digest), "{out}");
    // Without --from, the route's sources serve it; to another name in the same layout.
    let other = "registry.example.com/team/copy:2";
    let out = run_ok(fy(&root, Some(&both)).args(["copy", NAME, other, "--to", "usb"]));
    assert_eq!(out.trim(), format!("{other}@{digest}"));
}

#[test]
fn a_signed_image_crosses_with_its_signature_and_the_policy_decides_on_load_arc_5_10() {
    let fx = Fixtures::get();
    let (_reg, name, digest) = registry_with(&fx, BUSYBOX, "team/busybox");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    run_ok(fy(&a, None).args(["pull", &name]));
    for key in ["team", "other"] {
        run_ok(
            fy(&a, None)
                .args(["key", "generate", key, "--dir"])
                .arg(dir.path().join("keys")),
        );
    }
    run_ok(
        fy(&a, None)
            .args(["sign", &name, "--key"])
            .arg(dir.path().join("keys/team.key")),
    );
    let file = dir.path().join("signed.tar");
    let saved = output(fy(&a, None).args(["save", &name, "-o"]).arg(&file));
    assert!(
        stderr(&saved).contains("1 signatures"),
        "{}",
        stderr(&saved)
    );
    let host = name.split('/').next().unwrap();
    let policy = |key: &str| {
        let path = dir.path().join(format!("policy-{key}.toml"));
        std::fs::write(
            &path,
            format!(
                "[default]\naction = \"reject\"\n\n[[rule]]\nprefix = \"{host}/team\"\naction = \"signed-by\"\nkeys = [\"keys/{key}.pub\"]\n"
            ),
        )
        .unwrap();
        path
    };
    // Trusting `team`: loaded, and verified from the store alone.
    let b = dir.path().join("b");
    let out = run_ok(
        fy(&b, None)
            .arg("--policy")
            .arg(policy("team"))
            .args(["load", "-i"])
            .arg(&file),
    );
    assert!(out.contains(&digest), "{out}");
    let verified = json(&run_ok(
        fy(&b, None)
            .arg("--policy")
            .arg(policy("team"))
            .args(["images", "--json"]),
    ));
    assert!(
        verified[0]["verified"]
            .as_str()
            .unwrap()
            .starts_with("signed:"),
        "{verified}"
    );
    // Trusting only `other`: refused whole, nothing named, no blob kept.
    let c = dir.path().join("c");
    let before = state(&c);
    let out = output(
        fy(&c, None)
            .arg("--policy")
            .arg(policy("other"))
            .args(["load", "-i"])
            .arg(&file),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing was loaded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&c), before);
}

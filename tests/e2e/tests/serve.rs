//! `ferry serve` end to end with real clients (skopeo, curl, containerd's ctr) and the peer
//! driver between `ferry serve` nodes. Specs: specs/serve.md (SERVE-n), specs/peer.md (PEER-n).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_drivers::sources::peer::{rank, relay_owner, RELAY_EXTENT};
use ferry_testkit::clients::{installed, Containerd};
use ferry_testkit::fixtures::{Fixtures, APP, BIG, BUSYBOX, INDEX};
use ferry_testkit::proxy::Proxy;
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::serve::{tamper_blob, ServeNode};
use ferry_testkit::{ferry, free_port, output, run_ok};

/// The name the peer tests pull: only routes make its host reachable.
const NAME: &str = "registry.example.com/team/app";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn images(root: &Path) -> Vec<serde_json::Value> {
    json(&run_ok(ferry(root).args(["images", "--json"])))
        .as_array()
        .expect("array")
        .clone()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A registry with fixtures pushed as `team/<tag>:1`, pulled into a fresh store root.
struct Pulled {
    _registry: Registry,
    root: tempfile::TempDir,
    digests: Vec<(&'static str, String)>,
}

fn pulled(tags: &[&'static str]) -> Pulled {
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for &tag in tags {
        let digest = fx.push(tag, &registry.host(), &format!("team/{tag}:1"), false, None);
        run_ok(ferry(root.path()).args(["pull", &format!("{}/team/{tag}:1", registry.host())]));
        digests.push((tag, digest));
    }
    Pulled {
        _registry: registry,
        root,
        digests,
    }
}

/// The manifest digest skopeo sees at `docker://REF` (sha256 of the raw bytes).
fn raw_digest(reference: &str, extra: &[&str]) -> String {
    let raw = output(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(extra)
            .arg(format!("docker://{reference}")),
    );
    assert!(
        raw.status.success(),
        "skopeo inspect {reference}: {}",
        stderr_of(&raw)
    );
    ferry_core::Digest::sha256(&raw.stdout).to_string()
}

/// `curl -s -i [ARGS] URL`: (status, headers in lower case, body).
fn curl(args: &[&str], url: &str) -> (u16, String, Vec<u8>) {
    let out = output(
        Command::new("curl")
            .args(["-s", "-i", "-k"])
            .args(args)
            .arg(url),
    );
    assert!(out.status.success(), "curl {url}: {}", stderr_of(&out));
    let text = out.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&text[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, text[split + 4..].to_vec())
}

fn error_code(body: &[u8]) -> String {
    json(&String::from_utf8_lossy(body))["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn skopeo_pulls_from_ferry_serve_with_identical_digests() {
    // SERVE-1..4: exact manifest bytes, blobs verified by skopeo itself.
    let p = pulled(&[BUSYBOX, APP, INDEX]);
    let node = ServeNode::start(p.root.path(), &[]).unwrap();
    let (status, head, _) = curl(&[], &format!("{}/v2/", node.url()));
    assert_eq!(status, 200);
    assert!(
        head.contains("docker-distribution-api-version: registry/2.0"),
        "{head}"
    );
    for (tag, digest) in &p.digests {
        let reference = format!("{}/team/{tag}:1", node.host());
        assert_eq!(&raw_digest(&reference, &[]), digest, "{tag}");
        let dir = tempfile::tempdir().unwrap();
        let dest = format!("oci:{}:x", dir.path().join("oci").display());
        run_ok(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &dest,
        ]));
        let index = json(&std::fs::read_to_string(dir.path().join("oci/index.json")).unwrap());
        let copied = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        if *tag == INDEX {
            // Without --all skopeo copies this host's image out of the index.
            let list = json(&String::from_utf8_lossy(&Fixtures::get().blob(digest)));
            assert!(
                list["manifests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["digest"] == copied.as_str()),
                "{copied} not in the index"
            );
        } else {
            assert_eq!(&copied, digest, "{tag}");
        }
    }
    let (_, _, body) = curl(&[], &format!("{}/v2/_catalog", node.url()));
    assert_eq!(
        json(&String::from_utf8_lossy(&body))["repositories"],
        serde_json::json!(["team/app", "team/busybox", "team/multi"])
    );
    let (_, _, body) = curl(&[], &format!("{}/v2/team/app/tags/list", node.url()));
    assert_eq!(
        json(&String::from_utf8_lossy(&body))["tags"],
        serde_json::json!(["1"])
    );
}

#[test]
fn ctr_pulls_from_ferry_serve() {
    // SERVE-3, SERVE-4 with containerd's resolver and fetcher.
    if !installed("containerd") {
        eprintln!("containerd is not installed: skipping ctr_pulls_from_ferry_serve");
        return;
    }
    let p = pulled(&[BUSYBOX]);
    let node = ServeNode::start(p.root.path(), &[]).unwrap();
    let ctr = Containerd::start();
    let reference = format!("{}/team/busybox:1", node.host());
    let pull = output(
        ctr.ctr()
            .args(["images", "pull", "--plain-http", &reference]),
    );
    assert!(
        pull.status.success(),
        "ctr pull: {}{}",
        String::from_utf8_lossy(&pull.stdout),
        stderr_of(&pull)
    );
    let list = run_ok(ctr.ctr().args(["images", "ls"]));
    assert!(list.contains(&p.digests[0].1), "{list}");
}

#[test]
fn skopeo_pushes_and_ferry_images_lists_the_same_digests() {
    // SERVE-9..12: uploads through the verified ingest; manifests name images.
    let fx = Fixtures::get();
    let root = tempfile::tempdir().unwrap();
    let node = ServeNode::start(root.path(), &["--allow-push"]).unwrap();
    for tag in [BUSYBOX, APP, BIG, INDEX] {
        fx.push(tag, &node.host(), &format!("team/{tag}:1"), false, None);
    }
    let listed = images(root.path());
    for tag in [BUSYBOX, APP, BIG, INDEX] {
        let row = listed
            .iter()
            .find(|r| r["name"] == format!("localhost/team/{tag}").as_str() && r["tag"] == "1")
            .unwrap_or_else(|| panic!("no localhost/team/{tag}:1 in {listed:?}"));
        assert_eq!(row["digest"], fx.digest(tag).as_str(), "{tag}");
        // And they come back byte for byte.
        assert_eq!(
            raw_digest(&format!("{}/team/{tag}:1", node.host()), &[]),
            fx.digest(tag)
        );
    }
    // A whole index comes back with --all.
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/team/{INDEX}:1", node.host()),
        &format!("oci:{}:x", dir.path().display()),
    ]));
    // Nothing is left in the spool or half-ingested.
    let spool = std::fs::read_dir(root.path().join("serve/uploads"))
        .unwrap()
        .count();
    assert_eq!(spool, 0);
}

#[test]
fn read_only_serve_refuses_pushes_with_a_clear_error() {
    // SERVE-9
    let fx = Fixtures::get();
    let p = pulled(&[BUSYBOX]);
    let node = ServeNode::start(p.root.path(), &[]).unwrap();
    let push = output(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &fx.oci_ref(APP),
        &format!("docker://{}/team/app:2", node.host()),
    ]));
    assert!(!push.status.success());
    assert!(
        stderr_of(&push).contains("read-only"),
        "{}",
        stderr_of(&push)
    );
    let (status, _, body) = curl(
        &["-X", "POST"],
        &format!("{}/v2/team/busybox/blobs/uploads/", node.url()),
    );
    assert_eq!(status, 405);
    assert_eq!(error_code(&body), "UNSUPPORTED");
    assert_eq!(images(p.root.path()).len(), 1, "nothing was named");
}

#[test]
fn ranged_blob_gets_answer_206_with_content_range() {
    // SERVE-4
    let p = pulled(&[BIG]);
    let node = ServeNode::start(p.root.path(), &[]).unwrap();
    let fx = Fixtures::get();
    let manifest = json(&String::from_utf8_lossy(&fx.blob(&p.digests[0].1)));
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = fx.blob(&layer);
    let url = format!("{}/v2/team/big/blobs/{layer}", node.url());

    let (status, head, body) = curl(&["-H", "Range: bytes=1000-4095"], &url);
    assert_eq!(status, 206);
    assert!(
        head.contains(&format!("content-range: bytes 1000-4095/{}", bytes.len())),
        "{head}"
    );
    assert_eq!(body, bytes[1000..4096]);
    let (status, _, body) = curl(&["-H", "Range: bytes=-10"], &url);
    assert_eq!((status, body.as_slice()), (206, &bytes[bytes.len() - 10..]));
    let (status, head, _) = curl(&["-I"], &url);
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("content-length: {}", bytes.len())),
        "{head}"
    );
    assert!(
        head.contains(&format!("docker-content-digest: {layer}")),
        "{head}"
    );
    let (status, head, _) = curl(&["-H", &format!("Range: bytes={}-", bytes.len())], &url);
    assert_eq!(status, 416);
    assert!(
        head.contains(&format!("content-range: bytes */{}", bytes.len())),
        "{head}"
    );
    let (status, _, body) = curl(&[], &url);
    assert_eq!((status, body.len()), (200, bytes.len()));
    assert!(body == bytes);
}

#[test]
fn unknown_names_tags_and_blobs_are_404_with_oci_errors() {
    // SERVE-2, SERVE-8
    let p = pulled(&[BUSYBOX]);
    let node = ServeNode::start(p.root.path(), &[]).unwrap();
    let missing = format!("sha256:{}", "0".repeat(64));
    for (path, code) in [
        ("/v2/team/nothing/manifests/1".to_string(), "NAME_UNKNOWN"),
        ("/v2/team/nothing/tags/list".to_string(), "NAME_UNKNOWN"),
        (
            "/v2/team/busybox/manifests/2".to_string(),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/team/busybox/manifests/{missing}"),
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/team/busybox/blobs/{missing}"), "BLOB_UNKNOWN"),
    ] {
        let (status, head, body) = curl(&[], &format!("{}{path}", node.url()));
        assert_eq!(status, 404, "{path}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(error_code(&body), code, "{path}");
    }
    let (status, _, body) = curl(&[], &format!("{}/v2/Team/x/manifests/1", node.url()));
    assert_eq!((status, error_code(&body).as_str()), (400, "NAME_INVALID"));
}

#[test]
fn htpasswd_auth_answers_401_without_credentials() {
    // SERVE-13
    let p = pulled(&[BUSYBOX]);
    let htpasswd = p.root.path().join("htpasswd");
    let line = run_ok(Command::new("htpasswd").args(["-Bbn", "alice", "s3cret"]));
    std::fs::write(&htpasswd, line).unwrap();
    let node =
        ServeNode::start(p.root.path(), &["--htpasswd", htpasswd.to_str().unwrap()]).unwrap();
    let (status, head, body) = curl(&[], &format!("{}/v2/", node.url()));
    assert_eq!(status, 401);
    assert!(
        head.contains("www-authenticate: basic realm=\"ferry\""),
        "{head}"
    );
    assert_eq!(error_code(&body), "UNAUTHORIZED");
    let (status, _, _) = curl(
        &["-u", "alice:wrong"],
        &format!("{}/v2/_catalog", node.url()),
    );
    assert_eq!(status, 401);
    let (status, _, _) = curl(
        &["-u", "alice:s3cret"],
        &format!("{}/v2/_catalog", node.url()),
    );
    assert_eq!(status, 200);
    let reference = format!("{}/team/busybox:1", node.host());
    let anonymous = output(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    assert!(!anonymous.status.success());
    assert_eq!(
        raw_digest(&reference, &["--creds", "alice:s3cret"]),
        p.digests[0].1
    );
}

#[test]
fn tls_serves_https() {
    // SERVE-14
    let p = pulled(&[BUSYBOX]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    let node = ServeNode::start(
        p.root.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(node.url().starts_with("https://"), "{}", node.url());
    let (status, _, _) = curl(
        &["--cacert", cert.to_str().unwrap()],
        &format!("{}/v2/", node.url()),
    );
    assert_eq!(status, 200);
    assert_eq!(
        raw_digest(&format!("{}/team/busybox:1", node.host()), &[]),
        p.digests[0].1
    );
}

// ---- peers ----

/// A site config routing `registry.example.com/team` through `sources`, with a peer source
/// over `peers` and the registry `origin`.
fn peer_config(dir: &Path, sources: &str, peers: &[String], origin: &str) -> PathBuf {
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        "[[route]]\nprefix = \"registry.example.com/team\"\nsources = [{sources}]\n\n\
         [source.peers]\ndriver = \"peer\"\npeers = [{}]\n\n\
         [source.origin]\ndriver = \"registry\"\nurl = \"{origin}\"\n",
        peers.join(", ")
    );
    let path = dir.join(format!("sites-{}.toml", free_port()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Pulls `NAME:1` into `root` through `config`.
fn pull_with(root: &Path, config: &Path) -> std::process::Output {
    output(
        ferry(root)
            .arg("--config")
            .arg(config)
            .args(["pull", &format!("{NAME}:1")]),
    )
}

/// Fixture `tag` at a registry as `team/app:1`, and `n` store roots that hold it (pulled
/// straight from the registry).
fn holders(tag: &str, n: usize) -> (Registry, String, tempfile::TempDir, Vec<PathBuf>) {
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(tag, &registry.host(), "team/app:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    let direct = peer_config(
        dir.path(),
        "\"origin\"",
        &["http://127.0.0.1:1".into()],
        &registry.url(),
    );
    let roots: Vec<PathBuf> = (0..n)
        .map(|i| {
            let root = dir.path().join(format!("holder{i}"));
            let out = pull_with(&root, &direct);
            assert!(out.status.success(), "{}", stderr_of(&out));
            root
        })
        .collect();
    (registry, digest, dir, roots)
}

#[test]
fn pull_through_peers_survives_a_dead_peer() {
    // PEER-5: a dead peer costs one short timeout; the live one serves everything.
    let (registry, digest, dir, roots) = holders(BIG, 2);
    let mut dead = ServeNode::start(&roots[0], &[]).unwrap();
    let live = ServeNode::start(&roots[1], &[]).unwrap();
    let dead_url = dead.url().to_string();
    dead.kill();
    let origin = Proxy::start(&registry.host(), None);
    let config = peer_config(
        dir.path(),
        "\"peers\", \"origin\"",
        &[dead_url, live.url().to_string()],
        &format!("http://{}", origin.host()),
    );
    let root = dir.path().join("puller");
    let started = Instant::now();
    let out = pull_with(&root, &config);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(images(&root)[0]["digest"], digest.as_str());
    // Only the tag went to the origin (peers never resolve unsigned tags): no blob did.
    assert!(
        origin.served_bytes() < 64 << 10,
        "origin sent {} bytes",
        origin.served_bytes()
    );
}

#[test]
fn tampered_peer_is_excluded_and_the_pull_completes() {
    // PEER-3, PEER-4: a wrong piece is caught against the BLAKE3 table and fetched from the
    // other holder; a wrong small blob is caught against its digest; a node that finds its
    // own copy corrupt refuses to announce a table for it.
    let fx = Fixtures::get();
    let (registry, digest, dir, roots) = holders(BIG, 2);
    let nodes = [
        ServeNode::start(&roots[0], &[]).unwrap(),
        ServeNode::start(&roots[1], &[]).unwrap(),
    ];
    let labels: Vec<&str> = nodes.iter().map(|n| n.url()).collect();
    let manifest = json(&String::from_utf8_lossy(&fx.blob(&digest)));
    let layer = |i: usize| {
        ferry_core::Digest::parse(manifest["layers"][i]["digest"].as_str().unwrap()).unwrap()
    };
    let (small, large) = (layer(0), layer(1));
    // The node asked first for piece 0 of the large layer announces the table of the right
    // bytes, then its bytes change at rest.
    let bad_large = rank(&labels, &large, 0)[0];
    let (status, _, _) = curl(
        &[],
        &format!("{}/ferry/v1/pieces/{large}", nodes[bad_large].url()),
    );
    assert_eq!(status, 200);
    let mut bytes = fx.blob(&large.to_string());
    bytes[100] ^= 0xff;
    tamper_blob(&roots[bad_large], &large, &bytes);
    // The node asked first for the small layer holds wrong bytes for it.
    let bad_small = rank(&labels, &small, 0)[0];
    let mut bytes = fx.blob(&small.to_string());
    bytes[100] ^= 0xff;
    tamper_blob(&roots[bad_small], &small, &bytes);

    let origin = Proxy::start(&registry.host(), None);
    let config = peer_config(
        dir.path(),
        "\"peers\", \"origin\"",
        &labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        &format!("http://{}", origin.host()),
    );
    let root = dir.path().join("puller");
    let out = pull_with(&root, &config);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(images(&root)[0]["digest"], digest.as_str());
    for (bad, blob) in [(bad_large, &large), (bad_small, &small)] {
        let line = format!("excluding peer {} for {blob}", labels[bad]);
        assert!(err.contains(&line), "no {line:?} in: {err}");
    }
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(
        origin.served_bytes() < 64 << 10,
        "origin sent {}",
        origin.served_bytes()
    );
    // Asked for a table now, the node finds its small layer corrupt and refuses it.
    let (status, _, body) = curl(
        &[],
        &format!("{}/ferry/v1/pieces/{small}", nodes[bad_small].url()),
    );
    assert_eq!((status, error_code(&body).as_str()), (500, "BLOB_CORRUPT"));
    let (status, _, _) = curl(
        &[],
        &format!("{}/v2/team/app/blobs/{small}", nodes[bad_small].url()),
    );
    assert_eq!(status, 500, "a blob known corrupt is never served again");
}

/// `n` relaying nodes (`ferry serve --relay`, each on its own root and port) sharing one
/// site config that routes `NAME` through `["peers", "origin"]`, the origin being the
/// registry behind `origin` (a counting proxy).
struct Swarm {
    nodes: Vec<ServeNode>,
    roots: Vec<PathBuf>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Swarm {
    fn start(n: usize, origin: &Proxy) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let config = peer_config(
            dir.path(),
            "\"peers\", \"origin\"",
            &urls,
            &format!("http://{}", origin.host()),
        );
        let roots: Vec<PathBuf> = (0..n)
            .map(|i| dir.path().join(format!("node{i}")))
            .collect();
        let nodes = roots
            .iter()
            .zip(&ports)
            .map(|(root, port)| {
                ServeNode::start_at(
                    root,
                    &format!("127.0.0.1:{port}"),
                    &["--relay", "--config", config.to_str().unwrap()],
                )
                .unwrap()
            })
            .collect();
        Swarm {
            nodes,
            roots,
            config,
            _dir: dir,
        }
    }

    /// Node URLs, in the order of the site config's peer list.
    fn labels(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// Starts `ferry pull NAME:1` on every node's root at once.
    fn pull_all(&self) -> Vec<std::process::Child> {
        self.roots
            .iter()
            .map(|root| {
                ferry(root)
                    .arg("--config")
                    .arg(&self.config)
                    .args(["pull", &format!("{NAME}:1")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect()
    }
}

/// Bytes of the layers of manifest `digest` of the fixtures.
fn image_bytes(fx: &Fixtures, digest: &str) -> u64 {
    let manifest = json(&String::from_utf8_lossy(&fx.blob(digest)));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}

#[test]
fn relays_bound_origin_egress_when_nodes_pull_at_once() {
    // PEER-7: three nodes pull the same image at once through [peers, origin]; each piece
    // leaves the origin about once instead of three times.
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BIG, &registry.host(), "team/app:1", false, None);
    let origin = Proxy::start(&registry.host(), None);
    let swarm = Swarm::start(3, &origin);
    for child in swarm.pull_all() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    for root in &swarm.roots {
        assert_eq!(images(root)[0]["digest"], digest.as_str());
    }
    let image = image_bytes(&fx, &digest);
    let egress = origin.served_bytes();
    eprintln!("origin egress for 3 nodes: {egress} bytes for an image of {image} bytes");
    assert!(
        egress < image * 3 / 2,
        "origin sent {egress} bytes for 3 pulls of {image} bytes"
    );
}

#[test]
fn a_relay_fetches_each_extent_once_and_serves_parts_of_it() {
    // PEER-7: ranges inside one extent, asked at once, cost the origin one fetch of
    // the extent; asked again, nothing; a range across an extent boundary is refused.
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BIG, &registry.host(), "team/app:1", false, None);
    let origin = Proxy::start(&registry.host(), None);
    let swarm = Swarm::start(1, &origin);
    let manifest = json(&String::from_utf8_lossy(&fx.blob(&digest)));
    let large = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = fx.blob(&large);
    let extent = RELAY_EXTENT as usize;
    assert!(bytes.len() > extent, "the large layer spans two extents");
    let url = format!("{}/ferry/v1/blobs/{large}?name={NAME}", swarm.labels()[0]);
    let parts = [
        (0, extent / 4 - 1),
        (extent / 2, extent / 2 + extent / 4 - 1),
        (extent - 10, extent - 1),
    ];
    let answers: Vec<(u16, String, Vec<u8>)> = std::thread::scope(|s| {
        let asks: Vec<_> = parts
            .iter()
            .map(|(a, b)| {
                let (range, url) = (format!("bytes={a}-{b}"), url.clone());
                s.spawn(move || curl(&["-m", "60", "-H", &format!("Range: {range}")], &url))
            })
            .collect();
        asks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((a, b), (status, head, body)) in parts.iter().zip(&answers) {
        assert_eq!(*status, 206, "{head}");
        assert!(head.contains("ferry-relayed: 1"), "{head}");
        assert!(body.as_slice() == &bytes[*a..=*b], "bytes {a}-{b} differ");
    }
    let once = origin.served_bytes();
    assert!(
        once >= extent as u64 && once < extent as u64 + (64 << 10),
        "the origin sent {once} bytes for one extent of {extent}"
    );
    let (status, _, body) = curl(&["-H", "Range: bytes=4096-8191"], &url);
    assert_eq!((status, body.as_slice() == &bytes[4096..8192]), (206, true));
    assert_eq!(origin.served_bytes(), once, "an arrived extent is kept");
    let across = format!("Range: bytes={}-{}", extent - 1, extent);
    let (status, _, _) = curl(&["-H", &across], &url);
    assert_eq!(status, 416);
    // A bad name (the blob's size already known) is refused, and leaves nothing behind
    // that a good ask for the same extent would wait on.
    let bad = format!(
        "{}/ferry/v1/blobs/{large}?name=Not%20A%20Name",
        swarm.labels()[0]
    );
    let second = format!("Range: bytes={extent}-{}", extent + 9);
    let (status, _, _) = curl(&["-H", &second], &bad);
    assert_eq!(status, 400);
    let (status, _, body) = curl(&["-m", "60", "-H", &second], &url);
    assert_eq!(
        (status, body.as_slice() == &bytes[extent..extent + 10]),
        (206, true)
    );
}

/// Three relaying nodes pulling `BIG` at once from an origin slowed to 2 MiB/s per
/// connection (a 4 MiB extent takes about 2 s), caught once the origin has sent 2 MiB: the
/// extents are on their way. `victim` relays extent 0 of the large layer.
struct MidTransfer {
    pulls: Vec<std::process::Child>,
    swarm: Swarm,
    origin: Proxy,
    _registry: Registry,
    digest: String,
    victim: usize,
    victim_url: String,
}

fn mid_transfer() -> MidTransfer {
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BIG, &registry.host(), "team/app:1", false, None);
    let origin = Proxy::start(&registry.host(), Some(2 << 20));
    let swarm = Swarm::start(3, &origin);
    let manifest = json(&String::from_utf8_lossy(&fx.blob(&digest)));
    let large =
        ferry_core::Digest::parse(manifest["layers"][1]["digest"].as_str().unwrap()).unwrap();
    let victim = relay_owner(&swarm.labels(), &large, 0);
    let victim_url = swarm.labels()[victim].to_string();
    let pulls = swarm.pull_all();
    let deadline = Instant::now() + Duration::from_secs(60);
    while origin.served_bytes() < 2 << 20 {
        assert!(
            Instant::now() < deadline,
            "the origin never started sending"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    MidTransfer {
        pulls,
        swarm,
        origin,
        _registry: registry,
        digest,
        victim,
        victim_url,
    }
}

/// Waits for `pulls` (node index, child): each succeeds and says the victim was unreachable.
fn survive(pulls: Vec<(usize, std::process::Child)>, victim_url: &str) {
    for (i, child) in pulls {
        let out = child.wait_with_output().unwrap();
        let err = stderr_of(&out);
        assert!(out.status.success(), "node {i}: {err}");
        let line = format!("peer {victim_url} is unreachable");
        assert!(err.contains(&line), "node {i}: no {line:?} in: {err}");
    }
}

#[test]
fn a_node_killed_mid_transfer_does_not_stop_the_others() {
    // PEER-5, PEER-7: the node relaying extent 0 of the large layer dies (its server and
    // its pull, SIGKILL) while the extents are on their way. The two others mark it down,
    // ask the next relay for its pieces, and finish with the right image; the origin sends
    // the dead node's share again at most.
    let mut t = mid_transfer();
    t.swarm.nodes[t.victim].kill();
    let mut killed = t.pulls.remove(t.victim);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != t.victim).collect();
    survive(
        survivors
            .iter()
            .copied()
            .zip(std::mem::take(&mut t.pulls))
            .collect(),
        &t.victim_url,
    );
    for &i in &survivors {
        assert_eq!(images(&t.swarm.roots[i])[0]["digest"], t.digest.as_str());
    }
    let image = image_bytes(&Fixtures::get(), &t.digest);
    let egress = t.origin.served_bytes();
    eprintln!("origin egress with a node killed: {egress} bytes for an image of {image} bytes");
    assert!(
        egress < image * 2,
        "origin sent {egress} bytes for 2 surviving pulls of {image} bytes"
    );
}

#[test]
fn a_hung_relay_costs_one_stall_timeout() {
    // PEER-5, PEER-7: the node relaying extent 0 of the large layer hangs (SIGSTOP: its
    // port accepts, nothing answers) while the extents are on their way. Relays hand bytes
    // on as they arrive, so askers see no progress for the stall timeout, mark it down and
    // take its pieces from the next relay; all three pulls finish, the hung node's own too.
    let mut t = mid_transfer();
    let frozen = Instant::now();
    t.swarm.nodes[t.victim].freeze();
    survive(
        std::mem::take(&mut t.pulls)
            .into_iter()
            .enumerate()
            .collect(),
        &t.victim_url,
    );
    // One stall timeout (10 s) and the transfer, not the 5 minutes of a table request.
    assert!(
        frozen.elapsed() < Duration::from_secs(60),
        "{:?}",
        frozen.elapsed()
    );
    for root in &t.swarm.roots {
        assert_eq!(images(root)[0]["digest"], t.digest.as_str());
    }
}

#[test]
fn signed_images_verify_through_ferry_serve_and_through_peers() {
    // SERVE-5 (signature sets made from the store's signatures), PEER-6 (signed names may
    // be resolved by peers: the signature vouches for the answer).
    let (_registry, digest, dir, roots) = holders(APP, 1);
    let keys = dir.path().join("keys");
    let scratch = tempfile::tempdir().unwrap();
    let key = json(&run_ok(
        ferry(scratch.path())
            .args(["key", "generate", "team", "--json", "--dir"])
            .arg(&keys),
    ));
    let key_id = key["key_id"].as_str().unwrap().to_string();
    run_ok(
        ferry(&roots[0])
            .args(["sign", &format!("{NAME}:1"), "--key"])
            .arg(keys.join("team.key")),
    );
    let node = ServeNode::start(&roots[0], &[]).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[default]\naction = \"reject\"\n\n[[rule]]\nprefix = \"registry.example.com/team\"\n\
         action = \"signed-by\"\nkeys = [\"keys/team.pub\"]\n",
    )
    .unwrap();
    // The signature tag is served as a ferry signature set naming the image.
    let sig_tag = format!("{}.sig", digest.replace(':', "-"));
    let (status, _, body) = curl(
        &[],
        &format!("{}/v2/team/app/manifests/{sig_tag}", node.url()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let set = json(&String::from_utf8_lossy(&body));
    assert_eq!(set["subject"]["digest"], digest.as_str());
    assert_eq!(set["layers"].as_array().unwrap().len(), 1);

    let pull = |sources: &str, origin: &str| {
        let config = peer_config(dir.path(), sources, &[node.url().to_string()], origin);
        let root = dir.path().join(format!("puller-{}", free_port()));
        let out = output(
            ferry(&root)
                .arg("--config")
                .arg(&config)
                .arg("--policy")
                .arg(&policy)
                .args(["pull", &format!("{NAME}:1")]),
        );
        (root, out)
    };
    // Through ferry serve as an ordinary registry source.
    let (root, out) = pull("\"origin\"", node.url());
    assert!(out.status.success(), "{}", stderr_of(&out));
    let row = &images(&root)[0];
    assert_eq!(row["digest"], digest.as_str());
    assert!(stderr_of(&out).contains(&key_id), "{}", stderr_of(&out));
    // Through the peers alone: they answer the signed tag.
    let (root, out) = pull("\"peers\"", "http://127.0.0.1:1");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(images(&root)[0]["digest"], digest.as_str());
}

#[test]
fn ferry_registry_driver_pushes_chunked_uploads_and_mounts_to_ferry_serve() {
    // SERVE-9 (PATCH chunks with Content-Range), SERVE-11 (mounts), SERVE-12.
    use ferry_drivers::sources::registry::{Credentials, RegistryConfig, RegistryDriver};
    use ferry_drivers::{ByteRange, Driver};
    use futures::StreamExt as _;

    let root = tempfile::tempdir().unwrap();
    let node = ServeNode::start(root.path(), &["--allow-push"]).unwrap();
    let driver = RegistryDriver::new(RegistryConfig {
        source_name: "ferry-serve".into(),
        base_url: node.url().parse().unwrap(),
        insecure: false,
        credentials: Credentials::Anonymous,
        repository: None,
    })
    .unwrap()
    .with_upload_chunk_size(1 << 20);
    let name = format!("{}/team/pushed", node.host());
    let other = format!("{}/other/pushed", node.host());
    let layer: Vec<u8> = (0..(5u32 << 20) + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (layer_digest, config_digest) = (
        ferry_core::Digest::sha256(&layer),
        ferry_core::Digest::sha256(config),
    );
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": ferry_core::media::OCI_MANIFEST,
        "config": {"mediaType": ferry_core::media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": ferry_core::media::OCI_LAYER_TAR, "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let one = |b: Vec<u8>| -> ferry_drivers::ByteStream {
            Box::pin(futures::stream::once(
                async move { Ok(bytes::Bytes::from(b)) },
            ))
        };
        driver
            .put_blob(&name, &layer_digest, layer.len() as u64, one(layer.clone()))
            .await
            .unwrap();
        driver
            .put_blob(
                &name,
                &config_digest,
                config.len() as u64,
                one(config.to_vec()),
            )
            .await
            .unwrap();
        let digest = driver
            .put_manifest(&name, Some("1"), ferry_core::media::OCI_MANIFEST, &manifest)
            .await
            .unwrap();
        let desc = driver.resolve(&name, "1").await.unwrap();
        assert_eq!(desc.digest().to_string(), digest.to_string());
        let mut body = driver
            .fetch_blob(&name, &layer_digest, ByteRange::WHOLE)
            .await
            .unwrap();
        let mut read = Vec::new();
        while let Some(chunk) = body.stream.next().await {
            read.extend_from_slice(&chunk.unwrap());
        }
        assert!(read == layer);
        // The same blob under another repository is mounted, not uploaded again.
        driver
            .put_blob(
                &other,
                &layer_digest,
                layer.len() as u64,
                one(layer.clone()),
            )
            .await
            .unwrap();
    });
    let rows = images(root.path());
    assert_eq!(rows[0]["name"], "localhost/team/pushed");
    assert_eq!(
        rows[0]["digest"],
        ferry_core::Digest::sha256(&manifest).to_string().as_str()
    );
}

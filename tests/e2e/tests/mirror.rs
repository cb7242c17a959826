//! `ferry serve --mirror` with the runtimes sysadmins keep: containerd (`ctr` with
//! `hosts.toml`), dockerd (`registry-mirrors`) and podman (`registries.conf`) pull through
//! ferry, which fetches through its routes from a local CNCF registry, under its trust
//! policy. Spec: specs/mirror.md (MIRROR-n). dockerd needs root (CI is root).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_testkit::clients::{installed, Containerd, Dockerd, Podman};
use ferry_testkit::fixtures::{Fixtures, APP, BIG, BUSYBOX};
use ferry_testkit::proxy::Proxy;
use ferry_testkit::registry::{flip_bytes, Registry, RegistryOptions};
use ferry_testkit::serve::ServeNode;
use ferry_testkit::{ferry, is_root, output, run_ok};

/// A made-up registry: only ferry's routes make it reachable.
const MADE_UP: &str = "registry.example.com";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An upstream registry behind a counting proxy, and a ferry mirror routing `MADE_UP` and
/// `docker.io` to it.
struct Setup {
    fx: Fixtures,
    upstream: Registry,
    proxy: Proxy,
    work: tempfile::TempDir,
    mirror: ServeNode,
}

impl Setup {
    /// The fixtures pushed upstream as `team/<tag>:1` and `library/<tag>:1`; a mirror with
    /// `policy` (none: accept all) and the extra serve options.
    fn start(tags: &[&str], policy: Option<&str>, throttle: Option<u64>, extra: &[&str]) -> Setup {
        let fx = Fixtures::get();
        let upstream = Registry::start(RegistryOptions::open()).unwrap();
        for tag in tags {
            fx.push(tag, &upstream.host(), &format!("team/{tag}:1"), false, None);
            fx.push(
                tag,
                &upstream.host(),
                &format!("library/{tag}:1"),
                false,
                None,
            );
        }
        let proxy = Proxy::start(&upstream.host(), throttle);
        let work = tempfile::tempdir().unwrap();
        let config = work.path().join("sites.toml");
        std::fs::write(
            &config,
            format!(
                "[[route]]\nprefix = \"{MADE_UP}\"\nsources = [\"origin\"]\n\n\
                 [[route]]\nprefix = \"docker.io\"\nsources = [\"origin\"]\n\n\
                 [source.origin]\ndriver = \"registry\"\nurl = \"http://{}\"\n",
                proxy.host()
            ),
        )
        .unwrap();
        let mut args: Vec<String> = vec!["--config".into(), config.display().to_string()];
        if let Some(policy) = policy {
            let path = work.path().join("policy.toml");
            std::fs::write(&path, policy).unwrap();
            args.extend(["--policy".into(), path.display().to_string()]);
        }
        args.push("--mirror".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mirror = ServeNode::start(&work.path().join("store"), &args).unwrap();
        Setup {
            fx,
            upstream,
            proxy,
            work,
            mirror,
        }
    }

    /// A containerd `hosts.toml` directory sending `registry` to the mirror.
    fn hosts_dir(&self, registry: &str) -> PathBuf {
        let dir = self.work.path().join("certs.d");
        std::fs::create_dir_all(dir.join(registry)).unwrap();
        std::fs::write(
            dir.join(registry).join("hosts.toml"),
            format!(
                "server = \"https://{registry}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                self.mirror.host()
            ),
        )
        .unwrap();
        dir
    }

    /// `ferry images --json` of the mirror's store.
    fn images(&self) -> Vec<serde_json::Value> {
        json(&run_ok(
            ferry(self.mirror.root()).args(["images", "--json"]),
        ))
        .as_array()
        .unwrap()
        .clone()
    }

    /// Waits until the mirror's store names `name:tag` (MIRROR-7); its digest.
    fn wait_named(&self, name: &str, tag: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(row) = self
                .images()
                .into_iter()
                .find(|r| r["name"] == name && r["tag"] == tag)
            {
                return row["digest"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{name}:{tag} never named; log: {}",
                self.mirror.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A policy accepting everything but `prefix`, which needs a signature by the key `team`
/// generated into `keys`.
fn signed_by_policy(keys: &Path, prefix: &str) -> String {
    run_ok(
        ferry(&keys.join("store"))
            .args(["key", "generate", "team", "--dir"])
            .arg(keys),
    );
    format!(
        "[default]\naction = \"accept\"\n\n[[rule]]\nprefix = \"{prefix}\"\naction = \"signed-by\"\nkeys = [\"{}\"]\n",
        keys.join("team.pub").display()
    )
}

fn ctr_pull(ctr: &Containerd, hosts: &Path, reference: &str) -> std::process::Output {
    output(
        ctr.ctr()
            .args(["images", "pull", "--hosts-dir"])
            .arg(hosts)
            .arg(reference),
    )
}

/// MIRROR-1, MIRROR-2, MIRROR-5, MIRROR-7 with containerd: a made-up registry pulled
/// through ferry's route; the second client is served from the store alone.
#[test]
fn ctr_pulls_a_made_up_registry_through_the_mirror_then_from_its_store() {
    if !installed("containerd") {
        eprintln!("containerd is not installed: skipping");
        return;
    }
    // A tag answer kept for a while: the second client needs nothing from upstream.
    let s = Setup::start(&[BUSYBOX], None, None, &["--mirror-tag-ttl", "300"]);
    let hosts = s.hosts_dir(MADE_UP);
    let reference = format!("{MADE_UP}/team/{BUSYBOX}:1");
    let want = s.fx.digest(BUSYBOX);
    let ctr = Containerd::start();
    let pull = ctr_pull(&ctr, &hosts, &reference);
    assert!(pull.status.success(), "ctr pull: {}", text(&pull));
    let list = run_ok(ctr.ctr().args(["images", "ls"]));
    assert!(list.contains(&want), "{list}");
    assert_eq!(
        s.wait_named(&format!("{MADE_UP}/team/{BUSYBOX}"), "1"),
        want
    );

    // A fresh containerd: every byte from ferry's store, none from upstream.
    let before = s.proxy.served_bytes();
    let ctr2 = Containerd::start();
    let pull = ctr_pull(&ctr2, &hosts, &reference);
    assert!(pull.status.success(), "second ctr pull: {}", text(&pull));
    assert_eq!(
        s.proxy.served_bytes() - before,
        0,
        "the second pull took bytes from upstream"
    );
}

/// MIRROR-1 with podman: the registry named in the mirror's path (`HOST:PORT/REGISTRY`).
#[test]
fn podman_pulls_through_the_mirror_with_the_registry_in_the_path() {
    if !installed("podman") {
        eprintln!("podman is not installed: skipping");
        return;
    }
    let s = Setup::start(&[BUSYBOX], None, None, &[]);
    let podman = Podman::new(&format!(
        "[[registry]]\nprefix = \"{MADE_UP}\"\nlocation = \"{MADE_UP}\"\n\n\
         [[registry.mirror]]\nlocation = \"{}/{MADE_UP}\"\ninsecure = true\n",
        s.mirror.host()
    ));
    let reference = format!("{MADE_UP}/team/{BUSYBOX}:1");
    let pull = output(podman.podman().args(["pull", "--quiet", &reference]));
    assert!(pull.status.success(), "podman pull: {}", text(&pull));
    let digest =
        run_ok(
            podman
                .podman()
                .args(["image", "inspect", "--format", "{{.Digest}}", &reference]),
        );
    assert_eq!(digest.trim(), s.fx.digest(BUSYBOX));
    s.wait_named(&format!("{MADE_UP}/team/{BUSYBOX}"), "1");
}

/// MIRROR-1 with dockerd: `registry-mirrors` sends Docker Hub names; ferry routes docker.io
/// to the local registry, so `docker pull busybox:1` and `docker run` work offline. Root.
#[test]
fn docker_pulls_and_runs_busybox_through_the_mirror() {
    if !is_root() || !installed("dockerd") {
        eprintln!("needs root and dockerd: skipping");
        return;
    }
    let s = Setup::start(&[BUSYBOX], None, None, &[]);
    let docker = Dockerd::start(&["--registry-mirror", s.mirror.url()]);
    let pull = output(docker.docker().args(["pull", "busybox:1"]));
    assert!(
        pull.status.success(),
        "docker pull: {}\ndockerd: {}\nferry: {}",
        text(&pull),
        docker.log(),
        s.mirror.log()
    );
    assert!(
        text(&pull).contains(&s.fx.digest(BUSYBOX)),
        "{}",
        text(&pull)
    );
    let run = output(docker.docker().args([
        "run",
        "--rm",
        "--network",
        "none",
        "busybox:1",
        "echo",
        "hi",
    ]));
    assert!(run.status.success(), "docker run: {}", text(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "hi");
    s.wait_named("docker.io/library/busybox", "1");

    // MIRROR-4: under signed-by, the unsigned image is refused to dockerd too.
    let keys = tempfile::tempdir().unwrap();
    let policy = signed_by_policy(keys.path(), "docker.io/library");
    let denied = Setup::start(&[BUSYBOX], Some(&policy), None, &[]);
    let docker = Dockerd::start(&["--registry-mirror", denied.mirror.url()]);
    let pull = output(docker.docker().args(["pull", "busybox:1"]));
    assert!(!pull.status.success(), "a rejected image was pulled");
    assert!(denied.images().is_empty(), "a rejected image was named");
    // The tag may be asked; no manifest body or blob is.
    assert!(
        denied.proxy.served_bytes() < 16 << 10,
        "a rejected image was fetched from upstream ({} bytes)",
        denied.proxy.served_bytes()
    );
}

/// MIRROR-4: under `signed-by`, an unsigned image is refused with DENIED naming the image,
/// the client shows the reason, and nothing is named in the mirror's store.
#[test]
fn unsigned_images_are_denied_to_clients_under_signed_by() {
    if !installed("containerd") {
        eprintln!("containerd is not installed: skipping");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let policy = signed_by_policy(keys.path(), &format!("{MADE_UP}/team"));
    let s = Setup::start(&[BUSYBOX], Some(&policy), None, &[]);
    let hosts = s.hosts_dir(MADE_UP);
    let ctr = Containerd::start();
    let pull = ctr_pull(&ctr, &hosts, &format!("{MADE_UP}/team/{BUSYBOX}:1"));
    assert!(!pull.status.success(), "an unsigned image was pulled");
    let said = text(&pull);
    assert!(
        said.contains("DENIED") || said.contains("403") || said.contains("trust policy"),
        "ctr does not show the refusal: {said}"
    );
    // What ferry answers, as a client sees it.
    let (status, body) = http_get(
        &s.mirror.host(),
        &format!("/v2/team/{BUSYBOX}/manifests/1?ns={MADE_UP}"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DENIED"), "{body}");
    assert!(
        body.contains(&format!("{MADE_UP}/team/{BUSYBOX}")),
        "the refusal does not name the image: {body}"
    );
    assert!(s.images().is_empty(), "a refused image was named");
    if installed("podman") {
        let podman = Podman::new(&format!(
            "[[registry]]\nprefix = \"{MADE_UP}\"\nlocation = \"{MADE_UP}\"\n\n\
             [[registry.mirror]]\nlocation = \"{}/{MADE_UP}\"\ninsecure = true\n",
            s.mirror.host()
        ));
        let pull = output(
            podman
                .podman()
                .args(["pull", &format!("{MADE_UP}/team/{BUSYBOX}:1")]),
        );
        assert!(!pull.status.success(), "podman pulled an unsigned image");
        assert!(
            text(&pull).contains("trust policy") || text(&pull).contains("denied"),
            "podman does not show the refusal: {}",
            text(&pull)
        );
    }

    // Signed under its name, the signature pushed through the route: a client pulls it.
    let config = s.work.path().join("sites.toml");
    let signer = tempfile::tempdir().unwrap();
    let made_up = format!("{MADE_UP}/team/{BUSYBOX}:1");
    run_ok(
        ferry(signer.path())
            .arg("--config")
            .arg(&config)
            .args(["pull", &made_up]),
    );
    run_ok(
        ferry(signer.path())
            .arg("--config")
            .arg(&config)
            .args(["sign", &made_up, "--key"])
            .arg(keys.path().join("team.key"))
            .arg("--push"),
    );
    let ctr2 = Containerd::start();
    let pull = ctr_pull(&ctr2, &hosts, &made_up);
    assert!(
        pull.status.success(),
        "signed image refused: {}",
        text(&pull)
    );
    s.wait_named(&format!("{MADE_UP}/team/{BUSYBOX}"), "1");
}

/// MIRROR-5: a tampered upstream layer fails the client's pull and nothing is committed.
#[test]
fn a_tampered_upstream_blob_fails_the_client_and_is_never_committed() {
    if !installed("containerd") {
        eprintln!("containerd is not installed: skipping");
        return;
    }
    let s = Setup::start(&[BIG], None, None, &[]);
    let layer = big_layer(&s);
    flip_bytes(&s.upstream.blob_data_path(&layer)).unwrap();
    let hosts = s.hosts_dir(MADE_UP);
    let ctr = Containerd::start();
    let pull = ctr_pull(&ctr, &hosts, &format!("{MADE_UP}/team/{BIG}:1"));
    assert!(!pull.status.success(), "a tampered layer was pulled");
    std::thread::sleep(Duration::from_millis(500));
    let digests = run_ok(ferry(s.mirror.root()).args(["store", "digests"]));
    assert!(
        !digests.contains(&layer),
        "the tampered layer was committed"
    );
    assert!(s.images().is_empty());
}

/// MIRROR-2: a dead upstream is an OCI error, not a hang.
#[test]
fn a_dead_upstream_is_an_oci_error() {
    let s = Setup::start(&[BUSYBOX], None, None, &[]);
    drop(s.upstream);
    let (status, body) = http_get(
        &s.mirror.host(),
        &format!("/v2/team/{BUSYBOX}/manifests/1?ns={MADE_UP}"),
    );
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("\"errors\""), "{body}");
}

/// MIRROR-5: a client killed mid-blob does not stop another pulling the same blob; both
/// share one upstream fetch.
#[test]
fn a_client_killed_mid_blob_does_not_stop_another() {
    // 4 MiB/s upstream: the 16 MiB layer takes about 4 s.
    let s = Setup::start(&[BIG], None, Some(4 << 20), &[]);
    let layer = big_layer(&s);
    let manifest = format!("/v2/team/{BIG}/manifests/1?ns={MADE_UP}");
    let (status, body) = http_get(&s.mirror.host(), &manifest);
    assert_eq!(status, 200, "{body}");
    let blob = format!("/v2/team/{BIG}/blobs/{layer}?ns={MADE_UP}");
    let started = s.proxy.served_bytes();
    // The first client reads a little, then goes away.
    let mut first = TcpStream::connect(s.mirror.host()).unwrap();
    write!(
        first,
        "GET {blob} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.mirror.host()
    )
    .unwrap();
    let mut some = [0u8; 4096];
    first.read_exact(&mut some).unwrap();
    drop(first);
    // The second gets every byte, right.
    let (status, bytes) = http_get_bytes(&s.mirror.host(), &blob);
    assert_eq!(status, 200);
    assert_eq!(
        ferry_core::Digest::sha256(&bytes).to_string(),
        layer,
        "wrong bytes"
    );
    // One fetch of the 16 MiB layer (its gzip adds a little), not two.
    let upstream = s.proxy.served_bytes() - started;
    assert!(
        upstream < 24 << 20,
        "the two clients caused {upstream} bytes from upstream"
    );
}

/// The digest of the 16 MiB layer of fixture BIG.
fn big_layer(s: &Setup) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&s.fx.blob(&s.fx.digest(BIG))).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A plain HTTP/1.1 GET; status and body as text.
fn http_get(host: &str, path: &str) -> (u16, String) {
    let (status, body) = http_get_bytes(host, path);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A plain HTTP/1.1 GET; status and body.
fn http_get_bytes(host: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http("GET", host, path);
    (status, body)
}

/// One HTTP/1.1 request (`Connection: close`); status, head (lowercase) and body.
fn http(method: &str, host: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

/// The `Docker-Content-Digest` of a HEAD of `path`, with the status.
fn head_digest(host: &str, path: &str) -> (u16, String) {
    let (status, head, _) = http("HEAD", host, path);
    let digest = head
        .lines()
        .find_map(|l| l.strip_prefix("docker-content-digest:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    (status, digest)
}

/// The body of a chunked HTTP/1.1 message.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// The digest the mirror answers for `team/<repo>:1` of the made-up registry.
fn tag_digest(s: &Setup, repo: &str) -> (u16, String) {
    head_digest(
        &s.mirror.host(),
        &format!("/v2/team/{repo}/manifests/1?ns={MADE_UP}"),
    )
}

/// MIRROR-4: a tag is asked upstream each time; with a TTL its answer is reused.
#[test]
fn tags_are_resolved_upstream_each_time_unless_a_ttl_is_set() {
    for (ttl, reused) in [("0", false), ("600", true)] {
        let s = Setup::start(&[BUSYBOX], None, None, &["--mirror-tag-ttl", ttl]);
        let (status, first) = tag_digest(&s, BUSYBOX);
        assert_eq!(
            (status, first.as_str()),
            (200, s.fx.digest(BUSYBOX).as_str())
        );
        // The tag moves upstream.
        s.fx.push(
            APP,
            &s.upstream.host(),
            &format!("team/{BUSYBOX}:1"),
            false,
            None,
        );
        let (_, second) = tag_digest(&s, BUSYBOX);
        let want = if reused {
            s.fx.digest(BUSYBOX)
        } else {
            s.fx.digest(APP)
        };
        assert_eq!(second, want, "ttl {ttl}");
    }
}

/// MIRROR-4: with --mirror-stale-tags, a tag whose resolve sources are all down is answered
/// with the digest the store names; without it, the client gets an error.
#[test]
fn stale_tags_are_served_only_when_asked_for() {
    for stale in [true, false] {
        let extra: &[&str] = if stale { &["--mirror-stale-tags"] } else { &[] };
        let s = Setup::start(&[BUSYBOX], None, None, extra);
        let (status, digest) = tag_digest(&s, BUSYBOX);
        assert_eq!(status, 200);
        s.wait_named(&format!("{MADE_UP}/team/{BUSYBOX}"), "1");
        let Setup {
            upstream, mirror, ..
        } = s;
        drop(upstream);
        let answer = head_digest(
            &mirror.host(),
            &format!("/v2/team/{BUSYBOX}/manifests/1?ns={MADE_UP}"),
        );
        if stale {
            assert_eq!(answer, (200, digest));
        } else {
            assert_eq!(answer.0, 502);
        }
    }
}

/// MIRROR-8: off loopback, routes that read with credentials need client authentication.
#[test]
fn a_mirror_off_loopback_with_credentialed_routes_needs_client_auth() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "pw\n").unwrap();
    let credentialed = format!(
        "[[route]]\nprefix = \"*\"\nsources = [\"origin\"]\n\n[source.origin]\ndriver = \"registry\"\n\
         url = \"http://127.0.0.1:1\"\ncredentials = {{ username = \"u\", password_file = \"{}\" }}\n",
        secret.display()
    );
    let no_catch_all = "[[route]]\nprefix = \"registry.example.com\"\nsources = [\"origin\"]\n\n\
                        [source.origin]\ndriver = \"registry\"\nurl = \"http://127.0.0.1:1\"\ncredentials = \"anonymous\"\n";
    for (config, why) in [
        (
            credentialed.as_str(),
            "source \"origin\" reads with credentials",
        ),
        (no_catch_all, "names no route covers"),
    ] {
        let path = dir.path().join("sites.toml");
        std::fs::write(&path, config).unwrap();
        // Refused before anything is bound.
        let out = output(
            ferry(&dir.path().join("store"))
                .arg("--config")
                .arg(&path)
                .args(["serve", "--mirror", "--listen", "0.0.0.0:0"]),
        );
        let err = text(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(why) && err.contains("--htpasswd"), "{err}");
    }
}

/// MIRROR-9: containerd falls back to its own upstream (`server`) when the mirror fails.
#[test]
fn containerd_falls_back_to_its_server_when_the_mirror_cannot_serve() {
    if !installed("containerd") {
        eprintln!("containerd is not installed: skipping");
        return;
    }
    let fx = Fixtures::get();
    let upstream = Registry::start(RegistryOptions::open()).unwrap();
    let want = fx.push(BUSYBOX, &upstream.host(), "team/busybox:1", false, None);
    // The mirror's only route for the upstream's host leads nowhere.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("sites.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\nprefix = \"*\"\nsources = [\"dead\"]\n\n[source.dead]\ndriver = \"registry\"\nurl = \"http://127.0.0.1:{}\"\n",
            ferry_testkit::registry::closed_port().unwrap()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let mirror = ServeNode::start(
        &work.path().join("store"),
        &["--config", &config, "--mirror"],
    )
    .unwrap();
    let hosts = work.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(upstream.host())).unwrap();
    std::fs::write(
        hosts.join(upstream.host()).join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            upstream.host(),
            mirror.host()
        ),
    )
    .unwrap();
    let ctr = Containerd::start();
    let pull = ctr_pull(&ctr, &hosts, &format!("{}/team/busybox:1", upstream.host()));
    assert!(
        pull.status.success(),
        "ctr did not fall back: {}",
        text(&pull)
    );
    assert!(run_ok(ctr.ctr().args(["images", "ls"])).contains(&want));
}

/// MIRROR-1: images the store names under another registry keep being served by their bare
/// path, as without --mirror (SERVE-2); other bare paths are Docker Hub names.
#[test]
fn the_stores_own_images_keep_their_bare_paths() {
    let s = Setup::start(&[BUSYBOX], None, None, &["--allow-push"]);
    let own = s.fx.push(APP, &s.mirror.host(), "team/own:1", false, None);
    let (status, digest) = head_digest(&s.mirror.host(), "/v2/team/own/manifests/1");
    assert_eq!((status, digest), (200, own));
    // A bare path the store does not hold is docker.io's, fetched through its route.
    let (status, body) = http_get(
        &s.mirror.host(),
        &format!("/v2/library/{BUSYBOX}/manifests/1"),
    );
    assert_eq!(status, 200, "{body}");
    s.wait_named(&format!("docker.io/library/{BUSYBOX}"), "1");
}

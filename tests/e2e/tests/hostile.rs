//! Hostile clients against one `ferry serve --allow-push` node, with raw sockets, while a
//! well-behaved client (skopeo) keeps pulling: connection floods, slowloris, huge heads,
//! bad ranges, names and digests, oversized manifests, broken and abandoned uploads.
//! Specs: specs/serve.md SERVE-15..17 (limits), SERVE-2, -4, -8, -9, -12.
//!
//! Throughout: every pull succeeds within a bound, serve's peak RSS stays under 256 MiB,
//! nothing is written outside the store root, and serve neither panics nor dies.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::Digest;
use ferry_testkit::fixtures::{Fixtures, BUSYBOX};
use ferry_testkit::output;
use ferry_testkit::serve::ServeNode;

/// `--read-timeout` of the node under attack (SERVE-15, SERVE-16).
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// `--upload-timeout` of the node under attack (SERVE-17).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// What a closed-by-the-server connection may take beyond its timeout to be seen closed.
const SLACK: Duration = Duration::from_secs(3);
/// The longest a well-behaved pull may take while the node is under attack.
const PULL_BOUND: Duration = Duration::from_secs(30);
/// Peak RSS allowed to the node, in KiB.
const RSS_LIMIT_KIB: u64 = 256 << 10;
/// Largest manifest a PUT may carry (ferry_core::manifest::MAX_MANIFEST_SIZE).
const MAX_MANIFEST: usize = 4 << 20;
/// Uploads open at once (serve's MAX_UPLOADS, SERVE-17).
const MAX_UPLOADS: usize = 1024;
/// Largest request head (ferry_serve::MAX_HEAD_SIZE, SERVE-15).
const MAX_HEAD: usize = 64 << 10;
/// The repository the fixture is pushed to.
const REPO: &str = "team/app";

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The head, lower case.
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn parse(raw: &[u8]) -> Option<Answer> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some(Answer {
            status,
            head,
            body: raw[end + 4..].to_vec(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }

    /// The OCI error code of an error answer.
    fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

fn connect(host: &str) -> TcpStream {
    let s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `raw` on a fresh connection and reads the answer until the server closes.
fn exchange(host: &str, raw: &[u8]) -> Answer {
    let mut s = connect(host);
    s.write_all(raw).expect("send request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read answer");
    Answer::parse(&buf).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {:?}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)]),
            String::from_utf8_lossy(&buf)
        )
    })
}

/// One request with `Connection: close` and a correct `Content-Length`.
fn call(host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    exchange(host, &raw)
}

/// Whether the server has closed `s` (EOF or reset), without blocking.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match (&mut &*s).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Waits until the server closed every connection; returns how long that took.
fn wait_all_closed(conns: &[TcpStream], within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut open: Vec<usize> = (0..conns.len()).collect();
    while !open.is_empty() {
        open.retain(|&i| !closed_by_server(&conns[i]));
        assert!(
            open.is_empty() || start.elapsed() < within,
            "{what}: {} of {} connections still open after {within:?}",
            open.len(),
            conns.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// `skopeo copy` of the image out of the node into a fresh OCI layout; its duration.
fn pull_once(host: &str) -> Result<Duration, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let out = output(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{host}/{REPO}:1"),
        &format!("oci:{}:x", dir.path().display()),
    ]));
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "skopeo pull failed after {took:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if took > PULL_BOUND {
        return Err(format!("pull took {took:?}, more than {PULL_BOUND:?}"));
    }
    Ok(took)
}

/// A well-behaved client pulling the image in a loop until stopped.
struct Puller {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Result<Duration, String>>>,
}

impl Puller {
    fn start(host: String) -> Puller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut pulls = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                pulls.push(pull_once(&host));
                std::thread::sleep(Duration::from_millis(200));
            }
            pulls
        });
        Puller { stop, thread }
    }

    fn finish(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        let pulls = self.thread.join().expect("puller thread");
        let failed: Vec<&String> = pulls.iter().filter_map(|p| p.as_ref().err()).collect();
        assert!(failed.is_empty(), "well-behaved pulls failed: {failed:#?}");
        pulls.into_iter().map(Result::unwrap).collect()
    }
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn uploads_dir(root: &Path) -> std::path::PathBuf {
    root.join("serve").join("uploads")
}

/// A layer of the fixture: its digest and bytes.
fn layer() -> (String, Vec<u8>) {
    let fx = Fixtures::get();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fx.blob(&fx.digest(BUSYBOX))).expect("manifest");
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    let bytes = fx.blob(&digest);
    (digest, bytes)
}

/// SERVE-15: idle connections are held only until the read timeout; the server keeps
/// answering while they are open.
fn connection_flood(host: &str) {
    let start = Instant::now();
    let conns: Vec<TcpStream> = (0..1000).map(|_| connect(host)).collect();
    let opened = start.elapsed();
    let held = conns.iter().filter(|s| !closed_by_server(s)).count();
    let took = pull_once(host).expect("pull while 1000 connections are held");
    let idle = wait_all_closed(&conns, READ_TIMEOUT + SLACK, "1000 idle connections");
    eprintln!(
        "flood: 1000 connections opened in {opened:?}; a pull took {took:?} while {held} \
         were held; all closed by the server {idle:?} later"
    );
}

/// SERVE-15: a head sent one byte a second is cut at the read timeout.
fn slowloris(host: &str) {
    let head = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
    let mut conns: Vec<(TcpStream, bool)> = (0..200).map(|_| (connect(host), true)).collect();
    let start = Instant::now();
    let mut sent = 0;
    let mut pulled = None;
    loop {
        let byte = head.as_bytes().get(sent).copied().unwrap_or(b'a');
        for (s, open) in conns.iter_mut().filter(|(_, open)| *open) {
            if s.write_all(&[byte]).is_err() || closed_by_server(s) {
                *open = false;
            }
        }
        sent += 1;
        let still = conns.iter().filter(|(_, open)| *open).count();
        if still == 0 {
            break;
        }
        assert!(
            start.elapsed() < READ_TIMEOUT + SLACK,
            "slowloris: {still} of 200 connections still open after {:?}",
            start.elapsed()
        );
        if pulled.is_none() {
            pulled = Some(pull_once(host).expect("pull during slowloris"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "slowloris: 200 connections at 1 byte/s all cut after {:?} ({sent} bytes each); \
         a pull took {pulled:?} meanwhile",
        start.elapsed()
    );
}

/// Sends `raw` while reading the answer; returns the status if one could be read (the
/// server may reset the connection before the client reads it), and how long it took.
fn oversized(host: &str, raw: Vec<u8>) -> (Option<u16>, Duration, usize) {
    let mut s = connect(host);
    let mut writer = s.try_clone().unwrap();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut written = 0;
        for chunk in raw.chunks(64 << 10) {
            if writer.write_all(chunk).is_err() {
                break;
            }
            written += chunk.len();
        }
        written
    });
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = start.elapsed();
    let _ = s.shutdown(Shutdown::Both);
    let written = sender.join().unwrap();
    (Answer::parse(&buf).map(|a| a.status), took, written)
}

/// SERVE-15: heads over 64 KiB or with too many fields are refused with 431.
fn huge_heads(host: &str) {
    let mut headers = String::new();
    let mut i = 0;
    while headers.len() < 1 << 20 {
        headers.push_str(&format!("X-Junk-{i}: {}\r\n", "a".repeat(1000)));
        i += 1;
    }
    let cases = [
        (
            "1 MiB of header lines",
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n"),
        ),
        (
            "a 1 MiB request line",
            format!(
                "GET /v2/{}/manifests/1 HTTP/1.1\r\nHost: {host}\r\n\r\n",
                "a".repeat(1 << 20)
            ),
        ),
        (
            "a head just over 64 KiB",
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
                "b".repeat(MAX_HEAD)
            ),
        ),
        (
            "200 header fields",
            format!(
                "GET /v2/ HTTP/1.1\r\nHost: {host}\r\n{}\r\n",
                (0..200)
                    .map(|i| format!("X-{i}: 1\r\n"))
                    .collect::<String>()
            ),
        ),
    ];
    for (what, raw) in cases {
        let (status, took, _) = oversized(host, raw.into_bytes());
        assert!(
            matches!(status, None | Some(431) | Some(414)),
            "{what}: answered {status:?}, not 431"
        );
        assert!(took < SLACK, "{what}: connection held for {took:?}");
        eprintln!("huge head: {what}: {status:?} after {took:?}");
    }
    // The smallest of them is answered 431 readably: the server read the head, not more.
    let (status, _, _) = oversized(
        host,
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
            "b".repeat(MAX_HEAD)
        )
        .into_bytes(),
    );
    assert_eq!(status, Some(431), "a head just over 64 KiB");
    // A head under the limit is answered.
    let ok = call(
        host,
        "GET",
        "/v2/",
        &[("X-Big", &"c".repeat(MAX_HEAD / 2))],
        b"",
    );
    assert_eq!(ok.status, 200, "a 32 KiB head: {ok:?}");
}

/// SERVE-4: one satisfiable range is 206, several or malformed ones the whole blob, one
/// past the end 416; never anything else.
fn bad_ranges(host: &str, digest: &str, bytes: &[u8]) {
    let size = bytes.len();
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let whole = [
        "bytes=5-2",
        "bytes=0-1,0-5",
        "bytes=0-0,-1",
        "bytes=18446744073709551616-",
        "bytes=-18446744073709551616",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes 0-1",
        "items=0-1",
        "garbage",
    ];
    for range in whole {
        let a = call(host, "GET", &path, &[("Range", range)], b"");
        assert_eq!(a.status, 200, "Range: {range:?}");
        assert_eq!(a.body, bytes, "Range: {range:?} sends the whole blob");
    }
    // Control characters in a header are refused by the HTTP parser itself.
    let a = call(
        host,
        "GET",
        &path,
        &[("Range", "bytes=0-1\u{1}\u{7f}")],
        b"",
    );
    assert_eq!(a.status, 400, "Range with control characters");
    for range in ["bytes=-0", "bytes=99999999999-", &format!("bytes={size}-")] {
        let a = call(host, "GET", &path, &[("Range", range)], b"");
        assert_eq!(a.status, 416, "Range: {range:?}");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "Range: {range:?}"
        );
    }
    for (range, first, last) in [
        ("bytes=0-18446744073709551615", 0, size - 1),
        ("bytes=-99999999999", 0, size - 1),
        ("bytes=3-3", 3, 3),
    ] {
        let a = call(host, "GET", &path, &[("Range", range)], b"");
        assert_eq!(a.status, 206, "Range: {range:?}");
        assert_eq!(a.body, &bytes[first..=last], "Range: {range:?}");
    }
}

/// SERVE-2, SERVE-8: hostile repository names are 400 or 404 errors, never served from
/// elsewhere and never 5xx.
fn bad_names(host: &str) {
    let long = "a/".repeat(10_000) + "a";
    let cases = [
        "/v2/../../etc/passwd/manifests/1".to_string(),
        "/v2/team/../../../etc/manifests/1".to_string(),
        "/v2/%2e%2e/%2e%2e/etc/manifests/1".to_string(),
        "/v2/team/%2e%2e/app/manifests/1".to_string(),
        "/v2/..%2F..%2Fcanary/manifests/1".to_string(),
        "/v2/team/app%00/manifests/1".to_string(),
        "/v2/team%00/app/tags/list".to_string(),
        "/v2/TEAM/app/manifests/1".to_string(),
        format!("/v2/{long}/manifests/1"),
        format!("/v2/{}/tags/list", "b".repeat(30_000)),
        format!("/v2/{REPO}/blobs/uploads/..%2F..%2F..%2Fcanary"),
        format!("/v2/{REPO}/manifests/..%2F..%2Fcanary"),
    ];
    for path in &cases {
        for method in ["GET", "HEAD", "PUT", "PATCH", "DELETE"] {
            let a = call(host, method, path, &[], b"{}");
            let shown = &path[..path.len().min(80)];
            assert!(
                matches!(a.status, 400 | 404 | 405 | 416),
                "{method} {shown}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            if method != "HEAD" {
                assert!(
                    [
                        "NAME_INVALID",
                        "NAME_UNKNOWN",
                        "NOT_FOUND",
                        "MANIFEST_INVALID",
                        "MANIFEST_UNKNOWN",
                        "BLOB_UPLOAD_UNKNOWN",
                        "UNSUPPORTED"
                    ]
                    .contains(&a.code().as_str()),
                    "{method} {shown}: code {:?}",
                    a.code()
                );
            }
        }
    }
    // `%2F` is a slash: the repository it spells is served like any spelling of it.
    let a = call(host, "GET", "/v2/team%2Fapp/manifests/1", &[], b"");
    assert!(matches!(a.status, 200 | 404), "team%2Fapp: {}", a.status);
}

/// SERVE-8: digests that are not digests are 400 `DIGEST_INVALID` (or 404 where the path
/// does not name an endpoint), on every endpoint that takes one.
fn bad_digests(host: &str) {
    let digests = [
        "sha256:zz".to_string(),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}", "A".repeat(64)),
        format!("md5:{}", "d".repeat(32)),
        format!("sha999:{}", "a".repeat(64)),
        "sha256:..%2F..%2Fetc%2Fpasswd".to_string(),
        "sha256:%00".to_string(),
        ":".to_string(),
        format!("sha256:{}", "f".repeat(10_000)),
    ];
    for d in &digests {
        for (method, path) in [
            ("GET", format!("/v2/{REPO}/blobs/{d}")),
            ("HEAD", format!("/v2/{REPO}/blobs/{d}")),
            ("GET", format!("/v2/{REPO}/manifests/{d}")),
            ("PUT", format!("/v2/{REPO}/manifests/{d}")),
            ("GET", format!("/v2/{REPO}/referrers/{d}")),
            ("POST", format!("/v2/{REPO}/blobs/uploads/?digest={d}")),
            (
                "POST",
                format!("/v2/{REPO}/blobs/uploads/?mount={d}&from=x"),
            ),
        ] {
            let a = call(host, method, &path, &[], b"x");
            let shown = &path[..path.len().min(90)];
            assert!(
                matches!(a.status, 400 | 404),
                "{method} {shown}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            if a.status == 400 && method != "HEAD" {
                assert!(
                    ["DIGEST_INVALID", "NAME_INVALID", "MANIFEST_INVALID"]
                        .contains(&a.code().as_str()),
                    "{method} {shown}: {}",
                    a.code()
                );
            }
        }
    }
    // A digest of the right shape that is not a blob here.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let a = call(
        host,
        "GET",
        &format!("/v2/{REPO}/blobs/{unknown}"),
        &[],
        b"",
    );
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"));
}

/// SERVE-16: an oversized manifest is refused from its `Content-Length` before its body is
/// read, or as soon as a body without one passes the limit; a body that stalls is 408.
fn oversized_manifests(host: &str) {
    let path = format!("/v2/{REPO}/manifests/huge");
    // Claims 100 MB and sends nothing: answered at once.
    let mut s = connect(host);
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 104857600\r\n\r\n"
    )
    .unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("answer to a 100 MB Content-Length");
    let a = Answer::parse(&buf[..n]).expect("an HTTP answer");
    assert_eq!((a.status, a.code().as_str()), (413, "MANIFEST_INVALID"));
    eprintln!(
        "manifest claiming 100 MB: 413 after {:?}, no body sent",
        start.elapsed()
    );
    drop(s);

    // Claims 100 MB and trickles: the same, however slow.
    let mut s = connect(host);
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 104857600\r\n\r\n{{"
    )
    .unwrap();
    let n = s.read(&mut buf).expect("answer to a trickled 100 MB body");
    assert_eq!(Answer::parse(&buf[..n]).map(|a| a.status), Some(413));
    drop(s);

    // 100 MB chunked (no Content-Length): cut once past 4 MiB.
    let mut raw =
        format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..100 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let total = raw.len();
    let (status, took, written) = oversized(host, raw);
    assert!(
        matches!(status, None | Some(413)),
        "100 MB chunked: {status:?}"
    );
    assert!(
        written < total,
        "100 MB chunked manifest was read to its end ({written} bytes)"
    );
    eprintln!("manifest of 100 MB chunked: {status:?} after {took:?}, {written} bytes sent");

    // A body that stops: 408 after the read timeout.
    let mut s = connect(host);
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n{{\"schemaVersion\""
    )
    .unwrap();
    let start = Instant::now();
    let n = s.read(&mut buf).expect("answer to a stalled body");
    let took = start.elapsed();
    let a = Answer::parse(&buf[..n]).expect("an HTTP answer");
    assert_eq!((a.status, a.code().as_str()), (408, "MANIFEST_INVALID"));
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(100) && took < READ_TIMEOUT + SLACK,
        "stalled manifest answered after {took:?}"
    );
    // Just under the limit is read (and refused only because it is not a manifest).
    let a = call(host, "PUT", &path, &[], &vec![b' '; MAX_MANIFEST]);
    assert_eq!((a.status, a.code().as_str()), (400, "MANIFEST_INVALID"));
}

/// Starts an upload; its location.
fn start_upload(host: &str) -> Answer {
    call(
        host,
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/"),
        &[],
        b"",
    )
}

fn location(a: &Answer) -> String {
    assert_eq!(a.status, 202, "upload start: {a:?}");
    a.header("location").expect("Location").to_string()
}

/// SERVE-9: uploads with wrong offsets, a wrong digest, and requests after the end.
fn broken_uploads(host: &str, root: &Path) {
    let loc = location(&start_upload(host));
    let id = loc.rsplit('/').next().unwrap().to_string();
    let spool = uploads_dir(root).join(&id);
    assert!(spool.exists(), "spool file of upload {id}");
    // Content-Range not at the offset.
    let a = call(host, "PATCH", &loc, &[("Content-Range", "5-9")], b"01234");
    assert_eq!((a.status, a.code().as_str()), (416, "BLOB_UPLOAD_INVALID"));
    assert_eq!(a.header("range"), Some("0-0"));
    let a = call(host, "PATCH", &loc, &[("Content-Range", "0-4")], b"01234");
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.header("range"), Some("0-4"));
    let a = call(host, "PATCH", &loc, &[("Content-Range", "0-4")], b"01234");
    assert_eq!((a.status, a.header("range")), (416, Some("0-4")));
    // A wrong digest: refused, and the upload is gone with its bytes.
    let wrong = Digest::sha256(b"something else");
    let a = call(host, "PUT", &format!("{loc}?digest={wrong}"), &[], b"56789");
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
    assert!(!spool.exists(), "spool of a refused upload kept");
    let a = call(host, "PATCH", &loc, &[], b"more");
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // PATCH after a successful PUT.
    let loc = location(&start_upload(host));
    let good = Digest::sha256(b"hostile but honest");
    let a = call(
        host,
        "PUT",
        &format!("{loc}?digest={good}"),
        &[],
        b"hostile but honest",
    );
    assert_eq!(a.status, 201, "{a:?}");
    let a = call(host, "PATCH", &loc, &[], b"after the end");
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let a = call(host, "PUT", &format!("{loc}?digest={good}"), &[], b"");
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // A PATCH whose body stalls: 408 after the read timeout; what arrived is kept.
    let loc = location(&start_upload(host));
    let mut s = connect(host);
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n0123456789"
    )
    .unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("answer to a stalled PATCH");
    let a = Answer::parse(&buf[..n]).expect("an HTTP answer");
    assert_eq!((a.status, a.code().as_str()), (408, "BLOB_UPLOAD_INVALID"));
    assert!(start.elapsed() < READ_TIMEOUT + SLACK);
    let a = call(host, "GET", &loc, &[], b"");
    assert_eq!((a.status, a.header("range")), (204, Some("0-9")));
}

/// SERVE-17: uploads nobody finishes are dropped after the upload timeout, spool and all;
/// at most 1024 are open at once.
fn abandoned_uploads(host: &str, root: &Path) {
    let loc = location(&start_upload(host));
    let id = loc.rsplit('/').next().unwrap().to_string();
    let a = call(host, "PATCH", &loc, &[], &vec![7u8; 1 << 20]);
    assert_eq!(a.status, 202);
    let spool = uploads_dir(root).join(&id);
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 1 << 20);
    // Touching it keeps it alive.
    std::thread::sleep(UPLOAD_TIMEOUT / 2);
    assert_eq!(call(host, "GET", &loc, &[], b"").status, 204);
    std::thread::sleep(UPLOAD_TIMEOUT / 2 + Duration::from_millis(500));
    assert!(
        spool.exists(),
        "upload touched {:?} ago was dropped",
        UPLOAD_TIMEOUT / 2
    );
    let start = Instant::now();
    while spool.exists() {
        assert!(
            start.elapsed() < UPLOAD_TIMEOUT + SLACK,
            "abandoned upload {id} still spooled after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "abandoned upload: spool removed {:?} after the last request",
        start.elapsed() + UPLOAD_TIMEOUT / 2 + Duration::from_millis(500)
    );
    let a = call(host, "PATCH", &loc, &[], b"late");
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    assert_eq!(call(host, "GET", &loc, &[], b"").status, 404);

    // The cap on open uploads, and the reaper clearing a thousand of them. Four clients
    // open uploads until one is refused: the first MAX_UPLOADS are accepted, and one is
    // refused before the reaper could free a slot, or, on a machine so slow that opening
    // them outlasts the upload timeout, once the reaper no longer keeps up.
    let start = Instant::now();
    let refused = std::sync::Mutex::new(None);
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while refused.lock().unwrap().is_none()
                    && accepted.load(std::sync::atomic::Ordering::Relaxed) < 4 * MAX_UPLOADS
                {
                    let a = start_upload(host);
                    if a.status == 202 {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        refused.lock().unwrap().get_or_insert(a);
                    }
                }
            });
        }
    });
    let opened = start.elapsed();
    let accepted = accepted.into_inner();
    let a = refused
        .into_inner()
        .unwrap()
        .unwrap_or_else(|| panic!("no upload refused after {accepted} in {opened:?}"));
    assert_eq!((a.status, a.code().as_str()), (429, "TOOMANYREQUESTS"));
    assert!(
        accepted >= MAX_UPLOADS,
        "refused after {accepted} uploads, below the cap"
    );
    if opened < UPLOAD_TIMEOUT {
        assert_eq!(accepted, MAX_UPLOADS, "no slot was freed meanwhile");
    }
    let start = Instant::now();
    while std::fs::read_dir(uploads_dir(root)).unwrap().count() > 0 {
        assert!(
            start.elapsed() < UPLOAD_TIMEOUT + SLACK,
            "{} abandoned uploads still spooled",
            std::fs::read_dir(uploads_dir(root)).unwrap().count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{accepted} uploads opened in {opened:?}, the next refused 429; all reaped {:?} later",
        start.elapsed()
    );
    assert_eq!(start_upload(host).status, 202, "uploads accepted again");
}

#[test]
fn hostile_clients_leave_serve_answering_within_bounds() {
    let fx = Fixtures::get();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let canary = tmp.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("passwd"), b"canary").unwrap();
    let read_timeout = READ_TIMEOUT.as_secs().to_string();
    let upload_timeout = UPLOAD_TIMEOUT.as_secs().to_string();
    let mut node = ServeNode::start(
        &root,
        &[
            "--allow-push",
            "--read-timeout",
            &read_timeout,
            "--upload-timeout",
            &upload_timeout,
        ],
    )
    .unwrap();
    let host = node.host();
    fx.push(BUSYBOX, &host, &format!("{REPO}:1"), false, None);
    let (layer_digest, layer_bytes) = layer();
    let before = tree(&root);
    let started = Instant::now();
    let puller = Puller::start(host.clone());

    connection_flood(&host);
    slowloris(&host);
    huge_heads(&host);
    bad_ranges(&host, &layer_digest, &layer_bytes);
    bad_names(&host);
    bad_digests(&host);
    oversized_manifests(&host);
    broken_uploads(&host, &root);
    abandoned_uploads(&host, &root);

    let pulls = puller.finish();
    let slowest = pulls.iter().max().copied().unwrap_or_default();
    assert!(pulls.len() >= 5, "only {} pulls ran", pulls.len());
    let rss = node.peak_rss_kib();
    eprintln!(
        "{} well-behaved pulls over {:?}, slowest {slowest:?}; serve peak RSS {} MiB",
        pulls.len(),
        started.elapsed(),
        rss >> 10
    );
    assert!(rss <= RSS_LIMIT_KIB, "serve peak RSS {rss} KiB");
    assert!(node.is_running(), "ferry serve died; log:\n{}", node.log());
    let log = node.log();
    assert!(!log.contains("panicked"), "ferry serve panicked:\n{log}");

    // Nothing outside the root; inside it, only what the pushes put there.
    assert_eq!(
        tree(tmp.path())
            .into_iter()
            .filter(|p| !p.starts_with("store"))
            .collect::<Vec<_>>(),
        ["canary", "canary/passwd"]
    );
    assert_eq!(std::fs::read(canary.join("passwd")).unwrap(), b"canary");
    let after = tree(&root);
    let new: Vec<&String> = after.difference(&before).collect();
    for path in &new {
        let blob = path
            .strip_prefix("blobs/sha256/")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let spool = path.starts_with("serve/uploads/");
        let database = path.starts_with("metadata.db");
        assert!(
            blob || spool || database,
            "unexpected file in the store: {path}"
        );
    }
}

/// SERVE-15: connections beyond `--max-connections` are closed as soon as they are accepted;
/// slots free up when idle ones reach the read timeout.
#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let node = ServeNode::start(
        &tmp.path().join("store"),
        &["--max-connections", "20", "--read-timeout", "2"],
    )
    .unwrap();
    let host = node.host();
    let held: Vec<TcpStream> = (0..20).map(|_| connect(&host)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let extra: Vec<TcpStream> = (0..10).map(|_| connect(&host)).collect();
    let refused = wait_all_closed(&extra, Duration::from_secs(1), "connections over the cap");
    assert!(
        held.iter().all(|s| !closed_by_server(s)),
        "a connection within the cap was closed early"
    );
    wait_all_closed(&held, Duration::from_secs(2) + SLACK, "idle connections");
    assert_eq!(call(&host, "GET", "/v2/", &[], b"").status, 200);
    eprintln!("cap: 10 connections over it closed within {refused:?}");
}

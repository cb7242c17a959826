//! The registry driver against a real CNCF distribution registry (and, for redirects and
//! retries, against tiny scripted HTTP servers from the test kit).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_core::{media, Digest};
use ferry_drivers::sources::registry::{
    check_login, credentials::Login, Credentials, DockerConfig, RegistryConfig, RegistryDriver,
};
use ferry_drivers::{ByteRange, ByteStream, Driver, ErrorKind};
use ferry_testkit::registry::{closed_port, flip_bytes, Registry, RegistryOptions};
use ferry_testkit::token::{HttpResponse, HttpServer, TokenPolicy};
use futures::StreamExt as _;

const USER: &str = "alice";
const PASS: &str = "s3cret";

fn driver_at(url: &str, credentials: Credentials) -> RegistryDriver {
    RegistryDriver::new(RegistryConfig {
        source_name: "test-registry".into(),
        base_url: url.parse().unwrap(),
        insecure: false,
        credentials,
        repository: None,
    })
    .unwrap()
}

fn basic() -> Credentials {
    Credentials::Basic {
        username: USER.into(),
        password: PASS.into(),
    }
}

fn stream_of(bytes: &[u8]) -> ByteStream {
    let chunks: Vec<ferry_drivers::Result<Bytes>> = bytes
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

async fn read_all(body: ferry_drivers::BlobBody) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = body.stream;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// A small image pushed by the driver: its manifest and layer.
struct Pushed {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

/// Pushes a one-layer OCI image as `name:tag`; `note` goes into an annotation (so tests can
/// tamper with the manifest and keep it valid JSON).
async fn push_image(d: &RegistryDriver, name: &str, tag: &str, note: &str) -> Pushed {
    let layer: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let (layer_digest, config_digest) = (Digest::sha256(&layer), Digest::sha256(&config));
    d.put_blob(name, &layer_digest, layer.len() as u64, stream_of(&layer))
        .await
        .unwrap();
    d.put_blob(
        name,
        &config_digest,
        config.len() as u64,
        stream_of(&config),
    )
    .await
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media::OCI_LAYER_TAR, "digest": layer_digest.to_string(), "size": layer.len()}],
        "annotations": {"org.example.note": note},
    }))
    .unwrap();
    let manifest_digest = d
        .put_manifest(name, Some(tag), media::OCI_MANIFEST, &manifest)
        .await
        .unwrap();
    assert_eq!(manifest_digest, Digest::sha256(&manifest));
    Pushed {
        manifest,
        manifest_digest,
        layer,
        layer_digest,
    }
}

#[tokio::test]
async fn resolves_a_present_tag_and_reports_a_missing_one_as_not_found() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous);
    let name = format!("{}/team/app", reg.host());
    let img = push_image(&d, &name, "v1", "hello").await;

    let desc = d.resolve(&name, "v1").await.unwrap();
    assert_eq!(desc.digest().to_string(), img.manifest_digest.to_string());
    assert_eq!(desc.size(), img.manifest.len() as u64);
    assert_eq!(desc.media_type().to_string(), media::OCI_MANIFEST);

    let err = d.resolve(&name, "v2").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert_eq!(err.message, format!("not found: {name}:v2"));
    let err = d
        .resolve(&format!("{}/no/such-repo", reg.host()), "v1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn fetches_manifest_and_blob_whole_and_ranged() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous);
    let name = format!("{}/team/app", reg.host());
    let img = push_image(&d, &name, "v1", "hello").await;

    let m = d.fetch_manifest(&name, &img.manifest_digest).await.unwrap();
    assert_eq!(m.bytes, img.manifest);
    assert_eq!(m.content_type.as_deref(), Some(media::OCI_MANIFEST));

    let whole = d
        .fetch_blob(&name, &img.layer_digest, ByteRange::WHOLE)
        .await
        .unwrap();
    assert_eq!(whole.len, Some(img.layer.len() as u64));
    assert_eq!(read_all(whole).await, img.layer);

    let tail = d
        .fetch_blob(&name, &img.layer_digest, ByteRange::from(1234))
        .await
        .unwrap();
    assert_eq!(tail.len, Some(img.layer.len() as u64 - 1234));
    assert_eq!(read_all(tail).await, &img.layer[1234..]);

    let middle = ByteRange {
        offset: 100,
        len: Some(50),
    };
    let part = d
        .fetch_blob(&name, &img.layer_digest, middle)
        .await
        .unwrap();
    assert_eq!(read_all(part).await, &img.layer[100..150]);

    assert_eq!(
        d.blob_size(&name, &img.layer_digest).await.unwrap(),
        Some(img.layer.len() as u64)
    );
    let absent = Digest::sha256(b"absent");
    assert_eq!(d.blob_size(&name, &absent).await.unwrap(), None);
    let err = d
        .fetch_blob(&name, &absent, ByteRange::WHOLE)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains(&format!("{name}@{absent}")), "{err}");
}

#[tokio::test]
async fn pushed_blob_and_manifest_read_back_and_present_blobs_are_skipped() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous);
    let name = format!("{}/push/me", reg.host());
    let img = push_image(&d, &name, "latest", "x").await;
    let back = d
        .fetch_blob(&name, &img.layer_digest, ByteRange::WHOLE)
        .await
        .unwrap();
    assert_eq!(read_all(back).await, img.layer);
    assert_eq!(
        d.fetch_manifest(&name, &img.manifest_digest)
            .await
            .unwrap()
            .bytes,
        img.manifest
    );

    // Present: the body is never read.
    let poisoned: ByteStream = Box::pin(futures::stream::once(async {
        Err(ferry_drivers::Error::new(
            ErrorKind::Invalid,
            "test",
            "body must not be read",
        ))
    }));
    d.put_blob(&name, &img.layer_digest, img.layer.len() as u64, poisoned)
        .await
        .unwrap();

    // By digest, no tag.
    let by_digest = d
        .put_manifest(&name, None, media::OCI_MANIFEST, &img.manifest)
        .await
        .unwrap();
    assert_eq!(by_digest, img.manifest_digest);

    // A body shorter than announced is refused, naming the blob.
    let data = b"short body".to_vec();
    let digest = Digest::sha256(&data);
    let err = d
        .put_blob(&name, &digest, 100, stream_of(&data))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("ended after 10 of 100"), "{err}");
}

#[tokio::test]
async fn large_blobs_go_in_patch_chunks_that_the_registry_accepts() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous).with_upload_chunk_size(4096);
    let name = format!("{}/team/chunked", reg.host());
    let img = push_image(&d, &name, "v1", "x").await;
    assert!(img.layer.len() > 2 * 4096);
    let back = d
        .fetch_blob(&name, &img.layer_digest, ByteRange::WHOLE)
        .await
        .unwrap();
    assert_eq!(read_all(back).await, img.layer);

    let data = vec![7u8; 5000];
    let err = d
        .put_blob(&name, &Digest::sha256(&data), 9000, stream_of(&data))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("ended after 5000 of 9000"), "{err}");
}

#[tokio::test]
async fn failed_upload_chunk_resumes_from_the_offset_the_registry_reports() {
    let blob: Vec<u8> = (0..3500u32).map(|i| (i % 249) as u8).collect();
    let digest = Digest::sha256(&blob);
    let held = Arc::new(Mutex::new(Vec::<u8>::new()));
    let patches = Arc::new(Mutex::new(Vec::<String>::new()));
    let (store, log) = (held.clone(), patches.clone());
    // A fake upload endpoint whose second PATCH keeps half the bytes and fails.
    let server = HttpServer::start(move |req| {
        let mut data = store.lock().unwrap();
        let range = |n: usize| format!("0-{}", n.saturating_sub(1));
        match (req.method.as_str(), req.path()) {
            ("HEAD", _) => HttpResponse::new(404, ""),
            ("POST", _) => HttpResponse::new(202, "").header("Location", "/upload/1"),
            ("PATCH", "/upload/1") => {
                let content_range = req.header("content-range").unwrap_or("").to_string();
                let mut log = log.lock().unwrap();
                log.push(content_range.clone());
                if !content_range.starts_with(&format!("{}-", data.len())) {
                    return HttpResponse::new(416, "");
                }
                if log.len() == 2 {
                    data.extend_from_slice(&req.body[..req.body.len() / 2]);
                    return HttpResponse::new(500, "disk hiccup");
                }
                data.extend_from_slice(&req.body);
                HttpResponse::new(202, "")
                    .header("Location", "/upload/1")
                    .header("Range", &range(data.len()))
            }
            ("GET", "/upload/1") => HttpResponse::new(204, "").header("Range", &range(data.len())),
            ("PUT", "/upload/1") if Digest::sha256(&data).to_string() == req.query()[0].1 => {
                HttpResponse::new(201, "")
            }
            _ => HttpResponse::new(400, "unexpected"),
        }
    })
    .unwrap();
    let d = driver_at(&server.url(), Credentials::Anonymous).with_upload_chunk_size(1000);
    let name = format!("{}/team/app", server.host());
    d.put_blob(&name, &digest, blob.len() as u64, stream_of(&blob))
        .await
        .unwrap();
    assert_eq!(*held.lock().unwrap(), blob);
    assert_eq!(
        *patches.lock().unwrap(),
        ["0-999", "1000-1999", "1500-1999", "2000-2999", "3000-3499"]
    );
}

#[tokio::test]
async fn blob_known_in_another_repository_is_mounted_not_uploaded() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous);
    let a = format!("{}/mount/a", reg.host());
    let b = format!("{}/mount/b", reg.host());
    let img = push_image(&d, &a, "v1", "x").await;
    assert_eq!(d.blob_size(&b, &img.layer_digest).await.unwrap(), None);
    let poisoned: ByteStream = Box::pin(futures::stream::once(async {
        Err(ferry_drivers::Error::new(
            ErrorKind::Invalid,
            "test",
            "body must not be read",
        ))
    }));
    d.put_blob(&b, &img.layer_digest, img.layer.len() as u64, poisoned)
        .await
        .unwrap();
    let back = d
        .fetch_blob(&b, &img.layer_digest, ByteRange::WHOLE)
        .await
        .unwrap();
    assert_eq!(read_all(back).await, img.layer);
}

#[tokio::test]
async fn tampered_blob_is_served_unverified_but_tampered_manifest_is_corrupt() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous);
    let name = format!("{}/team/app", reg.host());
    let img = push_image(&d, &name, "v1", "aaaa").await;

    flip_bytes(&reg.blob_data_path(&img.layer_digest.to_string())).unwrap();
    let got = read_all(
        d.fetch_blob(&name, &img.layer_digest, ByteRange::WHOLE)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.len(), img.layer.len());
    assert_ne!(
        got, img.layer,
        "the registry should serve the tampered bytes"
    );

    let path = reg.blob_data_path(&img.manifest_digest.to_string());
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("aaaa", "bbbb")).unwrap();
    let err = d
        .fetch_manifest(&name, &img.manifest_digest)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    assert!(
        err.message
            .contains(&format!("{name}@{}", img.manifest_digest)),
        "{err}"
    );
    assert!(err.message.contains("digest mismatch"), "{err}");
}

#[tokio::test]
async fn manifest_over_four_mib_is_refused_by_length_and_while_reading() {
    // distribution itself neither stores nor serves such manifests: a scripted server does.
    let huge = vec![b' '; 5 << 20];
    let digest = Digest::sha256(&huge).to_string();
    let served = digest.clone();
    let server = HttpServer::start(move |req| {
        let resp = HttpResponse::new(200, huge.clone())
            .header("Content-Type", media::OCI_MANIFEST)
            .header("Docker-Content-Digest", &served);
        if req.path().contains("/unsized/") {
            resp.close_delimited()
        } else {
            resp
        }
    })
    .unwrap();
    let d = driver_at(&server.url(), Credentials::Anonymous);
    let digest = Digest::parse(&digest).unwrap();
    for repo in ["sized", "unsized"] {
        let name = format!("{}/team/{repo}", server.host());
        let err = d.fetch_manifest(&name, &digest).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
        assert!(err.message.contains("too large"), "{err}");
        assert!(err.message.contains(&format!("{name}@{digest}")), "{err}");
    }
    let err = d
        .resolve(&format!("{}/team/sized", server.host()), "v1")
        .await
        .unwrap_err();
    assert!(err.message.contains("too large"), "{err}");

    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous);
    let name = format!("{}/team/big", reg.host());
    let err = d
        .put_manifest(
            &name,
            Some("huge"),
            media::OCI_MANIFEST,
            &vec![b' '; 5 << 20],
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("too large"), "{err}");
}

#[tokio::test]
async fn list_tags_follows_pagination() {
    let reg = Registry::start(RegistryOptions::open()).unwrap();
    let d = driver_at(&reg.url(), Credentials::Anonymous).with_tag_page_size(2);
    let name = format!("{}/team/tags", reg.host());
    let img = push_image(&d, &name, "t0", "x").await;
    for t in ["t1", "t2", "t3", "t4"] {
        d.put_manifest(&name, Some(t), media::OCI_MANIFEST, &img.manifest)
            .await
            .unwrap();
    }
    let mut tags = d.list_tags(&name).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["t0", "t1", "t2", "t3", "t4"]);
    let err = d
        .list_tags(&format!("{}/no/such", reg.host()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn basic_auth_works_with_right_credentials_and_names_host_without() {
    let reg = Registry::start(RegistryOptions::basic(USER, PASS)).unwrap();
    let name = format!("{}/team/app", reg.host());
    let d = driver_at(&reg.url(), basic());
    let img = push_image(&d, &name, "v1", "x").await;
    assert_eq!(
        d.resolve(&name, "v1").await.unwrap().size(),
        img.manifest.len() as u64
    );

    let anon = driver_at(&reg.url(), Credentials::Anonymous);
    let err = anon.resolve(&name, "v1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    assert!(
        err.message.contains(&format!("ferry login {}", reg.host())),
        "{err}"
    );

    let wrong = driver_at(
        &reg.url(),
        Credentials::Basic {
            username: USER.into(),
            password: "wrong".into(),
        },
    );
    let err = wrong
        .fetch_manifest(&name, &img.manifest_digest)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    assert!(err.message.contains(&reg.host()), "{err}");

    check_login(&reg.host(), USER, PASS).await.unwrap();
    let err = check_login(&reg.host(), USER, "wrong").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
}

#[tokio::test]
async fn bearer_tokens_allow_anonymous_pull_and_push_with_credentials_cached_per_scope() {
    let reg = Registry::start(RegistryOptions::token(TokenPolicy::new(USER, PASS))).unwrap();
    let name = format!("{}/team/app", reg.host());
    let d = driver_at(&reg.url(), basic());
    let img = push_image(&d, &name, "v1", "x").await;
    let tokens_after_push = reg.token_server().unwrap().requests();

    // Pulls with the same driver reuse one pull token.
    d.resolve(&name, "v1").await.unwrap();
    d.fetch_manifest(&name, &img.manifest_digest).await.unwrap();
    read_all(
        d.fetch_blob(&name, &img.layer_digest, ByteRange::WHOLE)
            .await
            .unwrap(),
    )
    .await;
    let pull_tokens = reg.token_server().unwrap().requests() - tokens_after_push;
    assert!(
        pull_tokens <= 1,
        "{pull_tokens} token requests for three pulls"
    );

    let anon = driver_at(&reg.url(), Credentials::Anonymous);
    assert_eq!(
        anon.fetch_manifest(&name, &img.manifest_digest)
            .await
            .unwrap()
            .bytes,
        img.manifest
    );
    let err = anon
        .put_manifest(&name, Some("v2"), media::OCI_MANIFEST, &img.manifest)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");

    check_login(&reg.host(), USER, PASS).await.unwrap();
    let err = check_login(&reg.host(), USER, "wrong").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    assert!(
        err.message.contains(&format!("ferry login {}", reg.host())),
        "{err}"
    );
}

#[tokio::test]
async fn bearer_push_beyond_granted_actions_is_unauthorized() {
    let policy = TokenPolicy::new(USER, PASS)
        .user_actions(&["pull"])
        .anonymous_actions(&[]);
    let reg = Registry::start(RegistryOptions::token(policy)).unwrap();
    let d = driver_at(&reg.url(), basic());
    let name = format!("{}/team/app", reg.host());
    let data = b"layer".to_vec();
    let err = d
        .put_blob(
            &name,
            &Digest::sha256(&data),
            data.len() as u64,
            stream_of(&data),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
    assert!(
        err.message.contains(&format!("ferry login {}", reg.host())),
        "{err}"
    );

    // Anonymous clients get no access at all here.
    let anon = driver_at(&reg.url(), Credentials::Anonymous);
    let err = anon.resolve(&name, "v1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
}

#[tokio::test]
async fn connection_refused_is_unavailable_naming_the_url() {
    let port = closed_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let d = driver_at(&url, Credentials::Anonymous);
    let err = d
        .resolve(&format!("127.0.0.1:{port}/team/app"), "v1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(
        err.message
            .contains(&format!("{url}/v2/team/app/manifests/v1")),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
}

#[tokio::test]
async fn redirected_blob_fetch_drops_authorization_off_origin() {
    let seen_auth = Arc::new(Mutex::new(Vec::new()));
    let seen = seen_auth.clone();
    // "localhost" is another origin than "127.0.0.1" for the driver.
    let storage = HttpServer::start(move |req| {
        seen.lock()
            .unwrap()
            .push(req.header("authorization").map(str::to_string));
        HttpResponse::new(200, "blob bytes")
    })
    .unwrap();
    let storage_url = format!(
        "http://localhost:{}/data",
        storage.url().rsplit(':').next().unwrap()
    );
    let front = HttpServer::start(move |req| match req.header("authorization") {
        None => HttpResponse::new(401, "").header("WWW-Authenticate", r#"Basic realm="front""#),
        Some(_) if req.path().contains("/blobs/") => {
            HttpResponse::new(307, "").header("Location", &storage_url)
        }
        Some(_) => HttpResponse::new(404, ""),
    })
    .unwrap();
    let d = driver_at(&front.url(), basic());
    let digest = Digest::sha256(b"blob bytes");
    let body = d
        .fetch_blob(
            &format!("{}/team/app", front.host()),
            &digest,
            ByteRange::WHOLE,
        )
        .await
        .unwrap();
    assert_eq!(read_all(body).await, b"blob bytes");
    assert_eq!(
        *seen_auth.lock().unwrap(),
        vec![None],
        "credentials leaked to the storage host"
    );
}

#[tokio::test]
async fn registry_without_digest_headers_or_ranges_still_resolves_and_serves_ranges() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    let blob: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let served = blob.clone();
    // Answers without Docker-Content-Digest and ignores Range (always 200, whole body).
    let server = HttpServer::start(move |req| {
        if req.path().contains("/blobs/") {
            seen.lock()
                .unwrap()
                .push(req.header("range").map(str::to_string));
            HttpResponse::new(200, served.clone())
        } else {
            HttpResponse::new(200, manifest.to_vec()).header("Content-Type", media::OCI_MANIFEST)
        }
    })
    .unwrap();
    let d = driver_at(&server.url(), Credentials::Anonymous);
    let name = format!("{}/team/app", server.host());
    let desc = d.resolve(&name, "v1").await.unwrap();
    assert_eq!(
        desc.digest().to_string(),
        Digest::sha256(manifest).to_string()
    );
    assert_eq!(desc.size(), manifest.len() as u64);

    let digest = Digest::sha256(&blob);
    let tail = d
        .fetch_blob(&name, &digest, ByteRange::from(4000))
        .await
        .unwrap();
    assert_eq!(tail.len, Some(1000));
    assert_eq!(read_all(tail).await, &blob[4000..]);
    let part = ByteRange {
        offset: 10,
        len: Some(20),
    };
    let body = d.fetch_blob(&name, &digest, part).await.unwrap();
    assert_eq!(body.len, Some(20));
    assert_eq!(read_all(body).await, &blob[10..30]);
    assert_eq!(
        *ranges.lock().unwrap(),
        vec![
            Some("bytes=4000-".to_string()),
            Some("bytes=10-29".to_string())
        ]
    );
}

#[tokio::test]
async fn server_errors_and_429_are_retried_then_reported_unavailable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    let digest = Digest::sha256(manifest);
    let served = digest.to_string();
    let flaky = HttpServer::start(move |req| match counter.fetch_add(1, Ordering::SeqCst) {
        0 => HttpResponse::new(503, "busy"),
        1 => HttpResponse::new(429, "slow down").header("Retry-After", "1"),
        _ if req.path().contains("/always-down/") => HttpResponse::new(502, "down"),
        _ => HttpResponse::new(200, manifest.to_vec())
            .header("Content-Type", media::OCI_MANIFEST)
            .header("Docker-Content-Digest", &served),
    })
    .unwrap();
    let d = driver_at(&flaky.url(), Credentials::Anonymous);
    let name = format!("{}/team/app", flaky.host());
    let desc = d.resolve(&name, "v1").await.unwrap();
    assert_eq!(desc.digest().to_string(), digest.to_string());
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let err = d
        .resolve(&format!("{}/team/always-down", flaky.host()), "v1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("502"), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "three attempts, then give up"
    );
}

#[tokio::test]
async fn docker_config_round_trips_and_feeds_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("config.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        r#"{"credsStore":"none","auths":{"other.example.com":{"auth":"eDp5"}}}"#,
    )
    .unwrap();

    let reg = Registry::start(RegistryOptions::basic(USER, PASS)).unwrap();
    let mut cfg = DockerConfig::load_from(&path).unwrap();
    assert_eq!(cfg.credentials(&reg.host()).unwrap(), None);
    cfg.set_auth(&reg.host(), USER, PASS).unwrap();

    let again = DockerConfig::load_from(&path).unwrap();
    let Some(Login::Password {
        username: u,
        password: p,
    }) = again.credentials(&reg.host()).unwrap()
    else {
        panic!("no password stored for {}", reg.host());
    };
    assert_eq!((u.as_str(), p.as_str()), (USER, PASS));
    assert_eq!(
        again.credentials("other.example.com").unwrap(),
        Some(Login::Password {
            username: "x".into(),
            password: "y".into()
        })
    );
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(raw["credsStore"], "none");
    assert_eq!(raw["auths"][reg.host()]["auth"], "YWxpY2U6czNjcmV0");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A fresh file is created with its directory.
    let fresh = dir.path().join("new").join("config.json");
    DockerConfig::load_from(&fresh)
        .unwrap()
        .set_auth("r.example.com", "u", "p")
        .unwrap();
    assert!(fresh.exists());

    // The stored credentials work against the registry.
    let d = driver_at(
        &reg.url(),
        Credentials::Basic {
            username: u,
            password: p,
        },
    );
    let name = format!("{}/team/app", reg.host());
    push_image(&d, &name, "v1", "x").await;
}

//! Behaviour of the `s3` driver beyond the conformance suite (`specs/s3-layout.md`), against
//! moto and a real `docker-registry` writing to moto.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::manifest::descriptor_digest;
use ferry_core::{media, Digest};
use ferry_drivers::sources::s3::{S3Config, S3Credentials, S3Driver, S3Layout};
use ferry_drivers::{ByteRange, ByteStream, Driver, ErrorKind};
use ferry_testkit::conformance::{Seed, SMALL};
use ferry_testkit::s3::{S3Registry, S3Server};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, ObjectStore as _, PutPayload};

const NAME: &str = "registry.example.com/team/app";

fn body(bytes: &[u8]) -> ByteStream {
    let bytes = Bytes::copy_from_slice(bytes);
    Box::pin(futures::stream::once(async { Ok(bytes) }))
}

fn manifest(config: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": Digest::sha256(config).to_string(), "size": config.len()},
        "layers": [],
    }))
    .expect("json")
}

/// S3-1, S3-2, S3-3: what the driver writes sits exactly at the keys the spec names.
#[tokio::test]
async fn ferry_layout_keys_match_the_spec() {
    let s3 = S3Server::start().expect("moto");
    s3.create_bucket("images").expect("bucket");
    let config = S3Config {
        prefix: "/site/a/".into(),
        ..s3.config("s3", "images", S3Layout::Ferry)
    };
    let driver = S3Driver::new(config).expect("driver");
    let config_bytes = b"{\"os\":\"linux\"}";
    driver
        .put_blob(
            NAME,
            &Digest::sha256(config_bytes),
            config_bytes.len() as u64,
            body(config_bytes),
        )
        .await
        .expect("put config");
    let manifest = manifest(config_bytes);
    let digest = driver
        .put_manifest(NAME, Some("1.0"), media::OCI_MANIFEST, &manifest)
        .await
        .expect("put manifest");

    let raw = s3.store("images");
    let blob =
        |d: &Digest| ObjectPath::parse(format!("site/a/blobs/sha256/{}", d.hex())).expect("key");
    let got = raw
        .get(&blob(&Digest::sha256(config_bytes)))
        .await
        .expect("config object");
    assert_eq!(got.bytes().await.expect("bytes").as_ref(), config_bytes);
    let got = raw.get(&blob(&digest)).await.expect("manifest object");
    let content_type = got
        .attributes
        .get(&Attribute::ContentType)
        .map(|v| v.to_string());
    assert_eq!(content_type.as_deref(), Some(media::OCI_MANIFEST));
    assert_eq!(
        got.bytes().await.expect("bytes").as_ref(),
        manifest.as_slice()
    );
    let tag = ObjectPath::parse(format!("site/a/names/{NAME}/tags/1.0")).expect("key");
    let record: serde_json::Value = serde_json::from_slice(
        &raw.get(&tag)
            .await
            .expect("tag object")
            .bytes()
            .await
            .expect("bytes"),
    )
    .expect("json");
    assert_eq!(
        record,
        serde_json::json!({"digest": digest.to_string(), "mediaType": media::OCI_MANIFEST, "size": manifest.len()})
    );

    // A malformed tag record is invalid, not a crash or a miss.
    let bad = ObjectPath::parse(format!("site/a/names/{NAME}/tags/bad")).expect("key");
    raw.put(&bad, PutPayload::from_static(b"not json"))
        .await
        .expect("put");
    let err = driver.resolve(NAME, "bad").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("s3://images/site/a/names/"), "{err}");
}

/// S3-7: a distribution bucket is read by repository: `docker.io/library/x` is repository
/// `library/x`, and a blob the repository does not link is not found for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_layout_reads_by_repository_links() {
    let s3 = S3Server::start().expect("moto");
    let registry = S3Registry::start(&s3, "registry", "").expect("registry on moto");
    let seed = Seed::get();
    let dest = format!("docker://{}/library/busybox", registry.host());
    tokio::task::spawn_blocking(move || {
        seed.copy_all(&dest, false);
        registry.stop();
    })
    .await
    .expect("push");
    let driver = S3Driver::new(s3.config("s3-registry", "registry", S3Layout::Distribution))
        .expect("driver");
    let image = seed.image(SMALL);

    let desc = driver
        .resolve("docker.io/library/busybox", SMALL)
        .await
        .expect("resolve");
    assert_eq!(
        descriptor_digest(&desc).expect("digest"),
        image.manifest.digest
    );
    let other = "docker.io/library/other";
    let layer = &image.layers[0].digest;
    assert_eq!(
        driver
            .fetch_blob(other, layer, ByteRange::WHOLE)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        driver
            .fetch_manifest(other, &image.manifest.digest)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    assert_eq!(driver.blob_size(other, layer).await.expect("size"), None);
    assert_eq!(
        driver
            .blob_size("docker.io/library/busybox", layer)
            .await
            .expect("size"),
        Some(image.layers[0].size)
    );
}

/// S3-8: an endpoint nobody listens on is unavailable, quickly.
#[tokio::test]
async fn unreachable_endpoint_is_unavailable() {
    let port = ferry_testkit::free_port();
    let config = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        allow_http: true,
        credentials: S3Credentials::Anonymous,
        ..S3Config::new("s3", "images")
    };
    let driver = S3Driver::new(config).expect("driver");
    let started = Instant::now();
    let err = driver.resolve(NAME, "1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(!err.message.contains('\n'), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
}

/// S3-8: requests moto refuses (an unsigned GET of an existing object: 403) are unauthorized.
#[tokio::test]
async fn refused_requests_are_unauthorized() {
    let s3 = S3Server::start().expect("moto");
    s3.create_bucket("private").expect("bucket");
    let tag = ObjectPath::parse(format!("names/{NAME}/tags/1")).expect("key");
    s3.store("private")
        .put(&tag, PutPayload::from_static(b"{}"))
        .await
        .expect("put");
    let config = S3Config {
        credentials: S3Credentials::Anonymous,
        ..s3.config("s3", "private", S3Layout::Ferry)
    };
    let driver = S3Driver::new(config).expect("driver");
    let err = driver.resolve(NAME, "1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized, "{err}");
}

/// S3-9: a plain-HTTP endpoint is refused unless allowed.
#[test]
fn plain_http_endpoint_needs_allow_http() {
    let config = S3Config {
        endpoint: Some("http://s3.internal:9000".into()),
        ..S3Config::new("s3", "images")
    };
    let err = S3Driver::new(config).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("plain HTTP"), "{err}");
}

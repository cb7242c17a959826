//! Behaviour of the `oci-layout` driver beyond the conformance suite (`specs/oci-layout.md`),
//! checked against layouts skopeo writes and reads.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::manifest::descriptor_digest;
use ferry_core::{media, Digest};
use ferry_drivers::sources::oci_layout::OciLayoutDriver;
use ferry_drivers::{ByteRange, ByteStream, Driver, ErrorKind};
use ferry_testkit::conformance::{Seed, SMALL};
use ferry_testkit::run_ok;
use futures::StreamExt as _;

const NAME: &str = "registry.example.com/team/app";

fn body(bytes: &[u8]) -> ByteStream {
    let bytes = Bytes::copy_from_slice(bytes);
    Box::pin(futures::stream::once(async { Ok(bytes) }))
}

async fn read(
    driver: &dyn Driver,
    digest: &Digest,
    range: ByteRange,
) -> ferry_drivers::Result<Vec<u8>> {
    let mut stream = driver.fetch_blob(NAME, digest, range).await?.stream;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A small OCI manifest whose config is `config`; returns its bytes.
fn manifest(config: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": Digest::sha256(config).to_string(), "size": config.len()},
        "layers": [],
    }))
    .expect("json")
}

/// Pushes a one-config image as `name:tag`; returns the manifest digest.
async fn push(driver: &dyn Driver, name: &str, tag: &str, config: &[u8]) -> Digest {
    driver
        .put_blob(
            name,
            &Digest::sha256(config),
            config.len() as u64,
            body(config),
        )
        .await
        .expect("put config");
    driver
        .put_manifest(name, Some(tag), media::OCI_MANIFEST, &manifest(config))
        .await
        .expect("put manifest")
}

fn index(layout: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
        .expect("json")
}

fn ref_names(layout: &Path) -> Vec<String> {
    index(layout)["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// OCI-1: images of many names share one layout; short ref names are normalized.
#[tokio::test]
async fn many_images_share_one_layout_under_full_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("stick");
    let seed = Seed::get();
    for name in [NAME, "127.0.0.1:5000/other/app"] {
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--preserve-digests"])
                .arg(format!("oci:{}:{SMALL}", seed.layout().display()))
                .arg(format!("oci:{}:{name}:1", layout.display())),
        );
    }
    // A short name as other tools may write it.
    let driver = OciLayoutDriver::new("usb", &layout);
    let busybox = push(
        &driver,
        "docker.io/library/busybox",
        "1.36",
        b"{\"busybox\":1}",
    )
    .await;
    let mut idx = index(&layout);
    for entry in idx["manifests"].as_array_mut().expect("manifests") {
        if entry["digest"] == busybox.to_string() {
            entry["annotations"]["org.opencontainers.image.ref.name"] = "busybox:1.36".into();
        }
    }
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&idx).expect("json"),
    )
    .expect("write index");

    let small = &seed.image(SMALL).manifest.digest;
    for name in [NAME, "127.0.0.1:5000/other/app"] {
        let desc = driver.resolve(name, "1").await.expect("resolve");
        assert_eq!(&descriptor_digest(&desc).expect("digest"), small);
        assert_eq!(driver.list_tags(name).await.expect("tags"), ["1"]);
    }
    let desc = driver
        .resolve("docker.io/library/busybox", "1.36")
        .await
        .expect("resolve short ref name");
    assert_eq!(descriptor_digest(&desc).expect("digest"), busybox);
    let err = driver
        .resolve("registry.example.com/team/other", "1")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    // Names must be full: a short one is a caller's mistake.
    let err = driver.resolve("busybox", "1.36").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
}

/// OCI-3: plain tags belong to the configured name only, never to a guessed one.
#[tokio::test]
async fn plain_tags_belong_only_to_the_configured_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let seed = Seed::get();
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--preserve-digests"])
            .arg(format!("oci:{}:{SMALL}", seed.layout().display()))
            .arg(format!("oci:{}:1", layout.display())),
    );

    let unnamed = OciLayoutDriver::new("usb", &layout);
    assert_eq!(
        unnamed.resolve(NAME, "1").await.unwrap_err().kind,
        ErrorKind::NotFound
    );

    let named = OciLayoutDriver::new("usb", &layout)
        .with_plain_tags_of(NAME)
        .expect("name");
    let desc = named.resolve(NAME, "1").await.expect("resolve plain tag");
    assert_eq!(
        descriptor_digest(&desc).expect("digest"),
        seed.image(SMALL).manifest.digest
    );
    assert_eq!(named.list_tags(NAME).await.expect("tags"), ["1"]);
    let other = named
        .resolve("registry.example.com/team/other", "1")
        .await
        .unwrap_err();
    assert_eq!(other.kind, ErrorKind::NotFound, "{other}");

    // Tagging `1` again replaces the plain entry with a full one.
    let digest = push(&named, NAME, "1", b"{\"v\":2}").await;
    assert_eq!(ref_names(&layout), [format!("{NAME}:1")]);
    assert_eq!(
        descriptor_digest(&named.resolve(NAME, "1").await.expect("resolve")).expect("digest"),
        digest
    );
}

/// OCI-4, OCI-5: tagging replaces the entry, keeps foreign entries and fields, and skopeo
/// reads what ferry wrote into a fresh directory.
#[tokio::test]
async fn tagging_replaces_the_entry_and_skopeo_reads_the_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("new");
    let driver = OciLayoutDriver::new("usb", &layout);
    let first = push(&driver, NAME, "1", b"{\"v\":1}").await;
    assert!(
        layout.join("oci-layout").exists(),
        "the first write creates the layout"
    );

    let mut idx = index(&layout);
    idx["annotations"] = serde_json::json!({"org.example.keep": "me"});
    let unnamed = idx["manifests"][0].clone();
    let mut unnamed = unnamed.as_object().expect("entry").clone();
    unnamed.remove("annotations");
    idx["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(unnamed.into());
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&idx).expect("json"),
    )
    .expect("write index");

    let second = push(&driver, NAME, "1", b"{\"v\":2}").await;
    assert_ne!(first, second);
    let idx = index(&layout);
    assert_eq!(idx["annotations"]["org.example.keep"], "me");
    assert_eq!(
        idx["manifests"].as_array().expect("manifests").len(),
        2,
        "{idx}"
    );
    assert_eq!(ref_names(&layout), [format!("{NAME}:1")]);

    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:{NAME}:1", layout.display())),
    );
    assert_eq!(raw.as_bytes(), manifest(b"{\"v\":2}"));
    assert!(
        std::fs::read_dir(layout.join(".ferry-tmp"))
            .expect("tmp dir")
            .next()
            .is_none(),
        "temporary files left"
    );
}

/// OCI-5: a refused blob leaves neither a blob nor a temporary file.
#[tokio::test]
async fn refused_blob_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = OciLayoutDriver::new("usb", dir.path());
    let digest = Digest::sha256(b"claimed");
    let err = driver
        .put_blob(NAME, &digest, 7, body(b"claimeD"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    let err = driver
        .put_blob(NAME, &digest, 7, body(b"claimed and more"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    assert!(!dir.path().join("blobs/sha256").join(digest.hex()).exists());
    assert!(std::fs::read_dir(dir.path().join(".ferry-tmp"))
        .expect("tmp dir")
        .next()
        .is_none());
}

/// OCI-6: concurrent writers, through separate driver instances, keep every tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_every_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writes = (0..16).map(|i| {
        let driver = Arc::new(OciLayoutDriver::new(format!("writer-{i}"), dir.path()));
        tokio::spawn(async move {
            push(
                driver.as_ref(),
                NAME,
                &format!("t{i}"),
                format!("{{\"i\":{i}}}").as_bytes(),
            )
            .await
        })
    });
    for w in futures::future::join_all(writes).await {
        w.expect("writer task");
    }
    let tags = OciLayoutDriver::new("usb", dir.path())
        .list_tags(NAME)
        .await
        .expect("tags");
    assert_eq!(tags.len(), 16, "{tags:?}");
}

/// OCI-7: symlinks and FIFOs inside the layout are refused, not followed, and nothing is
/// written outside it.
#[tokio::test]
async fn symlinks_and_fifos_inside_the_layout_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let driver = OciLayoutDriver::new("usb", &layout);
    push(&driver, NAME, "1", b"{}").await;

    // A blob that is a symlink to a file outside with the right bytes.
    let secret = b"outside bytes";
    let digest = Digest::sha256(secret);
    std::fs::write(outside.join("secret"), secret).expect("write");
    std::os::unix::fs::symlink(
        outside.join("secret"),
        layout.join("blobs/sha256").join(digest.hex()),
    )
    .expect("symlink");
    let err = read(&driver, &digest, ByteRange::WHOLE).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("symlink"), "{err}");

    // A FIFO as a blob: refused at once instead of blocking.
    let fifo = Digest::sha256(b"fifo");
    nix::unistd::mkfifo(
        &layout.join("blobs/sha256").join(fifo.hex()),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let err = driver.blob_size(NAME, &fifo).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");

    // `blobs/sha256` replaced by a symlink to a directory outside: no read, no write there.
    std::fs::rename(layout.join("blobs/sha256"), outside.join("sha256")).expect("move blobs");
    std::os::unix::fs::symlink(outside.join("sha256"), layout.join("blobs/sha256"))
        .expect("symlink");
    let err = driver.resolve(NAME, "1").await.map(drop);
    assert!(err.is_ok(), "index.json is still readable: {err:?}");
    let manifest_digest =
        descriptor_digest(&driver.resolve(NAME, "1").await.expect("resolve")).expect("digest");
    let err = driver
        .fetch_manifest(NAME, &manifest_digest)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    let new = b"new blob";
    let err = driver
        .put_blob(NAME, &Digest::sha256(new), new.len() as u64, body(new))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(
        !outside
            .join("sha256")
            .join(Digest::sha256(new).hex())
            .exists(),
        "wrote through a symlink"
    );
}

/// OCI-8: a layout that is not there (a stick not mounted) is unavailable, not empty.
#[tokio::test]
async fn missing_layout_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = OciLayoutDriver::new("usb", dir.path().join("not-mounted"));
    let err = driver.resolve(NAME, "1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("not-mounted"), "{err}");
    let empty = OciLayoutDriver::new("usb", dir.path());
    assert_eq!(
        empty.list_tags(NAME).await.unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

/// OCI-9: a manifest whose bytes do not match is corrupt; OCI-10: ranges past the end are
/// cut, offsets past the end invalid.
#[tokio::test]
async fn manifests_are_verified_and_ranges_are_cut_at_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = OciLayoutDriver::new("usb", dir.path());
    let digest = push(&driver, NAME, "1", b"{\"x\":1}").await;
    let config = b"{\"x\":1}";
    let config_digest = Digest::sha256(config);
    let got = read(
        &driver,
        &config_digest,
        ByteRange {
            offset: 2,
            len: Some(100),
        },
    )
    .await
    .expect("range");
    assert_eq!(got, &config[2..]);
    assert!(read(
        &driver,
        &config_digest,
        ByteRange::from(config.len() as u64)
    )
    .await
    .expect("empty")
    .is_empty());
    let err = read(
        &driver,
        &config_digest,
        ByteRange::from(config.len() as u64 + 1),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");

    let path = dir.path().join("blobs/sha256").join(digest.hex());
    let mut bytes = std::fs::read(&path).expect("read manifest");
    bytes[0] = b' ';
    std::fs::write(&path, bytes).expect("tamper");
    let err = driver.fetch_manifest(NAME, &digest).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
}

/// OCI-11: a directory without an `oci-layout` file, or of a layout version ferry does not
/// know, is refused for reading and writing, naming the file and the version.
#[tokio::test]
async fn layouts_need_a_known_oci_layout_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");
    let driver = OciLayoutDriver::new("usb", &layout);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let digest = push(&driver, NAME, "1", config).await;
    assert_eq!(
        driver
            .resolve(NAME, "1")
            .await
            .unwrap()
            .digest()
            .to_string(),
        digest.to_string()
    );
    let layout_file = layout.join("oci-layout");

    std::fs::remove_file(&layout_file).unwrap();
    let err = driver.resolve(NAME, "1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("no oci-layout file"), "{err}");
    let err = driver.fetch_manifest(NAME, &digest).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");

    std::fs::write(&layout_file, br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    for err in [
        driver.resolve(NAME, "1").await.unwrap_err(),
        read(&driver, &Digest::sha256(config), ByteRange::WHOLE)
            .await
            .unwrap_err(),
        driver
            .put_manifest(NAME, Some("2"), media::OCI_MANIFEST, &manifest(config))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.kind, ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("\"2.0.0\""), "{err}");
    }
    assert_eq!(
        ref_names(&layout),
        vec![format!("{NAME}:1")],
        "nothing written"
    );

    std::fs::write(&layout_file, b"[]").unwrap();
    let err = driver.list_tags(NAME).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("imageLayoutVersion"), "{err}");

    std::fs::write(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    assert_eq!(driver.list_tags(NAME).await.unwrap(), vec!["1".to_string()]);
}

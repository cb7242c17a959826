//! One conformance suite that every driver runs unchanged (like object_store's
//! `integration.rs`): the same seed images, the same cases, the same expectations.
//!
//! A driver under test comes with a [`Harness`]: the driver, the image name it serves the
//! seed under, a hook that puts the seed images on its source by the source's own means
//! (skopeo to a registry, objects into a bucket, files into a layout), and a hook that
//! replaces a blob's stored bytes behind the driver's back. [`run`] seeds, then runs every
//! case and fails with the list of cases that failed.
//!
//! Adding a driver: implement [`Harness`] (or reuse [`RegistryHarness`] with another driver)
//! and add one test that calls [`run`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::manifest::descriptor_digest;
use ferry_core::media;
use ferry_core::{Digest, Hasher, ManifestBlob, Platform, Reference, Store};
use ferry_drivers::site::route::Sources;
use ferry_drivers::sources::oci_layout::OciLayoutDriver;
use ferry_drivers::sources::s3::{S3Config, S3Driver, S3Layout};
use ferry_drivers::transfer::progress::Silent;
use ferry_drivers::transfer::pull::{pull, PullOptions};
use ferry_drivers::{BlobBody, ByteRange, ByteStream, Driver, Error, ErrorKind};
use ferry_signing::Policy;
use futures::{FutureExt as _, StreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use crate::registry::{Registry, RegistryOptions};
use crate::s3::{S3Registry, S3Server};
use crate::{run_ok, target_dir};

/// Repository path of the seed images (the image name is a host plus this).
pub const REPOSITORY: &str = "conformance/app";
/// Tag of the seed image with a config and two small layers.
pub const SMALL: &str = "small";
/// Tag of the seed image whose one layer is [`BIG_LAYER_SIZE`] bytes.
pub const BIG: &str = "big";
/// Tag of the seed image the corruption cases tamper with.
pub const VICTIM: &str = "victim";
/// Size of the big layer.
pub const BIG_LAYER_SIZE: u64 = 64 << 20;
/// Largest chunk a driver may hand out while streaming a blob.
pub const MAX_CHUNK: usize = 8 << 20;
/// Fetches run at once in the concurrency case.
pub const CONCURRENT_FETCHES: usize = 16;
/// Bumped whenever the seed changes, so stale copies are rebuilt.
const SEED_VERSION: &str = "v1";
/// Annotation value in every seed manifest; the manifest tamper edits it (valid JSON stays).
const PADDING: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// Host part of the image name for sources that have no host of their own.
pub const EXAMPLE_HOST: &str = "registry.example.com";

/// A blob of the seed: digest, size, media type.
#[derive(Debug, Clone)]
pub struct SeedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The media type its descriptor gives.
    pub media_type: String,
}

/// One seed image.
#[derive(Debug, Clone)]
pub struct SeedImage {
    /// Its tag.
    pub tag: String,
    /// The manifest.
    pub manifest: SeedBlob,
    /// The config.
    pub config: SeedBlob,
    /// The layers.
    pub layers: Vec<SeedBlob>,
}

impl SeedImage {
    /// Manifest, config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &SeedBlob> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(&self.layers)
    }
}

/// The seed images, in an OCI layout with plain tags; built once per checkout.
#[derive(Debug)]
pub struct Seed {
    layout: PathBuf,
    images: Vec<SeedImage>,
}

impl Seed {
    /// The seed, built under the target directory on first use.
    pub fn get() -> &'static Seed {
        static SEED: OnceLock<Seed> = OnceLock::new();
        SEED.get_or_init(|| {
            let layout = target_dir()
                .join("testkit")
                .join(format!("conformance-seed-{SEED_VERSION}"));
            if !layout.join("index.json").exists() {
                build_seed(&layout);
            }
            Seed::load(layout)
        })
    }

    fn load(layout: PathBuf) -> Seed {
        let blob = |digest: &str| {
            std::fs::read(blob_path(&layout, &Digest::parse(digest).expect("digest")))
                .expect("seed blob")
        };
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
                .expect("json");
        let to_blob = |d: &serde_json::Value| SeedBlob {
            digest: Digest::parse(d["digest"].as_str().expect("digest")).expect("digest"),
            size: d["size"].as_u64().expect("size"),
            media_type: d["mediaType"].as_str().expect("mediaType").to_string(),
        };
        let images = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|entry| {
                let manifest: serde_json::Value =
                    serde_json::from_slice(&blob(entry["digest"].as_str().expect("digest")))
                        .expect("manifest");
                SeedImage {
                    tag: entry["annotations"]["org.opencontainers.image.ref.name"]
                        .as_str()
                        .expect("ref name")
                        .to_string(),
                    manifest: to_blob(entry),
                    config: to_blob(&manifest["config"]),
                    layers: manifest["layers"]
                        .as_array()
                        .expect("layers")
                        .iter()
                        .map(to_blob)
                        .collect(),
                }
            })
            .collect();
        Seed { layout, images }
    }

    /// The OCI layout holding the seed (ref names are the plain tags).
    pub fn layout(&self) -> &Path {
        &self.layout
    }

    /// Every seed image.
    pub fn images(&self) -> &[SeedImage] {
        &self.images
    }

    /// The seed image tagged `tag`.
    pub fn image(&self, tag: &str) -> &SeedImage {
        self.images
            .iter()
            .find(|i| i.tag == tag)
            .unwrap_or_else(|| panic!("no seed image {tag}"))
    }

    /// The file holding blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.layout, digest)
    }

    /// The bytes of blob `digest` (for the small ones).
    pub fn read_blob(&self, digest: &Digest) -> Vec<u8> {
        std::fs::read(self.blob_path(digest)).expect("seed blob")
    }

    /// Copies every seed image with skopeo (digests preserved) to `DEST:TAG`, e.g.
    /// `docker://127.0.0.1:5000/conformance/app` or `oci:/dir:registry.example.com/x`.
    pub fn copy_all(&self, dest: &str, dest_tls_verify: bool) {
        for image in &self.images {
            let mut cmd = Command::new("skopeo");
            cmd.args(["copy", "--quiet", "--preserve-digests"]);
            if !dest_tls_verify {
                cmd.arg("--dest-tls-verify=false");
            }
            cmd.arg(format!("oci:{}:{}", self.layout.display(), image.tag))
                .arg(format!("{dest}:{}", image.tag));
            run_ok(&mut cmd);
        }
    }
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// A deterministic pseudo-random byte source (xorshift64*), so the seed is the same
/// wherever it is built.
struct Prng(u64);

impl Prng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Pseudo-random bytes from `seed`.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    Prng(seed).fill(&mut bytes);
    bytes
}

/// Writes `bytes` as a blob of the layout; returns its digest and size.
fn write_blob(layout: &Path, bytes: &[u8]) -> (Digest, u64) {
    let digest = Digest::sha256(bytes);
    std::fs::write(blob_path(layout, &digest), bytes).expect("write seed blob");
    (digest, bytes.len() as u64)
}

/// Writes `size` pseudo-random bytes as a blob, 1 MiB at a time.
fn write_random_blob(layout: &Path, seed: u64, size: u64) -> (Digest, u64) {
    use std::io::Write as _;
    let tmp = layout.join("blobs/sha256/.random");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create seed blob"));
    let mut prng = Prng(seed);
    let mut hasher = Hasher::new(ferry_core::Algorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        prng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).expect("write seed blob");
        left -= n as u64;
    }
    file.flush().expect("flush seed blob");
    let digest = hasher.finish();
    std::fs::rename(&tmp, blob_path(layout, &digest)).expect("rename seed blob");
    (digest, size)
}

fn build_seed(dir: &Path) {
    let parent = dir.parent().expect("parent");
    std::fs::create_dir_all(parent).expect("mkdir testkit");
    let work = tempfile::tempdir_in(parent).expect("tempdir");
    let layout = work.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir blobs");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let host = Platform::host();
    let mut entries = Vec::new();
    let images: [(&str, Vec<(u64, u64)>); 3] = [
        (SMALL, vec![(1, 300_001), (2, 1_000)]),
        (BIG, vec![(3, BIG_LAYER_SIZE)]),
        (VICTIM, vec![(4, 100_000)]),
    ];
    for (tag, layers) in images {
        let layers: Vec<(Digest, u64)> = layers
            .into_iter()
            .map(|(seed, size)| write_random_blob(&layout, seed, size))
            .collect();
        let mut config = serde_json::json!({
            "architecture": host.architecture,
            "os": host.os,
            "config": {"Labels": {"org.example.conformance.image": tag}},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>()},
        });
        if let Some(v) = &host.variant {
            config["variant"] = v.as_str().into();
        }
        let config = write_blob(&layout, &serde_json::to_vec(&config).expect("json"));
        let descriptor = |(digest, size): &(Digest, u64), media_type: &str| serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(&config, media::OCI_CONFIG),
            "layers": layers.iter().map(|l| descriptor(l, media::OCI_LAYER_TAR)).collect::<Vec<_>>(),
            "annotations": {"org.example.conformance.padding": PADDING},
        });
        let manifest = write_blob(&layout, &serde_json::to_vec(&manifest).expect("json"));
        let mut entry = descriptor(&manifest, media::OCI_MANIFEST);
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        entries.push(entry);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
    match std::fs::rename(&layout, dir) {
        Ok(()) => {}
        // Another test process built it first: theirs is the same.
        Err(_) if dir.join("index.json").exists() => {}
        Err(e) => panic!(
            "cannot move the conformance seed into {}: {e}",
            dir.display()
        ),
    }
}

/// `bytes` changed in one place, same length: a manifest stays valid JSON (its padding
/// annotation changes), anything else gets its middle byte inverted.
pub fn tampered(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match bytes
        .windows(PADDING.len())
        .position(|w| w == PADDING.as_bytes())
    {
        Some(i) => out[i] = b'b',
        None => out[bytes.len() / 2] ^= 0xff,
    }
    out
}

/// A driver under test and the hooks the suite needs around it.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The driver under test.
    fn driver(&self) -> Arc<dyn Driver>;

    /// The image name the seed images are served under (`host/conformance/app`).
    fn name(&self) -> String;

    /// Puts every seed image on the source as `name():TAG`, by the source's own means.
    async fn seed(&self, seed: &'static Seed);

    /// Replaces the stored bytes of blob (or manifest) `digest` by `bytes`, behind the
    /// driver's back.
    async fn tamper(&self, digest: &Digest, bytes: Vec<u8>);
}

/// Seeds the source, runs every case, and panics listing the cases that failed.
pub async fn run(h: &dyn Harness) {
    let seed = Seed::get();
    let source = h.driver().source_name().to_string();
    let started = Instant::now();
    h.seed(seed).await;
    eprintln!(
        "conformance [{source}]: seeded in {:.1?}",
        started.elapsed()
    );
    let mut failures = Vec::new();
    macro_rules! case {
        ($f:ident) => {
            check(&mut failures, &source, stringify!($f), $f(h, seed)).await
        };
    }
    case!(resolve_finds_seeded_tags);
    case!(resolve_missing_tag_is_not_found);
    case!(fetch_manifest_returns_exact_bytes);
    case!(fetch_missing_manifest_is_not_found);
    case!(fetch_blob_whole);
    case!(fetch_blob_ranges);
    case!(blob_size_present_and_missing);
    case!(fetch_missing_blob_is_not_found);
    case!(concurrent_fetches_all_verify);
    case!(large_blob_streams_in_bounded_chunks);
    case!(list_tags_names_seeded_tags);
    case!(push_then_read_back);
    case!(push_with_wrong_digest_is_refused);
    // These two change the victim image on the source: they run last.
    case!(corrupt_layer_fails_the_pull);
    case!(corrupt_manifest_is_refused);
    assert!(
        failures.is_empty(),
        "conformance [{source}]: {} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn check(failures: &mut Vec<String>, source: &str, case: &str, f: impl Future<Output = ()>) {
    let started = Instant::now();
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(()) => eprintln!(
            "conformance [{source}] {case}: ok ({:.1?})",
            started.elapsed()
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            eprintln!("conformance [{source}] {case}: FAILED: {message}");
            failures.push(format!("  {case}: {message}"));
        }
    }
}

/// Reads blob `digest` whole, hashing chunk by chunk: `Corrupt` if the bytes do not match
/// the digest. This is the verifying read the suite holds every driver's bytes to.
pub async fn verified_read(
    driver: &dyn Driver,
    name: &str,
    digest: &Digest,
) -> ferry_drivers::Result<u64> {
    let body = driver.fetch_blob(name, digest, ByteRange::WHOLE).await?;
    let (actual, len, _) = digest_stream(body.stream, digest.algorithm()).await?;
    if &actual != digest {
        return Err(Error::corrupt(
            driver.source_name(),
            format!("blob {digest} of {name}: digest mismatch: the bytes hash to {actual}"),
        ));
    }
    Ok(len)
}

/// Hashes a stream without holding it: (digest, length, largest chunk).
async fn digest_stream(
    mut stream: ByteStream,
    algorithm: ferry_core::Algorithm,
) -> ferry_drivers::Result<(Digest, u64, usize)> {
    let mut hasher = Hasher::new(algorithm);
    let (mut len, mut largest) = (0u64, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
        largest = largest.max(chunk.len());
    }
    Ok((hasher.finish(), len, largest))
}

/// The body's bytes (small blobs only), checking the declared length and chunk sizes.
async fn read_body(body: BlobBody) -> Vec<u8> {
    let declared = body.len;
    let mut stream = body.stream;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("body chunk");
        assert!(chunk.len() <= MAX_CHUNK, "chunk of {} bytes", chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    if let Some(len) = declared {
        assert_eq!(
            len,
            bytes.len() as u64,
            "body length differs from the declared one"
        );
    }
    bytes
}

fn expect_kind<T: std::fmt::Debug>(
    result: ferry_drivers::Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected a {kind:?} error, got {v:?}"),
        Err(e) => {
            assert_eq!(e.kind, kind, "{what}: wrong error kind: {e}");
            assert!(
                !e.message.contains('\n'),
                "{what}: error message spans lines: {e}"
            );
            e
        }
    }
}

/// A digest no source has.
fn missing_digest() -> Digest {
    Digest::sha256(b"ferry conformance: no source has this")
}

/// Resolving each seeded tag gives the manifest's descriptor.
pub async fn resolve_finds_seeded_tags(h: &dyn Harness, seed: &Seed) {
    let driver = h.driver();
    for image in seed.images() {
        let desc = driver
            .resolve(&h.name(), &image.tag)
            .await
            .expect("resolve seeded tag");
        assert_eq!(
            descriptor_digest(&desc).expect("digest"),
            image.manifest.digest,
            "{}",
            image.tag
        );
        assert_eq!(desc.size(), image.manifest.size, "{}", image.tag);
        assert_eq!(
            desc.media_type().to_string(),
            media::OCI_MANIFEST,
            "{}",
            image.tag
        );
    }
}

/// A tag (or a name) the source does not have is `NotFound`.
pub async fn resolve_missing_tag_is_not_found(h: &dyn Harness, _seed: &Seed) {
    let driver = h.driver();
    expect_kind(
        driver.resolve(&h.name(), "no-such-tag").await,
        ErrorKind::NotFound,
        "missing tag",
    );
    let other = format!("{}-missing", h.name());
    expect_kind(
        driver.resolve(&other, SMALL).await,
        ErrorKind::NotFound,
        "missing name",
    );
}

/// A manifest comes back byte for byte, parseable, with its media type.
pub async fn fetch_manifest_returns_exact_bytes(h: &dyn Harness, seed: &Seed) {
    for image in seed.images() {
        let digest = &image.manifest.digest;
        let got = h
            .driver()
            .fetch_manifest(&h.name(), digest)
            .await
            .expect("fetch manifest");
        assert_eq!(got.bytes, seed.read_blob(digest), "{}", image.tag);
        let blob = ManifestBlob::parse(got.bytes, got.content_type.as_deref(), Some(digest))
            .expect("parse manifest");
        assert_eq!(blob.media_type, media::OCI_MANIFEST);
    }
}

/// A manifest the source does not have is `NotFound`.
pub async fn fetch_missing_manifest_is_not_found(h: &dyn Harness, _seed: &Seed) {
    let got = h
        .driver()
        .fetch_manifest(&h.name(), &missing_digest())
        .await;
    expect_kind(got, ErrorKind::NotFound, "missing manifest");
}

/// Config and layers come back whole, byte for byte.
pub async fn fetch_blob_whole(h: &dyn Harness, seed: &Seed) {
    let image = seed.image(SMALL);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let body = h
            .driver()
            .fetch_blob(&h.name(), &blob.digest, ByteRange::WHOLE)
            .await
            .expect("fetch blob");
        assert_eq!(
            read_body(body).await,
            seed.read_blob(&blob.digest),
            "blob {}",
            blob.digest
        );
    }
}

/// Ranges from an offset to the end, and of a given length, return exactly those bytes.
pub async fn fetch_blob_ranges(h: &dyn Harness, seed: &Seed) {
    let driver = h.driver();
    if !driver.capabilities().ranges {
        return;
    }
    let layer = &seed.image(SMALL).layers[0];
    let bytes = seed.read_blob(&layer.digest);
    let size = bytes.len() as u64;
    let cases = [
        (ByteRange::from(1000), 1000..bytes.len()),
        (
            ByteRange {
                offset: 12_345,
                len: Some(4096),
            },
            12_345..12_345 + 4096,
        ),
        (
            ByteRange {
                offset: 0,
                len: Some(1),
            },
            0..1,
        ),
        (
            ByteRange {
                offset: size - 10,
                len: Some(10),
            },
            bytes.len() - 10..bytes.len(),
        ),
        (ByteRange::from(size - 1), bytes.len() - 1..bytes.len()),
    ];
    for (range, expected) in cases {
        let body = driver
            .fetch_blob(&h.name(), &layer.digest, range)
            .await
            .expect("fetch range");
        let got = read_body(body).await;
        assert!(
            got == bytes[expected.clone()],
            "range {range:?}: got {} bytes, not bytes {expected:?}",
            got.len()
        );
    }
}

/// `blob_size` knows present blobs' sizes and says `None` for missing ones.
pub async fn blob_size_present_and_missing(h: &dyn Harness, seed: &Seed) {
    let driver = h.driver();
    let image = seed.image(SMALL);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let size = driver
            .blob_size(&h.name(), &blob.digest)
            .await
            .expect("blob size");
        assert_eq!(size, Some(blob.size), "blob {}", blob.digest);
    }
    assert_eq!(
        driver
            .blob_size(&h.name(), &missing_digest())
            .await
            .expect("blob size"),
        None
    );
}

/// A blob the source does not have is `NotFound`.
pub async fn fetch_missing_blob_is_not_found(h: &dyn Harness, _seed: &Seed) {
    let got = h
        .driver()
        .fetch_blob(&h.name(), &missing_digest(), ByteRange::WHOLE)
        .await;
    expect_kind(got, ErrorKind::NotFound, "missing blob");
}

/// Many fetches at once all return the right bytes.
pub async fn concurrent_fetches_all_verify(h: &dyn Harness, seed: &Seed) {
    let driver = h.driver();
    let name = h.name();
    let image = seed.image(SMALL);
    let blobs: Vec<&SeedBlob> = std::iter::once(&image.config)
        .chain(&image.layers)
        .collect();
    let fetches = (0..CONCURRENT_FETCHES).map(|i| {
        let blob = blobs[i % blobs.len()];
        let (driver, name) = (driver.clone(), name.clone());
        async move {
            (
                blob,
                verified_read(driver.as_ref(), &name, &blob.digest).await,
            )
        }
    });
    for (blob, result) in futures::future::join_all(fetches).await {
        assert_eq!(
            result.expect("concurrent fetch"),
            blob.size,
            "blob {}",
            blob.digest
        );
    }
}

/// The big layer streams through in chunks of at most [`MAX_CHUNK`], never held whole.
pub async fn large_blob_streams_in_bounded_chunks(h: &dyn Harness, seed: &Seed) {
    let layer = &seed.image(BIG).layers[0];
    let started = Instant::now();
    let body = h
        .driver()
        .fetch_blob(&h.name(), &layer.digest, ByteRange::WHOLE)
        .await
        .expect("fetch big blob");
    if let Some(len) = body.len {
        assert_eq!(len, layer.size);
    }
    let (digest, len, largest) = digest_stream(body.stream, layer.digest.algorithm())
        .await
        .expect("stream big blob");
    assert_eq!(len, layer.size);
    assert_eq!(digest, layer.digest);
    assert!(
        largest <= MAX_CHUNK,
        "a chunk of {largest} bytes (limit {MAX_CHUNK})"
    );
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "conformance [{}]: {} MiB in {secs:.2}s ({:.0} MiB/s), largest chunk {largest} bytes",
        h.driver().source_name(),
        len >> 20,
        (len >> 20) as f64 / secs
    );
}

/// `list_tags` names every seeded tag; a name the source does not have is `NotFound`.
pub async fn list_tags_names_seeded_tags(h: &dyn Harness, seed: &Seed) {
    let driver = h.driver();
    if !driver.capabilities().list_tags {
        return;
    }
    let tags = driver.list_tags(&h.name()).await.expect("list tags");
    for image in seed.images() {
        assert!(
            tags.contains(&image.tag),
            "{} missing from {tags:?}",
            image.tag
        );
    }
    let other = format!("{}-missing", h.name());
    expect_kind(
        driver.list_tags(&other).await,
        ErrorKind::NotFound,
        "tags of a missing name",
    );
}

/// A body in `parts` chunks.
fn chunked(bytes: &[u8], parts: usize) -> ByteStream {
    let chunks: Vec<ferry_drivers::Result<Bytes>> = bytes
        .chunks(bytes.len().div_ceil(parts).max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

/// Pushes an image (config, a small and a 20 MiB layer, manifest) and reads it all back;
/// pushing the tag again moves it. Read-only drivers refuse writes as `Unsupported`.
pub async fn push_then_read_back(h: &dyn Harness, _seed: &Seed) {
    let driver = h.driver();
    let name = h.name();
    let small = random_bytes(10, 200_003);
    let large = random_bytes(11, 20 << 20);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    if !driver.capabilities().write {
        let put = driver
            .put_blob(
                &name,
                &Digest::sha256(&small),
                small.len() as u64,
                chunked(&small, 1),
            )
            .await;
        expect_kind(
            put,
            ErrorKind::Unsupported,
            "put_blob on a read-only source",
        );
        let put = driver
            .put_manifest(&name, Some("pushed"), media::OCI_MANIFEST, b"{}")
            .await;
        expect_kind(
            put,
            ErrorKind::Unsupported,
            "put_manifest on a read-only source",
        );
        return;
    }
    for (bytes, parts) in [(&small, 3), (&large, 20), (&config, 1)] {
        let digest = Digest::sha256(bytes);
        driver
            .put_blob(&name, &digest, bytes.len() as u64, chunked(bytes, parts))
            .await
            .expect("put blob");
        assert_eq!(
            driver.blob_size(&name, &digest).await.expect("blob size"),
            Some(bytes.len() as u64)
        );
        assert_eq!(
            verified_read(driver.as_ref(), &name, &digest)
                .await
                .expect("read back"),
            bytes.len() as u64
        );
    }
    let manifest = |layers: &[&Vec<u8>]| {
        let descriptor = |b: &[u8], t: &str| serde_json::json!({"mediaType": t, "digest": Digest::sha256(b).to_string(), "size": b.len()});
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(&config, media::OCI_CONFIG),
            "layers": layers.iter().map(|l| descriptor(l, media::OCI_LAYER_TAR)).collect::<Vec<_>>(),
        }))
        .expect("json")
    };
    let first = manifest(&[&small, &large]);
    let second = manifest(&[&small]);
    for bytes in [&first, &second] {
        let digest = driver
            .put_manifest(&name, Some("pushed"), media::OCI_MANIFEST, bytes)
            .await
            .expect("put manifest");
        assert_eq!(digest, Digest::sha256(bytes));
        let desc = driver
            .resolve(&name, "pushed")
            .await
            .expect("resolve pushed tag");
        assert_eq!(
            descriptor_digest(&desc).expect("digest"),
            digest,
            "the tag moves to the last manifest pushed"
        );
        assert_eq!(desc.size(), bytes.len() as u64);
        let got = driver
            .fetch_manifest(&name, &digest)
            .await
            .expect("fetch pushed manifest");
        assert_eq!(&got.bytes, bytes);
    }
    // A manifest pushed without a tag is there by digest.
    let untagged = manifest(&[&large]);
    let digest = driver
        .put_manifest(&name, None, media::OCI_MANIFEST, &untagged)
        .await
        .expect("put untagged manifest");
    assert_eq!(
        driver
            .fetch_manifest(&name, &digest)
            .await
            .expect("fetch untagged")
            .bytes,
        untagged
    );
    if driver.capabilities().list_tags {
        let tags = driver.list_tags(&name).await.expect("list tags");
        assert!(
            tags.contains(&"pushed".to_string()),
            "pushed tag missing from {tags:?}"
        );
    }
}

/// A body that does not match its digest is refused as `Corrupt` and never becomes visible.
pub async fn push_with_wrong_digest_is_refused(h: &dyn Harness, _seed: &Seed) {
    let driver = h.driver();
    if !driver.capabilities().write {
        return;
    }
    let name = h.name();
    // A small body (one request) and a large one (a multipart or chunked upload).
    for (seed, size) in [(20, 50_000), (21, 12 << 20)] {
        let claimed = random_bytes(seed, size);
        let digest = Digest::sha256(&claimed);
        let sent = tampered(&claimed);
        let put = driver
            .put_blob(&name, &digest, size as u64, chunked(&sent, 12))
            .await;
        expect_kind(
            put,
            ErrorKind::Corrupt,
            "put_blob with bytes that do not match the digest",
        );
        let visible = driver.blob_size(&name, &digest).await.expect("blob size");
        assert_eq!(visible, None, "a refused blob of {size} bytes is visible");
    }
}

/// A layer whose stored bytes no longer match its digest reads as `Corrupt` through a
/// verifying read and fails a pull (from this one source) as `Corrupt`; the store keeps
/// none of it.
pub async fn corrupt_layer_fails_the_pull(h: &dyn Harness, seed: &Seed) {
    let driver = h.driver();
    let name = h.name();
    let layer = &seed.image(VICTIM).layers[0];
    h.tamper(&layer.digest, tampered(&seed.read_blob(&layer.digest)))
        .await;
    let read = verified_read(driver.as_ref(), &name, &layer.digest).await;
    expect_kind(
        read,
        ErrorKind::Corrupt,
        "verified read of a tampered layer",
    );
    let root = tempfile::tempdir().expect("store dir");
    let store = Arc::new(Store::open(root.path()).expect("open store"));
    let reference = Reference::parse(&format!("{name}:{VICTIM}")).expect("reference");
    let pulled = pull(
        &store,
        &Sources::single(driver.clone()),
        &reference,
        &Policy::accept_all(),
        &PullOptions::default(),
        &Silent,
    )
    .await;
    let err = expect_kind(
        pulled.map(|p| p.record),
        ErrorKind::Corrupt,
        "pull of an image with a tampered layer",
    );
    assert!(err.message.contains("digest mismatch"), "{err}");
    assert_eq!(
        store.blob_size(&layer.digest).expect("store blob size"),
        None,
        "the store kept a corrupt layer"
    );
}

/// A manifest whose stored bytes no longer match its digest is refused as `Corrupt`.
pub async fn corrupt_manifest_is_refused(h: &dyn Harness, seed: &Seed) {
    let manifest = &seed.image(VICTIM).manifest;
    h.tamper(
        &manifest.digest,
        tampered(&seed.read_blob(&manifest.digest)),
    )
    .await;
    let got = h.driver().fetch_manifest(&h.name(), &manifest.digest).await;
    expect_kind(got, ErrorKind::Corrupt, "fetch of a tampered manifest");
}

/// Runs blocking work (skopeo, registry start-up) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The `oci-layout` driver on a fresh layout directory, seeded by skopeo with full ref names.
pub struct OciLayoutHarness {
    dir: tempfile::TempDir,
    driver: Arc<dyn Driver>,
}

impl OciLayoutHarness {
    /// A harness on an empty temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ferry-oci-layout-")
            .tempdir()
            .expect("temp dir");
        let driver = Arc::new(OciLayoutDriver::new("usb", dir.path().join("layout")));
        OciLayoutHarness { dir, driver }
    }
}

impl Default for OciLayoutHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Harness for OciLayoutHarness {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }

    fn name(&self) -> String {
        format!("{EXAMPLE_HOST}/{REPOSITORY}")
    }

    async fn seed(&self, seed: &'static Seed) {
        let dest = format!(
            "oci:{}:{}",
            self.dir.path().join("layout").display(),
            self.name()
        );
        blocking(move || seed.copy_all(&dest, true)).await;
    }

    async fn tamper(&self, digest: &Digest, bytes: Vec<u8>) {
        let path = blob_path(&self.dir.path().join("layout"), digest);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("tamper {}: {e}", path.display()));
    }
}

/// Where an S3 harness writes and tampers: the bucket's raw objects below a prefix.
struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Bucket {
    fn key(&self, rel: &str) -> ObjectPath {
        ObjectPath::parse(format!("{}/{rel}", self.prefix)).expect("object key")
    }

    async fn put(&self, rel: &str, bytes: Vec<u8>) {
        let key = self.key(rel);
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// Uploads a seed file 4 MiB at a time (multipart), never holding it whole.
    async fn put_file(&self, rel: &str, path: &Path) {
        use tokio::io::AsyncReadExt as _;
        let key = self.key(rel);
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .unwrap_or_else(|e| panic!("upload {key}: {e}"));
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut file = tokio::fs::File::open(path).await.expect("open seed blob");
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = file.read(&mut buf).await.expect("read seed blob");
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(2)
                .await
                .unwrap_or_else(|e| panic!("upload {key}: {e}"));
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .unwrap_or_else(|e| panic!("upload {key}: {e}"));
    }
}

/// The `s3` driver, ferry layout, on a moto bucket seeded object by object as
/// `specs/s3-layout.md` describes (independently of the driver).
pub struct S3FerryHarness {
    _s3: S3Server,
    bucket: Bucket,
    driver: Arc<dyn Driver>,
}

/// Bucket of the S3 harnesses.
const BUCKET: &str = "ferry-conformance";

impl S3FerryHarness {
    /// Starts moto, creates the bucket, and a driver with prefix `team/images`.
    pub fn start() -> Self {
        let s3 = S3Server::start().expect("start moto");
        s3.create_bucket(BUCKET).expect("create bucket");
        let prefix = "team/images";
        let driver = S3Driver::new(S3Config {
            prefix: prefix.into(),
            ..s3.config("s3", BUCKET, S3Layout::Ferry)
        })
        .expect("s3 driver");
        let bucket = Bucket {
            store: s3.store(BUCKET),
            prefix: prefix.into(),
        };
        S3FerryHarness {
            _s3: s3,
            bucket,
            driver: Arc::new(driver),
        }
    }
}

#[async_trait]
impl Harness for S3FerryHarness {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }

    fn name(&self) -> String {
        format!("{EXAMPLE_HOST}/{REPOSITORY}")
    }

    async fn seed(&self, seed: &'static Seed) {
        for image in seed.images() {
            for blob in image.blobs() {
                let rel = format!(
                    "blobs/{}/{}",
                    blob.digest.algorithm().as_str(),
                    blob.digest.hex()
                );
                self.bucket
                    .put_file(&rel, &seed.blob_path(&blob.digest))
                    .await;
            }
            let record = serde_json::json!({
                "digest": image.manifest.digest.to_string(),
                "mediaType": image.manifest.media_type,
                "size": image.manifest.size,
            });
            let rel = format!("names/{}/tags/{}", self.name(), image.tag);
            self.bucket
                .put(&rel, serde_json::to_vec(&record).expect("json"))
                .await;
        }
    }

    async fn tamper(&self, digest: &Digest, bytes: Vec<u8>) {
        let rel = format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex());
        self.bucket.put(&rel, bytes).await;
    }
}

/// The `s3` driver, distribution layout, reading the bucket a real `docker-registry` with
/// s3 storage on moto wrote (the registry is stopped before the cases run).
pub struct S3DistributionHarness {
    s3: S3Server,
    bucket: Bucket,
    driver: Arc<dyn Driver>,
}

impl S3DistributionHarness {
    /// Starts moto and a driver for the registry's root directory `registry-root`.
    pub fn start() -> Self {
        let s3 = S3Server::start().expect("start moto");
        let prefix = "registry-root";
        let config = S3Config {
            prefix: prefix.into(),
            ..s3.config("s3-registry", BUCKET, S3Layout::Distribution)
        };
        let driver = S3Driver::new(config).expect("s3 driver");
        let bucket = Bucket {
            store: s3.store(BUCKET),
            prefix: prefix.into(),
        };
        S3DistributionHarness {
            s3,
            bucket,
            driver: Arc::new(driver),
        }
    }
}

#[async_trait]
impl Harness for S3DistributionHarness {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }

    fn name(&self) -> String {
        format!("{EXAMPLE_HOST}/{REPOSITORY}")
    }

    async fn seed(&self, seed: &'static Seed) {
        let registry = S3Registry::start(&self.s3, BUCKET, &self.bucket.prefix)
            .expect("start registry on moto");
        let dest = format!("docker://{}/{REPOSITORY}", registry.host());
        blocking(move || {
            seed.copy_all(&dest, false);
            registry.stop();
        })
        .await;
    }

    async fn tamper(&self, digest: &Digest, bytes: Vec<u8>) {
        let hex = digest.hex();
        let rel = format!(
            "docker/registry/v2/blobs/{}/{}/{hex}/data",
            digest.algorithm().as_str(),
            &hex[..2]
        );
        self.bucket.put(&rel, bytes).await;
    }
}

/// A driver in front of a real `docker-registry` (filesystem storage, no auth), seeded by
/// skopeo. Any driver that speaks to registries (registry, mirror) can use it.
pub struct RegistryHarness {
    registry: Registry,
    driver: Arc<dyn Driver>,
}

impl RegistryHarness {
    /// Starts an open registry and builds the driver under test for it with `make`.
    pub fn start(make: impl FnOnce(&Registry) -> Arc<dyn Driver>) -> Self {
        let registry = Registry::start(RegistryOptions::open()).expect("start registry");
        let driver = make(&registry);
        RegistryHarness { registry, driver }
    }
}

#[async_trait]
impl Harness for RegistryHarness {
    fn driver(&self) -> Arc<dyn Driver> {
        self.driver.clone()
    }

    fn name(&self) -> String {
        format!("{}/{REPOSITORY}", self.registry.host())
    }

    async fn seed(&self, seed: &'static Seed) {
        let dest = format!("docker://{}", self.name());
        blocking(move || seed.copy_all(&dest, false)).await;
    }

    async fn tamper(&self, digest: &Digest, bytes: Vec<u8>) {
        let path = self.registry.blob_data_path(&digest.to_string());
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("tamper {}: {e}", path.display()));
    }
}

//! The copy engine: moves an image (top manifest, the index children the source has,
//! configs, layers, and its signatures) from any [`Driver`] to any writable one.
//!
//! Blobs the destination already has are skipped; bodies are streamed (never a whole layer
//! in memory) through [`verifying`], which fails the stream at its end when the bytes do
//! not match their digest, so a destination never sees a clean end of a wrong body.
//! Manifests go after the blobs they name, children before their index, signatures before
//! the tag, and the tag last: a reader of the destination never sees a tag whose content is
//! missing. `ferry push` is a copy from [`crate::sources::local::LocalDriver`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::manifest::descriptor_digest;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{Digest, Hasher, Manifest, ManifestBlob, Reference};
use ferry_signing::SignatureEnvelope;
use futures::{Stream, StreamExt as _, TryStreamExt as _};

use crate::site::route::Sources;
use crate::transfer::progress::{BlobKind, Event, Progress};
use crate::transfer::signatures::{fetch_signatures, push_signature};
use crate::{
    BlobBody, ByteRange, ByteStream, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result,
};

/// How deep indexes may nest inside indexes.
const MAX_INDEX_DEPTH: usize = 4;
/// How often a running blob copy reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Options of a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// How many blobs are copied at once.
    pub concurrency: usize,
    /// Also copy the signatures the source keeps next to the image (SIG-14, SIG-15).
    pub signatures: bool,
    /// Signature envelopes to add at the destination besides the source's (e.g. the
    /// store's, for a push).
    pub extra_signatures: Vec<SignatureEnvelope>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            concurrency: 4,
            signatures: true,
            extra_signatures: Vec::new(),
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Copied {
    /// The destination reference as tagged (or pinned, without a tag).
    pub reference: String,
    /// The top manifest's digest, the same at both ends.
    pub digest: Digest,
    /// The top manifest's media type.
    pub media_type: String,
    /// Bytes of every manifest, config and layer of the image.
    pub size: u64,
    /// Blob bytes sent to the destination.
    pub transferred: u64,
    /// Blobs sent.
    pub blobs_copied: usize,
    /// Blobs the destination already had.
    pub blobs_present: usize,
    /// Manifests of an index the source did not have (not copied; the index still is).
    pub missing_children: Vec<Digest>,
    /// Signature envelopes now next to the image at the destination.
    pub signatures: usize,
}

/// Copies the image `from_ref` names at `from` to `to` as `to_ref` (see the module docs).
///
/// `from_ref`'s digest, when pinned, wins over its tag. `to_ref` is tagged with its tag; a
/// destination reference that pins a digest must pin the digest being copied. Every byte is
/// verified on the way; a mismatch fails the copy as [`ErrorKind::Corrupt`] before the
/// destination keeps the blob. Signatures that cannot be copied (a foreign artifact under
/// the signature tag) are skipped with a warning.
pub async fn copy_image(
    from: &dyn Driver,
    from_ref: &Reference,
    to: &dyn Driver,
    to_ref: &Reference,
    options: &CopyOptions,
    progress: &dyn Progress,
) -> Result<Copied> {
    let started = Instant::now();
    if !to.capabilities().write {
        return Err(Error::unsupported(to.source_name(), "writing images"));
    }
    let from_name = from_ref.name();
    let to_name = to_ref.name();
    let top = match from_ref.digest() {
        Some(d) => d.clone(),
        None => {
            let tag = from_ref.tag().unwrap_or(ferry_core::reference::DEFAULT_TAG);
            progress.event(&Event::Resolving {
                reference: from_ref.to_string(),
            });
            let desc = from.resolve(&from_name, tag).await?;
            descriptor_digest(&desc).map_err(|e| Error::from_core(from.source_name(), e))?
        }
    };
    if let Some(pinned) = to_ref.digest() {
        if pinned != &top {
            return Err(Error::new(
                ErrorKind::Invalid,
                "",
                format!("{to_ref} pins {pinned}, but {from_ref} is {top}"),
            ));
        }
    }

    // Manifests first (they are small), to know every blob before moving any.
    let mut manifests: Vec<ManifestBlob> = Vec::new();
    let mut missing_children = Vec::new();
    let top_blob = fetch_manifest(from, &from_name, &top).await?;
    progress.event(&Event::Resolved {
        reference: from_ref.to_string(),
        digest: top.to_string(),
        media_type: top_blob.media_type.clone(),
    });
    let mut pending = vec![(top_blob.clone(), 0usize)];
    let mut blobs: Vec<Descriptor> = Vec::new();
    while let Some((blob, depth)) = pending.pop() {
        match &blob.manifest {
            Manifest::Index(index) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        from.source_name(),
                        format!("{from_ref}: indexes nest deeper than {MAX_INDEX_DEPTH}"),
                    ));
                }
                for child in index.manifests() {
                    let digest = descriptor_digest(child)
                        .map_err(|e| Error::from_core(from.source_name(), e))?;
                    if manifests.iter().any(|m| m.digest == digest) {
                        continue;
                    }
                    match fetch_manifest(from, &from_name, &digest).await {
                        Ok(m) => {
                            check_size(from.source_name(), child, m.bytes.len() as u64)?;
                            pending.push((m, depth + 1));
                        }
                        Err(e) if e.kind == ErrorKind::NotFound => {
                            tracing::info!(
                                "{from_ref}: index {} lists {digest}, which source {:?} does not have; copying the index without it",
                                blob.digest,
                                from.source_name()
                            );
                            missing_children.push(digest);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Manifest::Image(image) => {
                for desc in std::iter::once(image.config()).chain(image.layers()) {
                    if !blobs.iter().any(|b| b.digest() == desc.digest()) {
                        blobs.push(desc.clone());
                    }
                }
            }
        }
        // Children are pushed before their index: reversed below.
        manifests.push(blob);
    }
    manifests.reverse();
    // `manifests` now has the top last; children (pushed later) come before it.
    let configs: Vec<Digest> = manifests
        .iter()
        .filter_map(|m| match &m.manifest {
            Manifest::Image(i) => descriptor_digest(i.config()).ok(),
            Manifest::Index(_) => None,
        })
        .collect();

    let job = BlobCopy {
        from,
        from_name: &from_name,
        to,
        to_name: &to_name,
        progress,
    };
    let results: Vec<Option<u64>> = futures::stream::iter(blobs.iter().map(|desc| {
        let kind = match descriptor_digest(desc) {
            Ok(d) if configs.contains(&d) => BlobKind::Config,
            _ => BlobKind::Layer,
        };
        job.copy(desc, kind)
    }))
    .buffer_unordered(options.concurrency.max(1))
    .try_collect()
    .await?;
    let transferred: u64 = results.iter().flatten().sum();
    let blobs_copied = results.iter().filter(|r| r.is_some()).count();
    let size = manifests.iter().map(|m| m.bytes.len() as u64).sum::<u64>()
        + blobs.iter().map(Descriptor::size).sum::<u64>();

    // Children by digest, then the top: first by digest if signatures must go before the tag.
    for m in &manifests[..manifests.len() - 1] {
        to.put_manifest(&to_name, None, &m.media_type, &m.bytes)
            .await?;
        manifest_done(progress, m, to);
    }
    let mut envelopes: Vec<SignatureEnvelope> = Vec::new();
    if options.signatures {
        match fetch_signatures(from, &from_name, &top).await {
            Ok(found) => envelopes = found,
            Err(e) => {
                tracing::warn!("signatures of {from_ref}: {e}; copying the image without them")
            }
        }
    }
    for e in &options.extra_signatures {
        if !envelopes.contains(e) {
            envelopes.push(e.clone());
        }
    }
    let mut signatures = 0;
    if !envelopes.is_empty() {
        to.put_manifest(&to_name, None, &top_blob.media_type, &top_blob.bytes)
            .await?;
        let subject = top_blob.descriptor();
        for envelope in &envelopes {
            match push_signature(to, &to_name, &subject, envelope).await {
                Ok(_) => signatures += 1,
                Err(e) if e.kind == ErrorKind::Invalid => {
                    tracing::warn!("signature of {to_name}@{top}: {e}; not copied")
                }
                Err(e) => return Err(e),
            }
        }
    }
    to.put_manifest(
        &to_name,
        to_ref.tag(),
        &top_blob.media_type,
        &top_blob.bytes,
    )
    .await?;
    manifest_done(progress, &top_blob, to);
    let reference = match to_ref.tag() {
        Some(t) => format!("{to_name}:{t}"),
        None => format!("{to_name}@{top}"),
    };
    progress.event(&Event::Done {
        reference: reference.clone(),
        digest: top.to_string(),
        size,
        transferred,
        elapsed_ms: started.elapsed().as_millis() as u64,
    });
    Ok(Copied {
        reference,
        digest: top,
        media_type: top_blob.media_type.clone(),
        size,
        transferred,
        blobs_copied,
        blobs_present: blobs.len() - blobs_copied,
        missing_children,
        signatures,
    })
}

fn manifest_done(progress: &dyn Progress, m: &ManifestBlob, to: &dyn Driver) {
    progress.event(&Event::BlobDone {
        digest: m.digest.to_string(),
        kind: BlobKind::Manifest,
        size: m.bytes.len() as u64,
        present: false,
        source: Some(to.source_name().to_string()),
    });
}

/// Fetches a manifest and checks it against its digest.
async fn fetch_manifest(from: &dyn Driver, name: &str, digest: &Digest) -> Result<ManifestBlob> {
    let fetched = from.fetch_manifest(name, digest).await?;
    ManifestBlob::parse(fetched.bytes, fetched.content_type.as_deref(), Some(digest))
        .map_err(|e| Error::from_core(from.source_name(), e))
}

/// Fails as corrupt when a descriptor's size is not the size of the bytes it names.
fn check_size(source: &str, desc: &Descriptor, actual: u64) -> Result<()> {
    if desc.size() != actual {
        return Err(Error::corrupt(
            source,
            format!(
                "{}: the descriptor says {} bytes, the content has {actual}",
                desc.digest(),
                desc.size()
            ),
        ));
    }
    Ok(())
}

/// One copy's blob mover.
struct BlobCopy<'a> {
    from: &'a dyn Driver,
    from_name: &'a str,
    to: &'a dyn Driver,
    to_name: &'a str,
    progress: &'a dyn Progress,
}

impl BlobCopy<'_> {
    /// Copies one blob unless the destination has it; `Some(bytes sent)` when it was sent.
    async fn copy(&self, desc: &Descriptor, kind: BlobKind) -> Result<Option<u64>> {
        let digest = descriptor_digest(desc).map_err(|e| Error::from_core("", e))?;
        let size = desc.size();
        // A destination that does not exist yet (a new layout directory) has nothing.
        let have = match self.to.blob_size(self.to_name, &digest).await {
            Ok(have) => have,
            Err(e) if matches!(e.kind, ErrorKind::Unavailable | ErrorKind::NotFound) => None,
            Err(e) => return Err(e),
        };
        match have {
            Some(have) if have == size => {
                self.progress.event(&Event::present(&digest, kind, size));
                return Ok(None);
            }
            _ => {}
        }
        self.progress.event(&Event::BlobStart {
            digest: digest.to_string(),
            kind,
            size,
            resumed_from: 0,
        });
        let body = self
            .from
            .fetch_blob(self.from_name, &digest, ByteRange::WHOLE)
            .await?;
        let counter = Arc::new(AtomicU64::new(0));
        let stream = verifying(
            body.stream,
            &digest,
            size,
            self.from.source_name(),
            Some(counter.clone()),
        );
        let put = self.to.put_blob(self.to_name, &digest, size, stream);
        tokio::pin!(put);
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                result = &mut put => { result?; break; }
                _ = tick.tick() => self.progress.event(&Event::BlobProgress {
                    digest: digest.to_string(),
                    done: counter.load(Ordering::Relaxed),
                    size,
                }),
            }
        }
        self.progress.event(&Event::BlobDone {
            digest: digest.to_string(),
            kind,
            size,
            present: false,
            source: Some(self.to.source_name().to_string()),
        });
        Ok(Some(size))
    }
}

/// Wraps a blob body so that it fails, as [`ErrorKind::Corrupt`], when it runs past `size`
/// bytes, or at its end when it has fewer bytes or they do not hash to `digest`.
///
/// The error is the stream's last item, before its end, so a consumer that stops at the
/// first error never takes a wrong body for complete. `counter`, when given, follows the
/// bytes passed through.
pub fn verifying(
    stream: ByteStream,
    digest: &Digest,
    size: u64,
    source: &str,
    counter: Option<Arc<AtomicU64>>,
) -> ByteStream {
    Box::pin(Verifying {
        inner: stream,
        hasher: Some(Hasher::new(digest.algorithm())),
        expected: digest.clone(),
        size,
        seen: 0,
        source: source.to_string(),
        counter,
    })
}

struct Verifying {
    inner: ByteStream,
    /// `None` once the stream ended or failed.
    hasher: Option<Hasher>,
    expected: Digest,
    size: u64,
    seen: u64,
    source: String,
    counter: Option<Arc<AtomicU64>>,
}

impl Verifying {
    fn corrupt(&mut self, why: String) -> Poll<Option<Result<Bytes>>> {
        self.hasher = None;
        Poll::Ready(Some(Err(Error::corrupt(
            &self.source,
            format!("blob {}: {why}", self.expected),
        ))))
    }
}

impl Stream for Verifying {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen > this.size {
                    let size = this.size;
                    return this.corrupt(format!("more bytes than the {size} its descriptor says"));
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                if let Some(c) = &this.counter {
                    c.store(this.seen, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let hasher = this.hasher.take().expect("checked above");
                if this.seen != this.size {
                    let (seen, size) = (this.seen, this.size);
                    return this.corrupt(format!("body ended at {seen} of {size} bytes"));
                }
                let actual = hasher.finish();
                if actual != this.expected {
                    return this.corrupt(format!("digest mismatch: the body hashes to {actual}"));
                }
                Poll::Ready(None)
            }
        }
    }
}

/// The sources of a route as one read-only driver: tags resolved by the route's resolvers
/// (SITE-5), content from its sources in order, the next one asked when one does not have
/// it, is down, or serves corrupt bytes (SITE-4). The source side of `ferry copy`.
#[derive(Debug, Clone)]
pub struct RouteSource {
    name: String,
    sources: Sources,
}

impl RouteSource {
    /// The route's sources as one driver.
    pub fn new(sources: Sources) -> Self {
        let mut names: Vec<&str> = Vec::new();
        for s in sources.content.iter().chain(&sources.resolve) {
            if !names.contains(&s.source_name()) {
                names.push(s.source_name());
            }
        }
        RouteSource {
            name: names.join(","),
            sources,
        }
    }

    /// Asks each content source in turn until one answers.
    async fn first<'a, T, F, Fut>(&'a self, what: &str, f: F) -> Result<T>
    where
        F: Fn(&'a Arc<dyn Driver>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut failures = Vec::new();
        for source in &self.sources.content {
            match f(source).await {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Corrupt
                    ) =>
                {
                    tracing::debug!("{e}; trying the next source");
                    failures.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match failures.len() {
            0 => Error::new(
                ErrorKind::Invalid,
                &self.name,
                format!("no source configured for {what}"),
            ),
            1 => failures.remove(0),
            _ => Error::new(
                if failures.iter().all(|f| f.kind == ErrorKind::NotFound) {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Unavailable
                },
                "",
                format!(
                    "{what}: every source failed: {}",
                    failures
                        .iter()
                        .map(Error::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
        })
    }
}

#[async_trait]
impl Driver for RouteSource {
    fn source_name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: !self.sources.resolve.is_empty(),
            list_tags: true,
            write: false,
            ranges: false,
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        crate::transfer::pull::resolve(&self.sources.resolve, name, tag).await
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        self.first(&format!("manifest {name}@{digest}"), |s| async move {
            let m = s.fetch_manifest(name, digest).await?;
            // Checked here so a corrupt source falls back to the next.
            let actual = Digest::of(digest.algorithm(), &m.bytes);
            if &actual != digest {
                return Err(Error::corrupt(
                    s.source_name(),
                    format!("manifest {digest}: digest mismatch: got {actual}"),
                ));
            }
            Ok(m)
        })
        .await
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        self.first(&format!("blob {name}@{digest}"), |s| {
            s.fetch_blob(name, digest, range)
        })
        .await
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        for source in &self.sources.content {
            match source.blob_size(name, digest).await {
                Ok(Some(size)) => return Ok(Some(size)),
                Ok(None) => {}
                Err(e) if matches!(e.kind, ErrorKind::Unavailable | ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        let resolver = self.sources.resolve.first().ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                &self.name,
                format!("no source may list the tags of {name}"),
            )
        })?;
        resolver.list_tags(name).await
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::store::ImageRecord;
    use ferry_core::{media, Store};
    use ferry_signing::{generate_key, sign, Policy, PrivateKey};

    use super::*;
    use crate::sources::local::LocalDriver;
    use crate::sources::oci_layout::OciLayoutDriver;
    use crate::transfer::progress::Silent;
    use crate::transfer::pull::{pull, PullOptions};
    use crate::transfer::signatures::store_signature;

    const NAME: &str = "registry.example.com/team/app:1";

    /// A two-layer image in `store` under NAME; its manifest digest.
    fn put_image(store: &Store) -> Digest {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for seed in ["one", "two"] {
            let bytes = format!("layer {seed}").repeat(50_000).into_bytes();
            let d = Digest::sha256(&bytes);
            store
                .put_blob(&d, &bytes, media::OCI_LAYER_TAR, None)
                .unwrap();
            diff_ids.push(d.to_string());
            layers.push(serde_json::json!({"mediaType": media::OCI_LAYER_TAR, "digest": d.to_string(), "size": bytes.len()}));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let cd = Digest::sha256(&config);
        store
            .put_blob(&cd, &config, media::OCI_CONFIG, None)
            .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": cd.to_string(), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let md = Digest::sha256(&manifest);
        store
            .put_blob(&md, &manifest, media::OCI_MANIFEST, None)
            .unwrap();
        let r = Reference::parse(NAME).unwrap();
        store
            .set_image(&ImageRecord {
                name: r.name(),
                tag: r.tag().map(str::to_string),
                digest: md.clone(),
                media_type: media::OCI_MANIFEST.into(),
                size: 0,
                created: None,
                platform: None,
                updated: 0,
            })
            .unwrap();
        md
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(items))
    }

    async fn drain(s: ByteStream) -> Result<Vec<u8>> {
        let parts: Vec<Bytes> = s.try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn verifying_stream_fails_at_its_end_on_wrong_short_or_long_bodies() {
        let d = Digest::sha256(b"hello world");
        let ok = verifying(chunks(&[b"hello ", b"world"]), &d, 11, "s", None);
        assert_eq!(drain(ok).await.unwrap(), b"hello world");
        for (parts, why) in [
            (&[b"hello ".as_slice(), b"w0rld"][..], "digest mismatch"),
            (&[b"hello ".as_slice()][..], "ended at 6 of 11"),
            (&[b"hello ".as_slice(), b"world!"][..], "more bytes"),
        ] {
            let err = drain(verifying(chunks(parts), &d, 11, "s", None))
                .await
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::Corrupt);
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[tokio::test]
    async fn push_to_a_layout_then_pull_back_gives_the_same_digest_and_skips_present_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("a")).unwrap());
        let digest = put_image(&store);
        let local = LocalDriver::new(store.clone());
        let layout = OciLayoutDriver::new("usb", dir.path().join("usb"));
        let r = Reference::parse(NAME).unwrap();
        let first = copy_image(&local, &r, &layout, &r, &CopyOptions::default(), &Silent)
            .await
            .unwrap();
        assert_eq!(first.digest, digest);
        assert_eq!((first.blobs_copied, first.blobs_present), (3, 0));
        let again = copy_image(&local, &r, &layout, &r, &CopyOptions::default(), &Silent)
            .await
            .unwrap();
        assert_eq!((again.blobs_copied, again.blobs_present), (0, 3));

        let b = Arc::new(Store::open(dir.path().join("b")).unwrap());
        let sources = Sources::single(Arc::new(layout));
        let pulled = pull(
            &b,
            &sources,
            &r,
            &Policy::accept_all(),
            &PullOptions::default(),
            &Silent,
        )
        .await
        .unwrap();
        assert_eq!(pulled.record.digest, digest);
    }

    #[tokio::test]
    async fn a_corrupt_source_blob_never_reaches_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("a")).unwrap());
        let digest = put_image(&store);
        let manifest: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&digest, 1 << 20).unwrap()).unwrap();
        let layer = Digest::parse(manifest["layers"][1]["digest"].as_str().unwrap()).unwrap();
        let path = store.blob_path(&layer);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let layout = OciLayoutDriver::new("usb", dir.path().join("usb"));
        let r = Reference::parse(NAME).unwrap();
        let err = copy_image(
            &LocalDriver::new(store.clone()),
            &r,
            &layout,
            &r,
            &CopyOptions::default(),
            &Silent,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
        assert_eq!(layout.blob_size(&r.name(), &layer).await.unwrap(), None);
        assert!(layout.resolve(&r.name(), "1").await.is_err(), "no tag");
    }

    #[tokio::test]
    async fn a_push_carries_the_stores_signatures_before_the_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("a")).unwrap());
        let digest = put_image(&store);
        let keys = generate_key(dir.path(), "team").unwrap();
        let key = PrivateKey::load(&keys.private_key).unwrap();
        let r = Reference::parse(NAME).unwrap();
        let envelope = sign(&key, &r, &digest, None).unwrap();
        store_signature(&store, &digest, &envelope).unwrap();
        let layout = OciLayoutDriver::new("usb", dir.path().join("usb"));
        let options = CopyOptions {
            extra_signatures: crate::transfer::signatures::signatures_in_store(&store, &digest)
                .unwrap(),
            ..CopyOptions::default()
        };
        let copied = copy_image(
            &LocalDriver::new(store.clone()),
            &r,
            &layout,
            &r,
            &options,
            &Silent,
        )
        .await
        .unwrap();
        assert_eq!(copied.signatures, 1);
        let found = fetch_signatures(&layout, &r.name(), &digest).await.unwrap();
        assert_eq!(found, vec![envelope]);
        // Copying on from the layout takes them along by themselves.
        let other = OciLayoutDriver::new("usb2", dir.path().join("usb2"));
        let copied = copy_image(&layout, &r, &other, &r, &CopyOptions::default(), &Silent)
            .await
            .unwrap();
        assert_eq!(copied.signatures, 1);
    }
}

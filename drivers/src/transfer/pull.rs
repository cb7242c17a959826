//! The pull engine: resolve a reference, check it against the trust policy, then stream
//! manifests, config and layers from the sources into the store, verified, in parallel,
//! resuming partial blobs.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::manifest::{descriptor_digest, parse_config, MAX_CONFIG_SIZE};
use ferry_core::media::{self, Compression};
use ferry_core::oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Manifest, ManifestBlob, Platform, Reference, Store};
use ferry_signing::{Policy, SignatureEnvelope, TrustedImage};
use futures::{StreamExt, TryStreamExt};

use crate::site::route::Sources;
use crate::transfer::progress::{BlobKind, Event, Progress};
use crate::transfer::signatures::{
    gather_signatures, signing_error, store_signature_leased, MAX_SIGNATURES,
};
use crate::transfer::sink::{LayerResult, LayerSink, LayerSinks, LayerTarget};
use crate::{ByteRange, Driver, Error, ErrorKind, Result};

/// How many times a blob transfer that broke off is resumed from the same source.
const RESUME_ATTEMPTS: usize = 3;

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index (default: the host's).
    pub platform: Platform,
    /// How many blobs transfer at once.
    pub concurrency: usize,
    /// Where layers go as they arrive, beside the store (one pass, STORE-20); none by default.
    pub layers: Option<Arc<dyn LayerTarget>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            concurrency: 4,
            layers: None,
        }
    }
}

/// An image now in the store: its record, its resolved image manifest and config, and the
/// policy's proof that it was accepted.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What the store records under the image's name.
    pub record: ImageRecord,
    /// The platform image manifest (the index's child, or the top manifest).
    pub manifest: ImageManifest,
    /// The image config.
    pub config: ImageConfiguration,
    /// The trust policy's acceptance of the name and top manifest digest (POL-8).
    pub trusted: TrustedImage,
}

/// Pulls `reference` from `sources` into `store` and names it there, if `policy` accepts it.
///
/// The top manifest digest is decided first and checked against `policy` with every
/// signature the sources and the store have for it (SIG-18); a rejected image is never
/// transferred or named (error kind [`ErrorKind::Rejected`]). When the policy requires
/// signatures for the name, any content source may answer its tag, and the first answer the
/// policy accepts wins (POL-9). Blobs already present are not transferred; partial blobs
/// resume from their offset. The name is set only after every blob is verified and committed,
/// together with the signatures, which the store keeps with the manifest.
///
/// With [`PullOptions::layers`], the config is fetched first, and each layer fetched is
/// also handed to its sink as it arrives; a layer is committed only when its sink accepts
/// it, and the sink's result is published only when the layer is committed (STORE-20..23).
pub async fn pull(
    store: &Arc<Store>,
    sources: &Sources,
    reference: &Reference,
    policy: &Policy,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let started = Instant::now();
    let local = Error::local;
    let _lease = store.lease().map_err(local)?;
    let name = reference.name();

    let decision = decide(store, sources, reference, policy, progress).await?;
    let top = decision.digest.clone();
    let mut transfer = Transfer::new(store, sources, &name, progress);
    let top_blob = transfer.manifest(&top).await?;
    progress.event(&Event::Resolved {
        reference: reference.to_string(),
        digest: top.to_string(),
        media_type: top_blob.media_type.clone(),
    });
    let mut size = top_blob.bytes.len() as u64;
    let (image_blob, platform) = match &top_blob.manifest {
        Manifest::Index(index) => {
            let child = options.platform.select(index).map_err(Error::local)?;
            let child_digest = descriptor_digest(child).map_err(Error::local)?;
            let blob = transfer.manifest(&child_digest).await?;
            size += blob.bytes.len() as u64;
            (blob, Some(options.platform.to_string()))
        }
        Manifest::Image(_) => (top_blob.clone(), None),
    };
    let Manifest::Image(manifest) = image_blob.manifest.clone() else {
        return Err(Error::new(
            ErrorKind::Invalid,
            "",
            format!("index {} lists another index for {}", top, options.platform),
        ));
    };

    let config_desc = manifest.config();
    let config_digest = descriptor_digest(config_desc).map_err(local)?;
    check_media_types(&manifest).map_err(local)?;
    if config_desc.size() > MAX_CONFIG_SIZE {
        return Err(Error::local(ferry_core::Error::TooLarge {
            what: format!("config {config_digest}"),
            size: config_desc.size(),
            limit: MAX_CONFIG_SIZE,
        }));
    }
    size += config_desc.size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
    // Sinks need the config before the layers come.
    let sinks = match &options.layers {
        Some(target) => {
            transfer.transferred += transfer.blob(config_desc, BlobKind::Config, None).await?;
            let config = store
                .read_blob(&config_digest, MAX_CONFIG_SIZE)
                .and_then(|bytes| parse_config(&bytes, &config_digest))
                .map_err(local)?;
            Some(target.begin(&decision.trusted, &manifest, &config)?)
        }
        None => None,
    };
    let config_blob = sinks
        .is_none()
        .then(|| (config_desc.clone(), BlobKind::Config, None));
    let blobs: Vec<(Descriptor, BlobKind, Option<Tap>)> = config_blob
        .into_iter()
        .chain(manifest.layers().iter().enumerate().map(|(i, l)| {
            let tap = sinks.as_deref().map(|sinks| Tap::new(sinks, i));
            (l.clone(), BlobKind::Layer, tap)
        }))
        .collect();
    let each = &transfer;
    let transferred: Vec<u64> = futures::stream::iter(
        blobs
            .into_iter()
            .map(|(desc, kind, tap)| async move { each.blob(&desc, kind, tap).await }),
    )
    .buffer_unordered(options.concurrency.max(1))
    .try_collect()
    .await?;
    transfer.transferred += transferred.iter().sum::<u64>();

    let (record, config) = name_image(
        store,
        reference,
        &decision,
        &top_blob,
        &config_digest,
        platform,
        size,
    )?;
    progress.event(&Event::Done {
        reference: match reference.tag() {
            Some(t) => format!("{name}:{t}"),
            None => format!("{name}@{top}"),
        },
        digest: top.to_string(),
        size,
        transferred: transfer.transferred,
        elapsed_ms: started.elapsed().as_millis() as u64,
    });
    Ok(Pulled {
        record,
        manifest: *manifest,
        config,
        trusted: decision.trusted,
    })
}

/// Names a pulled image in the store once its blobs are there: reads its config, stores
/// the signatures found for it (a name always has its signatures, SIG-17), then records
/// `reference`'s name (and tag) for `accepted`'s top manifest. `platform` is the platform
/// picked from an index (the config's otherwise); `size` the bytes of the whole image.
pub fn name_image(
    store: &Store,
    reference: &Reference,
    accepted: &Accepted,
    top_blob: &ManifestBlob,
    config_digest: &Digest,
    platform: Option<String>,
    size: u64,
) -> Result<(ImageRecord, ImageConfiguration)> {
    let local = Error::local;
    let top = &accepted.digest;
    let name = reference.name();
    let config_bytes = store
        .read_blob(config_digest, MAX_CONFIG_SIZE)
        .map_err(local)?;
    let config = parse_config(&config_bytes, config_digest).map_err(local)?;
    let platform = platform.or_else(|| Some(Platform::of_config(&config).to_string()));
    let record = ImageRecord {
        name,
        tag: reference.tag().map(str::to_string),
        digest: top.clone(),
        media_type: top_blob.media_type.clone(),
        size,
        created: config.created().clone(),
        platform,
        updated: unix_now(),
    };
    for envelope in &accepted.signatures {
        store_signature_leased(store, top, envelope)?;
    }
    store.set_image(&record).map_err(local)?;
    Ok((record, config))
}

/// The top manifest a pull fetches, accepted by the policy, and the signatures found for it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The top manifest's digest.
    pub digest: Digest,
    /// The policy's proof of acceptance.
    pub trusted: TrustedImage,
    /// The signatures found for the digest (kept with the image when it is named).
    pub signatures: Vec<SignatureEnvelope>,
}

/// Decides the top manifest digest of `reference` and checks it against `policy`
/// (SIG-18, POL-9): the first step of a pull, taken alone by a pull-through mirror.
///
/// A pinned digest is checked as is. A tag is resolved by the route's resolvers (SITE-5);
/// when the policy requires signatures for the name, by the resolvers and then every other
/// content source, each answer checked in turn until one is accepted. A rejection is an
/// error of kind [`ErrorKind::Rejected`] whose message gives the policy's reason.
pub async fn decide(
    store: &Store,
    sources: &Sources,
    reference: &Reference,
    policy: &Policy,
    progress: &dyn Progress,
) -> Result<Accepted> {
    let name = reference.name();
    if let Some(digest) = reference.digest() {
        return check(store, sources, reference, policy, digest.clone())
            .await?
            .map_err(|reason| Error::new(ErrorKind::Rejected, "", reason));
    }
    let tag = reference
        .tag()
        .unwrap_or(ferry_core::reference::DEFAULT_TAG);
    progress.event(&Event::Resolving {
        reference: reference.to_string(),
    });
    if !policy.requires_signature(reference) {
        let desc = resolve(&sources.resolve, &name, tag).await?;
        let digest = descriptor_digest(&desc).map_err(Error::local)?;
        return check(store, sources, reference, policy, digest)
            .await?
            .map_err(|reason| Error::new(ErrorKind::Rejected, "", reason));
    }
    // Signed tag resolution: the signature, not the source, vouches for the digest (POL-9).
    let mut candidates: Vec<&Arc<dyn Driver>> = sources.resolve.iter().collect();
    for source in &sources.content {
        if source.capabilities().resolve && !candidates.iter().any(|c| Arc::ptr_eq(c, source)) {
            candidates.push(source);
        }
    }
    let mut failures = Vec::new();
    let mut rejections: Vec<String> = Vec::new();
    let mut refused: Vec<Digest> = Vec::new();
    let last = candidates.len().saturating_sub(1);
    for (i, source) in candidates.into_iter().enumerate() {
        let next = if i < last {
            "; trying the next source"
        } else {
            ""
        };
        let answer = source.resolve(&name, tag).await.and_then(|desc| {
            descriptor_digest(&desc).map_err(|e| Error::from_core(source.source_name(), e))
        });
        let digest = match answer {
            Ok(digest) => digest,
            Err(e) => {
                tracing::warn!("{e}{next}");
                failures.push(e);
                continue;
            }
        };
        let why = if refused.contains(&digest) {
            "rejected above".to_string()
        } else {
            match check(store, sources, reference, policy, digest.clone()).await? {
                Ok(decision) => return Ok(decision),
                Err(reason) => reason,
            }
        };
        let rejection = format!(
            "source {:?} answered {name}:{tag} with {digest}: {why}",
            source.source_name()
        );
        if i < last {
            tracing::warn!("{rejection}{next}");
        }
        rejections.push(rejection);
        refused.push(digest);
    }
    if rejections.is_empty() {
        return Err(exhausted(&format!("{name}:{tag}"), failures));
    }
    let detail: Vec<String> = rejections
        .into_iter()
        .chain(failures.iter().map(Error::to_string))
        .collect();
    Err(Error::new(
        ErrorKind::Rejected,
        "",
        format!(
            "{name}:{tag}: rejected by the trust policy: {}",
            detail.join("; ")
        ),
    ))
}

/// Checks `digest` as the top manifest of `reference` against `policy`, with the
/// signatures of every source and of the store: the decision, or the policy's reason to
/// reject it. An `Err` of the outer result is a failure, not a verdict.
async fn check(
    store: &Store,
    sources: &Sources,
    reference: &Reference,
    policy: &Policy,
    digest: Digest,
) -> Result<std::result::Result<Accepted, String>> {
    let verdict =
        |signatures: &[SignatureEnvelope]| match policy.check(reference, &digest, signatures) {
            Ok(trusted) => Ok(Ok(trusted)),
            Err(ferry_signing::Error::Rejected { reason, .. }) => Ok(Err(reason)),
            Err(e) => Err(signing_error(e)),
        };
    // A rule that does not look at signatures decides before any are fetched; they are
    // still fetched for an accepted image, so the store keeps them for a later policy.
    let early = if policy.requires_signature(reference) {
        None
    } else {
        match verdict(&[])? {
            Ok(trusted) => Some(trusted),
            Err(reason) => return Ok(Err(reason)),
        }
    };
    let mut asked: Vec<&Arc<dyn Driver>> = Vec::new();
    for source in sources.content.iter().chain(&sources.resolve) {
        if !asked.iter().any(|a| Arc::ptr_eq(a, source)) {
            asked.push(source);
        }
    }
    let signatures = gather_signatures(store, &asked, &reference.name(), &digest).await;
    let trusted = match early {
        Some(trusted) => trusted,
        None => match verdict(&signatures)? {
            Ok(trusted) => trusted,
            Err(reason) => return Ok(Err(reason)),
        },
    };
    let signatures = worth_keeping(signatures, policy.keys_for(reference));
    Ok(Ok(Accepted {
        digest,
        trusted,
        signatures,
    }))
}

/// The signatures a pull keeps in the store (SIG-17): those made by a key the rule trusts
/// first, then the others in the order found (the store's own first), at most
/// [`MAX_SIGNATURES`]. Sources may offer anything; this bounds what they can make the store
/// hold, pull after pull, while signatures the policy counts are always kept.
fn worth_keeping(
    signatures: Vec<SignatureEnvelope>,
    trusted: &[ferry_signing::PublicKey],
) -> Vec<SignatureEnvelope> {
    let (mut kept, others): (Vec<_>, Vec<_>) = signatures
        .into_iter()
        .partition(|envelope| envelope.signer(trusted).is_some());
    let room = MAX_SIGNATURES.saturating_sub(kept.len());
    kept.extend(others.into_iter().take(room));
    kept
}

/// Refuses images whose config or layers ferry could not use, before transferring anything.
fn check_media_types(manifest: &ImageManifest) -> ferry_core::Result<()> {
    let config_type = manifest.config().media_type().to_string();
    if config_type != media::OCI_CONFIG && config_type != media::DOCKER_CONFIG {
        return Err(ferry_core::Error::UnsupportedMediaType {
            media_type: config_type,
            context: format!("config {}", manifest.config().digest()),
        });
    }
    for layer in manifest.layers() {
        Compression::of_layer(layer.media_type().as_ref()).map_err(|e| match e {
            ferry_core::Error::UnsupportedMediaType { media_type, .. } => {
                ferry_core::Error::UnsupportedMediaType {
                    media_type,
                    context: format!("layer {}", layer.digest()),
                }
            }
            other => other,
        })?;
    }
    Ok(())
}

/// Resolves `name:tag` with the first resolver that knows it.
pub async fn resolve(resolvers: &[Arc<dyn Driver>], name: &str, tag: &str) -> Result<Descriptor> {
    let mut failures = Vec::new();
    for (i, source) in resolvers.iter().enumerate() {
        match source.resolve(name, tag).await {
            Ok(desc) => return Ok(desc),
            Err(e) if falls_back(&e) => {
                warn_fallback(&e, i, resolvers.len());
                failures.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(exhausted(&format!("{name}:{tag}"), failures))
}

/// Logs a failure that falls back, saying "trying the next source" only when source
/// `i` of `count` is not the last.
fn warn_fallback(e: &Error, i: usize, count: usize) {
    if i + 1 < count {
        tracing::warn!("{e}; trying the next source");
    } else {
        tracing::warn!("{e}");
    }
}

/// Whether the next source should be tried after this failure.
fn falls_back(e: &Error) -> bool {
    matches!(
        e.kind,
        ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Corrupt
    )
}

/// The error after every source failed: one line listing each source's failure.
fn exhausted(what: &str, failures: Vec<Error>) -> Error {
    match failures.len() {
        0 => Error::new(
            ErrorKind::Invalid,
            "",
            format!("no source configured for {what}"),
        ),
        1 => failures.into_iter().next().expect("one failure"),
        _ => {
            let kind = if failures.iter().all(|f| f.kind == ErrorKind::NotFound) {
                ErrorKind::NotFound
            } else {
                ErrorKind::Unavailable
            };
            let detail: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
            Error::new(
                kind,
                "",
                format!("{what}: every source failed: {}", detail.join("; ")),
            )
        }
    }
}

/// Fetches manifest `digest` of `name` from the first of `sources` that has it, verified,
/// into the store (or reads it from the store when it is there).
pub async fn fetch_manifest(
    store: &Arc<Store>,
    sources: &Sources,
    name: &str,
    digest: &Digest,
    progress: &dyn Progress,
) -> Result<ManifestBlob> {
    Transfer::new(store, sources, name, progress)
        .manifest(digest)
        .await
}

/// Makes blob `desc` of `name` present in the store as a pull does: from the sources in
/// order, resuming a partial ingest, verified at commit, the next source after a corrupt
/// one. Returns the bytes transferred; [`Event::BlobProgress`] reports each arrival.
pub async fn fetch_blob(
    store: &Arc<Store>,
    sources: &Sources,
    name: &str,
    desc: &Descriptor,
    kind: BlobKind,
    progress: &dyn Progress,
) -> Result<u64> {
    Transfer::new(store, sources, name, progress)
        .blob(desc, kind, None)
        .await
}

struct Transfer<'a> {
    store: &'a Arc<Store>,
    sources: &'a Sources,
    name: &'a str,
    progress: &'a dyn Progress,
    transferred: u64,
}

impl<'a> Transfer<'a> {
    fn new(
        store: &'a Arc<Store>,
        sources: &'a Sources,
        name: &'a str,
        progress: &'a dyn Progress,
    ) -> Self {
        Transfer {
            store,
            sources,
            name,
            progress,
            transferred: 0,
        }
    }

    /// A manifest from the store, or fetched from the first source that has it and stored.
    async fn manifest(&mut self, digest: &Digest) -> Result<ManifestBlob> {
        let local = Error::local;
        if self.store.blob_size(digest).map_err(local)?.is_some() {
            let bytes = self
                .store
                .read_blob(digest, ferry_core::manifest::MAX_MANIFEST_SIZE)
                .map_err(local)?;
            return ManifestBlob::parse(bytes, None, Some(digest)).map_err(local);
        }
        let mut failures = Vec::new();
        let count = self.sources.content.len();
        for (i, source) in self.sources.content.iter().enumerate() {
            let fetched = source
                .fetch_manifest(self.name, digest)
                .await
                .and_then(|m| {
                    ManifestBlob::parse(m.bytes, m.content_type.as_deref(), Some(digest))
                        .map_err(|e| Error::from_core(source.source_name(), e))
                });
            match fetched {
                Ok(blob) => {
                    let size = blob.bytes.len() as u64;
                    self.store
                        .put_blob(
                            digest,
                            &blob.bytes,
                            &blob.media_type,
                            Some(source.source_name()),
                        )
                        .map_err(local)?;
                    self.transferred += size;
                    self.progress.event(&Event::BlobDone {
                        digest: digest.to_string(),
                        kind: BlobKind::Manifest,
                        size,
                        present: false,
                        source: Some(source.source_name().to_string()),
                    });
                    return Ok(blob);
                }
                Err(e) if falls_back(&e) => {
                    warn_fallback(&e, i, count);
                    failures.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(exhausted(
            &format!("manifest {}@{digest}", self.name),
            failures,
        ))
    }

    /// Makes one blob present in the store, through `tap` when it is a layer with a sink;
    /// returns the bytes transferred.
    async fn blob(
        &self,
        desc: &Descriptor,
        kind: BlobKind,
        mut tap: Option<Tap<'_>>,
    ) -> Result<u64> {
        let local = Error::local;
        let digest = descriptor_digest(desc).map_err(local)?;
        let size = desc.size();
        let media_type = desc.media_type().to_string();
        if let Some(have) = self.store.blob_size(&digest).map_err(local)? {
            if have == size {
                self.progress.event(&Event::present(&digest, kind, size));
                return Ok(0);
            }
        }
        let store = self.store.clone();
        let wanted = digest.clone();
        let mut ingest = tokio::task::spawn_blocking(move || store.ingest(&wanted, Some(size)))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Invalid,
                    "store",
                    format!("ingest task failed: {e}"),
                )
            })?
            .map_err(local)?;
        // Another process may have committed it while we waited for the ingest lock.
        if self.store.blob_size(&digest).map_err(local)? == Some(size) {
            return Ok(0);
        }
        self.progress.event(&Event::BlobStart {
            digest: digest.to_string(),
            kind,
            size,
            resumed_from: ingest.offset(),
        });
        if let Some(tap) = &mut tap {
            tap.open(self.store, &digest, ingest.offset()).await?;
        }
        let mut failures = Vec::new();
        let mut transferred = 0;
        let count = self.sources.content.len();
        for (i, source) in self.sources.content.iter().enumerate() {
            match self
                .stream_into(
                    source.as_ref(),
                    &digest,
                    size,
                    &mut ingest,
                    &mut tap,
                    &mut transferred,
                )
                .await
            {
                Ok(()) => {}
                Err(e) if falls_back(&e) => {
                    warn_fallback(&e, i, count);
                    failures.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            // The bytes are all there: the sink's verdict, then verify and make them visible.
            let (result, failure) = match &mut tap {
                Some(tap) => match tap.finish().await {
                    Ok(result) => (result, None),
                    Err(e) if e.kind == ErrorKind::Corrupt && ingest.verified() => {
                        // The blob the manifest names, but not the layer the config describes:
                        // neither the blob nor the sink's result is kept (STORE-21).
                        ingest.reset().map_err(local)?;
                        return Err(e);
                    }
                    // Corrupt bytes may be why the sink failed: the commit tells.
                    Err(e) => (None, Some(e)),
                },
                None => (None, None),
            };
            let commit = {
                let source_name = source.source_name().to_string();
                let media_type = media_type.clone();
                tokio::task::spawn_blocking(move || ingest.commit(&media_type, Some(&source_name)))
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Invalid,
                            "store",
                            format!("commit task failed: {e}"),
                        )
                    })?
            };
            return match commit {
                Ok(_) => {
                    self.progress.event(&Event::BlobDone {
                        digest: digest.to_string(),
                        kind,
                        size,
                        present: false,
                        source: Some(source.source_name().to_string()),
                    });
                    if let Some(e) = failure {
                        return Err(e);
                    }
                    if let Some(result) = result {
                        result.publish()?;
                    }
                    Ok(transferred)
                }
                Err(e) => {
                    let e = Error::from_core(source.source_name(), e);
                    if e.kind != ErrorKind::Corrupt {
                        return Err(e);
                    }
                    // The commit removed the bad bytes; start over with the next source.
                    warn_fallback(&e, i, count);
                    failures.push(e);
                    let rest = Sources {
                        content: self
                            .sources
                            .content
                            .iter()
                            .skip_while(|s| !Arc::ptr_eq(s, source))
                            .skip(1)
                            .cloned()
                            .collect(),
                        resolve: Vec::new(),
                    };
                    if rest.content.is_empty() {
                        return Err(exhausted(&format!("blob {}@{digest}", self.name), failures));
                    }
                    let retry = Transfer::new(self.store, &rest, self.name, self.progress);
                    let tap = tap.map(Tap::again);
                    match Box::pin(retry.blob(desc, kind, tap)).await {
                        Ok(n) => Ok(transferred + n),
                        Err(last) => {
                            failures.push(last);
                            Err(exhausted(&format!("blob {}@{digest}", self.name), failures))
                        }
                    }
                }
            };
        }
        Err(exhausted(&format!("blob {}@{digest}", self.name), failures))
    }

    /// Empties the ingest and says so: a [`Event::BlobProgress`] back at 0.
    fn restart(
        &self,
        ingest: &mut ferry_core::store::Ingest,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        ingest.reset().map_err(Error::local)?;
        self.progress.event(&Event::BlobProgress {
            digest: digest.to_string(),
            done: 0,
            size,
        });
        Ok(())
    }

    /// Streams the rest of a blob from one source into the ingest, resuming on breaks.
    async fn stream_into(
        &self,
        source: &dyn Driver,
        digest: &Digest,
        size: u64,
        ingest: &mut ferry_core::store::Ingest,
        tap: &mut Option<Tap<'_>>,
        transferred: &mut u64,
    ) -> Result<()> {
        let mut attempts = 0;
        loop {
            let offset = ingest.offset();
            if offset == size {
                return Ok(());
            }
            let range = if source.capabilities().ranges {
                ByteRange::from(offset)
            } else {
                self.restart(ingest, digest, size)?;
                ByteRange::WHOLE
            };
            if let Some(tap) = tap {
                tap.follow(self.store, digest, ingest.offset()).await?;
            }
            let result: Result<()> = async {
                let mut body = source.fetch_blob(self.name, digest, range).await?;
                while let Some(chunk) = body.stream.next().await {
                    let chunk = chunk?;
                    ingest
                        .write_all(&chunk)
                        .map_err(|e| Error::from_core(source.source_name(), e))?;
                    *transferred += chunk.len() as u64;
                    if let Some(tap) = tap.as_mut() {
                        tap.feed(chunk).await;
                    }
                    self.progress.event(&Event::BlobProgress {
                        digest: digest.to_string(),
                        done: ingest.offset(),
                        size,
                    });
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) if ingest.offset() == size => return Ok(()),
                Ok(()) => {
                    return Err(Error::corrupt(
                        source.source_name(),
                        format!(
                            "blob {digest}: body ended at {} of {size} bytes",
                            ingest.offset()
                        ),
                    ))
                }
                Err(e)
                    if e.kind == ErrorKind::Unavailable
                        && attempts < RESUME_ATTEMPTS
                        && ingest.offset() > offset =>
                {
                    attempts += 1;
                    tracing::warn!("{e}; resuming at byte {}", ingest.offset());
                }
                Err(e) if e.kind == ErrorKind::Corrupt => {
                    // The bytes this source gave are suspect: the next source starts over
                    // rather than continuing from them (STORE-3).
                    self.restart(ingest, digest, size)?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A layer's sink while the layer's bytes flow into the ingest: the sink sees exactly the
/// bytes of the ingest, from the first, or is dropped (STORE-20).
struct Tap<'s> {
    sinks: &'s dyn LayerSinks,
    index: usize,
    sink: Option<Box<dyn LayerSink>>,
    /// Bytes the sink has taken.
    fed: u64,
    /// Why the sink stopped, if it did.
    failed: Option<Error>,
}

impl<'s> Tap<'s> {
    fn new(sinks: &'s dyn LayerSinks, index: usize) -> Self {
        Tap {
            sinks,
            index,
            sink: None,
            fed: 0,
            failed: None,
        }
    }

    /// The same layer's tap, fresh, for another try at the blob.
    fn again(self) -> Self {
        Tap::new(self.sinks, self.index)
    }

    /// Opens the sink, and hands it the bytes a previous pull left in the ingest.
    async fn open(&mut self, store: &Store, digest: &Digest, offset: u64) -> Result<()> {
        self.discard();
        self.fed = 0;
        self.sink = self.sinks.open(self.index)?;
        if offset == 0 || self.sink.is_none() {
            return Ok(());
        }
        let io = |e| {
            Error::new(
                ErrorKind::Invalid,
                "store",
                format!("reading the partial of {digest}: {e}"),
            )
        };
        let Some(mut partial) = store.open_partial(digest).map_err(Error::local)? else {
            self.discard();
            return Ok(());
        };
        while self.fed < offset && self.sink.is_some() {
            let mut buf = vec![0; (offset - self.fed).min(1 << 20) as usize];
            std::io::Read::read_exact(&mut partial, &mut buf).map_err(io)?;
            self.feed(bytes::Bytes::from(buf)).await;
        }
        Ok(())
    }

    /// Before writing at `offset` of the ingest: a sink that is not there (the ingest was
    /// emptied) starts over, or is dropped when it cannot.
    async fn follow(&mut self, store: &Store, digest: &Digest, offset: u64) -> Result<()> {
        if self.fed == offset && (self.sink.is_some() || self.failed.is_some()) {
            return Ok(());
        }
        if offset == 0 {
            return self.open(store, digest, 0).await;
        }
        self.discard();
        Ok(())
    }

    /// Hands on bytes just written into the ingest.
    async fn feed(&mut self, chunk: bytes::Bytes) {
        let Some(sink) = &mut self.sink else { return };
        let len = chunk.len() as u64;
        if sink.write(chunk).await.is_ok() {
            self.fed += len;
            return;
        }
        let sink = self.sink.take().expect("a sink");
        self.failed = Some(match sink.finish().await {
            Err(e) => e,
            Ok(_) => Error::new(ErrorKind::Invalid, "", "a layer sink stopped taking bytes"),
        });
    }

    /// Drops the sink (which waits for its consumer to stop) and what it said.
    fn discard(&mut self) {
        self.failed = None;
        if let Some(sink) = self.sink.take() {
            blocking(|| drop(sink));
        }
    }

    /// Every byte is in the ingest: the sink's result, or why it failed.
    async fn finish(&mut self) -> Result<Option<Box<dyn LayerResult>>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.sink.take() {
            Some(sink) => sink.finish().await.map(Some),
            None => Ok(None),
        }
    }
}

impl Drop for Tap<'_> {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Runs `f`, which may block briefly, from async code: on a multi-threaded runtime other
/// tasks move to other threads meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

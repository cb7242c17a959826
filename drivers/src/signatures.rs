//! Signatures next to images: the tag-scheme transport over any [`Driver`] and signatures in
//! the local store.
//!
//! Format and rules: `specs/signature.md` (SIG-12 to SIG-18). The signatures of top manifest
//! `D` of image `NAME` live in `NAME`'s own repository, under the tag [`signature_tag`]`(D)`
//! (`sha256-<hex>.sig`), as an OCI image manifest whose layers are signature envelopes.
//! Everything here goes through the [`Driver`] trait (resolve, manifests, blobs), so every
//! transport that can carry an image can carry its signatures unchanged.
//!
//! Nothing here trusts a signature: envelopes are only read, written and kept. Whether they
//! are worth anything is decided by a [`Policy`].

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::manifest::descriptor_digest;
use ferry_core::media;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Manifest, ManifestBlob, Reference, Store};
use ferry_signing::{
    Policy, SignatureEnvelope, TrustedImage, Verdict, MAX_ENVELOPE_SIZE, SIGNATURE_MEDIA_TYPE,
};
use futures::StreamExt as _;

use crate::{ByteRange, ByteStream, Driver, Error, ErrorKind, Result};

/// Media type of a signature set's config blob, and its `artifactType` (SIG-13).
pub const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.ferry.signature.config.v1+json";
/// The config blob of every signature set: the two bytes `{}` (SIG-13).
pub const SIGNATURE_CONFIG: &[u8] = b"{}";
/// Most envelopes read from one signature set, and most a set may hold (SIG-14, SIG-15).
pub const MAX_SIGNATURES: usize = 64;
/// The kind of the store roots that keep signature envelopes (SIG-17).
pub const ROOT_KIND: &str = "signature";
/// Longest tag the OCI distribution spec allows.
const MAX_TAG_LEN: usize = 128;
/// Suffix of a signature tag.
const TAG_SUFFIX: &str = ".sig";

/// The tag that holds the signatures of manifest `digest`: `<alg>-<hex>.sig`, cut to 128
/// characters (SIG-12).
pub fn signature_tag(digest: &Digest) -> String {
    let mut tag = format!("{}-{}", digest.algorithm().as_str(), digest.hex());
    tag.truncate(MAX_TAG_LEN - TAG_SUFFIX.len());
    tag.push_str(TAG_SUFFIX);
    tag
}

/// A signature set as read from a source: its manifest digest and its layers.
struct SignatureSet {
    digest: Digest,
    layers: Vec<Descriptor>,
}

/// Reads the signature set of `digest` at `driver`: `None` when its tag is missing (SIG-14).
async fn read_set(
    driver: &dyn Driver,
    name: &str,
    digest: &Digest,
) -> Result<Option<SignatureSet>> {
    let source = driver.source_name();
    let tag = signature_tag(digest);
    let desc = match driver.resolve(name, &tag).await {
        Ok(desc) => desc,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let what = format!("signature set {name}:{tag}");
    let set_digest = descriptor_digest(&desc).map_err(|e| Error::from_core(source, e))?;
    let fetched = driver.fetch_manifest(name, &set_digest).await?;
    let blob = ManifestBlob::parse(
        fetched.bytes,
        fetched.content_type.as_deref(),
        Some(&set_digest),
    )
    .map_err(|e| Error::from_core(source, e))?;
    let invalid = |why: String| Error::new(ErrorKind::Invalid, source, format!("{what}: {why}"));
    let Manifest::Image(manifest) = blob.manifest else {
        return Err(invalid("an index, not a signature set".into()));
    };
    let config_type = manifest.config().media_type().to_string();
    if config_type != SIGNATURE_CONFIG_MEDIA_TYPE {
        return Err(invalid(format!(
            "config media type {config_type:?}, not {SIGNATURE_CONFIG_MEDIA_TYPE:?}: not a ferry signature set"
        )));
    }
    match manifest.subject() {
        Some(subject) => {
            let subject = descriptor_digest(subject).map_err(|e| Error::from_core(source, e))?;
            if &subject != digest {
                return Err(invalid(format!("its subject is {subject}, not {digest}")));
            }
        }
        None => return Err(invalid("no subject".into())),
    }
    Ok(Some(SignatureSet {
        digest: set_digest,
        layers: manifest.layers().clone(),
    }))
}

/// The signature envelopes kept next to manifest `digest` of image `name` at `driver`; none
/// when its signature tag is missing (SIG-14).
///
/// At most [`MAX_SIGNATURES`] layers are read. A layer that is not an envelope, too large,
/// corrupt (its bytes do not match its digest) or malformed is skipped with a warning; the
/// set itself being unreadable, not a ferry signature set, or for another manifest is an
/// error. Envelopes are returned unverified, without duplicates: a [`Policy`] decides what
/// they are worth.
pub async fn fetch_signatures(
    driver: &dyn Driver,
    name: &str,
    digest: &Digest,
) -> Result<Vec<SignatureEnvelope>> {
    let Some(set) = read_set(driver, name, digest).await? else {
        return Ok(Vec::new());
    };
    if set.layers.len() > MAX_SIGNATURES {
        tracing::warn!(
            "source {:?}: signature set {name}@{} has {} layers; reading the first {MAX_SIGNATURES}",
            driver.source_name(),
            set.digest,
            set.layers.len()
        );
    }
    let mut envelopes: Vec<SignatureEnvelope> = Vec::new();
    for layer in set.layers.iter().take(MAX_SIGNATURES) {
        match fetch_envelope(driver, name, digest, layer).await {
            Ok(envelope) if !envelopes.contains(&envelope) => envelopes.push(envelope),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}; skipping this signature"),
        }
    }
    tracing::debug!(source = driver.source_name(), %digest, count = envelopes.len(), "fetched signatures");
    Ok(envelopes)
}

/// Fetches and parses one envelope layer of the signature set of `digest`, checking its size
/// and digest.
async fn fetch_envelope(
    driver: &dyn Driver,
    name: &str,
    digest: &Digest,
    layer: &Descriptor,
) -> Result<SignatureEnvelope> {
    let source = driver.source_name();
    let media_type = layer.media_type().to_string();
    let what = format!("signature {} of {name}@{digest}", layer.digest());
    let invalid = |why: String| Error::new(ErrorKind::Invalid, source, format!("{what}: {why}"));
    if media_type != SIGNATURE_MEDIA_TYPE {
        return Err(invalid(format!(
            "media type {media_type:?}, not {SIGNATURE_MEDIA_TYPE:?}"
        )));
    }
    let size = layer.size();
    if size > MAX_ENVELOPE_SIZE as u64 {
        return Err(invalid(format!(
            "{size} bytes, more than an envelope may have ({MAX_ENVELOPE_SIZE})"
        )));
    }
    let envelope_digest = descriptor_digest(layer).map_err(|e| Error::from_core(source, e))?;
    let mut body = driver
        .fetch_blob(name, &envelope_digest, ByteRange::WHOLE)
        .await?;
    let mut bytes = Vec::with_capacity(size as usize);
    while let Some(chunk) = body.stream.next().await {
        let chunk = chunk?;
        if (bytes.len() + chunk.len()) as u64 > size {
            return Err(Error::corrupt(
                source,
                format!("{what}: more bytes than the {size} its descriptor says"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let actual = Digest::of(envelope_digest.algorithm(), &bytes);
    if bytes.len() as u64 != size || actual != envelope_digest {
        return Err(Error::corrupt(
            source,
            format!(
                "{what}: digest mismatch: {} bytes hashing to {actual}",
                bytes.len()
            ),
        ));
    }
    SignatureEnvelope::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))
}

/// Where [`push_signature`] left a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedSignature {
    /// The signature tag (SIG-12).
    pub tag: String,
    /// The digest of the signature set's manifest now under the tag.
    pub set_digest: Digest,
    /// The digest of the envelope blob.
    pub envelope_digest: Digest,
    /// False when the set already held this envelope and nothing was written.
    pub added: bool,
}

/// Adds `envelope` to the signature set of the manifest `subject` describes, in image
/// `name`'s repository at `driver` (SIG-15).
///
/// Signatures accumulate: the set's existing layers are kept and the envelope is appended
/// unless the set already holds the same bytes. Blobs are written before the manifest, so
/// the tag never names a set whose envelopes are missing. Fails when the tag holds something
/// that is not a ferry signature set for `subject`, or a set that already holds
/// [`MAX_SIGNATURES`] layers.
pub async fn push_signature(
    driver: &dyn Driver,
    name: &str,
    subject: &Descriptor,
    envelope: &SignatureEnvelope,
) -> Result<PushedSignature> {
    let source = driver.source_name();
    let digest = descriptor_digest(subject).map_err(|e| Error::from_core(source, e))?;
    let tag = signature_tag(&digest);
    let bytes = envelope.to_bytes();
    let envelope_digest = Digest::sha256(&bytes);
    let existing = read_set(driver, name, &digest).await?;
    let mut layers = Vec::new();
    if let Some(set) = existing {
        if set
            .layers
            .iter()
            .any(|l| descriptor_digest(l).is_ok_and(|d| d == envelope_digest))
        {
            return Ok(PushedSignature {
                tag,
                set_digest: set.digest,
                envelope_digest,
                added: false,
            });
        }
        if set.layers.len() >= MAX_SIGNATURES {
            return Err(Error::new(
                ErrorKind::Invalid,
                source,
                format!(
                    "signature set {name}:{tag} already holds {} signatures, the most a set may hold ({MAX_SIGNATURES})",
                    set.layers.len()
                ),
            ));
        }
        layers = set.layers;
    }
    let config_digest = Digest::sha256(SIGNATURE_CONFIG);
    let size = bytes.len() as u64;
    driver
        .put_blob(name, &envelope_digest, size, one_chunk(bytes))
        .await?;
    driver
        .put_blob(
            name,
            &config_digest,
            SIGNATURE_CONFIG.len() as u64,
            one_chunk(SIGNATURE_CONFIG.to_vec()),
        )
        .await?;
    layers.push(Descriptor::new(
        SIGNATURE_MEDIA_TYPE.into(),
        size,
        ferry_core::oci_spec::image::Digest::from(&envelope_digest),
    ));
    let manifest = set_manifest(subject, &config_digest, &layers)?;
    let set_digest = driver
        .put_manifest(name, Some(&tag), media::OCI_MANIFEST, &manifest)
        .await?;
    tracing::info!(source, %digest, envelope = %envelope_digest, set = %set_digest, "pushed signature");
    Ok(PushedSignature {
        tag,
        set_digest,
        envelope_digest,
        added: true,
    })
}

/// The bytes of a signature set manifest (SIG-13).
fn set_manifest(subject: &Descriptor, config: &Digest, layers: &[Descriptor]) -> Result<Vec<u8>> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": SIGNATURE_CONFIG_MEDIA_TYPE,
        "config": {
            "mediaType": SIGNATURE_CONFIG_MEDIA_TYPE,
            "digest": config.to_string(),
            "size": SIGNATURE_CONFIG.len(),
        },
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type().to_string(),
            "digest": subject.digest().to_string(),
            "size": subject.size(),
        },
    });
    serde_json::to_vec(&manifest).map_err(|e| {
        Error::new(
            ErrorKind::Invalid,
            "",
            format!("signature set manifest to JSON: {e}"),
        )
    })
}

/// A byte stream of one chunk.
fn one_chunk(bytes: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(Bytes::from(bytes)) }))
}

/// Every signature the sources and the store have for manifest `digest` of `name`, without
/// duplicates (SIG-18).
///
/// The sources are asked at once; one that fails is skipped with a warning, so a broken or
/// unreachable source never fails a pull here (it may still fail it for content).
pub(crate) async fn gather_signatures(
    store: &Store,
    sources: &[&Arc<dyn Driver>],
    name: &str,
    digest: &Digest,
) -> Vec<SignatureEnvelope> {
    let fetched = futures::future::join_all(
        sources
            .iter()
            .map(|s| fetch_signatures(s.as_ref(), name, digest)),
    )
    .await;
    let mut all = signatures_in_store(store, digest).unwrap_or_else(|e| {
        tracing::warn!("signatures of {digest} in the store: {e}; going on without them");
        Vec::new()
    });
    for result in fetched {
        match result {
            Ok(envelopes) => {
                for envelope in envelopes {
                    if !all.contains(&envelope) {
                        all.push(envelope);
                    }
                }
            }
            Err(e) => tracing::warn!("signatures of {name}@{digest}: {e}; going on without them"),
        }
    }
    all
}

/// Keeps `envelope` in the store as a signature of manifest `digest`: a blob of media type
/// `application/vnd.ferry.signature.v1+json` and a `signature` root keyed by `digest`
/// (SIG-17). Returns the envelope blob's digest.
///
/// Holds a store lease while it writes, so a concurrent GC cannot collect the blob before its
/// root exists.
pub fn store_signature(
    store: &Store,
    digest: &Digest,
    envelope: &SignatureEnvelope,
) -> Result<Digest> {
    let _lease = store.lease().map_err(Error::local)?;
    store_signature_leased(store, digest, envelope)
}

/// [`store_signature`] for a caller that holds a lease already (the pull engine).
pub(crate) fn store_signature_leased(
    store: &Store,
    digest: &Digest,
    envelope: &SignatureEnvelope,
) -> Result<Digest> {
    let bytes = envelope.to_bytes();
    let blob = Digest::sha256(&bytes);
    store
        .put_blob(&blob, &bytes, SIGNATURE_MEDIA_TYPE, None)
        .map_err(Error::local)?;
    store
        .add_root(ROOT_KIND, &digest.to_string(), &blob)
        .map_err(Error::local)?;
    Ok(blob)
}

/// The signature envelopes the store keeps for manifest `digest` (SIG-17), unverified.
///
/// A kept envelope whose blob is missing or malformed is skipped with a warning.
pub fn signatures_in_store(store: &Store, digest: &Digest) -> Result<Vec<SignatureEnvelope>> {
    let key = digest.to_string();
    let mut envelopes: Vec<SignatureEnvelope> = Vec::new();
    for (_, blob) in store
        .roots(ROOT_KIND)
        .map_err(Error::local)?
        .into_iter()
        .filter(|(k, _)| *k == key)
    {
        let bytes = match store.read_blob(&blob, MAX_ENVELOPE_SIZE as u64) {
            Ok(bytes) => bytes,
            Err(e @ (ferry_core::Error::BlobNotFound(_) | ferry_core::Error::TooLarge { .. })) => {
                tracing::warn!("signature {blob} of {digest} in the store: {e}; skipping it");
                continue;
            }
            Err(e) => return Err(Error::local(e)),
        };
        match SignatureEnvelope::from_bytes(&bytes) {
            Ok(envelope) if !envelopes.contains(&envelope) => envelopes.push(envelope),
            Ok(_) => {}
            Err(e) => tracing::warn!("signature {blob} of {digest} in the store: {e}; skipping it"),
        }
    }
    Ok(envelopes)
}

/// Drops the `signature` roots of manifests no image record names any more, so the next
/// GC removes their envelopes (SIG-17). Returns how many manifests' signatures were dropped.
pub fn prune_signatures(store: &Store) -> Result<usize> {
    let named: HashSet<String> = store
        .images()
        .map_err(Error::local)?
        .into_iter()
        .map(|r| r.digest.to_string())
        .collect();
    let mut unnamed: Vec<String> = store
        .roots(ROOT_KIND)
        .map_err(Error::local)?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| !named.contains(key))
        .collect();
    unnamed.dedup();
    for key in &unnamed {
        store.remove_roots(ROOT_KIND, key).map_err(Error::local)?;
    }
    Ok(unnamed.len())
}

/// The policy's verdict on a stored image, from the signatures the store keeps for it.
pub fn verdict_in_store(store: &Store, policy: &Policy, record: &ImageRecord) -> Result<Verdict> {
    let reference = Reference::with_name(&record.name, record.tag.as_deref(), Some(&record.digest))
        .map_err(Error::local)?;
    let signatures = signatures_in_store(store, &record.digest)?;
    policy
        .evaluate(&reference, &record.digest, &signatures)
        .map_err(signing_error)
}

/// Checks the image `reference` names in the store against `policy` with the signatures the
/// store keeps for it, and returns the [`TrustedImage`] the runtime needs.
///
/// A reference with a tag is checked as exactly that `NAME:TAG`; a reference by digest alone
/// is accepted if the policy accepts any `NAME:TAG` the store records for that digest.
/// Rejection is an error of kind [`ErrorKind::Rejected`] naming the image, the rule and the
/// keys tried.
pub fn verify_in_store(
    store: &Store,
    policy: &Policy,
    reference: &Reference,
) -> Result<TrustedImage> {
    let record = store.find_image(reference).map_err(Error::local)?;
    let signatures = signatures_in_store(store, &record.digest)?;
    let tags: Vec<Option<String>> = match reference.tag() {
        Some(tag) => vec![Some(tag.to_string())],
        None => {
            let mut tags: Vec<Option<String>> = store
                .images()
                .map_err(Error::local)?
                .into_iter()
                .filter(|r| r.name == record.name && r.digest == record.digest)
                .map(|r| r.tag)
                .collect();
            // Tagged names first: only they can carry a signature.
            tags.sort_by_key(Option::is_none);
            tags
        }
    };
    let mut rejection = None;
    for tag in tags {
        let named = Reference::with_name(&record.name, tag.as_deref(), Some(&record.digest))
            .map_err(Error::local)?;
        match policy.check(&named, &record.digest, &signatures) {
            Ok(trusted) => return Ok(trusted),
            Err(ferry_signing::Error::Rejected { reason, .. }) => {
                rejection.get_or_insert(reason);
            }
            Err(e) => return Err(signing_error(e)),
        }
    }
    Err(Error::new(
        ErrorKind::Rejected,
        "",
        rejection.unwrap_or_else(|| format!("image {reference}: no name in the store to check")),
    ))
}

/// A signing error as a driver error: a rejection keeps its kind, anything else is invalid input.
pub(crate) fn signing_error(e: ferry_signing::Error) -> Error {
    match e {
        ferry_signing::Error::Rejected { reason, .. } => {
            Error::new(ErrorKind::Rejected, "", reason)
        }
        e => Error::new(ErrorKind::Invalid, "", e.to_string()),
    }
}

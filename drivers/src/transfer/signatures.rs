//! Signatures next to images: the tag-scheme transport over any [`Driver`] and signatures in
//! the local store.
//!
//! Format and rules: `specs/signature.md` (SIG-8, SIG-12 to SIG-18). The signatures of top
//! manifest `D` of image `NAME` live in `NAME`'s own repository, under the tag
//! [`signature_tag`]`(D)` (`sha256-<hex>.sig`), as an OCI image manifest whose layers are
//! cosign signature layers: the payload as the blob, the signature in an annotation. cosign
//! and ferry read and add to the same sets. Everything here goes through the [`Driver`] trait
//! (resolve, manifests, blobs), so every transport that can carry an image can carry its
//! signatures unchanged.
//!
//! Nothing here trusts a signature: signatures are only read, written and kept. Whether they
//! are worth anything is decided by a [`Policy`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::manifest::descriptor_digest;
use ferry_core::media;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Manifest, ManifestBlob, Reference, Store};
use ferry_signing::{
    Policy, SignatureEnvelope, TrustedImage, ENVELOPE_MEDIA_TYPE, MAX_ENVELOPE_SIZE,
    MAX_PAYLOAD_SIZE, PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION,
};
use futures::StreamExt as _;

use crate::{ByteRange, ByteStream, Driver, Error, ErrorKind, Result};

/// Media type of the config blob of a signature set ferry creates, and its `artifactType`
/// (SIG-13).
pub const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.ferry.signature.config.v1+json";
/// The config blob of every signature set ferry creates: the two bytes `{}` (SIG-13).
pub const SIGNATURE_CONFIG: &[u8] = b"{}";
/// Most signature layers read from one signature set, and most a set may hold (SIG-14, SIG-15).
pub const MAX_SIGNATURES: usize = 64;
/// The kind of the store roots that keep stored envelopes (SIG-17).
pub const ROOT_KIND: &str = "signature";
/// The kind of the store roots that keep signature payloads, the layer blobs (SIG-17).
pub const PAYLOAD_ROOT_KIND: &str = "signature-payload";
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

/// The manifest digest whose signature tag `tag` is, if it is one: `None` for any other tag,
/// and for a cut `sha512` tag, which names no whole digest (SIG-12).
pub fn signature_tag_digest(tag: &str) -> Option<Digest> {
    let (alg, hex) = tag.strip_suffix(TAG_SUFFIX)?.split_once('-')?;
    let digest = Digest::parse(&format!("{alg}:{hex}")).ok()?;
    (signature_tag(&digest) == tag).then_some(digest)
}

/// The layer descriptor of one signature: the payload's media type, digest and size, and the
/// signature in the `dev.cosignproject.cosign/signature` annotation (SIG-8).
pub fn signature_layer(envelope: &SignatureEnvelope) -> Descriptor {
    let mut layer = Descriptor::new(
        PAYLOAD_MEDIA_TYPE.into(),
        envelope.payload().len() as u64,
        ferry_core::oci_spec::image::Digest::from(&envelope.payload_digest()),
    );
    layer.set_annotations(Some(HashMap::from([(
        SIGNATURE_ANNOTATION.to_string(),
        envelope.signature_base64(),
    )])));
    layer
}

/// The signature a layer carries, from its descriptor and its blob's bytes: checks the media
/// type, the size, the digest and the signature annotation (SIG-8, SIG-14); the reason on
/// failure.
pub fn envelope_of_layer(
    layer: &Descriptor,
    payload: Vec<u8>,
) -> std::result::Result<SignatureEnvelope, String> {
    check_layer(layer)?;
    let digest = descriptor_digest(layer).map_err(|e| e.to_string())?;
    let actual = Digest::of(digest.algorithm(), &payload);
    if payload.len() as u64 != layer.size() || actual != digest {
        return Err(format!(
            "digest mismatch: {} bytes hashing to {actual}",
            payload.len()
        ));
    }
    let signature = layer
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        .ok_or_else(|| format!("no {SIGNATURE_ANNOTATION} annotation"))?;
    SignatureEnvelope::from_layer(payload, signature).map_err(|e| e.to_string())
}

/// Fails when a layer is not a signature layer or is larger than a payload may be (SIG-8),
/// before any byte is fetched.
fn check_layer(layer: &Descriptor) -> std::result::Result<(), String> {
    let media_type = layer.media_type().to_string();
    if media_type != PAYLOAD_MEDIA_TYPE {
        return Err(format!(
            "media type {media_type:?}, not {PAYLOAD_MEDIA_TYPE:?}"
        ));
    }
    if layer.size() > MAX_PAYLOAD_SIZE as u64 {
        return Err(format!(
            "{} bytes, more than a signature payload may have ({MAX_PAYLOAD_SIZE})",
            layer.size()
        ));
    }
    Ok(())
}

/// The bytes of a new signature set holding `envelopes`, in order, for the manifest
/// `subject` describes (SIG-13). Its blobs are [`SIGNATURE_CONFIG`] and each payload.
pub fn signature_set_manifest(subject: &Descriptor, envelopes: &[SignatureEnvelope]) -> Vec<u8> {
    let layers: Vec<Descriptor> = envelopes.iter().map(signature_layer).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": SIGNATURE_CONFIG_MEDIA_TYPE,
        "config": {
            "mediaType": SIGNATURE_CONFIG_MEDIA_TYPE,
            "digest": Digest::sha256(SIGNATURE_CONFIG).to_string(),
            "size": SIGNATURE_CONFIG.len(),
        },
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type().to_string(),
            "digest": subject.digest().to_string(),
            "size": subject.size(),
        },
    });
    serde_json::to_vec(&manifest).expect("a manifest of strings and numbers serializes")
}

/// A signature set as read from a source: its manifest, as bytes and parsed.
struct SignatureSet {
    digest: Digest,
    bytes: Bytes,
    layers: Vec<Descriptor>,
}

/// What a source has under the signature tag of a manifest (SIG-14).
enum Found {
    /// Nothing: the tag is missing.
    Nothing,
    /// Something that is not a signature set (an index); described for messages.
    Foreign(String),
    /// A signature set (an image manifest), whoever wrote it.
    Set(SignatureSet),
}

/// Reads what `driver` has under the signature tag of `digest` (SIG-14). A set whose subject
/// is another manifest is an error.
async fn read_set(driver: &dyn Driver, name: &str, digest: &Digest) -> Result<Found> {
    let source = driver.source_name();
    let tag = signature_tag(digest);
    let desc = match driver.resolve(name, &tag).await {
        Ok(desc) => desc,
        Err(e) if e.kind == ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e),
    };
    let set_digest = descriptor_digest(&desc).map_err(|e| Error::from_core(source, e))?;
    let fetched = driver.fetch_manifest(name, &set_digest).await?;
    let blob = ManifestBlob::parse(
        fetched.bytes.clone(),
        fetched.content_type.as_deref(),
        Some(&set_digest),
    )
    .map_err(|e| Error::from_core(source, e))?;
    let Manifest::Image(manifest) = blob.manifest else {
        return Ok(Found::Foreign(format!("an index ({set_digest})")));
    };
    if let Some(subject) = manifest.subject() {
        let subject = descriptor_digest(subject).map_err(|e| Error::from_core(source, e))?;
        if &subject != digest {
            return Err(Error::new(
                ErrorKind::Invalid,
                source,
                format!("signature set {name}:{tag}: its subject is {subject}, not {digest}"),
            ));
        }
    }
    Ok(Found::Set(SignatureSet {
        digest: set_digest,
        bytes: fetched.bytes.into(),
        layers: manifest.layers().clone(),
    }))
}

/// The signatures kept next to manifest `digest` of image `name` at `driver`; none when its
/// signature tag is missing (SIG-14).
///
/// At most [`MAX_SIGNATURES`] layers are read. A layer that is not a signature layer, too
/// large, corrupt (its bytes do not match its digest) or without its signature is skipped
/// with a warning. An index under the tag holds no signatures; a set that is unreadable or
/// for another manifest is an error. Signatures are returned unverified, without
/// duplicates: a [`Policy`] decides what they are worth.
pub async fn fetch_signatures(
    driver: &dyn Driver,
    name: &str,
    digest: &Digest,
) -> Result<Vec<SignatureEnvelope>> {
    let set = match read_set(driver, name, digest).await? {
        Found::Set(set) => set,
        Found::Nothing => return Ok(Vec::new()),
        Found::Foreign(what) => {
            tracing::info!(
                "source {:?}: {name}:{} holds {what}, not a signature set",
                driver.source_name(),
                signature_tag(digest)
            );
            return Ok(Vec::new());
        }
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

/// Fetches one signature layer of the signature set of `digest` and reads its signature,
/// checking its size before and its digest after fetching.
async fn fetch_envelope(
    driver: &dyn Driver,
    name: &str,
    digest: &Digest,
    layer: &Descriptor,
) -> Result<SignatureEnvelope> {
    let source = driver.source_name();
    let what = format!("signature {} of {name}@{digest}", layer.digest());
    let invalid = |why: String| Error::new(ErrorKind::Invalid, source, format!("{what}: {why}"));
    check_layer(layer).map_err(invalid)?;
    let size = layer.size();
    let payload_digest = descriptor_digest(layer).map_err(|e| Error::from_core(source, e))?;
    let mut body = driver
        .fetch_blob(name, &payload_digest, ByteRange::WHOLE)
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
    envelope_of_layer(layer, bytes).map_err(|why| {
        if why.starts_with("digest mismatch") {
            Error::corrupt(source, format!("{what}: {why}"))
        } else {
            invalid(why)
        }
    })
}

/// Where [`push_signature`] left a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedSignature {
    /// The signature tag (SIG-12).
    pub tag: String,
    /// The digest of the signature set's manifest now under the tag.
    pub set_digest: Digest,
    /// The digest of the signature's layer, its payload.
    pub payload_digest: Digest,
    /// False when the set already held this signature and nothing was written.
    pub added: bool,
}

/// Adds `envelope` as a layer of the signature set of the manifest `subject` describes, in
/// image `name`'s repository at `driver` (SIG-15).
///
/// Signatures accumulate: the set's manifest, whoever wrote it (cosign or ferry), is kept as
/// it is, with the new layer appended, unless it already holds the same signature. Blobs
/// are written before the manifest, so the tag never names a set whose blobs are missing.
/// Fails, writing nothing, when the tag holds an index or a set for another manifest, or a
/// set that already holds [`MAX_SIGNATURES`] layers.
pub async fn push_signature(
    driver: &dyn Driver,
    name: &str,
    subject: &Descriptor,
    envelope: &SignatureEnvelope,
) -> Result<PushedSignature> {
    let source = driver.source_name();
    let digest = descriptor_digest(subject).map_err(|e| Error::from_core(source, e))?;
    let tag = signature_tag(&digest);
    let layer = signature_layer(envelope);
    let payload_digest = envelope.payload_digest();
    let invalid = |message: String| Error::new(ErrorKind::Invalid, source, message);
    let existing = match read_set(driver, name, &digest).await? {
        Found::Nothing => None,
        Found::Foreign(what) => {
            return Err(invalid(format!(
                "{name}:{tag} holds {what}, not a signature set; refusing to overwrite it"
            )))
        }
        Found::Set(set) => {
            let signature = |d: &Descriptor| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(SIGNATURE_ANNOTATION).cloned())
            };
            let same = |d: &Descriptor| {
                d.digest() == layer.digest()
                    && d.size() == layer.size()
                    && d.media_type() == layer.media_type()
                    && signature(d) == signature(&layer)
            };
            if set.layers.iter().any(same) {
                return Ok(PushedSignature {
                    tag,
                    set_digest: set.digest,
                    payload_digest,
                    added: false,
                });
            }
            if set.layers.len() >= MAX_SIGNATURES {
                return Err(invalid(format!(
                    "signature set {name}:{tag} already holds {} signatures, the most a set may hold ({MAX_SIGNATURES})",
                    set.layers.len()
                )));
            }
            Some(set)
        }
    };
    let payload = envelope.payload().to_vec();
    driver
        .put_blob(
            name,
            &payload_digest,
            payload.len() as u64,
            one_chunk(payload),
        )
        .await?;
    let manifest = match existing {
        Some(set) => append_layer(&set.bytes, &layer)
            .map_err(|e| invalid(format!("signature set {name}:{tag}: {e}")))?,
        None => {
            driver
                .put_blob(
                    name,
                    &Digest::sha256(SIGNATURE_CONFIG),
                    SIGNATURE_CONFIG.len() as u64,
                    one_chunk(SIGNATURE_CONFIG.to_vec()),
                )
                .await?;
            signature_set_manifest(subject, std::slice::from_ref(envelope))
        }
    };
    let set_digest = driver
        .put_manifest(name, Some(&tag), media::OCI_MANIFEST, &manifest)
        .await?;
    tracing::info!(source, %digest, payload = %payload_digest, set = %set_digest, "pushed signature");
    Ok(PushedSignature {
        tag,
        set_digest,
        payload_digest,
        added: true,
    })
}

/// The set manifest `bytes` with `layer` appended to its layers, every other member kept as
/// its writer left it (SIG-15).
fn append_layer(bytes: &[u8], layer: &Descriptor) -> std::result::Result<Vec<u8>, String> {
    let mut manifest: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let layer = serde_json::to_value(layer).map_err(|e| e.to_string())?;
    match manifest
        .entry("layers")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()))
    {
        serde_json::Value::Array(layers) => layers.push(layer),
        _ => return Err("its layers are not an array".into()),
    }
    serde_json::to_vec(&manifest).map_err(|e| e.to_string())
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

/// Keeps `envelope` in the store as a signature of manifest `digest`: the stored envelope
/// (a blob of media type `application/vnd.ferry.signature.v1+json`, a `signature` root keyed
/// by `digest`) and its payload (the layer blob, a `signature-payload` root), so the store can
/// serve the signature set (SIG-17). Returns the envelope blob's digest.
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
    let payload = envelope.payload_digest();
    store
        .put_blob(&payload, envelope.payload(), PAYLOAD_MEDIA_TYPE, None)
        .map_err(Error::local)?;
    store
        .add_root(PAYLOAD_ROOT_KIND, &digest.to_string(), &payload)
        .map_err(Error::local)?;
    store
        .put_blob(&blob, &bytes, ENVELOPE_MEDIA_TYPE, None)
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

/// Drops the `signature` and `signature-payload` roots of manifests no image record names
/// any more, so the next GC removes their envelopes and payloads (SIG-17). Returns how many
/// manifests' signatures were dropped.
pub fn prune_signatures(store: &Store) -> Result<usize> {
    let named: HashSet<String> = store
        .images()
        .map_err(Error::local)?
        .into_iter()
        .map(|r| r.digest.to_string())
        .collect();
    let mut dropped = 0;
    for kind in [ROOT_KIND, PAYLOAD_ROOT_KIND] {
        let mut unnamed: Vec<String> = store
            .roots(kind)
            .map_err(Error::local)?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !named.contains(key))
            .collect();
        unnamed.dedup();
        for key in &unnamed {
            store.remove_roots(kind, key).map_err(Error::local)?;
        }
        if kind == ROOT_KIND {
            dropped = unnamed.len();
        }
    }
    Ok(dropped)
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
    check_stored(store, policy, &record, reference.tag())
}

/// [`verify_in_store`] for a record already read from the store (`ferry images`): its
/// `NAME:TAG`, or for an untagged record any `NAME:TAG` the store records for its digest.
pub fn verify_record(store: &Store, policy: &Policy, record: &ImageRecord) -> Result<TrustedImage> {
    check_stored(store, policy, record, record.tag.as_deref())
}

/// Checks `record`'s image as `NAME:tag`, or without a tag as each `NAME:TAG` the store
/// records for its digest until one is accepted.
fn check_stored(
    store: &Store,
    policy: &Policy,
    record: &ImageRecord,
    tag: Option<&str>,
) -> Result<TrustedImage> {
    let signatures = signatures_in_store(store, &record.digest)?;
    let tags: Vec<Option<String>> = match tag {
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
        rejection.unwrap_or_else(|| {
            format!(
                "image {}@{}: no name in the store to check",
                record.name, record.digest
            )
        }),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ferry_core::Algorithm;
    use ferry_signing::{generate_key, sign, Acceptance, PrivateKey};

    use super::*;
    use crate::site::route::Sources;
    use crate::sources::oci_layout::OciLayoutDriver;
    use crate::transfer::progress::Silent;
    use crate::transfer::pull::{pull, PullOptions, Pulled};

    const NAME: &str = "registry.example.com/team/app";

    /// A one-layer image put into `driver` under `NAME:tag`; `seed` makes it unique.
    async fn put_image(driver: &dyn Driver, tag: &str, seed: &str) -> Descriptor {
        let layer = format!("layer {seed}").into_bytes();
        let layer_digest = Digest::sha256(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
        }))
        .unwrap();
        let config_digest = Digest::sha256(&config);
        for (digest, bytes) in [(&layer_digest, &layer), (&config_digest, &config)] {
            driver
                .put_blob(NAME, digest, bytes.len() as u64, one_chunk(bytes.clone()))
                .await
                .unwrap();
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": media::OCI_LAYER_TAR, "digest": layer_digest.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        driver
            .put_manifest(NAME, Some(tag), media::OCI_MANIFEST, &manifest)
            .await
            .unwrap();
        ManifestBlob::parse(manifest, None, None)
            .unwrap()
            .descriptor()
    }

    struct Keys {
        _dir: tempfile::TempDir,
        team: PrivateKey,
        other: PrivateKey,
        policy: Policy,
    }

    /// Two keys, and a policy requiring `team` for registry.example.com/team and rejecting
    /// everything else.
    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let team = generate_key(dir.path(), "team").unwrap();
        let other = generate_key(dir.path(), "other").unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "[default]\naction = \"reject\"\n\n[[rule]]\nprefix = \"registry.example.com/team\"\n\
             action = \"signed-by\"\nkeys = [\"team.pub\"]\n",
        )
        .unwrap();
        Keys {
            team: PrivateKey::load(&team.private_key).unwrap(),
            other: PrivateKey::load(&other.private_key).unwrap(),
            policy: Policy::load(&policy).unwrap(),
            _dir: dir,
        }
    }

    /// An OCI layout source `usb` holding the image `NAME:1`, and the keys of [`keys`].
    struct Scene {
        dir: tempfile::TempDir,
        keys: Keys,
        driver: Arc<dyn Driver>,
        subject: Descriptor,
        digest: Digest,
    }

    async fn scene() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let driver = layout(dir.path(), "usb");
        let subject = put_image(driver.as_ref(), "1", "a").await;
        Scene {
            keys: keys(),
            digest: descriptor_digest(&subject).unwrap(),
            dir,
            driver,
            subject,
        }
    }

    fn signature(key: &PrivateKey, image: &str, subject: &Descriptor) -> SignatureEnvelope {
        let reference = Reference::parse(image).unwrap();
        sign(key, &reference, &descriptor_digest(subject).unwrap(), None).unwrap()
    }

    fn layout(dir: &Path, name: &str) -> Arc<dyn Driver> {
        Arc::new(OciLayoutDriver::new(name, dir.join(name)))
    }

    fn store(dir: &Path) -> Arc<Store> {
        Arc::new(Store::open(dir.join("store")).unwrap())
    }

    async fn pull_with(
        store: &Arc<Store>,
        sources: &Sources,
        image: &str,
        policy: &Policy,
    ) -> Result<Pulled> {
        pull(
            store,
            sources,
            &Reference::parse(image).unwrap(),
            policy,
            &PullOptions::default(),
            &Silent,
        )
        .await
    }

    #[test]
    fn signature_tag_is_algorithm_dash_hex_dot_sig_within_128_characters_sig_12() {
        let d = Digest::sha256(b"m");
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
        let long = Digest::of(Algorithm::Sha512, b"m");
        let tag = signature_tag(&long);
        assert_eq!(tag.len(), 128);
        assert!(tag.starts_with(&format!("sha512-{}", &long.hex()[..117])));
        assert!(tag.ends_with(".sig"));
        Reference::parse(&format!("{NAME}:{tag}")).expect("a valid tag");
        assert_eq!(signature_tag_digest(&signature_tag(&d)), Some(d));
        assert_eq!(
            signature_tag_digest(&tag),
            None,
            "a cut tag names no digest"
        );
        for other in ["latest", "sha256-abc.sig", "sha256.sig", "md5-00.sig"] {
            assert_eq!(signature_tag_digest(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn no_signature_tag_means_no_signatures_sig_14() {
        let dir = tempfile::tempdir().unwrap();
        let driver = layout(dir.path(), "usb");
        let subject = put_image(driver.as_ref(), "1", "a").await;
        let digest = descriptor_digest(&subject).unwrap();
        assert!(fetch_signatures(driver.as_ref(), NAME, &digest)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn signatures_accumulate_once_each_in_an_oci_manifest_with_a_subject_sig_13_sig_15() {
        let Scene {
            dir: _dir,
            keys,
            driver,
            subject,
            digest,
        } = scene().await;
        let first = signature(&keys.team, &format!("{NAME}:1"), &subject);
        let second = signature(&keys.other, &format!("{NAME}:1"), &subject);

        let pushed = push_signature(driver.as_ref(), NAME, &subject, &first)
            .await
            .unwrap();
        assert!(pushed.added);
        assert_eq!(pushed.tag, signature_tag(&digest));
        let again = push_signature(driver.as_ref(), NAME, &subject, &second)
            .await
            .unwrap();
        assert!(again.added);
        let repeat = push_signature(driver.as_ref(), NAME, &subject, &first)
            .await
            .unwrap();
        assert!(!repeat.added, "the same envelope is not added twice");
        assert_eq!(repeat.set_digest, again.set_digest);

        let fetched = fetch_signatures(driver.as_ref(), NAME, &digest)
            .await
            .unwrap();
        assert_eq!(fetched, vec![first.clone(), second.clone()]);

        // The set is an OCI image manifest in the image's repository (SIG-13).
        let set = driver
            .fetch_manifest(NAME, &again.set_digest)
            .await
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&set.bytes).unwrap();
        assert_eq!(m["mediaType"], media::OCI_MANIFEST);
        assert_eq!(m["artifactType"], SIGNATURE_CONFIG_MEDIA_TYPE);
        assert_eq!(m["config"]["mediaType"], SIGNATURE_CONFIG_MEDIA_TYPE);
        assert_eq!(m["config"]["size"], 2);
        assert_eq!(
            m["config"]["digest"],
            Digest::sha256(b"{}").to_string().as_str()
        );
        assert_eq!(m["subject"]["digest"], digest.to_string().as_str());
        assert_eq!(m["subject"]["size"], subject.size());
        assert_eq!(m["subject"]["mediaType"], media::OCI_MANIFEST);
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for (layer, envelope) in layers.iter().zip([&first, &second]) {
            assert_eq!(layer["mediaType"], PAYLOAD_MEDIA_TYPE);
            assert_eq!(
                layer["digest"],
                Digest::sha256(envelope.payload()).to_string().as_str()
            );
            assert_eq!(layer["size"], envelope.payload().len());
            assert_eq!(
                layer["annotations"][SIGNATURE_ANNOTATION],
                envelope.signature_base64().as_str()
            );
        }
        // The layer's blob is the payload itself.
        let blob = driver
            .fetch_blob(NAME, &first.payload_digest(), ByteRange::WHOLE)
            .await
            .unwrap();
        let bytes: Vec<Bytes> = blob.stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(bytes.concat(), first.payload());
    }

    #[tokio::test]
    async fn signing_adds_a_layer_to_a_set_another_tool_wrote_and_keeps_it_sig_15() {
        let Scene {
            dir: _dir,
            keys,
            driver,
            subject,
            digest,
        } = scene().await;
        // A set as cosign writes it: an OCI config, no subject, a layer with more annotations.
        let theirs = signature(&keys.other, &format!("{NAME}:1"), &subject);
        let config = br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = Digest::sha256(config);
        for (d, bytes) in [
            (&config_digest, config.to_vec()),
            (&theirs.payload_digest(), theirs.payload().to_vec()),
        ] {
            driver
                .put_blob(NAME, d, bytes.len() as u64, one_chunk(bytes))
                .await
                .unwrap();
        }
        let mut layer = serde_json::to_value(signature_layer(&theirs)).unwrap();
        layer["annotations"]["dev.sigstore.cosign/bundle"] = "{}".into();
        let cosign_set = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [layer],
        }))
        .unwrap();
        driver
            .put_manifest(
                NAME,
                Some(&signature_tag(&digest)),
                media::OCI_MANIFEST,
                &cosign_set,
            )
            .await
            .unwrap();
        assert_eq!(
            fetch_signatures(driver.as_ref(), NAME, &digest)
                .await
                .unwrap(),
            vec![theirs.clone()]
        );

        // Their signature again: already there, though their layer has more annotations.
        let again = push_signature(driver.as_ref(), NAME, &subject, &theirs)
            .await
            .unwrap();
        assert!(!again.added);
        let ours = signature(&keys.team, &format!("{NAME}:1"), &subject);
        let pushed = push_signature(driver.as_ref(), NAME, &subject, &ours)
            .await
            .unwrap();
        assert!(pushed.added);
        assert_eq!(
            fetch_signatures(driver.as_ref(), NAME, &digest)
                .await
                .unwrap(),
            vec![theirs, ours]
        );
        // Their manifest is kept as they wrote it, one layer longer.
        let set = driver
            .fetch_manifest(NAME, &pushed.set_digest)
            .await
            .unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&set.bytes).unwrap();
        let layers = m["layers"].as_array_mut().unwrap();
        assert_eq!(layers.len(), 2);
        layers.pop();
        assert_eq!(
            m,
            serde_json::from_slice::<serde_json::Value>(&cosign_set).unwrap()
        );
    }

    #[tokio::test]
    async fn a_corrupt_or_foreign_layer_is_skipped_and_the_rest_still_count_sig_14() {
        let Scene {
            dir,
            keys,
            driver,
            subject,
            digest,
        } = scene().await;
        let good = signature(&keys.team, &format!("{NAME}:1"), &subject);
        // Another payload (a signing time): two signatures of the same payload share its blob.
        let bad = sign(
            &keys.other,
            &Reference::parse(&format!("{NAME}:1")).unwrap(),
            &digest,
            Some(std::time::UNIX_EPOCH),
        )
        .unwrap();
        push_signature(driver.as_ref(), NAME, &subject, &bad)
            .await
            .unwrap();
        push_signature(driver.as_ref(), NAME, &subject, &good)
            .await
            .unwrap();
        // One byte of the first payload changes at rest: the source now serves wrong bytes.
        let bad_digest = bad.payload_digest();
        let path = dir.path().join("usb/blobs/sha256").join(bad_digest.hex());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let fetched = fetch_signatures(driver.as_ref(), NAME, &digest)
            .await
            .unwrap();
        assert_eq!(fetched, vec![good.clone()]);

        // Layers that are not signature layers, too large to be one, or without their
        // signature annotation are not read at all.
        let Found::Set(set) = read_set(driver.as_ref(), NAME, &digest).await.unwrap() else {
            panic!("no signature set")
        };
        let mut manifest = set.bytes.to_vec();
        let mut unsigned = signature_layer(&good);
        unsigned.set_annotations(None);
        for layer in [
            Descriptor::new(
                media::OCI_LAYER_TAR.into(),
                4,
                ferry_core::oci_spec::image::Digest::from(&Digest::sha256(b"tar!")),
            ),
            Descriptor::new(
                PAYLOAD_MEDIA_TYPE.into(),
                MAX_PAYLOAD_SIZE as u64 + 1,
                ferry_core::oci_spec::image::Digest::from(&Digest::sha256(b"huge")),
            ),
            unsigned,
        ] {
            manifest = append_layer(&manifest, &layer).unwrap();
        }
        driver
            .put_manifest(
                NAME,
                Some(&signature_tag(&digest)),
                media::OCI_MANIFEST,
                &manifest,
            )
            .await
            .unwrap();
        let fetched = fetch_signatures(driver.as_ref(), NAME, &digest)
            .await
            .unwrap();
        assert_eq!(fetched, vec![good]);
    }

    #[tokio::test]
    async fn a_moved_set_is_refused_and_a_foreign_artifact_never_overwritten_sig_14_sig_15() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let driver = layout(dir.path(), "usb");
        let one = put_image(driver.as_ref(), "1", "a").await;
        let two = put_image(driver.as_ref(), "2", "b").await;
        let pushed = push_signature(
            driver.as_ref(),
            NAME,
            &one,
            &signature(&keys.team, &format!("{NAME}:1"), &one),
        )
        .await
        .unwrap();
        let set = driver
            .fetch_manifest(NAME, &pushed.set_digest)
            .await
            .unwrap();
        let two_digest = descriptor_digest(&two).unwrap();
        driver
            .put_manifest(
                NAME,
                Some(&signature_tag(&two_digest)),
                media::OCI_MANIFEST,
                &set.bytes,
            )
            .await
            .unwrap();
        let e = fetch_signatures(driver.as_ref(), NAME, &two_digest)
            .await
            .unwrap_err();
        assert!(e.message.contains("subject"), "{e}");
        // Pushing next to it refuses to build on a set that is not for this manifest.
        let e = push_signature(
            driver.as_ref(),
            NAME,
            &two,
            &signature(&keys.team, &format!("{NAME}:2"), &two),
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("subject"), "{e}");
        // An index under the tag is no signature set: it holds no signatures and is never
        // overwritten.
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": descriptor_digest(&one).unwrap().to_string(), "size": one.size()}],
        }))
        .unwrap();
        driver
            .put_manifest(
                NAME,
                Some(&signature_tag(&two_digest)),
                media::OCI_INDEX,
                &index,
            )
            .await
            .unwrap();
        assert!(fetch_signatures(driver.as_ref(), NAME, &two_digest)
            .await
            .unwrap()
            .is_empty());
        let e = push_signature(
            driver.as_ref(),
            NAME,
            &two,
            &signature(&keys.team, &format!("{NAME}:2"), &two),
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("refusing to overwrite"), "{e}");
    }

    #[tokio::test]
    async fn a_set_holds_at_most_max_signatures_sig_15() {
        let Scene {
            dir: _dir,
            keys,
            driver,
            subject,
            digest,
        } = scene().await;
        let reference = Reference::parse(&format!("{NAME}:1")).unwrap();
        let at = |s: u64| Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        for i in 0..MAX_SIGNATURES as u64 {
            let envelope = sign(&keys.team, &reference, &digest, at(i)).unwrap();
            push_signature(driver.as_ref(), NAME, &subject, &envelope)
                .await
                .unwrap();
        }
        let one_more = sign(&keys.team, &reference, &digest, at(99_999)).unwrap();
        let e = push_signature(driver.as_ref(), NAME, &subject, &one_more)
            .await
            .unwrap_err();
        assert!(e.message.contains("already holds 64"), "{e}");
        assert_eq!(
            fetch_signatures(driver.as_ref(), NAME, &digest)
                .await
                .unwrap()
                .len(),
            MAX_SIGNATURES
        );
    }

    #[tokio::test]
    async fn a_set_of_thousands_of_layers_is_read_only_up_to_max_signatures_sig_14() {
        let Scene {
            dir: _dir,
            keys,
            driver,
            subject,
            digest,
        } = scene().await;
        let good = signature(&keys.team, &format!("{NAME}:1"), &subject);
        push_signature(driver.as_ref(), NAME, &subject, &good)
            .await
            .unwrap();
        // 64 layers whose blobs the source lacks, then the good one, then 5000 more.
        let missing = |i: usize| {
            let mut layer = signature_layer(&good);
            let d = Digest::sha256(format!("missing {i}").as_bytes());
            layer.set_digest(ferry_core::oci_spec::image::Digest::from(&d));
            serde_json::to_value(layer).unwrap()
        };
        let good_layer = serde_json::to_value(signature_layer(&good)).unwrap();
        let layers: Vec<serde_json::Value> = (0..MAX_SIGNATURES)
            .map(missing)
            .chain([good_layer.clone()])
            .chain((0..5000).map(|i| missing(MAX_SIGNATURES + i)))
            .collect();
        let Found::Set(set) = read_set(driver.as_ref(), NAME, &digest).await.unwrap() else {
            panic!("no signature set")
        };
        let manifest: serde_json::Value = serde_json::from_slice(&set.bytes).unwrap();
        let tag = signature_tag(&digest);
        let put = |layers: Vec<serde_json::Value>, mut manifest: serde_json::Value| {
            manifest["layers"] = layers.into();
            let bytes = serde_json::to_vec(&manifest).unwrap();
            let (driver, tag) = (driver.clone(), tag.clone());
            async move {
                driver
                    .put_manifest(NAME, Some(&tag), media::OCI_MANIFEST, &bytes)
                    .await
                    .unwrap();
            }
        };
        put(layers, manifest.clone()).await;
        // The good signature is the 65th layer: never fetched.
        assert!(fetch_signatures(driver.as_ref(), NAME, &digest)
            .await
            .unwrap()
            .is_empty());
        // One place earlier it is read, and the 5000 after it are not.
        let mut layers: Vec<serde_json::Value> = (0..MAX_SIGNATURES - 1).map(missing).collect();
        layers.push(good_layer);
        layers.extend((0..5000).map(|i| missing(MAX_SIGNATURES + i)));
        put(layers, manifest).await;
        assert_eq!(
            fetch_signatures(driver.as_ref(), NAME, &digest)
                .await
                .unwrap(),
            vec![good]
        );
    }

    #[tokio::test]
    async fn stored_signatures_live_while_their_manifest_is_named_sig_17() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let store = store(dir.path());
        let driver = layout(dir.path(), "usb");
        let subject = put_image(driver.as_ref(), "1", "a").await;
        let digest = descriptor_digest(&subject).unwrap();
        pull_with(
            &store,
            &Sources::single(driver.clone()),
            &format!("{NAME}:1"),
            &Policy::accept_all(),
        )
        .await
        .unwrap();
        let envelope = signature(&keys.team, &format!("{NAME}:1"), &subject);
        let blob = store_signature(&store, &digest, &envelope).unwrap();
        assert_eq!(store_signature(&store, &digest, &envelope).unwrap(), blob);
        assert_eq!(
            store.blob_record(&blob).unwrap().unwrap().media_type,
            ENVELOPE_MEDIA_TYPE
        );
        let payload = envelope.payload_digest();
        assert_eq!(
            store.blob_record(&payload).unwrap().unwrap().media_type,
            PAYLOAD_MEDIA_TYPE
        );
        assert_eq!(
            signatures_in_store(&store, &digest).unwrap(),
            vec![envelope.clone()]
        );
        assert!(signatures_in_store(&store, &Digest::sha256(b"other"))
            .unwrap()
            .is_empty());

        // Named: pruning keeps it and gc does not collect it.
        assert_eq!(prune_signatures(&store).unwrap(), 0);
        store.gc().unwrap();
        assert!(store.blob_size(&blob).unwrap().is_some());
        assert!(store.blob_size(&payload).unwrap().is_some());
        assert_eq!(
            signatures_in_store(&store, &digest).unwrap(),
            vec![envelope]
        );

        // No name left: pruning drops the root, and the next gc the envelope.
        store
            .remove_image(&Reference::parse(&format!("{NAME}:1")).unwrap())
            .unwrap();
        assert_eq!(prune_signatures(&store).unwrap(), 1);
        let report = store.gc().unwrap();
        assert!(report.removed_blobs.contains(&blob), "{report:?}");
        assert!(report.removed_blobs.contains(&payload), "{report:?}");
        assert!(signatures_in_store(&store, &digest).unwrap().is_empty());
    }

    #[tokio::test]
    async fn pull_accepts_a_signed_name_keeps_its_signatures_and_verifies_from_the_store_sig_18() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let store = store(dir.path());
        let driver = layout(dir.path(), "usb");
        let subject = put_image(driver.as_ref(), "1", "a").await;
        let digest = descriptor_digest(&subject).unwrap();
        let valid = signature(&keys.team, &format!("{NAME}:1"), &subject);
        let untrusted = signature(&keys.other, &format!("{NAME}:1"), &subject);
        for envelope in [&untrusted, &valid] {
            push_signature(driver.as_ref(), NAME, &subject, envelope)
                .await
                .unwrap();
        }
        let pulled = pull_with(
            &store,
            &Sources::single(driver.clone()),
            &format!("{NAME}:1"),
            &keys.policy,
        )
        .await
        .unwrap();
        assert_eq!(
            pulled.trusted.how(),
            &Acceptance::SignedBy(vec![keys.team.id().clone()])
        );
        assert_eq!(pulled.trusted.digest(), &digest);
        assert_eq!(pulled.record.digest, digest);
        // Both envelopes are kept (a later policy may trust the other key).
        assert_eq!(signatures_in_store(&store, &digest).unwrap().len(), 2);
        let reference = Reference::parse(&format!("{NAME}:1")).unwrap();
        let trusted = verify_in_store(&store, &keys.policy, &reference).unwrap();
        assert_eq!(
            trusted.reference().to_string(),
            format!("{NAME}:1@{digest}")
        );
        let by_digest = Reference::parse(&format!("{NAME}@{digest}")).unwrap();
        assert_eq!(
            verify_in_store(&store, &keys.policy, &by_digest)
                .unwrap()
                .reference()
                .tag(),
            Some("1")
        );
        let record = store.find_image(&reference).unwrap();
        let trusted = verify_record(&store, &keys.policy, &record).unwrap();
        assert!(matches!(trusted.how(), Acceptance::SignedBy(_)));
        assert!(trusted.proves_tag());
    }

    #[tokio::test]
    async fn pull_rejects_before_transferring_and_names_nothing_sig_18() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let store = store(dir.path());
        let driver = layout(dir.path(), "usb");
        let subject = put_image(driver.as_ref(), "1", "a").await;
        let digest = descriptor_digest(&subject).unwrap();
        let sources = Sources::single(driver.clone());
        // Unsigned, and signed only by an untrusted key.
        let e = pull_with(&store, &sources, &format!("{NAME}:1"), &keys.policy)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(e.message.contains("no signatures were found"), "{e}");
        push_signature(
            driver.as_ref(),
            NAME,
            &subject,
            &signature(&keys.other, &format!("{NAME}:1"), &subject),
        )
        .await
        .unwrap();
        let e = pull_with(&store, &sources, &format!("{NAME}:1"), &keys.policy)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(
            e.message.contains(&format!("{NAME}:1@{digest}"))
                && e.message.contains(&keys.team.id().to_string())
                && e.message.contains("usb"),
            "{e}"
        );
        // A signature for :1 does not vouch for :2 naming the same digest.
        driver
            .put_manifest(NAME, Some("2"), media::OCI_MANIFEST, &{
                driver.fetch_manifest(NAME, &digest).await.unwrap().bytes
            })
            .await
            .unwrap();
        push_signature(
            driver.as_ref(),
            NAME,
            &subject,
            &signature(&keys.team, &format!("{NAME}:1"), &subject),
        )
        .await
        .unwrap();
        let e = pull_with(&store, &sources, &format!("{NAME}:2"), &keys.policy)
            .await
            .unwrap_err();
        assert!(
            e.message
                .contains(&format!("is for {NAME}:1, not {NAME}:2")),
            "{e}"
        );
        // A name under a reject rule.
        let reject_all = dir.path().join("reject.toml");
        std::fs::write(&reject_all, "[default]\naction = \"reject\"\n").unwrap();
        let e = pull_with(
            &store,
            &sources,
            &format!("{NAME}:1"),
            &Policy::load(&reject_all).unwrap(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("rejected by the default rule"), "{e}");
        assert!(store.images().unwrap().is_empty());
        assert_eq!(
            store.blob_size(&digest).unwrap(),
            None,
            "nothing of a rejected image was transferred"
        );
    }

    #[tokio::test]
    async fn signed_names_may_be_resolved_by_any_source_first_accepted_answer_wins_pol_9() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let store = store(dir.path());
        let mirror = layout(dir.path(), "mirror");
        let origin = layout(dir.path(), "origin");
        put_image(origin.as_ref(), "0", "zero").await;
        // The mirror answers :1 with another image, validly signed, but as :2.
        let other = put_image(mirror.as_ref(), "1", "other").await;
        push_signature(
            mirror.as_ref(),
            NAME,
            &other,
            &signature(&keys.team, &format!("{NAME}:2"), &other),
        )
        .await
        .unwrap();
        // The origin only resolves; it does not have the tag at first.
        let sources = Sources {
            content: vec![mirror.clone(), origin.clone()],
            resolve: vec![origin.clone()],
        };
        let e = pull_with(&store, &sources, &format!("{NAME}:1"), &keys.policy)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(
            e.message.contains("source \"mirror\" answered")
                && e.message
                    .contains(&format!("is for {NAME}:2, not {NAME}:1")),
            "{e}"
        );
        assert!(store.images().unwrap().is_empty());
        // Without signatures required, the mirror may not answer tags at all (SITE-5).
        let e = pull_with(
            &store,
            &sources,
            &format!("{NAME}:1"),
            &Policy::accept_all(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

        // Once the origin has the real, signed :1, it is asked first and wins.
        let real = put_image(origin.as_ref(), "1", "real").await;
        push_signature(
            origin.as_ref(),
            NAME,
            &real,
            &signature(&keys.team, &format!("{NAME}:1"), &real),
        )
        .await
        .unwrap();
        let pulled = pull_with(&store, &sources, &format!("{NAME}:1"), &keys.policy)
            .await
            .unwrap();
        assert_eq!(pulled.record.digest, descriptor_digest(&real).unwrap());
        // A mirror listed first cannot redirect a signed name either.
        let sources = Sources {
            content: vec![mirror.clone(), origin.clone()],
            resolve: vec![mirror.clone(), origin.clone()],
        };
        let pulled = pull_with(&store, &sources, &format!("{NAME}:1"), &keys.policy)
            .await
            .unwrap();
        assert_eq!(pulled.record.digest, descriptor_digest(&real).unwrap());
    }

    #[tokio::test]
    async fn signatures_are_gathered_from_every_source_and_a_broken_one_is_skipped_sig_18() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let store = store(dir.path());
        let broken = layout(dir.path(), "broken");
        let origin = layout(dir.path(), "origin");
        let subject = put_image(origin.as_ref(), "1", "a").await;
        let digest = descriptor_digest(&subject).unwrap();
        // The broken source names a signature set it does not have.
        broken
            .put_manifest(NAME, Some("unrelated"), media::OCI_MANIFEST, &{
                origin.fetch_manifest(NAME, &digest).await.unwrap().bytes
            })
            .await
            .unwrap();
        let index_path = dir.path().join("broken/index.json");
        let index = std::fs::read_to_string(&index_path).unwrap();
        let index = index.replace(":unrelated", &format!(":{}", signature_tag(&digest)));
        std::fs::write(
            &index_path,
            index.replace(&digest.to_string(), &format!("sha256:{}", "0".repeat(64))),
        )
        .unwrap();
        assert!(fetch_signatures(broken.as_ref(), NAME, &digest)
            .await
            .is_err());
        push_signature(
            origin.as_ref(),
            NAME,
            &subject,
            &signature(&keys.team, &format!("{NAME}:1"), &subject),
        )
        .await
        .unwrap();
        let sources = Sources {
            content: vec![broken.clone(), origin.clone()],
            resolve: vec![origin.clone()],
        };
        let pulled = pull_with(&store, &sources, &format!("{NAME}:1"), &keys.policy)
            .await
            .unwrap();
        assert!(matches!(pulled.trusted.how(), Acceptance::SignedBy(_)));
    }
}

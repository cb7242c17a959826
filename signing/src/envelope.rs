//! One signature: its payload and signature bytes as a cosign layer carries them (SIG-8),
//! the stored envelope (SIG-9), signing (SIG-11) and verification (SIG-10).

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_core::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::{payload, Error, PrivateKey, PublicKey, Result};

/// Media type of a signature layer, whose blob is the signed payload (SIG-8).
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation of a signature layer that holds the signature, base64 (SIG-8).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Media type of a stored envelope: payload and signature in one blob (SIG-9).
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.ferry.signature.v1+json";
/// Largest payload a signature may have, in bytes (SIG-8).
pub const MAX_PAYLOAD_SIZE: usize = 64 * 1024;
/// Largest stored envelope [`SignatureEnvelope::from_bytes`] accepts, in bytes (SIG-9).
pub const MAX_ENVELOPE_SIZE: usize = 96 * 1024;
/// Largest signature, in bytes before base64 (SIG-8).
const MAX_SIGNATURE_SIZE: usize = 512;

/// How a signature's `docker-reference` must name the image (POL-2, SIG-10 step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityMatch {
    /// Exactly `NAME:TAG`: the signature proves the tag.
    #[default]
    Exact,
    /// `NAME:TAG` or the repository `NAME` alone: such a signature proves the digest and the
    /// repository, not the tag.
    Repository,
}

/// One signature: the exact payload bytes and the signature over them (SIG-8).
///
/// Holding one proves nothing; [`SignatureEnvelope::verify`] or a
/// [`Policy`](crate::Policy) decides what it is worth.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureEnvelope {
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// The stored envelope's JSON (SIG-9).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    payload: String,
    signature: String,
}

/// A valid signature by a trusted key, and whether it named the tag.
pub(crate) struct Verified<'k> {
    /// The key that made it.
    pub key: &'k PublicKey,
    /// False when it named the repository alone (accepted under [`IdentityMatch::Repository`]).
    pub names_tag: bool,
}

/// Signs `reference` (which must have a tag) as naming the manifest `manifest_digest`: the
/// payload's `docker-reference` is `NAME:TAG` (SIG-11).
///
/// `created`, if given, is recorded as `optional.timestamp`.
pub fn sign(
    key: &PrivateKey,
    reference: &Reference,
    manifest_digest: &Digest,
    created: Option<SystemTime>,
) -> Result<SignatureEnvelope> {
    let tag = tag_of(reference, manifest_digest)?;
    let payload = payload::build(
        &format!("{}:{tag}", reference.name()),
        &manifest_digest.to_string(),
        created,
    )?;
    let signature = key.sign_bytes(&payload);
    tracing::debug!(image = %reference, digest = %manifest_digest, key = %key.id(), "signed");
    Ok(SignatureEnvelope { payload, signature })
}

/// Fails if `reference` pins a digest other than `manifest_digest` (SIG-10 step 1, POL-7).
pub(crate) fn check_pin(reference: &Reference, manifest_digest: &Digest) -> Result<()> {
    match reference.digest() {
        Some(d) if d != manifest_digest => Err(Error::DigestConflict {
            image: reference.to_string(),
            manifest: manifest_digest.clone(),
        }),
        _ => Ok(()),
    }
}

/// The tag of `reference`, after checking it agrees with `manifest_digest` (SIG-10 step 1).
fn tag_of<'r>(reference: &'r Reference, manifest_digest: &Digest) -> Result<&'r str> {
    check_pin(reference, manifest_digest)?;
    reference.tag().ok_or_else(|| Error::NoTag {
        image: reference.to_string(),
    })
}

/// The normalized name and, if it has one, the tag a `docker-reference` names; `None` when
/// it is not a reference or pins a digest (SIG-10 step 5).
fn identity(docker_reference: &str) -> Option<(String, Option<String>)> {
    if docker_reference.contains('@') {
        return None;
    }
    let parsed = Reference::parse(docker_reference).ok()?;
    // `Reference::parse` supplies `latest` for a bare repository; only a written tag counts.
    let last = docker_reference.rsplit('/').next().unwrap_or_default();
    let tag = last
        .contains(':')
        .then(|| parsed.tag().map(str::to_string))
        .flatten();
    Some((parsed.name(), tag))
}

impl SignatureEnvelope {
    /// A signature as a cosign layer carries it: the layer's exact bytes (the payload) and
    /// its [`SIGNATURE_ANNOTATION`]; checks their form, not the signature (SIG-8).
    pub fn from_layer(payload: Vec<u8>, signature_base64: &str) -> Result<SignatureEnvelope> {
        let bad = |reason: String| Error::InvalidEnvelope(reason);
        if payload.is_empty() || payload.len() > MAX_PAYLOAD_SIZE {
            return Err(bad(format!(
                "payload of {} bytes; a payload has 1 to {MAX_PAYLOAD_SIZE}",
                payload.len()
            )));
        }
        if signature_base64.len() > MAX_SIGNATURE_SIZE * 4 / 3 + 4 {
            return Err(bad(format!(
                "signature annotation of {} characters, more than a {MAX_SIGNATURE_SIZE}-byte signature needs",
                signature_base64.len()
            )));
        }
        let signature = STANDARD
            .decode(signature_base64)
            .map_err(|e| bad(format!("signature is not padded standard base64: {e}")))?;
        if signature.is_empty() {
            return Err(bad("empty signature".into()));
        }
        Ok(SignatureEnvelope { payload, signature })
    }

    /// The signed payload, the exact bytes of the signature's layer (SIG-8).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The digest of the payload, the signature layer's digest.
    pub fn payload_digest(&self) -> Digest {
        Digest::sha256(&self.payload)
    }

    /// The signature as the layer's [`SIGNATURE_ANNOTATION`] carries it: standard base64.
    pub fn signature_base64(&self) -> String {
        STANDARD.encode(&self.signature)
    }

    /// The stored envelope's JSON bytes (SIG-9).
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            payload: STANDARD.encode(&self.payload),
            signature: self.signature_base64(),
        };
        serde_json::to_vec(&wire).expect("an envelope of strings always serializes")
    }

    /// Parses a stored envelope of at most [`MAX_ENVELOPE_SIZE`] bytes; checks its form, not
    /// its signature (SIG-9).
    pub fn from_bytes(bytes: &[u8]) -> Result<SignatureEnvelope> {
        let bad = |reason: String| Error::InvalidEnvelope(reason);
        if bytes.len() > MAX_ENVELOPE_SIZE {
            return Err(bad(format!(
                "{} bytes, larger than the limit of {MAX_ENVELOPE_SIZE}",
                bytes.len()
            )));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let payload = STANDARD
            .decode(&wire.payload)
            .map_err(|e| bad(format!("payload is not padded standard base64: {e}")))?;
        SignatureEnvelope::from_layer(payload, &wire.signature)
    }

    /// The key among `keys` that made this signature, checking the signature bytes only
    /// (SIG-10 step 3), not what the payload claims.
    pub fn signer<'k>(&self, keys: &'k [PublicKey]) -> Option<&'k PublicKey> {
        keys.iter()
            .find(|k| k.verifies(&self.payload, &self.signature))
    }

    /// The `docker-reference` the payload claims, for listing: **unverified** (any signer,
    /// any claim) and escaped for printing; `None` when the payload does not parse (SIG-6).
    pub fn claimed_identity(&self) -> Option<String> {
        payload::parse(&self.payload)
            .ok()
            .map(|c| c.docker_reference.escape_debug().to_string())
    }

    /// Checks that this is a valid signature, by one of `trusted`, binding `reference` (name
    /// and tag, or the repository alone under [`IdentityMatch::Repository`]) to
    /// `manifest_digest`; returns the key that made it (SIG-10).
    pub fn verify<'k>(
        &self,
        trusted: &'k [PublicKey],
        reference: &Reference,
        manifest_digest: &Digest,
        identity_match: IdentityMatch,
    ) -> Result<&'k PublicKey> {
        self.check(trusted, reference, manifest_digest, identity_match)
            .map(|v| v.key)
    }

    /// [`SignatureEnvelope::verify`], telling also whether the signature named the tag.
    pub(crate) fn check<'k>(
        &self,
        trusted: &'k [PublicKey],
        reference: &Reference,
        manifest_digest: &Digest,
        identity_match: IdentityMatch,
    ) -> Result<Verified<'k>> {
        let tag = tag_of(reference, manifest_digest)?;
        let signer = self
            .signer(trusted)
            .ok_or_else(|| Error::UntrustedSignature {
                image: reference.to_string(),
                tried: trusted.iter().map(|k| k.id().clone()).collect(),
            })?;
        // Only bytes a trusted key signed are parsed at all.
        let claims = payload::parse(&self.payload).map_err(|reason| Error::InvalidPayload {
            key: signer.id().clone(),
            reason,
        })?;
        let requested = format!("{}:{tag}", reference.name());
        let names_tag = match identity(&claims.docker_reference) {
            Some((name, Some(t))) if name == reference.name() && t == tag => true,
            Some((name, None))
                if name == reference.name() && identity_match == IdentityMatch::Repository =>
            {
                false
            }
            _ => {
                return Err(Error::IdentityMismatch {
                    key: signer.id().clone(),
                    signed: claims.docker_reference.escape_debug().to_string(),
                    requested,
                })
            }
        };
        if claims.digest != manifest_digest.to_string() {
            return Err(Error::DigestMismatch {
                key: signer.id().clone(),
                image: requested,
                signed: claims.digest.escape_debug().to_string(),
                expected: manifest_digest.clone(),
            });
        }
        Ok(Verified {
            key: signer,
            names_tag,
        })
    }
}

impl fmt::Debug for SignatureEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureEnvelope")
            .field("payload_digest", &self.payload_digest())
            .field("signature_len", &self.signature.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope_json(payload: &str, signature: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"payload":"{payload}","signature":"{signature}"{extra}}}"#).into_bytes()
    }

    fn sig64() -> String {
        STANDARD.encode([0xfbu8; 64])
    }

    fn err(bytes: &[u8]) -> String {
        match SignatureEnvelope::from_bytes(bytes) {
            Err(e @ Error::InvalidEnvelope(_)) => e.to_string(),
            other => panic!(
                "{}: expected an envelope error, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    #[test]
    fn envelope_round_trips_sig_9() {
        let e = SignatureEnvelope::from_bytes(&envelope_json("e30=", &sig64(), "")).unwrap();
        assert_eq!(e.payload(), b"{}");
        let bytes = e.to_bytes();
        assert!(bytes.starts_with(br#"{"payload":"e30=","signature":""#));
        assert_eq!(SignatureEnvelope::from_bytes(&bytes).unwrap(), e);
        assert_eq!(
            SignatureEnvelope::from_layer(b"{}".to_vec(), &sig64()).unwrap(),
            e
        );
        assert_eq!(e.signature_base64(), sig64());
    }

    #[test]
    fn malformed_envelopes_are_rejected_with_the_reason_sig_8() {
        let s = sig64();
        for (bytes, needle) in [
            (b"not json".to_vec(), "expected"),
            (
                envelope_json("e30=", &s, r#","extra":1"#),
                "unknown field `extra`",
            ),
            (
                envelope_json("e30=", &s, r#","payload":"e30=""#),
                "duplicate field `payload`",
            ),
            (
                br#"{"payload":"e30="}"#.to_vec(),
                "missing field `signature`",
            ),
            (envelope_json("", &s, ""), "payload of 0 bytes"),
            (
                envelope_json("eyJ9!", &s, ""),
                "payload is not padded standard base64",
            ),
            (
                envelope_json("eyJ", &s, ""),
                "payload is not padded standard base64",
            ),
            (envelope_json("e30=", "", ""), "empty signature"),
            (
                envelope_json("e30=", &s.replace('+', "-"), ""),
                "signature is not padded",
            ),
            (
                envelope_json("e30=", &"A".repeat(800), ""),
                "more than a 512-byte signature",
            ),
        ] {
            let e = err(&bytes);
            assert!(
                e.contains(needle),
                "{}: {e}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn oversized_payloads_and_envelopes_are_rejected_before_parsing_sig_8() {
        let big = envelope_json(&"A".repeat(MAX_ENVELOPE_SIZE), &sig64(), "");
        assert!(err(&big).contains("larger than the limit"));
        let just_fits = vec![b' '; MAX_ENVELOPE_SIZE];
        assert!(!err(&just_fits).contains("limit"));
        let e =
            SignatureEnvelope::from_layer(vec![b'x'; MAX_PAYLOAD_SIZE + 1], &sig64()).unwrap_err();
        assert!(e.to_string().contains("payload of 65537 bytes"), "{e}");
    }

    #[test]
    fn identities_name_a_repository_and_maybe_a_tag_sig_10() {
        let id = |s: &str| identity(s);
        assert_eq!(
            id("r.io/team/app:1"),
            Some(("r.io/team/app".into(), Some("1".into())))
        );
        assert_eq!(id("r.io/team/app"), Some(("r.io/team/app".into(), None)));
        assert_eq!(
            id("127.0.0.1:5000/app"),
            Some(("127.0.0.1:5000/app".into(), None))
        );
        assert_eq!(
            id("index.docker.io/library/busybox"),
            Some(("docker.io/library/busybox".into(), None))
        );
        assert_eq!(
            id("busybox:1"),
            Some(("docker.io/library/busybox".into(), Some("1".into())))
        );
        let d = Digest::sha256(b"x");
        assert_eq!(id(&format!("r.io/app@{d}")), None);
        assert_eq!(id(&format!("r.io/app:1@{d}")), None);
        assert_eq!(id("R.io/App"), None);
        assert_eq!(id(""), None);
    }
}

//! Signature envelopes (SIG-8), signing (SIG-11) and verification (SIG-10).

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::Signature;
use ferry_core::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::{payload, Error, KeyId, PrivateKey, PublicKey, Result};

/// Media type of a blob or file holding one signature envelope (SIG-9).
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.ferry.signature.v1+json";

/// Largest envelope [`SignatureEnvelope::from_bytes`] accepts, in bytes (SIG-8).
pub const MAX_ENVELOPE_SIZE: usize = 64 * 1024;

/// One signature as it travels: payload bytes, Ed25519 signature, key id hint (SIG-8).
///
/// Holding an envelope proves nothing; [`SignatureEnvelope::verify`] or a
/// [`Policy`](crate::Policy) decides what it is worth.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureEnvelope {
    payload: Vec<u8>,
    signature: Signature,
    key_id: Option<KeyId>,
}

/// The JSON form of an envelope, members in the order writers emit them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    payload: String,
    signature: String,
}

/// Signs `reference` (which must have a tag) as naming the manifest `manifest_digest` (SIG-11).
///
/// `created`, if given, is recorded in the payload's optional section.
pub fn sign(
    key: &PrivateKey,
    reference: &Reference,
    manifest_digest: &Digest,
    created: Option<SystemTime>,
) -> Result<SignatureEnvelope> {
    let tag = tag_of(reference, manifest_digest)?;
    let payload = payload::build(
        &reference.name(),
        tag,
        &manifest_digest.to_string(),
        created,
        key.id(),
    )?;
    let signature = key.sign_bytes(&payload);
    tracing::debug!(image = %reference, digest = %manifest_digest, key = %key.id(), "signed");
    Ok(SignatureEnvelope {
        payload,
        signature,
        key_id: Some(key.id().clone()),
    })
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

impl SignatureEnvelope {
    /// The envelope's JSON bytes (SIG-8).
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            key_id: self.key_id.as_ref().map(KeyId::to_string),
            payload: STANDARD.encode(&self.payload),
            signature: STANDARD.encode(self.signature.to_bytes()),
        };
        serde_json::to_vec(&wire).expect("an envelope of strings always serializes")
    }

    /// Parses an envelope of at most [`MAX_ENVELOPE_SIZE`] bytes; checks its form, not its signature.
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
        if payload.is_empty() {
            return Err(bad("empty payload".into()));
        }
        let signature = STANDARD
            .decode(&wire.signature)
            .map_err(|e| bad(format!("signature is not padded standard base64: {e}")))?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|s: Vec<u8>| bad(format!("signature is {} bytes, not 64", s.len())))?;
        let key_id = wire
            .key_id
            .map(|k| k.parse())
            .transpose()
            .map_err(|e: Error| bad(format!("key_id: {e}")))?;
        Ok(SignatureEnvelope {
            payload,
            signature: Signature::from_bytes(&signature),
            key_id,
        })
    }

    /// The key id the envelope claims; a hint only, never a reason to trust it (SIG-10).
    pub fn key_id_hint(&self) -> Option<&KeyId> {
        self.key_id.as_ref()
    }

    /// Checks that this is a valid signature, by one of `trusted`, binding `reference` (name
    /// and tag) to `manifest_digest`; returns the key that made it (SIG-10).
    pub fn verify<'k>(
        &self,
        trusted: &'k [PublicKey],
        reference: &Reference,
        manifest_digest: &Digest,
    ) -> Result<&'k PublicKey> {
        let tag = tag_of(reference, manifest_digest)?;
        // Keys matching the hint go first; the hint only orders the search.
        let hinted = |k: &&PublicKey| Some(k.id()) == self.key_id.as_ref();
        let signer = trusted
            .iter()
            .filter(hinted)
            .chain(trusted.iter().filter(|k| !hinted(k)))
            .find(|k| k.verifies(&self.payload, &self.signature))
            .ok_or_else(|| Error::UntrustedSignature {
                image: reference.to_string(),
                hint: self.key_id.clone(),
                tried: trusted.iter().map(|k| k.id().clone()).collect(),
            })?;
        // Only bytes a trusted key signed are parsed at all.
        let claims = payload::parse(&self.payload, signer.id())?;
        let requested = format!("{}:{tag}", reference.name());
        if claims.name != reference.name() || claims.tag != tag {
            return Err(Error::IdentityMismatch {
                key: signer.id().clone(),
                signed: format!("{}:{}", claims.name, claims.tag),
                requested,
            });
        }
        if claims.digest != manifest_digest.to_string() {
            return Err(Error::DigestMismatch {
                key: signer.id().clone(),
                image: requested,
                signed: claims.digest,
                expected: manifest_digest.clone(),
            });
        }
        Ok(signer)
    }
}

impl fmt::Debug for SignatureEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureEnvelope")
            .field("key_id_hint", &self.key_id)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
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
    fn envelope_round_trips_sig_8() {
        let e = SignatureEnvelope::from_bytes(&envelope_json(
            "eyJ9",
            &sig64(),
            r#","key_id":"e744c0791320c328""#,
        ))
        .unwrap();
        assert_eq!(e.key_id_hint().unwrap().to_string(), "e744c0791320c328");
        let bytes = e.to_bytes();
        assert!(
            bytes.starts_with(br#"{"key_id":"e744c0791320c328","payload":"eyJ9","signature":""#)
        );
        assert_eq!(SignatureEnvelope::from_bytes(&bytes).unwrap(), e);
        let no_hint = SignatureEnvelope::from_bytes(&envelope_json("eyJ9", &sig64(), "")).unwrap();
        assert_eq!(no_hint.key_id_hint(), None);
        assert!(!String::from_utf8(no_hint.to_bytes())
            .unwrap()
            .contains("key_id"));
    }

    #[test]
    fn malformed_envelopes_are_rejected_with_the_reason_sig_8() {
        let s = sig64();
        for (bytes, needle) in [
            (b"not json".to_vec(), "expected"),
            (
                envelope_json("eyJ9", &s, r#","extra":1"#),
                "unknown field `extra`",
            ),
            (
                envelope_json("eyJ9", &s, r#","payload":"eyJ9""#),
                "duplicate field `payload`",
            ),
            (
                br#"{"payload":"eyJ9"}"#.to_vec(),
                "missing field `signature`",
            ),
            (envelope_json("", &s, ""), "empty payload"),
            (
                envelope_json("eyJ9!", &s, ""),
                "payload is not padded standard base64",
            ),
            (
                envelope_json("eyJ", &s, ""),
                "payload is not padded standard base64",
            ),
            (envelope_json("eyJ9", &s[..s.len() - 4], ""), "not 64"),
            (
                envelope_json("eyJ9", &s.replace('+', "-"), ""),
                "signature is not padded",
            ),
            (
                envelope_json("eyJ9", &s, r#","key_id":"ABC""#),
                "invalid key id",
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
    fn oversized_envelopes_are_rejected_before_parsing_sig_8() {
        let big = envelope_json(&"A".repeat(MAX_ENVELOPE_SIZE), &sig64(), "");
        assert!(err(&big).contains("larger than the limit of 65536"));
        let just_fits = vec![b' '; MAX_ENVELOPE_SIZE];
        assert!(!err(&just_fits).contains("limit"));
    }
}

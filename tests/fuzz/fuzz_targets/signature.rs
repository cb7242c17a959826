//! Signature envelopes (SIG-8) and their verification (SIG-10) against one fixed trusted
//! key, for the fixed image `registry.example.com/team/app:v1` and manifest digest.
//!
//! Input: one byte choosing the mode, then
//! - 0: envelope bytes from anywhere: they parse, print back to themselves, and verify
//!   only if they are the genuine signature;
//! - 1: edits (position, xor) to the genuine envelope's payload and signature: any real
//!   change must fail verification;
//! - 2: a payload the trusted key signs: it verifies only if it binds the image to the
//!   manifest digest (the payload parser sees only signed bytes, SIG-10).
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SigningKey};
use ferry_core::{Digest, Reference};
use ferry_signing::{sign, PrivateKey, PublicKey, SignatureEnvelope, PAYLOAD_TYPE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The trusted key, its secret for mode 2, the image, and its genuine signature.
struct Fixed {
    trusted: Vec<PublicKey>,
    secret: SigningKey,
    reference: Reference,
    digest: Digest,
    genuine: SignatureEnvelope,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let secret = SigningKey::from_bytes(&[7u8; 32]);
    let (private, public) = (dir.path().join("k.key"), dir.path().join("k.pub"));
    let pem = secret.to_pkcs8_pem(Default::default()).expect("PKCS#8");
    std::fs::write(&private, pem.as_bytes()).expect("write key");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pem = secret
        .verifying_key()
        .to_public_key_pem(Default::default())
        .expect("SPKI");
    std::fs::write(&public, pem).expect("write public key");
    let key = PrivateKey::load(&private).expect("private key loads");
    let reference: Reference = "registry.example.com/team/app:v1".parse().expect("valid");
    let digest = Digest::sha256(b"the manifest");
    let genuine = sign(&key, &reference, &digest, None).expect("sign");
    Fixed {
        trusted: vec![PublicKey::load(&public).expect("public key loads")],
        secret,
        reference,
        digest,
        genuine,
    }
});

/// The payload and signature of an envelope's JSON form, decoded.
fn parts(envelope: &SignatureEnvelope) -> (Vec<u8>, Vec<u8>) {
    let wire: Value = serde_json::from_slice(&envelope.to_bytes()).expect("envelope JSON");
    let field = |name: &str| {
        STANDARD
            .decode(wire[name].as_str().expect("string member"))
            .expect("base64")
    };
    (field("payload"), field("signature"))
}

fn envelope_json(payload: &[u8], signature: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "payload": STANDARD.encode(payload),
        "signature": STANDARD.encode(signature),
    }))
    .expect("JSON")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixed = &*FIXED;
    let verify = |envelope: &SignatureEnvelope| {
        envelope
            .verify(&fixed.trusted, &fixed.reference, &fixed.digest)
            .is_ok()
    };
    match mode % 3 {
        0 => {
            let Ok(envelope) = SignatureEnvelope::from_bytes(rest) else {
                return;
            };
            let again = SignatureEnvelope::from_bytes(&envelope.to_bytes())
                .expect("printed envelope parses");
            assert_eq!(again, envelope);
            if verify(&envelope) {
                assert_eq!(
                    parts(&envelope),
                    parts(&fixed.genuine),
                    "accepted a forged envelope"
                );
            }
        }
        1 => {
            let (payload, signature) = parts(&fixed.genuine);
            let mut bytes = [payload.as_slice(), signature.as_slice()].concat();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
                bytes[at] ^= edit[2];
            }
            let (p, s) = bytes.split_at(payload.len());
            let changed = p != payload.as_slice() || s != signature.as_slice();
            let envelope =
                SignatureEnvelope::from_bytes(&envelope_json(p, s)).expect("well-formed");
            if changed {
                assert!(!verify(&envelope), "accepted a mutated signature");
            } else {
                assert!(verify(&envelope), "refused the genuine signature");
            }
        }
        _ => {
            if rest.is_empty() {
                return;
            }
            let signature = fixed.secret.sign(rest).to_bytes();
            let envelope = SignatureEnvelope::from_bytes(&envelope_json(rest, &signature))
                .expect("well-formed");
            if verify(&envelope) {
                let claims: Value = serde_json::from_slice(rest).expect("accepted payload is JSON");
                let critical = &claims["critical"];
                assert_eq!(critical["type"], PAYLOAD_TYPE);
                assert_eq!(critical["image"]["name"], fixed.reference.name().as_str());
                assert_eq!(critical["image"]["tag"], "v1");
                assert_eq!(
                    critical["manifest"]["digest"],
                    fixed.digest.to_string().as_str()
                );
            }
        }
    }
});

//! Signatures in cosign's form (SIG-6 to SIG-10, SIG-14): stored envelopes, signature
//! layers, and verification against two fixed trusted keys (Ed25519 and ECDSA P-256), for the
//! fixed image `registry.example.com/team/app:v1` and manifest digest.
//!
//! Input: one byte choosing the mode, then
//! - 0: stored envelope bytes from anywhere: they parse, print back to themselves, and verify
//!   only if they carry one of the genuine payloads (ECDSA signatures are not unique: another
//!   valid signature of a genuine payload is no forgery);
//! - 1, 2: edits (position, xor) to the genuine Ed25519 (1) or P-256 (2) signature's payload
//!   and signature bytes: any real change must fail verification;
//! - 3: a payload the trusted Ed25519 key signs: it verifies under `match = "exact"` only if
//!   it names `registry.example.com/team/app:v1` and the digest, and under
//!   `match = "repository"` also if it names the repository without a tag (the payload
//!   parser sees only signed bytes, SIG-10);
//! - 4: a layer descriptor (JSON), a 0 byte, then the layer's blob: a signature is read from
//!   it only if it is a cosign signature layer whose digest and size are the blob's, and its
//!   layer prints back to the same digest, size and signature.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signer as _, SigningKey};
use ferry_core::manifest::descriptor_digest;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{Digest, Reference};
use ferry_drivers::transfer::signatures::{envelope_of_layer, signature_layer};
use ferry_signing::{
    sign, IdentityMatch, PrivateKey, PublicKey, SignatureEnvelope, PAYLOAD_MEDIA_TYPE,
    PAYLOAD_TYPE, SIGNATURE_ANNOTATION,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The trusted keys, the Ed25519 secret for mode 3, the image, and the genuine signatures.
struct Fixed {
    trusted: Vec<PublicKey>,
    secret: SigningKey,
    reference: Reference,
    digest: Digest,
    genuine: [SignatureEnvelope; 2],
}

/// Writes `pem` as a private key file and loads it.
fn load(dir: &std::path::Path, name: &str, pem: &str) -> PrivateKey {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    PrivateKey::load(&path).expect("private key loads")
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let secret = SigningKey::from_bytes(&[7u8; 32]);
    let pem = secret.to_pkcs8_pem(Default::default()).expect("PKCS#8");
    let ed = load(dir.path(), "ed.key", &pem);
    let ec_secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid P-256 scalar");
    let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&ec_secret, Default::default())
        .expect("PKCS#8");
    let ec = load(dir.path(), "ec.key", &pem);
    let reference: Reference = "registry.example.com/team/app:v1".parse().expect("valid");
    let digest = Digest::sha256(b"the manifest");
    let genuine = [&ed, &ec].map(|k| sign(k, &reference, &digest, None).expect("sign"));
    Fixed {
        trusted: vec![ed.public_key().clone(), ec.public_key().clone()],
        secret,
        reference,
        digest,
        genuine,
    }
});

fn verifies(envelope: &SignatureEnvelope, identity: IdentityMatch) -> bool {
    let fixed = &*FIXED;
    envelope
        .verify(&fixed.trusted, &fixed.reference, &fixed.digest, identity)
        .is_ok()
}

/// The payload and signature bytes of a signature.
fn parts(envelope: &SignatureEnvelope) -> (Vec<u8>, Vec<u8>) {
    let signature = STANDARD
        .decode(envelope.signature_base64())
        .expect("base64");
    (envelope.payload().to_vec(), signature)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixed = &*FIXED;
    match mode % 5 {
        0 => {
            let Ok(envelope) = SignatureEnvelope::from_bytes(rest) else {
                return;
            };
            let again = SignatureEnvelope::from_bytes(&envelope.to_bytes())
                .expect("printed envelope parses");
            assert_eq!(again, envelope);
            if verifies(&envelope, IdentityMatch::Exact) {
                assert!(
                    fixed
                        .genuine
                        .iter()
                        .any(|g| g.payload() == envelope.payload()),
                    "accepted a forged payload"
                );
            }
        }
        m @ (1 | 2) => {
            let (payload, signature) = parts(&fixed.genuine[usize::from(m - 1)]);
            let mut bytes = [payload.as_slice(), signature.as_slice()].concat();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
                bytes[at] ^= edit[2];
            }
            let (p, s) = bytes.split_at(payload.len());
            let changed = p != payload.as_slice() || s != signature.as_slice();
            let Ok(envelope) = SignatureEnvelope::from_layer(p.to_vec(), &STANDARD.encode(s))
            else {
                assert!(changed, "the genuine signature does not parse");
                return;
            };
            for identity in [IdentityMatch::Exact, IdentityMatch::Repository] {
                assert_eq!(
                    verifies(&envelope, identity),
                    !changed,
                    "changed {changed}, {identity:?}"
                );
            }
        }
        3 => {
            let signature = fixed.secret.sign(rest).to_bytes();
            let Ok(envelope) =
                SignatureEnvelope::from_layer(rest.to_vec(), &STANDARD.encode(signature))
            else {
                return;
            };
            let exact = verifies(&envelope, IdentityMatch::Exact);
            let repository = verifies(&envelope, IdentityMatch::Repository);
            assert!(
                !exact || repository,
                "exact accepted what repository refused"
            );
            if repository {
                let claims: Value = serde_json::from_slice(rest).expect("accepted payload is JSON");
                let critical = &claims["critical"];
                assert_eq!(critical["type"], PAYLOAD_TYPE);
                assert_eq!(
                    critical["image"]["docker-manifest-digest"],
                    fixed.digest.to_string().as_str()
                );
                let named = critical["identity"]["docker-reference"]
                    .as_str()
                    .expect("a string reference");
                let parsed = Reference::parse(named).expect("accepted reference parses");
                assert_eq!(parsed.name(), fixed.reference.name());
                assert_eq!(parsed.digest(), None);
                let has_tag = named.rsplit('/').next().unwrap_or_default().contains(':');
                if exact {
                    assert!(has_tag && parsed.tag() == Some("v1"), "{named}");
                } else {
                    assert!(!has_tag, "repository match accepted a tag: {named}");
                }
            }
        }
        _ => {
            let Some(split) = rest.iter().position(|&b| b == 0) else {
                return;
            };
            let (json, blob) = (&rest[..split], &rest[split + 1..]);
            let Ok(layer) = serde_json::from_slice::<Descriptor>(json) else {
                return;
            };
            let Ok(envelope) = envelope_of_layer(&layer, blob.to_vec()) else {
                return;
            };
            assert_eq!(layer.media_type().to_string(), PAYLOAD_MEDIA_TYPE);
            assert_eq!(layer.size(), blob.len() as u64);
            let digest = descriptor_digest(&layer).expect("an accepted layer has a digest");
            assert_eq!(digest, Digest::of(digest.algorithm(), blob));
            assert_eq!(envelope.payload(), blob);
            let again = signature_layer(&envelope);
            assert_eq!(again.digest().to_string(), Digest::sha256(blob).to_string());
            assert_eq!(again.size(), layer.size());
            let annotation = |d: &Descriptor| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(SIGNATURE_ANNOTATION).cloned())
            };
            assert_eq!(annotation(&again), annotation(&layer));
        }
    }
});

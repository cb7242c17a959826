//! Helpers shared by the signing crate's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::Signer as _;
use ferry_core::{Digest, Reference};
use ferry_signing::{generate_key, PrivateKey, PublicKey, SignatureEnvelope};

/// The Ed25519 private key of RFC 8410 §10.3.
pub const RFC8410_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----
";
/// Its seed, in hex.
pub const RFC8410_SEED_HEX: &str =
    "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842";

/// A key pair generated into `dir` as `name.key`/`name.pub`.
pub struct TestKey {
    pub private: PrivateKey,
    pub public: PublicKey,
    pub pub_path: PathBuf,
}

pub fn new_key(dir: &Path, name: &str) -> TestKey {
    let files = generate_key(dir, name).unwrap();
    TestKey {
        private: PrivateKey::load(&files.private_key).unwrap(),
        public: PublicKey::load(&files.public_key).unwrap(),
        pub_path: files.public_key,
    }
}

/// Writes `pem` as a private key file with mode 0600.
pub fn write_private(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A new ECDSA P-256 key written as `dir/name` (PKCS#8 PEM, 0600) and loaded, with its
/// signing half for signatures `ferry_signing::sign` would never make.
pub fn p256_key(dir: &Path, name: &str) -> (PrivateKey, p256::ecdsa::SigningKey) {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&secret, Default::default()).unwrap();
    let key = PrivateKey::load(&write_private(dir, name, &pem)).unwrap();
    (key, p256::ecdsa::SigningKey::from(&secret))
}

/// The other valid form of a DER ECDSA P-256 signature: `s` replaced by `n - s`, made without
/// the key (ECDSA's malleability).
pub fn flip_s(der: &[u8]) -> Vec<u8> {
    let (r, s) = p256::ecdsa::Signature::from_der(der)
        .unwrap()
        .split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    flipped.to_der().as_bytes().to_vec()
}

pub fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

pub fn digest(content: &str) -> Digest {
    Digest::sha256(content.as_bytes())
}

/// A signature of arbitrary `payload` bytes by the RFC 8410 key, for payloads
/// `ferry_signing::sign` would never make.
pub fn forge(payload: &[u8]) -> SignatureEnvelope {
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(RFC8410_PRIVATE).unwrap();
    let sig = key.sign(payload);
    envelope(payload, &sig.to_bytes())
}

/// A signature from its parts, as a cosign layer carries it.
pub fn envelope(payload: &[u8], signature: &[u8]) -> SignatureEnvelope {
    SignatureEnvelope::from_layer(payload.to_vec(), &STANDARD.encode(signature)).unwrap()
}

/// The payload and signature bytes of a signature.
pub fn parts(e: &SignatureEnvelope) -> (Vec<u8>, Vec<u8>) {
    (
        e.payload().to_vec(),
        STANDARD.decode(e.signature_base64()).unwrap(),
    )
}

/// A cosign simple signing payload binding `docker_reference` to `digest`, as cosign (Go)
/// writes it: members sorted, `optional` null.
pub fn payload(docker_reference: &str, digest: &Digest) -> String {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{docker_reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
}

/// Writes a policy file in `dir` and returns its path.
pub fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

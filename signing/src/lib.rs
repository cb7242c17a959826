//! ferry's image signatures and trust policy.
//!
//! A signature binds an image's name and tag to the digest of its top manifest, so the
//! binding holds whatever transport carried the bytes (`specs/signature.md`). Signatures
//! are cosign's key-based form (simple signing payloads, Ed25519 or ECDSA P-256 keys), so
//! cosign and ferry check each other's. A [`Policy`]
//! decides per name whether an image must be signed, and by which keys
//! (`specs/policy.md`); an accepted image becomes a [`TrustedImage`], which only
//! [`Policy::check`] can make.
//!
//! ```no_run
//! # fn main() -> ferry_signing::Result<()> {
//! use std::path::Path;
//! use ferry_core::{Digest, Reference};
//! use ferry_signing::{generate_key, sign, Policy, PrivateKey};
//!
//! let files = generate_key(Path::new("/etc/ferry/keys"), "team")?;
//! let key = PrivateKey::load(&files.private_key)?;
//! let image = Reference::parse("registry.example.com/team/app:1").expect("valid reference");
//! let digest = Digest::sha256(b"the manifest bytes");
//! let envelope = sign(&key, &image, &digest, Some(std::time::SystemTime::now()))?;
//!
//! let policy = Policy::load_default(None)?;
//! let trusted = policy.check(&image, &digest, &[envelope])?;
//! # let _ = trusted;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod cosign_key;
mod envelope;
mod error;
mod key;
mod payload;
mod policy;

pub use envelope::{
    sign, IdentityMatch, SignatureEnvelope, ENVELOPE_MEDIA_TYPE, MAX_ENVELOPE_SIZE,
    MAX_PAYLOAD_SIZE, PAYLOAD_MEDIA_TYPE, SIGNATURE_ANNOTATION,
};
pub use error::Error;
pub use key::{generate_key, import_cosign_key, KeyFiles, KeyId, PrivateKey, PublicKey};
pub use payload::PAYLOAD_TYPE;
pub use policy::{Acceptance, Policy, TrustedImage, Verdict, SYSTEM_POLICY};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

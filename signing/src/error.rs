//! The one error type of `ferry-signing`.

use std::path::{Path, PathBuf};

use ferry_core::Digest;

use crate::KeyId;

/// Everything that can go wrong with keys, signatures and policies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read, written or inspected.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is, e.g. `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key name is not usable as a file name (SIG-1).
    #[error("invalid key name {name:?}: use 1-128 of A-Z a-z 0-9 . _ -, not starting with . or -")]
    InvalidKeyName {
        /// The rejected name.
        name: String,
    },
    /// Key generation would overwrite an existing file (SIG-2).
    #[error("key file {path} already exists; refusing to overwrite it")]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A private key file is accessible to group or others (SIG-4).
    #[error(
        "private key {path} has mode {mode:04o}, readable by group or others; run chmod 600 on it"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold a usable key (SIG-4, SIG-5).
    #[error("{what} {path}: {reason}")]
    InvalidKey {
        /// `private key` or `public key`.
        what: &'static str,
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key id is not 16 lowercase hex characters (SIG-3).
    #[error("invalid key id {0:?}: expected 16 lowercase hex characters")]
    InvalidKeyId(String),
    /// A signature (its layer or its stored envelope) is malformed (SIG-8).
    #[error("signature: {0}")]
    InvalidEnvelope(String),
    /// A cosign encrypted private key cannot be read or written (SIG-19).
    #[error("cosign private key: {0}")]
    CosignKey(String),
    /// A reference to sign or verify has no tag, but signatures bind tags (SIG-10, SIG-11).
    #[error("image {image}: no tag; signatures bind a name with a tag")]
    NoTag {
        /// The reference.
        image: String,
    },
    /// A reference pins a digest other than the manifest digest given with it (POL-7).
    #[error("image {image} pins a digest other than the manifest digest {manifest}")]
    DigestConflict {
        /// The reference.
        image: String,
        /// The manifest digest it was given with.
        manifest: Digest,
    },
    /// The signing time is before the Unix epoch, so it has no `optional.timestamp` (SIG-6).
    #[error("signing time is before 1970-01-01")]
    InvalidCreated,
    /// No trusted key verifies a signature (SIG-10 step 3).
    #[error("signature for {image} verifies with none of the trusted keys [{}]", ids(.tried))]
    UntrustedSignature {
        /// The image the signature was checked for.
        image: String,
        /// The ids of the trusted keys tried.
        tried: Vec<KeyId>,
    },
    /// A signature verifies but its payload is malformed or of another type (SIG-6).
    #[error("signature by key {key}: invalid payload: {reason}")]
    InvalidPayload {
        /// The key that made the signature.
        key: KeyId,
        /// What is wrong with the payload.
        reason: String,
    },
    /// A valid signature is for another name or tag (SIG-10 step 5).
    #[error("signature by key {key} is for {signed}, not {requested}")]
    IdentityMismatch {
        /// The key that made the signature.
        key: KeyId,
        /// The `docker-reference` the payload binds.
        signed: String,
        /// The `name:tag` that was requested.
        requested: String,
    },
    /// A valid signature binds the name to another manifest (SIG-10 step 6).
    #[error("signature by key {key} binds {image} to {signed}, not {expected}")]
    DigestMismatch {
        /// The key that made the signature.
        key: KeyId,
        /// The `name:tag` both agree on.
        image: String,
        /// The digest in the payload.
        signed: String,
        /// The manifest digest being accepted.
        expected: Digest,
    },
    /// A policy file is invalid (POL-1 to POL-4).
    #[error("policy {}: {message}", at(.path, .line))]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// The 1-based line the problem is on, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The policy rejects an image (POL-6).
    #[error("{reason}")]
    Rejected {
        /// The image, `NAME:TAG@DIGEST`.
        image: String,
        /// Why, naming the image, the rule and the keys tried.
        reason: String,
    },
}

pub(crate) fn ids(keys: &[KeyId]) -> String {
    keys.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn at(path: &Path, line: &Option<usize>) -> String {
    match line {
        Some(line) => format!("{}, line {line}", path.display()),
        None => path.display().to_string(),
    }
}

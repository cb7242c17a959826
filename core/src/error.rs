//! The one error type of `ferry-core`.

use std::path::PathBuf;

use crate::Digest;

/// Everything that can go wrong in the image model and the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest string is malformed.
    #[error("invalid digest {digest:?}: {}", one_line(reason))]
    InvalidDigest {
        /// The offending input (truncated).
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image reference is malformed.
    #[error("invalid reference {reference:?}: {part:?}: {}", one_line(reason))]
    InvalidReference {
        /// The whole input (truncated).
        reference: String,
        /// The part that is wrong.
        part: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A platform string is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    InvalidPlatform(String),
    /// Bytes do not hash to the digest that names them.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being checked, e.g. `layer sha256:ab…`.
        what: String,
        /// The digest the bytes should have.
        expected: Digest,
        /// The digest they have.
        actual: Digest,
    },
    /// A blob's size differs from its descriptor.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was being checked.
        what: String,
        /// Size the descriptor promised.
        expected: u64,
        /// Size seen.
        actual: u64,
    },
    /// Something is larger than ferry accepts.
    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size (or the size seen so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest, index or config cannot be understood.
    #[error("invalid manifest {digest}: {}", one_line(reason))]
    InvalidManifest {
        /// Digest of the bad bytes.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// Docker schema 1 manifests are refused.
    #[error("schema 1 images are not supported (deprecated Docker format; re-push the image as schema 2 or OCI)")]
    Schema1,
    /// A media type ferry does not handle.
    #[error("unsupported media type {media_type:?} for {context}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// Where it was found.
        context: String,
    },
    /// No manifest in an index matches the wanted platform.
    #[error("no manifest for platform {platform} in index (available: {available})")]
    NoMatchingPlatform {
        /// The wanted platform.
        platform: String,
        /// What the index offers.
        available: String,
    },
    /// A blob is not in the store.
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    /// No image of that name is in the store.
    #[error("image {0} is not in the store")]
    ImageNotFound(String),
    /// A file-system operation in the store failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A store lock is held elsewhere, e.g. garbage collection while a pull holds a lease.
    #[error("store {path}: {what}: {reason}")]
    Busy {
        /// The store root.
        path: PathBuf,
        /// What could not proceed, e.g. `gc`.
        what: &'static str,
        /// Who holds the lock and what to do.
        reason: String,
    },
    /// The store database was written by a newer ferry.
    #[error("store database {path} has schema version {found}, newer than this ferry supports ({supported}); upgrade ferry")]
    StoreVersion {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The metadata database failed.
    #[error("store database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

impl Error {
    /// An I/O error with the operation and path it happened on.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `text` on one line: control characters (a newline inside a manifest's string, say)
/// written as escapes, so an error about hostile bytes stays one line.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_outside_bytes_print_on_one_line() {
        // A child digest of an index holding an escaped newline, as fuzzing found.
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:9c4\nx","size":1}]}"#;
        let err = crate::ManifestBlob::parse(index.as_bytes().to_vec(), None, None).unwrap_err();
        let message = err.to_string();
        assert!(!message.contains('\n'), "{message:?}");
        assert!(message.contains("\\n"), "{message:?}");
        assert_eq!(one_line("a\tb\u{1b}c"), "a\\tb\\u{1b}c");
    }
}

//! The one error type of `ferry-drivers`, sorted into the categories a router acts on.

/// What kind of failure an [`Error`] is; the router decides by this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The source does not have it: try the next source.
    NotFound,
    /// The source refused our credentials (or wants some).
    Unauthorized,
    /// The source is down or overloaded: retry later or fall back.
    Unavailable,
    /// The source served bytes that do not match their digest or size: never keep them.
    Corrupt,
    /// The source cannot do this at all.
    Unsupported,
    /// The request or the response is invalid (bad input, bad configuration, local failure).
    Invalid,
    /// The trust policy refuses the image (`specs/policy.md`, POL-6); it is not named in the store.
    Rejected,
}

/// A driver failure: its category, the source it happened at (if any), and what happened.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// The category.
    pub kind: ErrorKind,
    /// The source (driver instance) that failed.
    pub source_name: String,
    /// One line saying what failed and where.
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.source_name.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "source {:?}: {}", self.source_name, self.message)
        }
    }
}

impl Error {
    /// A new error of `kind` at `source_name`.
    pub fn new(kind: ErrorKind, source_name: &str, message: impl Into<String>) -> Self {
        Error {
            kind,
            source_name: source_name.to_string(),
            message: message.into(),
        }
    }

    /// `NotFound` at a source.
    pub fn not_found(source_name: &str, what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::NotFound,
            source_name,
            format!("not found: {what}"),
        )
    }

    /// `Unsupported` at a source.
    pub fn unsupported(source_name: &str, what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            source_name,
            format!("does not support {what}"),
        )
    }

    /// `Corrupt` at a source.
    pub fn corrupt(source_name: &str, what: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Corrupt, source_name, what.to_string())
    }

    /// `Unavailable` at a source.
    pub fn unavailable(source_name: &str, what: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Unavailable, source_name, what.to_string())
    }

    /// A core error that no source caused (the image model or the local store), categorized.
    pub fn local(e: ferry_core::Error) -> Self {
        Self::from_core("", e)
    }

    /// A core error (bad manifest, store failure) at a source, categorized.
    pub fn from_core(source_name: &str, e: ferry_core::Error) -> Self {
        use ferry_core::Error as C;
        let kind = match &e {
            C::DigestMismatch { .. } | C::SizeMismatch { .. } => ErrorKind::Corrupt,
            C::BlobNotFound(_) | C::ImageNotFound(_) => ErrorKind::NotFound,
            C::Schema1 | C::UnsupportedMediaType { .. } => ErrorKind::Unsupported,
            _ => ErrorKind::Invalid,
        };
        Self::new(kind, source_name, e.to_string())
    }
}

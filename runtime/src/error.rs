//! The one error type of `ferry-runtime`.
//!
//! Shared by several modules: add variants, keep each message one line naming what and where.

use std::path::PathBuf;

/// Everything that can go wrong unpacking or running an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the store or the image model.
    #[error(transparent)]
    Core(#[from] ferry_core::Error),
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// Where (relative to the rootfs when inside one).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

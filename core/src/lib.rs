//! ferry's core: digests, references, the image model, and the content-addressed store.
//!
//! Every crate of ferry speaks these types; this crate depends on no other ferry crate.

#![warn(missing_docs)]

pub mod digest;
mod error;
pub mod manifest;
pub mod media;
pub mod reference;
pub mod store;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::Error;
pub use manifest::{Manifest, ManifestBlob, Platform};
pub use reference::Reference;
pub use store::Store;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The OCI types ferry builds on, re-exported so every crate uses the same version.
pub use oci_spec;

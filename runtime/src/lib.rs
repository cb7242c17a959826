//! ferry's runtime: unpack layers safely into root filesystems and snapshots, turn an
//! image config into an OCI runtime spec, and run it.

#![warn(missing_docs)]

mod error;
pub mod image;
pub mod one_pass;
pub mod run;
pub mod snapshot;
pub mod snapshot_check;
pub mod spec;
pub mod unpack;
pub mod userns;

pub use error::Error;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The sources: one module per transport, each implementing [`crate::Driver`].

pub mod local;
pub mod mirror;
pub mod oci_layout;
pub mod peer;
pub mod registry;
pub mod s3;

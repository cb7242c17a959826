//! The engines that move images: pull into the store, copy between sources, archives for
//! the air gap, and the transport of signatures beside the images.

pub mod archive;
pub mod copy;
pub mod progress;
pub mod pull;
pub mod signatures;
pub mod sink;

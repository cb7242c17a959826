//! ferry signing

//! TOML files ferry reads: the site config (`SiteConfig::parse`, SITE-*) and the trust
//! policy (`Policy::load`, POL-*), both fed the same bytes. The policy's directory holds
//! two real public keys (`a.pub`, `b.pub`) that `keys = [...]` can name.
//!
//! Input: the file's text.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use ferry_core::{Digest, Reference};
use ferry_drivers::site::config::{prefix_matches, SiteConfig};
use ferry_signing::{generate_key, Policy, Verdict};
use libfuzzer_sys::fuzz_target;

/// Names every config is asked about.
const NAMES: [&str; 4] = [
    "docker.io/library/busybox:1",
    "registry.example.com/team/app:v1",
    "127.0.0.1:5000/a/b:latest",
    "localhost/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

/// The policy file's directory, with the two keys; kept for the whole run.
static DIR: LazyLock<(tempfile::TempDir, PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    for name in ["a", "b"] {
        generate_key(dir.path(), name).expect("key pair");
    }
    let policy = dir.path().join("policy.toml");
    (dir, policy)
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let references: Vec<Reference> = NAMES.iter().map(|n| n.parse().expect("valid")).collect();

    match SiteConfig::parse(text, "sites.toml") {
        Ok(config) => {
            for route in &config.routes {
                assert!(
                    !route.sources.is_empty(),
                    "route {:?} without sources",
                    route.prefix
                );
                for source in route.sources.iter().chain(&route.resolve) {
                    assert!(
                        config.sources.contains_key(source),
                        "unknown source {source:?} kept"
                    );
                }
                let twins = config
                    .routes
                    .iter()
                    .filter(|r| r.prefix == route.prefix)
                    .count();
                assert_eq!(twins, 1, "route {:?} defined twice", route.prefix);
            }
            for (name, source) in &config.sources {
                assert_eq!(&source.name, name);
                let _ = (
                    source.driver_name(),
                    source.location("docker.io/library/busybox"),
                );
            }
            for r in &references {
                if let Some(route) = config.route_for(&r.name()) {
                    assert!(prefix_matches(&route.prefix, &r.name()));
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("sites.toml:"),
                "error names no file and line: {message:?}"
            );
            assert!(!message.contains('\n'), "one-line error: {message:?}");
        }
    }

    let (_, path) = &*DIR;
    std::fs::write(path, data).expect("write policy");
    match Policy::load(path) {
        Ok(policy) => {
            let digest = Digest::sha256(b"manifest");
            for r in &references {
                let pinned = r.digest().cloned().unwrap_or_else(|| digest.clone());
                let verdict = policy.evaluate(r, &pinned, &[]).expect("evaluates");
                if policy.requires_signature(r) {
                    assert!(
                        matches!(verdict, Verdict::Rejected { .. }),
                        "{r}: accepted without the signatures its rule requires"
                    );
                }
                // A reference pinning another digest is an error, never a verdict (POL-7).
                if r.digest().is_some() {
                    assert!(policy.evaluate(r, &digest, &[]).is_err());
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "one-line error: {message:?}");
        }
    }
});

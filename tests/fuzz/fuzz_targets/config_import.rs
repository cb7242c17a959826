//! `ferry config import` of files other tools wrote: containers' `registries.conf` and
//! `policy.json`, containerd's `hosts.toml` (`import_text`, SITE-9 … SITE-12, POL-12).
//!
//! Input: a selector byte (0: registries.conf, 1: hosts.toml, 2: policy.json), then the
//! file's text.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::import::{import_text, Format};
use ferry_signing::Policy;
use libfuzzer_sys::fuzz_target;

/// Where an imported policy is written to be loaded back; kept for the whole run.
static DIR: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("temporary directory"));

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (format, path) = match selector % 3 {
        0 => (Format::RegistriesConf, "containers/registries.conf"),
        1 => (Format::HostsToml, "certs.d/registry.example.com/hosts.toml"),
        _ => (Format::PolicyJson, "containers/policy.json"),
    };
    match import_text(format, Path::new(path), text) {
        Ok(imported) => {
            // What is written is what ferry reads back.
            if let Some(site) = &imported.site {
                if let Err(e) = SiteConfig::parse(site, "imported sites.toml") {
                    panic!("imported site config does not parse: {e}\n{site}");
                }
            }
            if let Some(policy) = &imported.policy {
                let file = DIR.path().join("policy.toml");
                std::fs::write(&file, policy).expect("write policy");
                if let Err(e) = Policy::load(&file) {
                    panic!("imported policy does not load: {e}\n{policy}");
                }
            }
            assert!(
                imported.site.is_some() || imported.policy.is_some(),
                "an import without a result"
            );
            for note in &imported.notes {
                let line = note.to_string();
                assert!(!line.contains('\n'), "note on several lines: {line:?}");
                assert!(line.contains(path), "note names no file: {line:?}");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "one-line error: {message:?}");
            assert!(message.contains(path), "error names no file: {message:?}");
        }
    }
});

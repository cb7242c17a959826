//! `ferry load` from a byte stream (`transfer::archive::load`, ARC-9 to ARC-14): the stream
//! detection, the tar reader, the table of contents, `index.json` / `manifest.json`, and
//! every check before a name is set, into one store kept for the whole run.
//!
//! A failed load must leave the store as it was: no name, no blob, no partial (ARC-10).
//! After a successful one the names are removed and the blobs collected, so every input
//! meets the same empty store.
//!
//! Input: the archive stream.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use ferry_core::{Digest, Reference, Store};
use ferry_drivers::transfer::archive::{load, LoadOptions};
use ferry_signing::Policy;
use libfuzzer_sys::fuzz_target;

static STORE: LazyLock<(tempfile::TempDir, Store)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path().join("store")).expect("store");
    (dir, store)
});

/// Every file under the store's ingest area (partial blobs).
fn partials(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(partials(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out.sort();
    out
}

fn state(store: &Store) -> (Vec<String>, Vec<Digest>, Vec<String>) {
    let names = store
        .images()
        .expect("images")
        .into_iter()
        .map(|r| format!("{} {:?} {}", r.name, r.tag, r.digest))
        .collect();
    let blobs = store.digests().expect("digests");
    (names, blobs, partials(&store.root().join("ingest")))
}

fuzz_target!(|data: &[u8]| {
    let (_, store) = &*STORE;
    let before = state(store);
    let options = LoadOptions {
        name: Some("docker.io/library/loaded".into()),
        source_label: "archive:fuzz".into(),
    };
    match load(store, data, &Policy::accept_all(), &options) {
        Ok(report) => {
            for image in &report.images {
                let reference: Reference = image.reference.parse().expect("loaded name parses");
                store.remove_image(&reference).expect("loaded name is set");
            }
            store.gc().expect("gc");
        }
        Err(e) => {
            assert_eq!(state(store), before, "a failed load changed the store: {e}");
        }
    }
});

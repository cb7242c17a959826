//! The tar reader and the whole layer unpack (UNPACK-*): a plain tar layer is applied with
//! `unpack::apply_layer` into a root directory made inside a scratch parent that holds only
//! that root, a staging directory and a canary file; then the same layer is staged with
//! `stage_layer` and merged over what the first made with `merge_into` (UNPACK-70, 71), as
//! a later layer would. After every step the parent must still hold exactly those three,
//! the root and staging directory must still be directories, and the canary must be
//! untouched.
//!
//! Input: the layer's tar stream.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_core::media::Compression;
use ferry_core::Digest;
use ferry_runtime::unpack::{apply_layer, stage_layer, Budget, LayerSummary, Limits, Whiteouts};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"nothing may change me\n";
const LIMITS: Limits = Limits {
    max_bytes: 16 << 20,
    max_entries: 4096,
};

/// Scratch space on tmpfs when there is one: every run makes and removes a tree.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("ferry-fuzz-unpack")
        .to_owned();
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("temporary directory")
}

/// Everything about the canary an escaping write could change.
type CanaryState = (Vec<u8>, u32, u64, u32, u32, i64, i64);

/// The canary's [`CanaryState`] now.
fn canary_state(path: &Path) -> CanaryState {
    let meta = fs::symlink_metadata(path).expect("canary is still there");
    assert!(
        meta.file_type().is_file(),
        "canary is no longer a regular file"
    );
    let bytes = fs::read(path).expect("canary readable");
    (
        bytes,
        meta.mode(),
        meta.nlink(),
        meta.uid(),
        meta.gid(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// Checks the scratch parent after `step`: only its three entries, both directories still
/// directories, the canary as it was.
fn check_parent(parent: &Path, step: &str, canary: &Path, before: &CanaryState) {
    let mut names: Vec<String> = fs::read_dir(parent)
        .expect("parent readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["canary", "root", "stage"],
        "{step}: the layer wrote beside its root"
    );
    for dir in ["root", "stage"] {
        assert!(
            fs::symlink_metadata(parent.join(dir))
                .expect(dir)
                .file_type()
                .is_dir(),
            "{step}: {dir} is no longer a directory"
        );
    }
    assert_eq!(&canary_state(canary), before, "{step}: the canary changed");
}

/// What an applied or merged layer reports: the whole stream's size and digest.
fn check_summary(summary: &LayerSummary, data: &[u8]) {
    assert_eq!(summary.bytes, data.len() as u64);
    assert_eq!(summary.diff_id, Digest::sha256(data));
    assert!(summary.entries <= LIMITS.max_entries);
}

fuzz_target!(|data: &[u8]| {
    let parent = scratch();
    let root = parent.path().join("root");
    let stage = parent.path().join("stage");
    let canary = parent.path().join("canary");
    fs::create_dir(&root).expect("root");
    fs::create_dir(&stage).expect("stage");
    fs::write(&canary, CANARY).expect("canary");
    let before = canary_state(&canary);

    let mut budget = Budget::new(LIMITS);
    let applied = apply_layer(
        &root,
        data,
        Compression::None,
        None,
        Whiteouts::Apply,
        &mut budget,
    );
    check_parent(parent.path(), "apply", &canary, &before);
    let Ok(summary) = applied else { return };
    check_summary(&summary, data);
    assert!(budget.bytes_left() <= LIMITS.max_bytes);

    let staged = stage_layer(
        &stage,
        data,
        Compression::None,
        None,
        &mut Budget::new(LIMITS),
    );
    check_parent(parent.path(), "stage", &canary, &before);
    let Ok(staged) = staged else { return };
    check_summary(staged.summary(), data);
    let merged = staged.merge_into(&root);
    check_parent(parent.path(), "merge", &canary, &before);
    if let Ok(summary) = merged {
        check_summary(&summary, data);
    }
});

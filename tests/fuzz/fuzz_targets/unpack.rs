//! The tar reader and the whole layer unpack (`unpack::apply_layer`, UNPACK-*): a plain tar
//! layer is applied twice (the second time over what the first made, as a later layer
//! would) into a root directory made inside a scratch parent that holds only that root and
//! a canary file. After every run the parent must still hold exactly those two, the root
//! must still be a directory, and the canary must be untouched.
//!
//! Input: the layer's tar stream.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_core::media::Compression;
use ferry_core::Digest;
use ferry_runtime::unpack::{apply_layer, Budget, Limits, Whiteouts};
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
fn canary_state(path: &Path) -> (Vec<u8>, u32, u64, u32, u32, i64, i64) {
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

fuzz_target!(|data: &[u8]| {
    let parent = scratch();
    let root = parent.path().join("root");
    let canary = parent.path().join("canary");
    fs::create_dir(&root).expect("root");
    fs::write(&canary, CANARY).expect("canary");
    let before = canary_state(&canary);

    let mut budget = Budget::new(LIMITS);
    for round in 0..2 {
        let result = apply_layer(
            &root,
            data,
            Compression::None,
            None,
            Whiteouts::Apply,
            &mut budget,
        );
        let mut names: Vec<String> = fs::read_dir(parent.path())
            .expect("parent readable")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["canary", "root"],
            "round {round}: the layer wrote beside its root"
        );
        assert!(
            fs::symlink_metadata(&root)
                .expect("root")
                .file_type()
                .is_dir(),
            "round {round}: the root is no longer a directory"
        );
        assert_eq!(
            canary_state(&canary),
            before,
            "round {round}: the canary changed"
        );
        match result {
            Ok(summary) => {
                // The diff_id covers the whole stream, trailing bytes included.
                assert_eq!(summary.bytes, data.len() as u64);
                assert_eq!(summary.diff_id, Digest::sha256(data));
                assert!(summary.entries <= LIMITS.max_entries);
            }
            Err(_) => break,
        }
    }
    assert!(budget.bytes_left() <= LIMITS.max_bytes);
});

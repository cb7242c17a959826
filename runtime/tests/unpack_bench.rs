//! Extraction throughput on a real layer (not part of the normal suite):
//!
//! `FERRY_UNPACK_BENCH_LAYER=layer.tar.gz cargo test --release -p ferry-runtime
//!  --test unpack_bench -- --ignored --nocapture`
//!
//! Compare with `time tar -xzf layer.tar.gz -C DIR` on the same disk.

use std::time::Instant;

use ferry_core::media::Compression;
use ferry_runtime::unpack::{apply_layer, Budget, Limits, Whiteouts};

#[test]
#[ignore = "benchmark: needs FERRY_UNPACK_BENCH_LAYER and a release build"]
fn extraction_throughput() {
    let layer = std::env::var("FERRY_UNPACK_BENCH_LAYER")
        .expect("FERRY_UNPACK_BENCH_LAYER=path of a layer blob");
    let head = {
        let mut f = std::fs::File::open(&layer).unwrap();
        let mut b = [0u8; 4];
        std::io::Read::read(&mut f, &mut b).unwrap();
        b
    };
    let compression = Compression::sniff(&head);
    let compressed = std::fs::metadata(&layer).unwrap().len();
    let base =
        std::env::var_os("FERRY_UNPACK_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let start = Instant::now();
    let file = std::fs::File::open(&layer).unwrap();
    let summary = apply_layer(
        dir.path(),
        file,
        compression,
        None,
        Whiteouts::Apply,
        &mut Budget::new(Limits::default()),
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{layer}: {:.0} MB compressed, {:.0} MB uncompressed, {} entries in {secs:.2}s: {:.0} MB/s compressed, {:.0} MB/s uncompressed ({})",
        compressed as f64 / 1e6,
        summary.bytes as f64 / 1e6,
        summary.entries,
        compressed as f64 / 1e6 / secs,
        summary.bytes as f64 / 1e6 / secs,
        summary.diff_id,
    );
}

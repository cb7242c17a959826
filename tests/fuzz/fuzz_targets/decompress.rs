//! The layer decompressors (gzip via flate2, zstd) as the runtime wires them:
//! `unpack::stream::decompress` checks the magic bytes against the declared compression,
//! and `DiffReader` hashes the output and stops it at a byte limit.
//!
//! Input: one byte choosing the declared compression, then the layer stream.
#![no_main]

use std::io::Read;

use ferry_core::media::Compression;
use ferry_core::{Algorithm, Digest, Hasher};
use ferry_runtime::unpack::stream::{decompress, DecompressError, DiffReader};
use libfuzzer_sys::fuzz_target;

/// Output bound for one run: a decompression bomb stops here.
const LIMIT: u64 = 1 << 20;

/// Reads `r` to its end or first error, at most `LIMIT + 1` bytes.
fn read_bounded(r: impl Read) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let ok = r.take(LIMIT + 1).read_to_end(&mut out).is_ok();
    (out, ok)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, stream)) = data.split_first() else {
        return;
    };
    let declared =
        [Compression::None, Compression::Gzip, Compression::Zstd][usize::from(choice) % 3];
    let head = &stream[..stream.len().min(4)];
    let shown = if stream.is_empty() {
        Compression::None
    } else {
        Compression::sniff(head)
    };

    let reader = match decompress(stream, declared) {
        Err(DecompressError::Mismatch(found)) => {
            assert_ne!(found, declared);
            assert_eq!(found, shown, "the mismatch names what the bytes show");
            return;
        }
        Err(DecompressError::Io(e)) => {
            // Only the zstd decoder's set-up can fail; reading a slice never does.
            assert_eq!(declared, Compression::Zstd, "{e}");
            return;
        }
        Ok(reader) => {
            assert_eq!(
                shown, declared,
                "accepted a stream whose magic bytes disagree"
            );
            reader
        }
    };

    let mut diff = DiffReader::new(reader, Hasher::new(Algorithm::Sha256), LIMIT);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let finished = loop {
        match diff.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    assert!(
        out.len() as u64 <= LIMIT,
        "output past the limit: {}",
        out.len()
    );
    assert_eq!(diff.consumed(), out.len() as u64);
    let exceeded = diff.exceeded();
    if exceeded {
        assert!(!finished);
    }
    assert_eq!(
        diff.finish(),
        Digest::sha256(&out),
        "diff_id covers exactly the output"
    );

    // The same bytes through the plain decoders: ferry's wiring (magic bytes read ahead and
    // put back) must not lose or add a byte.
    let (expected, expected_ok) = match declared {
        Compression::None => (stream.to_vec(), true),
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => match zstd::Decoder::new(stream) {
            Ok(d) => read_bounded(d),
            Err(_) => return,
        },
    };
    if finished {
        assert!(
            expected_ok,
            "ferry decoded a stream the plain decoder refuses"
        );
        assert_eq!(
            out, expected,
            "decoded bytes differ from the plain decoder's"
        );
    } else if exceeded {
        assert!(
            expected.len() as u64 > LIMIT,
            "stopped at the limit, but the output is smaller"
        );
        assert_eq!(out[..], expected[..out.len()]);
    }
});

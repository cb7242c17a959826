//! Decompression checked against magic bytes, and the reader that computes the diff_id
//! and enforces the byte budget over the whole decompressed stream (UNPACK-3, UNPACK-30).

use std::io::{self, BufRead, BufReader, Cursor, Read};

use ferry_core::media::Compression;
use ferry_core::{Digest, Hasher};

/// Buffer between the compressed input and the decoder.
const INPUT_BUFFER: usize = 256 * 1024;

/// How a compression is named in mismatch messages.
pub(super) fn name(c: Compression) -> &'static str {
    match c {
        Compression::None => "no (plain tar)",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// A decompressing reader for `input`, after checking its magic bytes against `declared`.
///
/// On mismatch the error carries the compression the bytes show.
pub fn decompress<'a, R: Read + 'a>(
    mut input: R,
    declared: Compression,
) -> Result<Box<dyn Read + 'a>, DecompressError> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DecompressError::Io(e)),
        }
    }
    let found = if n == 0 && declared != Compression::None {
        // An empty stream is no gzip or zstd stream: report it as what it looks like.
        Compression::None
    } else {
        Compression::sniff(&head[..n])
    };
    if found != declared {
        return Err(DecompressError::Mismatch(found));
    }
    let input =
        BufReader::with_capacity(INPUT_BUFFER, Cursor::new(head).take(n as u64).chain(input));
    Ok(match declared {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(DecompressError::Io)?)
        }
    })
}

/// Why a decompressor could not be set up.
pub enum DecompressError {
    /// The magic bytes show this compression instead of the declared one.
    Mismatch(Compression),
    /// Reading the first bytes failed.
    Io(io::Error),
}

/// Hashes and counts every byte read through it; hands on every byte up to `limit`, and
/// fails when the stream has more.
pub struct DiffReader<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> DiffReader<R> {
    /// Wraps `inner`, allowing at most `limit` bytes.
    pub fn new(inner: R, hasher: Hasher, limit: u64) -> Self {
        DiffReader {
            inner,
            hasher,
            bytes: 0,
            limit,
            exceeded: false,
        }
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.bytes
    }

    /// Whether the stream went past the limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The digest of everything read.
    pub fn finish(self) -> Digest {
        self.hasher.finish()
    }
}

impl<R: Read> Read for DiffReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(io::Error::other("byte limit exceeded"));
        }
        let left = self.limit - self.bytes;
        if left == 0 {
            // Every allowed byte was handed on (so the entry they belong to is known):
            // one more means the stream is over the limit.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other("byte limit exceeded"));
        }
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.bytes += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads `r` to its end (through the hashing reader beneath it).
pub(super) fn drain<R: BufRead>(r: &mut R) -> io::Result<()> {
    loop {
        let n = r.fill_buf()?.len();
        if n == 0 {
            return Ok(());
        }
        r.consume(n);
    }
}

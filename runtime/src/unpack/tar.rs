//! A streaming tar reader (ustar, GNU and PAX) whose memory is bounded by its buffer.
//!
//! It reads like Go's `archive/tar` (the reader containerd and umoci use), so ferry sees
//! the same entries they do: GNU long names win over PAX `path`, header-only types
//! (links, directories, devices, fifos) carry no data whatever their size field says, and
//! an end of stream where a header would start ends the archive (UNPACK-2).

use std::io::{self, BufRead};

/// Tar block size.
const BLOCK: u64 = 512;
/// Largest PAX header or GNU long name accepted (as Go's `archive/tar`).
const MAX_META: u64 = 1 << 20;

/// The kind of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Regular file, with data.
    File,
    /// Directory.
    Dir,
    /// Symbolic link to `link`.
    Symlink,
    /// Hard link to the earlier entry `link`.
    Hardlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
    /// PAX global header: ignored, as containerd does.
    GlobalPax,
}

/// One tar entry's header, with PAX and GNU extensions applied.
#[derive(Debug)]
pub(super) struct Entry {
    /// What the entry is.
    pub kind: Kind,
    /// The name as stored (not yet normalized).
    pub path: Vec<u8>,
    /// Link target for symlinks and hard links, as stored.
    pub link: Vec<u8>,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner (not range-checked here).
    pub uid: u64,
    /// Group (not range-checked here).
    pub gid: u64,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Device major and minor numbers.
    pub dev: (u32, u32),
    /// Extended attributes from `SCHILY.xattr.*` records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What can go wrong reading a tar stream.
#[derive(Debug)]
pub(super) enum TarError {
    /// Reading the underlying (decompressed) stream failed.
    Io(io::Error),
    /// The bytes are not a tar stream ferry accepts.
    Format(String),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, TarError> {
    Err(TarError::Format(why.into()))
}

/// PAX records that matter to ferry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `GNU.sparse.*` records were present.
    sparse: bool,
}

/// Reads entries one after the other; data is read with [`TarReader::data`].
pub(super) struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// Bytes consumed so far, for error messages.
    offset: u64,
}

impl<R: BufRead> TarReader<R> {
    /// A reader over a decompressed tar stream.
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            offset: 0,
        }
    }

    /// The underlying stream, positioned after the last header or data read.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Byte offset of the stream position, for error messages.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry, skipping what is left of the current one; `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        let rest = self.remaining + self.padding;
        self.skip(rest)?;
        self.remaining = 0;
        self.padding = 0;
        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let header_at = self.offset;
            let mut h = [0u8; BLOCK as usize];
            let pending = pax.is_some() || long_name.is_some() || long_link.is_some();
            if !self.read_block(&mut h)? || h.iter().all(|&b| b == 0) {
                if pending {
                    return bad("extended header with no entry after it");
                }
                return Ok(None);
            }
            check_sum(&h)
                .map_err(|why| TarError::Format(format!("header at byte {header_at}: {why}")))?;
            let field = |r: std::ops::Range<usize>, what: &str| {
                numeric(&h[r]).map_err(|why| {
                    TarError::Format(format!("header at byte {header_at}: {what}: {why}"))
                })
            };
            let raw_size = field(124..136, "size")?;
            let raw_size = u64::try_from(raw_size).or_else(|_| bad("negative size"))?;
            match h[156] {
                b'x' => {
                    if pax.is_some() {
                        return bad("two PAX headers for one entry");
                    }
                    pax = Some(parse_pax(&self.read_meta(raw_size)?)?);
                    continue;
                }
                b'L' | b'K' => {
                    let slot = if h[156] == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return bad("two GNU long names for one entry");
                    }
                    let mut name = self.read_meta(raw_size)?;
                    if let Some(nul) = name.iter().position(|&b| b == 0) {
                        name.truncate(nul);
                    }
                    *slot = Some(name);
                    continue;
                }
                _ => {}
            }
            let pax = pax.unwrap_or_default();
            let path = match (long_name, pax.path) {
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => header_name(&h),
            };
            let link = match (long_link, pax.link) {
                (Some(l), _) | (None, Some(l)) => l,
                (None, None) => cstr(&h[157..257]).to_vec(),
            };
            let kind = match h[156] {
                b'0' | b'7' => Kind::File,
                b'\0' if path.ends_with(b"/") => Kind::Dir,
                b'\0' => Kind::File,
                b'1' => Kind::Hardlink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                b'g' => Kind::GlobalPax,
                b'S' => return bad("GNU sparse files are not supported"),
                other => {
                    return bad(format!(
                        "header at byte {header_at}: unsupported entry type {:?}",
                        other as char
                    ))
                }
            };
            if pax.sparse {
                return bad("PAX sparse files (GNU.sparse.*) are not supported");
            }
            let size = pax.size.unwrap_or(raw_size);
            if matches!(kind, Kind::File | Kind::GlobalPax) {
                self.remaining = size;
                self.padding = (BLOCK - size % BLOCK) % BLOCK;
            }
            let id = |pax_value: Option<u64>, r, what| -> Result<u64, TarError> {
                match pax_value {
                    Some(v) => Ok(v),
                    None => {
                        u64::try_from(field(r, what)?).or_else(|_| bad(format!("negative {what}")))
                    }
                }
            };
            let dev = |r, what| -> Result<u32, TarError> {
                u32::try_from(field(r, what)?).or_else(|_| bad(format!("{what} out of range")))
            };
            return Ok(Some(Entry {
                kind,
                mode: (field(100..108, "mode")? & 0o7777) as u32,
                uid: id(pax.uid, 108..116, "uid")?,
                gid: id(pax.gid, 116..124, "gid")?,
                mtime: match pax.mtime {
                    Some(t) => t,
                    None => (field(136..148, "mtime")?, 0),
                },
                dev: (dev(329..337, "devmajor")?, dev(337..345, "devminor")?),
                path,
                link,
                xattrs: pax.xattrs,
            }));
        }
    }

    /// The next bytes of the current entry's data (empty at its end); call
    /// [`TarReader::consume`] with how many were used.
    pub fn data(&mut self) -> Result<&[u8], TarError> {
        if self.remaining == 0 {
            return Ok(&[]);
        }
        let buf = self.inner.fill_buf()?;
        if buf.is_empty() {
            return bad("stream ends inside an entry's data");
        }
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        Ok(&buf[..n])
    }

    /// Marks `n` bytes returned by [`TarReader::data`] as used.
    pub fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.remaining -= n as u64;
        self.offset += n as u64;
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        while n > 0 {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return bad("stream ends inside an entry");
            }
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            self.inner.consume(k);
            self.offset += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads one block; `false` if the stream ended exactly before it.
    fn read_block(&mut self, block: &mut [u8; BLOCK as usize]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < block.len() {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                if filled == 0 {
                    return Ok(false);
                }
                return bad("stream ends inside a header");
            }
            let k = buf.len().min(block.len() - filled);
            block[filled..filled + k].copy_from_slice(&buf[..k]);
            self.inner.consume(k);
            filled += k;
        }
        self.offset += BLOCK;
        Ok(true)
    }

    /// Reads the data of an extended header (bounded by [`MAX_META`]) and its padding.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return bad(format!(
                "extended header of {size} bytes is larger than {MAX_META}"
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return bad("stream ends inside an extended header");
            }
            let k = buf.len().min(size as usize - out.len());
            out.extend_from_slice(&buf[..k]);
            self.inner.consume(k);
            self.offset += k as u64;
        }
        self.skip((BLOCK - size % BLOCK) % BLOCK)?;
        Ok(out)
    }
}

/// The bytes of a NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// The name field, with the ustar prefix (or star's shorter one) joined in front.
fn header_name(h: &[u8; BLOCK as usize]) -> Vec<u8> {
    let name = cstr(&h[0..100]);
    let prefix = match &h[257..265] {
        b"ustar\x0000" if &h[508..512] == b"tar\0" => cstr(&h[345..476]),
        b"ustar\x0000" => cstr(&h[345..500]),
        _ => b"",
    };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

/// Checks the header checksum, accepting the unsigned and the historic signed sum.
fn check_sum(h: &[u8; BLOCK as usize]) -> Result<(), String> {
    let stored = numeric(&h[148..156])?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || stored == signed {
        Ok(())
    } else {
        Err("checksum mismatch".into())
    }
}

/// Parses a numeric header field: octal text, or GNU base-256 when the top bit is set.
fn numeric(field: &[u8]) -> Result<i64, String> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let inv = if field[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &b) in field.iter().enumerate() {
            let mut c = b ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err("base-256 number overflows".into());
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 != 0 {
            return Err("base-256 number overflows".into());
        }
        let x = x as i64;
        return Ok(if inv == 0xff { !x } else { x });
    }
    let text = {
        let start = field
            .iter()
            .position(|&b| b != b' ' && b != 0)
            .unwrap_or(field.len());
        let end = field[start..]
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .map_or(field.len(), |n| start + n);
        &field[start..end]
    };
    let mut x: i64 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!(
                "invalid octal number {:?}",
                String::from_utf8_lossy(field)
            ));
        }
        x = x
            .checked_mul(8)
            .and_then(|x| x.checked_add(i64::from(b - b'0')))
            .ok_or("octal number overflows")?;
    }
    Ok(x)
}

/// Parses PAX records `"<len> <key>=<value>\n"`.
fn parse_pax(mut data: &[u8]) -> Result<Pax, TarError> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        let Some(space) = data.iter().position(|&b| b == b' ') else {
            return bad("malformed PAX record");
        };
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > space + 1 && n <= data.len())
            .ok_or_else(|| TarError::Format("malformed PAX record length".into()))?;
        let record = &data[space + 1..len];
        data = &data[len..];
        let Some(record) = record.strip_suffix(b"\n") else {
            return bad("PAX record does not end with a newline");
        };
        let Some(eq) = record.iter().position(|&b| b == b'=') else {
            return bad("PAX record without '='");
        };
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let decimal = |what: &str| -> Result<u64, TarError> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    TarError::Format(format!(
                        "PAX {what} {:?} is not a number",
                        String::from_utf8_lossy(value)
                    ))
                })
        };
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            pax.xattrs.push((name.to_vec(), value.to_vec()));
            continue;
        }
        if key.starts_with(b"GNU.sparse.") {
            pax.sparse = true;
            continue;
        }
        // An empty value deletes the record (POSIX): keep the header's field.
        if value.is_empty() {
            continue;
        }
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.link = Some(value.to_vec()),
            b"size" => pax.size = Some(decimal("size")?),
            b"uid" => pax.uid = Some(decimal("uid")?),
            b"gid" => pax.gid = Some(decimal("gid")?),
            b"mtime" => pax.mtime = Some(pax_time(value)?),
            _ => {}
        }
    }
    Ok(pax)
}

/// Parses a PAX time `[-]seconds[.fraction]`.
fn pax_time(value: &[u8]) -> Result<(i64, u32), TarError> {
    let text = std::str::from_utf8(value).unwrap_or("");
    let invalid = || TarError::Format(format!("PAX mtime {text:?} is not a time"));
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let secs: i64 = secs.parse().map_err(|_| invalid())?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Ok(if !negative {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_octal_and_base256() {
        assert_eq!(numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(numeric(b"  755 \0").unwrap(), 0o755);
        assert_eq!(numeric(b"\0\0\0\0").unwrap(), 0);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert_eq!(numeric(&[0xff; 8]).unwrap(), -1);
        assert!(numeric(b"0000689\0").is_err());
        assert!(numeric(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(
            pax_time(b"1700000000.5").unwrap(),
            (1_700_000_000, 500_000_000)
        );
        assert_eq!(pax_time(b"-1.25").unwrap(), (-2, 750_000_000));
        assert!(pax_time(b"abc").is_err());
    }

    #[test]
    fn parses_pax_records() {
        let pax = parse_pax(b"16 path=a/b/c/d\n25 SCHILY.xattr.user.k=v\n").unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"a/b/c/d"[..]));
        assert_eq!(pax.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
        assert!(parse_pax(b"99 path=x\n").is_err());
    }
}

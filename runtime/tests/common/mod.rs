//! Helpers for unpack tests: a raw tar writer (for hostile entries) and a sandbox with
//! canaries beside the root. The tree snapshot/compare (shared with the end-to-end tests
//! against umoci) is `ferry_testkit::tree`.

pub use ferry_testkit::tree;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_core::media::Compression;
use ferry_runtime::unpack::{apply_layer, Budget, LayerSummary, Limits, Whiteouts};

/// One tar header's fields; `Default` is a regular file, mode 0644, owned by 0:0.
#[derive(Clone)]
pub struct Hdr {
    pub name: Vec<u8>,
    pub kind: u8,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub dev: (u32, u32),
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Default for Hdr {
    fn default() -> Self {
        Hdr {
            name: Vec::new(),
            kind: b'0',
            link: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
}

/// Writes tar streams byte by byte, hostile ones included.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }

    /// An entry with `data` (PAX records go in a preceding `x` header; names over 100
    /// bytes too).
    pub fn entry(&mut self, h: Hdr, data: &[u8]) -> &mut Self {
        let mut pax = h.pax.clone();
        if h.name.len() > 100 {
            pax.push((b"path".to_vec(), h.name.clone()));
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &pax {
                let body = k.len() + v.len() + 3;
                let mut len = body + body.to_string().len();
                if len.to_string().len() + body != len {
                    len += 1;
                }
                write!(records, "{len} ").unwrap();
                records.extend_from_slice(k);
                records.push(b'=');
                records.extend_from_slice(v);
                records.push(b'\n');
            }
            self.header(
                b"PaxHeader",
                b'x',
                b"",
                0o644,
                0,
                0,
                0,
                records.len() as u64,
                (0, 0),
            );
            self.data(&records);
        }
        let name = if h.name.len() > 100 {
            &h.name[..100]
        } else {
            &h.name[..]
        };
        let uid = h.uid.min(0o7777777);
        let gid = h.gid.min(0o7777777);
        self.header(
            name,
            h.kind,
            &h.link,
            h.mode,
            uid,
            gid,
            h.mtime,
            data.len() as u64,
            h.dev,
        );
        self.data(data);
        self
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(
            Hdr {
                name: name.into(),
                ..Hdr::default()
            },
            data,
        )
    }

    /// A directory, mode 0755.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(
            Hdr {
                name: name.into(),
                kind: b'5',
                mode: 0o755,
                ..Hdr::default()
            },
            b"",
        )
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            Hdr {
                name: name.into(),
                kind: b'2',
                link: target.into(),
                mode: 0o777,
                ..Hdr::default()
            },
            b"",
        )
    }

    /// A hard link.
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            Hdr {
                name: name.into(),
                kind: b'1',
                link: target.into(),
                ..Hdr::default()
            },
            b"",
        )
    }

    /// Raw bytes appended as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The stream with two end-of-archive blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The stream without end-of-archive blocks (as umoci writes them).
    pub fn finish_without_end(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &[u8],
        kind: u8,
        link: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: i64,
        size: u64,
        dev: (u32, u32),
    ) {
        self.buf
            .extend_from_slice(&header(name, kind, link, mode, uid, gid, mtime, size, dev));
    }

    fn data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }
}

/// One ustar header block.
#[allow(clippy::too_many_arguments)]
pub fn header(
    name: &[u8],
    kind: u8,
    link: &[u8],
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, uid);
    octal(&mut h, 116, 8, gid);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, mtime as u64);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..265].copy_from_slice(b"ustar\x0000");
    octal(&mut h, 329, 8, u64::from(dev.0));
    octal(&mut h, 337, 8, u64::from(dev.1));
    set_checksum(&mut h);
    h
}

/// Recomputes a header's checksum after editing it.
pub fn set_checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// zstd of `data`.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Whether the tests run as root (owners, devices, trusted xattrs, overlay whiteouts).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A temporary directory holding `root/` (the unpack target) and canaries beside it that
/// no layer may touch.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    before: BTreeMap<String, tree::Node>,
    pub host_canary: String,
}

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(tmp.path().join("canary"), b"canary").unwrap();
        std::fs::create_dir_all(tmp.path().join("etc")).unwrap();
        std::fs::write(
            tmp.path().join("etc/passwd"),
            b"root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        let before = Self::outside(tmp.path());
        let host_canary = format!(
            "ferry-unpack-canary-{}-{}",
            std::process::id(),
            tmp.path().file_name().unwrap().to_string_lossy()
        );
        Sandbox {
            tmp,
            root,
            before,
            host_canary,
        }
    }

    fn outside(tmp: &Path) -> BTreeMap<String, tree::Node> {
        let mut all = tree::snapshot(tmp);
        all.retain(|p, _| p != "root" && !p.starts_with("root/"));
        all
    }

    /// Applies a plain tar layer in `Apply` mode with default limits.
    pub fn apply(&self, tar: &[u8]) -> ferry_runtime::Result<LayerSummary> {
        self.apply_with(
            tar,
            Compression::None,
            Whiteouts::Apply,
            &mut Budget::new(Limits::default()),
        )
    }

    /// Applies a layer with everything chosen.
    pub fn apply_with(
        &self,
        layer: &[u8],
        c: Compression,
        w: Whiteouts,
        budget: &mut Budget,
    ) -> ferry_runtime::Result<LayerSummary> {
        apply_layer(&self.root, layer, c, None, w, budget)
    }

    /// Path inside the root.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Fails if anything beside the root, or the host canary names under /, /etc and
    /// /tmp, changed.
    pub fn assert_untouched(&self) {
        let now = Self::outside(self.tmp.path());
        let diffs = tree::diff(&self.before, &now, &tree::Options::exact());
        assert!(
            diffs.is_empty(),
            "files beside the root changed: {diffs:#?}"
        );
        for dir in ["/", "/etc", "/tmp"] {
            let p = Path::new(dir).join(&self.host_canary);
            assert!(
                std::fs::symlink_metadata(&p).is_err(),
                "host file {} was created",
                p.display()
            );
        }
    }
}

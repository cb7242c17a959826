//! User-set unpack limits end to end (specs/unpack.md UNPACK-50, UNPACK-53; SITE-8): an
//! image whose one gzip layer holds 200 MB of zeros (a few hundred kB compressed) is
//! loaded with `ferry load`, then unpacked under limits from the command line and from the
//! site config.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_core::{Algorithm, Digest, Hasher};
use ferry_testkit::{ferry, output, run_ok};

const NAME: &str = "example.org/zeros:1";
const ZEROS: u64 = 200_000_000;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Passes what is written on to `inner` and hashes it: the layer's diff_id.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The gzip layer (through the system's gzip) and its diff_id: `small.txt`, then
/// `big/zero.bin` of [`ZEROS`] zero bytes.
fn zero_layer() -> (Vec<u8>, Digest) {
    let mut gzip = Command::new("gzip")
        .args(["-1", "-c", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    let mut stdout = gzip.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut compressed = Vec::new();
        stdout.read_to_end(&mut compressed).unwrap();
        compressed
    });
    let mut tar = tar::Builder::new(Hashing {
        inner: gzip.stdin.take().unwrap(),
        hasher: Hasher::new(Algorithm::Sha256),
    });
    let mut add = |path: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(size);
        header.set_mtime(1_600_000_000);
        tar.append_data(&mut header, path, data).unwrap();
    };
    add("small.txt", 6, &mut &b"small\n"[..]);
    add("big/zero.bin", ZEROS, &mut std::io::repeat(0).take(ZEROS));
    let hashing = tar.into_inner().unwrap();
    let diff_id = hashing.hasher.finish();
    drop(hashing.inner);
    assert!(gzip.wait().unwrap().success());
    (reader.join().unwrap(), diff_id)
}

/// An oci-archive (ARC-7) of one image named [`NAME`] with `layer` as its only layer.
fn archive(dir: &Path, layer: &[u8], diff_id: &Digest) -> PathBuf {
    let layer_digest = Digest::sha256(layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .unwrap();
    let config_digest = Digest::sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": config.len(), "digest": config_digest.to_string()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "size": layer.len(), "digest": layer_digest.to_string()}],
    }))
    .unwrap();
    let manifest_digest = Digest::sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "size": manifest.len(), "digest": manifest_digest.to_string(),
                       "annotations": {"org.opencontainers.image.ref.name": NAME,
                                       "io.containerd.image.name": NAME}}],
    }))
    .unwrap();
    let path = dir.join("zeros.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, name, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    for (digest, data) in [
        (&manifest_digest, &manifest[..]),
        (&config_digest, &config[..]),
        (&layer_digest, layer),
    ] {
        add(format!("blobs/sha256/{}", digest.hex()), data);
    }
    tar.into_inner().unwrap();
    path
}

/// A store holding the zero image, and the layer's diff_id.
fn loaded() -> (tempfile::TempDir, Digest) {
    let root = tempfile::tempdir().unwrap();
    let (layer, diff_id) = zero_layer();
    assert!(layer.len() < 1 << 20, "gzip keeps zeros small");
    let file = archive(root.path(), &layer, &diff_id);
    run_ok(
        ferry(&root.path().join("store"))
            .args(["load", "-i"])
            .arg(&file),
    );
    (root, diff_id)
}

fn unpack(root: &Path, dest: &Path, extra: &[&str]) -> Output {
    output(
        ferry(&root.join("store"))
            .arg("unpack")
            .args(extra)
            .arg(NAME)
            .arg(dest),
    )
}

/// Checks that the byte limit of `shown` stopped the unpack of `dest`, and that nothing of the
/// stopped layer is in `dest`.
fn assert_stopped_by_max_bytes(out: &Output, dest: &Path, diff_id: &Digest, shown: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let want = format!(
        "layer 1/1 {diff_id}: unpack limit max-bytes ({shown}) reached at entry \"big/zero.bin\"; \
         raise it with --max-bytes or [unpack] max-bytes in the site config"
    );
    assert!(
        stderr(out).contains(&want),
        "want {want:?} in {}",
        stderr(out)
    );
    // The layer was staged beside DIR (RUN-25): nothing of it reached DIR, and its staging
    // directory is gone.
    assert!(!dest.join("small.txt").exists() && !dest.join("big").exists());
    let parent = dest.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-unpack-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// UNPACK-50, UNPACK-53: `--max-bytes` stops a layer that would write 200 MB.
#[test]
fn max_bytes_flag_stops_a_large_layer_early() {
    let (root, diff_id) = loaded();
    let dest = root.path().join("rootfs");
    let out = unpack(root.path(), &dest, &["--max-bytes", "50MiB"]);
    assert_stopped_by_max_bytes(&out, &dest, &diff_id, "50 MiB");
    // A bad size is a usage error naming the value.
    let out = unpack(
        root.path(),
        &root.path().join("x"),
        &["--max-bytes", "50 gigs"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"50 gigs\" is not a size"),
        "{}",
        stderr(&out)
    );
}

/// SITE-8, UNPACK-53: `[unpack]` of the site config limits the same way; the command line
/// overrides it.
#[test]
fn site_config_limits_and_flags_override_them() {
    let (root, diff_id) = loaded();
    let config = root.path().join("sites.toml");
    std::fs::write(
        &config,
        "[unpack]\nmax-bytes = \"50MiB\"\nmax-entries = 2\n",
    )
    .unwrap();
    let with_config = ["--config", config.to_str().unwrap()];

    let dest = root.path().join("by-config");
    let out = unpack(root.path(), &dest, &with_config);
    assert_stopped_by_max_bytes(&out, &dest, &diff_id, "50 MiB");

    let dest = root.path().join("entries");
    let out = unpack(
        root.path(),
        &dest,
        &[
            &with_config[..],
            &["--max-bytes", "1GiB", "--max-entries", "1"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "unpack limit max-entries (1 entries) reached at entry \"big/zero.bin\"; \
             raise it with --max-entries or [unpack] max-entries in the site config"
        ),
        "{}",
        stderr(&out)
    );

    let dest = root.path().join("allowed");
    let out = unpack(
        root.path(),
        &dest,
        &[&with_config[..], &["--max-bytes", "1GiB"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(dest.join("big/zero.bin")).unwrap().len(),
        ZEROS
    );

    std::fs::write(&config, "[unpack]\nmax-bytes = \"8 gigs\"\n").unwrap();
    let out = unpack(root.path(), &root.path().join("bad"), &with_config);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = format!(
        "{}:2: [unpack] max-bytes: \"8 gigs\" is not a size",
        config.display()
    );
    assert!(
        stderr(&out).contains(&want),
        "want {want:?} in {}",
        stderr(&out)
    );
}

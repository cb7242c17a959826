//! Snapshots by chain ID, their reuse and GC, and flattening (specs/runtime.md RUN-8…RUN-11).
//!
//! Extracting layers with overlayfs whiteouts and running containers needs root: those
//! tests print a notice and pass without checking anything when not run as root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::store::ImageRecord;
use ferry_core::{media, Digest, Reference, Store};
use ferry_runtime::run::{run_with_stdio, Bundle, RuntimeKind, Stdio};
use ferry_runtime::snapshot::{self, chain_ids, flatten, prepare, snapshot_dir};
use ferry_runtime::spec::RunOptions;
use ferry_runtime::unpack::Limits;
use ferry_runtime::Error;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("NOTICE: skipping: extracting snapshots needs root");
    false
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

/// RUN-8: values computed independently with Python's hashlib from
/// `sha256(b"layer-0")`, `sha256(b"layer-1")`, `sha256(b"layer-2")`.
#[test]
fn chain_ids_match_known_values() {
    let diff_ids = [
        digest("sha256:ff5eba71a8188ea1e1d463b58f6ad20fb3736ae6e2fe50bc84a5a2c672c95e35"),
        digest("sha256:922badbaf192e1a4a5af64df422de6d73e96e70d0ab52245bd3d692bcea9cfad"),
        digest("sha256:6bdb18f83935f1d97220ee8035e6ccd7e764c32102587be4488f940f943ebda6"),
    ];
    assert_eq!(diff_ids[0], Digest::sha256(b"layer-0"));
    let want = [
        "sha256:ff5eba71a8188ea1e1d463b58f6ad20fb3736ae6e2fe50bc84a5a2c672c95e35",
        "sha256:5f6d0bbaeb87c061087581d0bb11f33c74cb36cf29cc61ae268000b23e76d7ea",
        "sha256:cfbc7be4da896d221fd750e87b75e0c564321f2edc36435f7c5c7afd7d27478a",
    ];
    assert_eq!(chain_ids(&diff_ids), want.map(digest));
    assert_eq!(chain_ids(&diff_ids[..1]), [diff_ids[0].clone()]);
    assert!(chain_ids(&[]).is_empty());
    // The same layer on another parent is another snapshot.
    let swapped = chain_ids(&[diff_ids[1].clone(), diff_ids[0].clone()]);
    assert_ne!(swapped[1], chain_ids(&diff_ids)[1]);
}

/// A file, a symlink, or a whiteout (`.wh.NAME`) in a test layer.
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    Dir(&'a str),
}

/// Builds an uncompressed tar layer.
fn tar_layer(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        match entry {
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(*mode);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Entry::Link(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_mode(0o777);
                builder.append_link(&mut header, path, target).unwrap();
            }
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A test image in a store: its record, manifest and config.
struct Image {
    record: ImageRecord,
    manifest: ImageManifest,
    config: ImageConfiguration,
}

/// Puts `layers` (uncompressed tars; odd ones stored gzip-compressed) and an image made of
/// them into `store` under `name`.
fn add_image(store: &Store, name: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Image {
    add_image_with(store, name, layers, cmd, None)
}

/// [`add_image`] whose config lists `diff_ids` instead of the layers' own.
fn add_image_with(
    store: &Store,
    name: &str,
    layers: &[Vec<u8>],
    cmd: &[&str],
    diff_ids_override: Option<Vec<String>>,
) -> Image {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let (blob, media_type) = if i % 2 == 1 {
            (gzip(tar), media::OCI_LAYER_GZIP)
        } else {
            (tar.clone(), media::OCI_LAYER_TAR)
        };
        let d = Digest::sha256(&blob);
        store.put_blob(&d, &blob, media_type, None).unwrap();
        descriptors.push(serde_json::json!({"mediaType": media_type, "size": blob.len(), "digest": d.to_string()}));
        diff_ids.push(Digest::sha256(tar).to_string());
    }
    let diff_ids = diff_ids_override.unwrap_or(diff_ids);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = Digest::sha256(&config_bytes);
    store
        .put_blob(&config_digest, &config_bytes, media::OCI_CONFIG, None)
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "size": config_bytes.len(), "digest": config_digest.to_string()},
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = Digest::sha256(&manifest_bytes);
    store
        .put_blob(&manifest_digest, &manifest_bytes, media::OCI_MANIFEST, None)
        .unwrap();
    let reference = Reference::parse(name).unwrap();
    let record = ImageRecord {
        name: reference.name(),
        tag: reference.tag().map(str::to_string),
        digest: manifest_digest,
        media_type: media::OCI_MANIFEST.into(),
        size: 0,
        created: None,
        platform: None,
        updated: 0,
    };
    store.set_image(&record).unwrap();
    Image {
        record,
        manifest: serde_json::from_value(manifest).unwrap(),
        config: serde_json::from_value(config).unwrap(),
    }
}

impl Image {
    /// The crate's checked image: through the trust policy (no policy: accept all).
    fn checked(&self, store: &Store) -> ferry_runtime::image::Image {
        let reference =
            Reference::with_name(&self.record.name, self.record.tag.as_deref(), None).unwrap();
        let trusted = ferry_signing::Policy::accept_all()
            .check(&reference, &self.record.digest, &[])
            .unwrap();
        ferry_runtime::image::Image::load(store, &trusted).unwrap()
    }
}

fn prepared(store: &Store, image: &Image) -> Vec<PathBuf> {
    prepare(store, &image.checked(store), Limits::default()).unwrap()
}

fn base_layer() -> Vec<u8> {
    tar_layer(&[
        Entry::Dir("etc/"),
        Entry::File("etc/a", b"from base\n", 0o644),
        Entry::File("etc/keep", b"kept\n", 0o644),
        Entry::Dir("opt/"),
        Entry::File("opt/old", b"old\n", 0o644),
    ])
}

fn top_layer() -> Vec<u8> {
    tar_layer(&[
        Entry::File("etc/b", b"from top\n", 0o600),
        Entry::File("etc/.wh.a", b"", 0o644),
        Entry::Dir("opt/"),
        Entry::File("opt/.wh..wh..opq", b"", 0o644),
        Entry::File("opt/new", b"new\n", 0o644),
    ])
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

/// Files of `dir` (recursively) with their kind, for comparing trees.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if ft.is_dir() {
                stack.push(e.path());
                out.push(format!("{rel}/"));
            } else if ft.is_char_device() {
                out.push(format!("{rel} (whiteout)"));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// RUN-9: layers are extracted once into snapshots/<alg>/<hex>/fs, in overlay form.
#[test]
fn prepare_extracts_layers_into_chain_id_directories() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let image = add_image(
        &store,
        "example.com/app:1",
        &[base_layer(), top_layer()],
        &["/bin/sh"],
    );
    let dirs = prepared(&store, &image);
    let diff_ids: Vec<Digest> = image
        .config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| digest(d))
        .collect();
    let chain = chain_ids(&diff_ids);
    assert_eq!(
        dirs,
        chain
            .iter()
            .map(|c| snapshot_dir(&store, c).join("fs"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        snapshot_dir(&store, &chain[1]),
        store.root().join("snapshots/sha256").join(chain[1].hex())
    );
    assert_eq!(
        listing(&dirs[0]),
        ["etc/", "etc/a", "etc/keep", "opt/", "opt/old"]
    );
    assert_eq!(
        listing(&dirs[1]),
        ["etc/", "etc/a (whiteout)", "etc/b", "opt/", "opt/new"]
    );
    let opaque = xattr(&dirs[1].join("opt"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    // Nothing but snapshots (and their locks) is left beside them.
    let names: Vec<String> = fs::read_dir(store.root().join("snapshots/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Roots of kind "snapshot" keyed by the image name pin the chain.
    let roots = store.roots(snapshot::ROOT_KIND).unwrap();
    let key = snapshot::root_key(&image.record);
    assert_eq!(key, format!("example.com/app:1@{}", image.record.digest));
    assert_eq!(roots.iter().filter(|(k, _)| *k == key).count(), 2);
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the given size.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// RUN-9: present snapshots are reused; images sharing a base share its snapshot.
#[test]
fn present_snapshots_are_reused_and_shared() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let app = add_image(
        &store,
        "example.com/app:1",
        &[base_layer(), top_layer()],
        &["/bin/sh"],
    );
    let first = prepared(&store, &app);
    let marker = first[0].join("etc/keep");
    let inode = fs::metadata(&marker)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    // Without the layer blobs, only reuse can succeed.
    for layer in app.manifest.layers() {
        let d = ferry_core::manifest::descriptor_digest(layer).unwrap();
        fs::remove_file(store.blob_path(&d)).unwrap();
    }
    assert_eq!(prepared(&store, &app), first);
    let again = fs::metadata(&marker)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(inode, again);

    let other_top = tar_layer(&[Entry::File("srv/x", b"x", 0o644)]);
    let other = add_image(
        &store,
        "example.com/other:2",
        &[base_layer(), other_top],
        &["/bin/sh"],
    );
    let dirs = prepared(&store, &other);
    assert_eq!(dirs[0], first[0], "the base snapshot is shared");
    assert_ne!(dirs[1], first[1]);
    assert_eq!(listing(&dirs[1]), ["srv/", "srv/x"]);
}

/// RUN-9: a layer that does not match its diff_id leaves no snapshot and no temporary files.
#[test]
fn corrupt_layer_leaves_no_snapshot() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let wrong = Digest::sha256(b"not this layer").to_string();
    let image = add_image_with(
        &store,
        "example.com/bad:1",
        &[base_layer()],
        &["/bin/sh"],
        Some(vec![wrong]),
    );
    let err = prepare(&store, &image.checked(&store), Limits::default()).unwrap_err();
    assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    let left: Vec<String> = fs::read_dir(store.root().join("snapshots/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let image = add_image_with(
        &store,
        "example.com/bad:2",
        &[base_layer()],
        &["/bin/sh"],
        Some(vec![]),
    );
    let err = prepare(&store, &image.checked(&store), Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LayerCount {
                layers: 1,
                diff_ids: 0
            }
        ),
        "{err}"
    );
}

/// RUN-9: concurrent prepares of one image all succeed on the same snapshots.
#[test]
fn concurrent_prepares_are_safe() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let layers = [
        tar_layer(&[Entry::File("big", &big, 0o644)]),
        top_layer(),
        tar_layer(&[Entry::File("more", &big[..1000], 0o644)]),
    ];
    let image = add_image(&store, "example.com/big:1", &layers, &["/bin/sh"]);
    let results: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| prepared(&store, &image)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fs::read(results[0][0].join("big")).unwrap(), big);
    let tmp: Vec<_> = fs::read_dir(store.root().join("snapshots/sha256"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(tmp.is_empty());
}

/// RUN-10: GC removes snapshots of images that lost their name, keeps shared and used ones.
#[test]
fn gc_keeps_snapshots_of_named_images_and_containers() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let busybox = busybox_layer();
    let app = add_image(
        &store,
        "example.com/app:1",
        &[busybox.clone(), top_layer()],
        &["/bin/sh"],
    );
    let other_top = tar_layer(&[Entry::File("srv/x", b"x", 0o644)]);
    let other = add_image(
        &store,
        "example.com/other:1",
        &[busybox, other_top],
        &["/bin/sh"],
    );
    let app_dirs = prepared(&store, &app);
    let other_dirs = prepared(&store, &other);
    assert_eq!(snapshot::gc(&store).unwrap(), 0, "everything is named");

    // A container of `other` keeps its snapshots even once the name is gone.
    let bundle =
        Bundle::create(&store, &other_dirs, &other.config, &RunOptions::default()).unwrap();
    store
        .remove_image(&Reference::parse("example.com/app:1").unwrap())
        .unwrap();
    store
        .remove_image(&Reference::parse("example.com/other:1").unwrap())
        .unwrap();
    assert_eq!(snapshot::gc(&store).unwrap(), 1, "app's top layer goes");
    assert!(!app_dirs[1].exists());
    assert!(app_dirs[0].exists() && other_dirs[1].exists());
    assert!(
        store.roots(snapshot::ROOT_KIND).unwrap().is_empty(),
        "stale roots dropped"
    );

    bundle.remove().unwrap();
    assert_eq!(snapshot::gc(&store).unwrap(), 2);
    let left: Vec<_> = fs::read_dir(store.root().join("snapshots/sha256"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A tag moved to another image releases the old image's own snapshots.
    let v1 = add_image(
        &store,
        "example.com/app:latest",
        &[base_layer()],
        &["/bin/sh"],
    );
    let v1_dirs = prepared(&store, &v1);
    let v2 = add_image(
        &store,
        "example.com/app:latest",
        &[top_layer()],
        &["/bin/sh"],
    );
    let v2_dirs = prepared(&store, &v2);
    assert_eq!(snapshot::gc(&store).unwrap(), 1);
    assert!(!v1_dirs[0].exists() && v2_dirs[0].exists());
}

/// A layer with a static busybox and the applets the tests use.
fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").unwrap();
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", &busybox, 0o755),
    ];
    let applets = ["sh", "echo", "cat", "ls"].map(|a| format!("bin/{a}"));
    entries.extend(applets.iter().map(|a| Entry::Link(a, "busybox")));
    tar_layer(&entries)
}

/// RUN-9, RUN-12: prepared snapshots stack into a container's root filesystem.
#[test]
fn prepared_snapshots_run_as_a_container() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let image = add_image(
        &store,
        "example.com/app:1",
        &[base_layer(), busybox_layer(), top_layer()],
        &[
            "sh",
            "-c",
            "cat /etc/keep /etc/b; ls /etc /opt; cat /etc/a 2>&1 || echo gone",
        ],
    );
    let dirs = prepared(&store, &image);
    for runtime in [RuntimeKind::Builtin, RuntimeKind::Runc] {
        let bundle = Bundle::create(&store, &dirs, &image.config, &RunOptions::default()).unwrap();
        let out = tempfile::tempfile().unwrap();
        let stdio = Stdio {
            stdout: Some(out.try_clone().unwrap().into()),
            ..Default::default()
        };
        assert_eq!(run_with_stdio(&bundle, runtime, stdio).unwrap(), 0);
        let mut text = String::new();
        use std::io::{Read, Seek};
        let mut out = out;
        out.rewind().unwrap();
        out.read_to_string(&mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["kept", "from top"], "{runtime:?}: {text}");
        assert!(
            lines.contains(&"new") && !lines.contains(&"old"),
            "{runtime:?}: opaque /opt: {text}"
        );
        assert_eq!(
            lines.last(),
            Some(&"gone"),
            "{runtime:?}: whiteout of /etc/a: {text}"
        );
        bundle.remove().unwrap();
    }
}

/// RUN-11: flattening applies every layer and its whiteouts into one directory.
#[test]
fn flatten_applies_layers_and_whiteouts() {
    if !is_root() {
        return;
    }
    let (dir, store) = store();
    let image = add_image(
        &store,
        "example.com/app:1",
        &[base_layer(), top_layer()],
        &["/bin/sh"],
    );
    let dest = dir.path().join("out");
    let summaries = flatten(&store, &image.checked(&store), &dest, Limits::default()).unwrap();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[1].diff_id, Digest::sha256(&top_layer()));
    assert_eq!(
        listing(&dest),
        ["etc/", "etc/b", "etc/keep", "opt/", "opt/new"]
    );
    assert!(
        !store.root().join("snapshots").exists(),
        "flatten makes no snapshots"
    );
}

/// Extended attributes of a test entry: name and value.
type Xattrs<'a> = &'a [(&'a str, &'a [u8])];

/// A tar layer whose entries carry PAX `SCHILY.xattr.*` records, written with the `tar`
/// crate as image builders write them.
fn tar_layer_with_xattrs(entries: &[(Entry, Xattrs)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (entry, xattrs) in entries {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        let mut header = tar::Header::new_ustar();
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Entry::Link(..) => unreachable!("not used with xattrs"),
        }
    }
    builder.into_inner().unwrap()
}

/// UNPACK-33, UNPACK-32, UNPACK-13 (needs root: overlay-mode snapshots and an overlayfs
/// mount, as in CI). A layer's own overlay xattrs would fake an opaque directory (hiding
/// the lower `d/lower`) or a redirect; they are dropped, while ferry's opaque marking of
/// `.wh..wh..opq` still hides the lower `o/lower`. aufs metadata never reaches a snapshot.
#[test]
fn layer_overlay_xattrs_do_not_steer_the_mounted_overlay() {
    if !is_root() {
        return;
    }
    let (dir, store) = store();
    let lower = tar_layer(&[
        Entry::Dir("d/"),
        Entry::File("d/lower", b"lower\n", 0o644),
        Entry::Dir("o/"),
        Entry::File("o/lower", b"lower\n", 0o644),
    ]);
    let fake: Xattrs = &[
        ("trusted.overlay.opaque", b"y"),
        ("user.overlay.opaque", b"y"),
        ("trusted.overlay.redirect", b"/o"),
        ("user.kept", b"1"),
    ];
    let upper = tar_layer_with_xattrs(&[
        (Entry::Dir("d/"), fake),
        (Entry::File("d/upper", b"upper\n", 0o644), &[]),
        (Entry::Dir("o/"), &[]),
        (Entry::File("o/.wh..wh..opq", b"", 0o644), &[]),
        (Entry::File(".wh..wh.aufs", b"", 0o644), &[]),
        (Entry::File(".wh..wh.plnk/1.2", b"x", 0o644), &[]),
    ]);
    let image = add_image(
        &store,
        "example.com/xattrs:1",
        &[lower, upper],
        &["/bin/sh"],
    );
    let dirs = prepared(&store, &image);
    for name in [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "trusted.overlay.redirect",
    ] {
        assert_eq!(xattr(&dirs[1].join("d"), name), None, "{name} on d");
    }
    assert_eq!(
        xattr(&dirs[1].join("d"), "user.kept").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        xattr(&dirs[1].join("o"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(listing(&dirs[1]), ["d/", "d/upper", "o/"]);

    let merged = dir.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let options = format!("lowerdir={}:{}", dirs[1].display(), dirs[0].display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .unwrap();
    let seen = listing(&merged);
    nix::mount::umount(&merged).unwrap();
    assert_eq!(seen, ["d/", "d/lower", "d/upper", "o/"]);
}

/// RUN-25: a DIR bind-mounted from elsewhere on the same file system (where a rename into
/// it fails) is unpacked in order instead of staged beside it. Needs root (mount); CI is
/// root.
#[test]
fn flatten_into_a_bind_mount_applies_the_layers_in_order() {
    if !is_root() {
        return;
    }
    let (dir, store) = store();
    let upper = tar_layer(&[Entry::File("etc/motd", b"hello\n", 0o644)]);
    let image = add_image(
        &store,
        "example.com/bind:1",
        &[base_layer(), upper],
        &["/bin/sh"],
    );
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dest).unwrap();
    nix::mount::mount(
        Some(&src),
        &dest,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let flattened = flatten(&store, &image.checked(&store), &dest, Limits::default());
    nix::mount::umount(&dest).unwrap();
    assert_eq!(flattened.unwrap().len(), 2);
    assert_eq!(std::fs::read(src.join("etc/motd")).unwrap(), b"hello\n");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-unpack-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// UNPACK-50, UNPACK-60: a limit error names the layer by position and diff_id, the limit
/// and the entry at which it stopped; the budget spans the image's layers.
#[test]
fn flatten_names_the_layer_and_the_limit_that_stopped_it() {
    let (dir, store) = store();
    let big = tar_layer(&[Entry::File("big/zero.bin", &[0u8; 64 << 10], 0o644)]);
    let image = add_image(
        &store,
        "example.com/big:1",
        &[base_layer(), big.clone()],
        &["/bin/sh"],
    );
    let limits = Limits {
        max_bytes: 32 << 10,
        ..Limits::default()
    };
    let err = flatten(
        &store,
        &image.checked(&store),
        &dir.path().join("out"),
        limits,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "layer 2/2 {}: unpack limit max-bytes (32 KiB) reached at entry \"big/zero.bin\"; \
             raise it with --max-bytes or [unpack] max-bytes in the site config",
            Digest::sha256(&big)
        )
    );
    let limits = Limits {
        max_entries: 5,
        ..Limits::default()
    };
    let err = flatten(
        &store,
        &image.checked(&store),
        &dir.path().join("out2"),
        limits,
    )
    .unwrap_err()
    .to_string();
    // The layers are staged at once (RUN-25), each within what the others left when it
    // started: the second stays under the limit alone, so whichever is charged last goes
    // over it with the other, or, started after the first was charged, stops at its entry.
    assert!(
        err.starts_with("layer 1/2 sha256:") || err.starts_with("layer 2/2 sha256:"),
        "{err}"
    );
    assert!(
        err.contains("unpack limit max-entries (5 entries) reached at entry \"")
            && err.ends_with(
                "; raise it with --max-entries or [unpack] max-entries in the site config"
            ),
        "{err}"
    );
}

/// The policy's acceptance of a test image, as a pull hands it to the one-pass extraction.
fn accepted(image: &Image) -> ferry_signing::TrustedImage {
    let reference =
        Reference::with_name(&image.record.name, image.record.tag.as_deref(), None).unwrap();
    ferry_signing::Policy::accept_all()
        .check(&reference, &image.record.digest, &[])
        .unwrap()
}

/// Entries under the snapshot directory of `chain_id`'s algorithm: published or `.tmp-*`.
fn snapshot_leftovers(store: &Store) -> Vec<String> {
    fs::read_dir(store.root().join("snapshots/sha256"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// A layer's bytes that stop with an error halfway, as a broken download does.
struct BrokenOff(std::io::Cursor<Vec<u8>>);

impl std::io::Read for BrokenOff {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.position() >= self.0.get_ref().len() as u64 / 2 {
            return Err(std::io::Error::other("connection reset"));
        }
        let half = self.0.get_ref().len() / 2 - self.0.position() as usize;
        let n = buf.len().min(half);
        std::io::Read::read(&mut self.0, &mut buf[..n])
    }
}

/// RUN-20, RUN-21: a layer extracted from its streamed bytes becomes its snapshot only when
/// published (after the blob's commit), with the same files `prepare` makes.
#[test]
fn streamed_layer_is_a_snapshot_only_once_published() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base = base_layer();
    let image = add_image(
        &store,
        "one/pass:1",
        std::slice::from_ref(&base),
        &["/bin/true"],
    );
    let streamed = ferry_runtime::one_pass::StreamedSnapshots::new(
        &store,
        &accepted(&image),
        &image.manifest,
        &image.config,
        Limits::default(),
    )
    .unwrap();
    let chain = chain_ids(&[Digest::sha256(&base)]);
    let extraction = streamed
        .layer(0, std::io::Cursor::new(base))
        .unwrap()
        .expect("nothing extracts it yet");
    let extracted = extraction.finish().unwrap();
    assert!(
        !snapshot_dir(&store, &chain[0]).exists(),
        "not before publish"
    );
    extracted.publish().unwrap();
    let fs_dir = snapshot_dir(&store, &chain[0]).join("fs");
    assert_eq!(fs::read(fs_dir.join("etc/a")).unwrap(), b"from base\n");
    // Present now: no second extraction, and prepare reuses it.
    assert!(streamed.layer(0, std::io::empty()).unwrap().is_none());
    drop(streamed);
    assert_eq!(prepared(&store, &image), vec![fs_dir]);
}

/// RUN-21, RUN-22, RUN-23: a wrong diff_id or bytes that break off leave no snapshot and no
/// temporary directory; while one extraction of a layer runs, a second gets none.
#[test]
fn streamed_layer_that_fails_leaves_nothing_and_extracts_once() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base = base_layer();
    let liar = add_image_with(
        &store,
        "one/liar:1",
        std::slice::from_ref(&base),
        &["/bin/true"],
        Some(vec![Digest::sha256(b"another layer").to_string()]),
    );
    let streamed = ferry_runtime::one_pass::StreamedSnapshots::new(
        &store,
        &accepted(&liar),
        &liar.manifest,
        &liar.config,
        Limits::default(),
    )
    .unwrap();
    let first = streamed
        .layer(0, std::io::Cursor::new(base.clone()))
        .unwrap()
        .expect("nothing extracts it yet");
    assert!(
        streamed.layer(0, std::io::empty()).unwrap().is_none(),
        "one extraction per snapshot at a time"
    );
    let err = first.finish().err().expect("a wrong diff_id fails");
    assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    assert_eq!(snapshot_leftovers(&store), Vec::<String>::new());

    let image = add_image(
        &store,
        "one/pass:1",
        std::slice::from_ref(&base),
        &["/bin/true"],
    );
    let streamed = ferry_runtime::one_pass::StreamedSnapshots::new(
        &store,
        &accepted(&image),
        &image.manifest,
        &image.config,
        Limits::default(),
    )
    .unwrap();
    let broken = streamed
        .layer(0, BrokenOff(std::io::Cursor::new(base)))
        .unwrap()
        .expect("nothing extracts it yet");
    let err = broken.finish().err().expect("bytes that break off fail");
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(snapshot_leftovers(&store), Vec::<String>::new());
}

//! `runtime::unpack` against real files: behaviour (specs/unpack.md), hostile layers with
//! canaries beside the root, limits, and a differential test against umoci.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{gzip, is_root, tree, zstd, Hdr, Sandbox, Tar};
use ferry_core::media::Compression;
use ferry_core::Digest;
use ferry_runtime::unpack::{apply_layer, Budget, Limits, Whiteouts};
use ferry_runtime::Error;

fn hdr(name: &str) -> Hdr {
    Hdr {
        name: name.into(),
        ..Hdr::default()
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn rejected(r: ferry_runtime::Result<ferry_runtime::unpack::LayerSummary>, needle: &str) -> String {
    match r {
        Err(e @ Error::UnpackRejected { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
            msg
        }
        other => panic!("expected a rejection mentioning {needle:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- basics

/// UNPACK-40, UNPACK-41
#[test]
fn files_dirs_modes_owners_and_times_are_applied() {
    let s = Sandbox::new();
    let t = Tar::new()
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o750,
                uid: 1000,
                gid: 1001,
                mtime: 1_000_000,
                ..hdr("a/")
            },
            b"",
        )
        .entry(
            Hdr {
                mode: 0o4755,
                uid: 1000,
                gid: 1001,
                mtime: 2_000_000,
                ..hdr("a/suid")
            },
            b"#!/bin/sh\n",
        )
        .entry(
            Hdr {
                mode: 0o2711,
                uid: 5,
                gid: 6,
                ..hdr("a/sgid")
            },
            b"x",
        )
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o1777,
                mtime: 3_000_000,
                ..hdr("a/tmp/")
            },
            b"",
        )
        .entry(
            Hdr {
                mode: 0o600,
                ..hdr("a/tmp/inner")
            },
            b"inner",
        )
        .entry(
            Hdr {
                mode: 0o640,
                pax: vec![(b"mtime".to_vec(), b"1700000000.25".to_vec())],
                ..hdr("nanos")
            },
            b"",
        )
        .finish();
    let summary = s.apply(&t).unwrap();
    assert_eq!(summary.entries, 6);
    assert_eq!(summary.bytes, t.len() as u64);
    assert_eq!(summary.diff_id, Digest::sha256(&t));
    assert_eq!(fs::read(s.at("a/suid")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode(&s.at("a")), 0o750);
    assert_eq!(mode(&s.at("a/suid")), 0o4755);
    assert_eq!(mode(&s.at("a/sgid")), 0o2711);
    assert_eq!(mode(&s.at("a/tmp")), 0o1777);
    assert_eq!(mode(&s.at("a/tmp/inner")), 0o600);
    let md = |p: &str| fs::symlink_metadata(s.at(p)).unwrap();
    // Directory times survive the content written into them afterwards.
    assert_eq!(md("a").mtime(), 1_000_000);
    assert_eq!(md("a/tmp").mtime(), 3_000_000);
    assert_eq!(md("a/suid").mtime(), 2_000_000);
    assert_eq!(
        (md("nanos").mtime(), md("nanos").mtime_nsec()),
        (1_700_000_000, 250_000_000)
    );
    if is_root() {
        assert_eq!((md("a").uid(), md("a").gid()), (1000, 1001));
        assert_eq!((md("a/suid").uid(), md("a/suid").gid()), (1000, 1001));
        assert_eq!((md("a/sgid").uid(), md("a/sgid").gid()), (5, 6));
    }
    s.assert_untouched();
}

/// UNPACK-41
#[test]
fn directories_a_layer_writes_into_without_an_entry_keep_their_times() {
    let s = Sandbox::new();
    let lower = Tar::new()
        .entry(
            Hdr {
                kind: b'5',
                mtime: 1000,
                ..hdr("d/")
            },
            b"",
        )
        .file("d/old", b"old")
        .entry(
            Hdr {
                kind: b'5',
                mtime: 2000,
                ..hdr("e/")
            },
            b"",
        )
        .file("e/gone", b"gone")
        .finish();
    s.apply(&lower).unwrap();
    s.apply(
        &Tar::new()
            .file("d/new", b"new")
            .file("e/.wh.gone", b"")
            .finish(),
    )
    .unwrap();
    assert!(exists(&s.at("d/new")) && !exists(&s.at("e/gone")));
    assert_eq!(fs::symlink_metadata(s.at("d")).unwrap().mtime(), 1000);
    assert_eq!(fs::symlink_metadata(s.at("e")).unwrap().mtime(), 2000);
    // A layer that has an entry for the directory sets its time.
    s.apply(
        &Tar::new()
            .entry(
                Hdr {
                    kind: b'5',
                    mtime: 3000,
                    ..hdr("d/")
                },
                b"",
            )
            .file("d/x", b"")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::symlink_metadata(s.at("d")).unwrap().mtime(), 3000);
    s.assert_untouched();
}

/// Atime and mtime of `p` to the nanosecond.
fn times(p: &Path) -> (i64, i64, i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
}

/// UNPACK-41, UNPACK-22: making missing parent directories inside an existing directory
/// (one level below it, or deeper) leaves that directory's atime and mtime as they were.
#[test]
fn missing_parents_made_in_a_directory_keep_its_times() {
    let s = Sandbox::new();
    s.apply(
        &Tar::new()
            .entry(
                Hdr {
                    kind: b'5',
                    mtime: 1000,
                    ..hdr("d/")
                },
                b"",
            )
            .finish(),
    )
    .unwrap();
    let before = times(&s.at("d"));
    assert_eq!(before.2, 1000);
    s.apply(&Tar::new().file("d/x/y/z", b"z").finish()).unwrap();
    assert_eq!(fs::read(s.at("d/x/y/z")).unwrap(), b"z");
    assert_eq!(times(&s.at("d")), before, "d, where the layer made x");
    s.assert_untouched();
}

/// UNPACK-41, UNPACK-20: writing through a lower symlink to a directory (merged /usr:
/// `bin -> usr/bin`) leaves the directory's times as they were, whether the layer
/// writes into it through the symlink, by its own path, or makes a missing parent in
/// it through the symlink.
#[test]
fn writing_through_a_symlinked_parent_keeps_the_directorys_times() {
    let s = Sandbox::new();
    s.apply(
        &Tar::new()
            .entry(
                Hdr {
                    kind: b'5',
                    mtime: 1000,
                    ..hdr("usr/")
                },
                b"",
            )
            .entry(
                Hdr {
                    kind: b'5',
                    mtime: 2000,
                    ..hdr("usr/bin/")
                },
                b"",
            )
            .symlink("bin", "usr/bin")
            .finish(),
    )
    .unwrap();
    let usr = times(&s.at("usr"));
    let usr_bin = times(&s.at("usr/bin"));
    assert_eq!((usr.2, usr_bin.2), (1000, 2000));
    s.apply(
        &Tar::new()
            .file("bin/sh", b"sh")
            .file("usr/bin/ls", b"ls")
            .file("bin/sub/x", b"x")
            .finish(),
    )
    .unwrap();
    for (path, data) in [
        ("usr/bin/sh", "sh"),
        ("usr/bin/ls", "ls"),
        ("usr/bin/sub/x", "x"),
    ] {
        assert_eq!(fs::read(s.at(path)).unwrap(), data.as_bytes(), "{path}");
    }
    assert_eq!(times(&s.at("usr/bin")), usr_bin, "usr/bin");
    assert_eq!(times(&s.at("usr")), usr, "usr");
    s.assert_untouched();
}

/// UNPACK-41: a directory a layer names by two paths (its own and one through a
/// symlink) takes the metadata of whichever entry comes last in the stream.
#[test]
fn a_directory_reached_by_two_paths_takes_its_last_entrys_metadata() {
    let dir = |name: &str, mode: u32, mtime: i64| Hdr {
        kind: b'5',
        mode,
        mtime,
        ..hdr(name)
    };
    for (first, last) in [("usr/bin/sub/", "bin/sub/"), ("bin/sub/", "usr/bin/sub/")] {
        let s = Sandbox::new();
        s.apply(
            &Tar::new()
                .dir("usr/")
                .dir("usr/bin/")
                .symlink("bin", "usr/bin")
                .finish(),
        )
        .unwrap();
        s.apply(
            &Tar::new()
                .entry(dir(first, 0o700, 2000), b"")
                .file("usr/bin/sub/f", b"f")
                .entry(dir(last, 0o750, 3000), b"")
                .file("bin/sub/g", b"g")
                .finish(),
        )
        .unwrap();
        let sub = s.at("usr/bin/sub");
        assert_eq!(
            (mode(&sub), times(&sub).2),
            (0o750, 3000),
            "{first} then {last}"
        );
        assert_eq!(fs::read(sub.join("f")).unwrap(), b"f");
        assert_eq!(fs::read(sub.join("g")).unwrap(), b"g");
        s.assert_untouched();
    }
}

/// UNPACK-40, UNPACK-33
#[test]
fn xattrs_are_applied_by_namespace() {
    let s = Sandbox::new();
    // vfs_cap_data revision 2, effective, permitted = CAP_NET_BIND_SERVICE.
    let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
    cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    let x = |k: &str, v: &[u8]| (format!("SCHILY.xattr.{k}").into_bytes(), v.to_vec());
    let t = Tar::new()
        .entry(
            Hdr {
                mode: 0o755,
                uid: 7,
                pax: vec![
                    x("user.comment", b"hello"),
                    x("security.capability", &cap),
                    x("trusted.ferry", b"t"),
                    x("trusted.overlay.opaque", b"y"),
                    x("security.selinux", b"system_u:object_r:bin_t:s0"),
                ],
                ..hdr("bin/ping")
            },
            b"ELF",
        )
        .entry(
            Hdr {
                kind: b'5',
                pax: vec![x("user.dir", b"d")],
                ..hdr("d/")
            },
            b"",
        )
        .finish();
    s.apply(&t).unwrap();
    let got = tree::xattrs(&s.at("bin/ping"));
    assert_eq!(
        got.get("user.comment").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert_eq!(
        tree::xattrs(&s.at("d")).get("user.dir").map(Vec::as_slice),
        Some(&b"d"[..])
    );
    assert!(!got.contains_key("trusted.overlay.opaque"), "{got:?}");
    assert!(!got.contains_key("security.selinux"), "{got:?}");
    if is_root() {
        // Set after chown, which would have cleared it.
        assert_eq!(got.get("security.capability"), Some(&cap));
        assert_eq!(got.get("trusted.ferry").map(Vec::as_slice), Some(&b"t"[..]));
    }
    s.assert_untouched();
}

/// UNPACK-40
#[test]
fn fifos_and_devices_are_created() {
    let s = Sandbox::new();
    let t = Tar::new()
        .entry(
            Hdr {
                kind: b'6',
                mode: 0o640,
                ..hdr("run/fifo")
            },
            b"",
        )
        .entry(
            Hdr {
                kind: b'3',
                mode: 0o666,
                dev: (1, 3),
                ..hdr("dev/null")
            },
            b"",
        )
        .entry(
            Hdr {
                kind: b'4',
                mode: 0o660,
                dev: (7, 0),
                uid: 0,
                gid: 6,
                ..hdr("dev/loop0")
            },
            b"",
        )
        .finish();
    s.apply(&t).unwrap();
    let fifo = fs::symlink_metadata(s.at("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    if is_root() {
        let null = fs::symlink_metadata(s.at("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = fs::symlink_metadata(s.at("dev/loop0")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!((libc::major(lp.rdev()), lp.gid()), (7, 6));
    } else {
        assert!(
            !exists(&s.at("dev/null")),
            "devices are skipped without root"
        );
    }
    s.assert_untouched();
}

/// UNPACK-12
#[test]
fn hardlinks_within_and_across_layers_share_an_inode() {
    let s = Sandbox::new();
    s.apply(&Tar::new().file("bin/busybox", b"BB").finish())
        .unwrap();
    let t = Tar::new()
        .hardlink("bin/sh", "bin/busybox") // to a lower layer's file
        .file("usr/a", b"A")
        .hardlink("usr/b", "/usr/a") // absolute target: root-relative
        .symlink("usr/s", "a")
        .hardlink("usr/s2", "usr/s") // to a symlink: links the symlink itself
        .finish();
    s.apply(&t).unwrap();
    let ino = |p: &str| fs::symlink_metadata(s.at(p)).unwrap().ino();
    assert_eq!(ino("bin/sh"), ino("bin/busybox"));
    assert_eq!(ino("usr/b"), ino("usr/a"));
    assert_eq!(ino("usr/s2"), ino("usr/s"));
    assert_eq!(fs::read_link(s.at("usr/s2")).unwrap(), Path::new("a"));
    assert_eq!(
        fs::symlink_metadata(s.at("bin/busybox")).unwrap().nlink(),
        2
    );
    s.assert_untouched();
}

/// UNPACK-21
#[test]
fn symlinks_are_stored_verbatim() {
    let s = Sandbox::new();
    let t = Tar::new()
        .symlink("abs", "/etc/passwd")
        .symlink("up", "../../../../etc")
        .symlink("dangling", "no/such/file")
        .entry(
            Hdr {
                kind: b'2',
                link: b"x".to_vec(),
                mtime: 1234,
                uid: 9,
                gid: 9,
                ..hdr("owned")
            },
            b"",
        )
        .finish();
    s.apply(&t).unwrap();
    assert_eq!(
        fs::read_link(s.at("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(s.at("up")).unwrap(),
        Path::new("../../../../etc")
    );
    assert_eq!(
        fs::read_link(s.at("dangling")).unwrap(),
        Path::new("no/such/file")
    );
    let md = fs::symlink_metadata(s.at("owned")).unwrap();
    assert_eq!(md.mtime(), 1234);
    if is_root() {
        assert_eq!((md.uid(), md.gid()), (9, 9));
    }
    s.assert_untouched();
}

/// UNPACK-23
#[test]
fn directory_replaces_file_and_file_replaces_directory() {
    let s = Sandbox::new();
    s.apply(
        &Tar::new()
            .file("p", b"file")
            .dir("q/")
            .file("q/deep/x", b"x")
            .symlink("r", "q")
            .finish(),
    )
    .unwrap();
    s.apply(
        &Tar::new()
            .dir("p/")
            .file("p/in", b"in")
            .file("q", b"now a file")
            .dir("r/")
            .finish(),
    )
    .unwrap();
    assert!(s.at("p").is_dir());
    assert_eq!(fs::read(s.at("p/in")).unwrap(), b"in");
    assert_eq!(fs::read(s.at("q")).unwrap(), b"now a file");
    let r = fs::symlink_metadata(s.at("r")).unwrap();
    assert!(r.is_dir(), "a directory replaces a symlink, not its target");
    // And within one layer.
    s.apply(
        &Tar::new()
            .file("w", b"1")
            .dir("w/")
            .file("w/f", b"2")
            .file("w", b"3")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::read(s.at("w")).unwrap(), b"3");
    s.assert_untouched();
}

/// UNPACK-23
#[test]
fn duplicate_entries_last_wins() {
    let s = Sandbox::new();
    let t = Tar::new()
        .file("f", b"first")
        .entry(
            Hdr {
                mode: 0o700,
                ..hdr("f")
            },
            b"second",
        )
        .symlink("l", "one")
        .symlink("l", "two")
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o700,
                ..hdr("d/")
            },
            b"",
        )
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o711,
                ..hdr("d/")
            },
            b"",
        )
        .finish();
    s.apply(&t).unwrap();
    assert_eq!(fs::read(s.at("f")).unwrap(), b"second");
    assert_eq!(mode(&s.at("f")), 0o700);
    assert_eq!(fs::read_link(s.at("l")).unwrap(), Path::new("two"));
    assert_eq!(mode(&s.at("d")), 0o711);
    s.assert_untouched();
}

/// UNPACK-30, UNPACK-31, UNPACK-13
#[test]
fn whiteouts_and_opaque_dirs_in_apply_mode_hide_lower_layers_only() {
    let s = Sandbox::new();
    let lower = Tar::new()
        .file("a/1", b"1")
        .file("a/2", b"2")
        .file("b/deep/x", b"x")
        .file("c/old", b"old")
        .file("c/sub/old", b"old")
        .file("d/lower", b"l")
        .finish();
    s.apply(&lower).unwrap();
    let upper = Tar::new()
        .file("a/.wh.1", b"")
        .file(".wh.b", b"")
        .file("c/before", b"kept") // same layer, before the opaque marker
        .file("c/sub/new", b"kept")
        .file("c/.wh..wh..opq", b"")
        .file("c/after", b"kept")
        .file("d/same", b"kept")
        .file("d/.wh.same", b"") // same-layer file survives its whiteout
        .file(".wh.nothing-there", b"")
        .file(".wh..wh.plnk", b"") // aufs metadata: ignored
        .finish();
    s.apply(&upper).unwrap();
    assert!(!exists(&s.at("a/1")));
    assert!(exists(&s.at("a/2")));
    assert!(!exists(&s.at("b")));
    assert!(!exists(&s.at("c/old")));
    assert!(!exists(&s.at("c/sub/old")));
    for kept in ["c/before", "c/sub/new", "c/after", "d/same", "d/lower"] {
        assert_eq!(
            fs::read(s.at(kept)).unwrap(),
            if kept == "d/lower" {
                &b"l"[..]
            } else {
                b"kept"
            },
            "{kept}"
        );
    }
    assert!(
        !exists(&s.at(".wh.nothing-there"))
            && !exists(&s.at(".wh..wh.plnk"))
            && !exists(&s.at("a/.wh.1"))
    );
    s.assert_untouched();
}

/// UNPACK-31: a whiteout of a directory after its layer wrote below it removes only what
/// lower layers put below it, as an opaque marker would: the directory (with its lower
/// mode and times) and the layer's entries stay. Before anything of the layer is there
/// it removes the whole lower directory, and the layer's entries then go in a new one.
#[test]
fn a_whiteout_after_its_layer_wrote_below_the_path_clears_only_lower_content() {
    let lower = Tar::new()
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o750,
                mtime: 1000,
                ..hdr("d/")
            },
            b"",
        )
        .file("d/old", b"old")
        .dir("d/keep/")
        .file("d/keep/lower", b"lower")
        .finish();

    let s = Sandbox::new();
    s.apply(&lower).unwrap();
    let d_times = times(&s.at("d"));
    s.apply(
        &Tar::new()
            .file("d/keep/new", b"new")
            .file(".wh.d", b"")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::read(s.at("d/keep/new")).unwrap(), b"new");
    assert!(!exists(&s.at("d/old")), "a lower file below d stays");
    assert!(
        !exists(&s.at("d/keep/lower")),
        "a lower file below d/keep stays"
    );
    assert!(s.at("d/keep").is_dir());
    assert_eq!(mode(&s.at("d")), 0o750, "d is not the lower directory");
    assert_eq!(times(&s.at("d")), d_times, "d is not the lower directory");
    s.assert_untouched();

    let s = Sandbox::new();
    s.apply(&lower).unwrap();
    s.apply(
        &Tar::new()
            .file(".wh.d", b"")
            .file("d/keep/new", b"new")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::read(s.at("d/keep/new")).unwrap(), b"new");
    assert!(!exists(&s.at("d/old")) && !exists(&s.at("d/keep/lower")));
    // d is a missing parent made afresh (UNPACK-22), not the lower directory.
    assert_eq!(mode(&s.at("d")), 0o755);
    assert_ne!(times(&s.at("d")).2, 1000);
    s.assert_untouched();
}

/// A layer as Docker exported it from aufs: bookkeeping at the root (`.wh..wh.aufs`,
/// `.wh..wh.orph/`) and a hard link whose inode lives in the link store `.wh..wh.plnk/`.
fn aufs_layer() -> Vec<u8> {
    Tar::new()
        .file(".wh..wh.aufs", b"")
        .dir(".wh..wh.orph/")
        .file(".wh..wh.orph/leftover", b"orphan")
        .dir(".wh..wh.plnk/")
        .entry(
            Hdr {
                mode: 0o755,
                ..hdr(".wh..wh.plnk/260.12")
            },
            b"shared",
        )
        .file("usr/.wh..wh.aufs", b"")
        .hardlink("usr/bin/a", ".wh..wh.plnk/260.12")
        .hardlink("usr/bin/b", "/.wh..wh.plnk/260.12")
        .finish()
}

/// Checks that `aufs_layer` left no aufs bookkeeping and resolved its links.
fn assert_aufs_layer_applied(s: &Sandbox) {
    let names = tree::snapshot(&s.root);
    assert!(
        names.keys().all(|p| !p.contains(".wh.")),
        "aufs metadata written: {:?}",
        names.keys().collect::<Vec<_>>()
    );
    let (a, b) = (
        fs::metadata(s.at("usr/bin/a")).unwrap(),
        fs::metadata(s.at("usr/bin/b")).unwrap(),
    );
    assert_eq!(fs::read(s.at("usr/bin/a")).unwrap(), b"shared");
    assert_eq!(a.ino(), b.ino(), "both links share the stored inode");
    assert_eq!((a.nlink(), a.mode() & 0o7777), (2, 0o755));
}

/// UNPACK-13: `.wh..wh.*` entries and everything below them are never written; hard links
/// into `.wh..wh.plnk/` resolve to the file the layer stores there.
#[test]
fn aufs_metadata_is_skipped_and_its_link_store_resolves_hard_links() {
    let s = Sandbox::new();
    s.apply(&aufs_layer()).unwrap();
    assert_aufs_layer_applied(&s);
    // A link to a store file the layer does not carry is refused, naming it.
    let dangling = Tar::new()
        .dir(".wh..wh.plnk/")
        .hardlink("bin/c", ".wh..wh.plnk/999.1")
        .finish();
    rejected(s.apply(&dangling), "aufs metadata \".wh..wh.plnk/999.1\"");
    assert!(!exists(&s.at("bin/c")));
    s.assert_untouched();
}

/// UNPACK-13, UNPACK-32: the same in a snapshot directory (root: overlay mode).
#[test]
fn aufs_metadata_is_skipped_in_overlay_mode() {
    if !is_root() {
        eprintln!("skipped: overlay mode needs root");
        return;
    }
    let s = Sandbox::new();
    let mut budget = Budget::new(Limits::default());
    s.apply_with(
        &aufs_layer(),
        Compression::None,
        Whiteouts::Overlay,
        &mut budget,
    )
    .unwrap();
    assert_aufs_layer_applied(&s);
    s.assert_untouched();
}

/// UNPACK-33: overlayfs xattrs (`trusted.overlay.*`, and `user.overlay.*` which overlayfs
/// reads when mounted with `userxattr`) never come from a layer, in either mode.
#[test]
fn overlay_xattrs_are_dropped_from_layer_entries() {
    let x = |k: &str| (format!("SCHILY.xattr.{k}").into_bytes(), b"y".to_vec());
    let t = Tar::new()
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o755,
                pax: vec![
                    x("user.overlay.opaque"),
                    x("user.overlay.redirect"),
                    x("trusted.overlay.opaque"),
                    x("trusted.overlay.origin"),
                    x("user.kept"),
                ],
                ..hdr("d/")
            },
            b"",
        )
        .entry(
            Hdr {
                pax: vec![x("user.overlay.metacopy"), x("trusted.overlay.redirect")],
                ..hdr("d/f")
            },
            b"f",
        )
        .finish();
    let mut modes = vec![Whiteouts::Apply];
    if is_root() {
        modes.push(Whiteouts::Overlay);
    }
    for mode in modes {
        let s = Sandbox::new();
        s.apply_with(
            &t,
            Compression::None,
            mode,
            &mut Budget::new(Limits::default()),
        )
        .unwrap();
        let dir = tree::xattrs(&s.at("d"));
        assert_eq!(
            dir.keys().collect::<Vec<_>>(),
            ["user.kept"],
            "{mode:?}: only the plain user xattr is set"
        );
        let file = tree::xattrs(&s.at("d/f"));
        assert!(file.is_empty(), "{mode:?}: {file:?}");
        s.assert_untouched();
    }
}

/// UNPACK-32
#[test]
fn whiteouts_and_opaque_dirs_in_overlay_mode_are_overlayfs_markers() {
    if !is_root() {
        eprintln!("skipped: overlay whiteouts need root");
        return;
    }
    let s = Sandbox::new();
    let t = Tar::new()
        .file("etc/.wh.gone", b"")
        .dir("var/")
        .file("var/.wh..wh..opq", b"")
        .file("var/new", b"n")
        .finish();
    let mut budget = Budget::new(Limits::default());
    s.apply_with(&t, Compression::None, Whiteouts::Overlay, &mut budget)
        .unwrap();
    let wh = fs::symlink_metadata(s.at("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0, "whiteout is char device 0:0");
    assert_eq!(
        tree::xattrs(&s.at("var"))
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(s.at("var/new")).unwrap(), b"n");
    assert!(!exists(&s.at("var/.wh..wh..opq")));
    // A hard link to a lower layer's file cannot be made in a separate snapshot.
    let link = Tar::new().hardlink("bin/sh", "bin/busybox").finish();
    let err = s
        .apply_with(&link, Compression::None, Whiteouts::Overlay, &mut budget)
        .unwrap_err();
    assert!(matches!(err, Error::UnpackIo { .. }), "{err:?}");
    assert!(err.to_string().contains("bin/sh"), "{err}");
    s.assert_untouched();
}

/// UNPACK-2
#[test]
fn tar_without_end_blocks_is_accepted() {
    let s = Sandbox::new();
    let t = Tar::new().file("a", b"a").dir("d/").finish_without_end();
    let summary = s.apply(&t).unwrap();
    assert_eq!(summary.entries, 2);
    assert_eq!(fs::read(s.at("a")).unwrap(), b"a");
    // But a stream cut inside an entry is an error.
    let cut = &t[..600];
    assert!(matches!(s.apply(cut), Err(Error::UnpackRejected { .. })));
    s.assert_untouched();
}

/// UNPACK-1
#[test]
fn gzip_and_zstd_layers_are_decompressed() {
    let s = Sandbox::new();
    let t = Tar::new().file("gz/big", &vec![7u8; 3 << 20]).finish();
    let mut budget = Budget::new(Limits::default());
    let summary = s
        .apply_with(&gzip(&t), Compression::Gzip, Whiteouts::Apply, &mut budget)
        .unwrap();
    assert_eq!(summary.diff_id, Digest::sha256(&t));
    assert_eq!(fs::read(s.at("gz/big")).unwrap().len(), 3 << 20);
    // Multi-member gzip (pigz-style) and multi-frame zstd are one stream.
    let (first, second) = t.split_at(1000);
    let multi = [gzip(first), gzip(second)].concat();
    fs::remove_file(s.at("gz/big")).unwrap();
    s.apply_with(&multi, Compression::Gzip, Whiteouts::Apply, &mut budget)
        .unwrap();
    assert_eq!(fs::read(s.at("gz/big")).unwrap().len(), 3 << 20);
    let z = Tar::new().file("zst/f", b"zstd!").finish();
    let frames = [zstd(&z[..512]), zstd(&z[512..])].concat();
    let summary = s
        .apply_with(&frames, Compression::Zstd, Whiteouts::Apply, &mut budget)
        .unwrap();
    assert_eq!(summary.diff_id, Digest::sha256(&z));
    assert_eq!(fs::read(s.at("zst/f")).unwrap(), b"zstd!");
    s.assert_untouched();
}

/// UNPACK-1
#[test]
fn compression_that_disagrees_with_the_magic_bytes_is_refused() {
    let s = Sandbox::new();
    let t = Tar::new().file("x", b"x").finish();
    let mut budget = Budget::new(Limits::default());
    for (bytes, declared, found) in [
        (t.clone(), Compression::Gzip, "no (plain tar)"),
        (gzip(&t), Compression::None, "gzip"),
        (gzip(&t), Compression::Zstd, "gzip"),
        (zstd(&t), Compression::Gzip, "zstd"),
        (Vec::new(), Compression::Zstd, "no (plain tar)"),
    ] {
        let err = s
            .apply_with(&bytes, declared, Whiteouts::Apply, &mut budget)
            .unwrap_err();
        assert!(matches!(err, Error::CompressionMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(found), "{err}");
    }
    assert!(!exists(&s.at("x")));
    s.assert_untouched();
}

/// UNPACK-3, UNPACK-60
#[test]
fn diff_id_mismatch_is_reported() {
    let s = Sandbox::new();
    let t = Tar::new().file("x", b"x").finish();
    let wrong = Digest::sha256(b"something else");
    let err = apply_layer(
        &s.root,
        &gzip(&t)[..],
        Compression::Gzip,
        Some(&wrong),
        Whiteouts::Apply,
        &mut Budget::new(Limits::default()),
    )
    .unwrap_err();
    match &err {
        Error::DiffIdMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &Digest::sha256(&t));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&wrong.to_string()), "{err}");
    let right = Digest::sha256(&t);
    apply_layer(
        &s.root,
        &t[..],
        Compression::None,
        Some(&right),
        Whiteouts::Apply,
        &mut Budget::new(Limits::default()),
    )
    .unwrap();
    s.assert_untouched();
}

/// UNPACK-3
#[test]
fn trailing_data_after_end_blocks_counts_in_the_diff_id() {
    let s = Sandbox::new();
    let mut t = Tar::new().file("x", b"x").finish();
    t.extend_from_slice(&[0u8; 9 * 512]); // more zero blocks, as GNU tar pads records
    t.extend_from_slice(b"trailing garbage that is not tar");
    let summary = s.apply(&t).unwrap();
    assert_eq!(summary.diff_id, Digest::sha256(&t));
    assert_eq!(summary.bytes, t.len() as u64);
    let z = s
        .apply_with(
            &zstd(&t),
            Compression::Zstd,
            Whiteouts::Apply,
            &mut Budget::new(Limits::default()),
        )
        .unwrap();
    assert_eq!(z.diff_id, Digest::sha256(&t));
    s.assert_untouched();
}

// ---------------------------------------------------------------- hostile layers

/// UNPACK-11, UNPACK-60
#[test]
fn dotdot_names_are_rejected() {
    let s = Sandbox::new();
    for name in [
        "../canary",
        "a/../../canary",
        "a/../b",
        "../etc/passwd",
        "/../canary",
        "./..",
    ] {
        let t = Tar::new().file(name, b"pwned").finish();
        let msg = rejected(s.apply(&t), "'..'");
        assert!(msg.contains(name), "message names the entry: {msg}");
        assert!(
            msg.contains("diff_id not given"),
            "message names the layer: {msg}"
        );
    }
    // Through a PAX path and a GNU long name too.
    let pax = Tar::new()
        .entry(
            Hdr {
                pax: vec![(b"path".to_vec(), b"../canary".to_vec())],
                ..hdr("innocent")
            },
            b"pwned",
        )
        .finish();
    rejected(s.apply(&pax), "'..'");
    let mut gnu = Tar::new();
    gnu.raw(&common::header(
        b"././@LongLink",
        b'L',
        b"",
        0,
        0,
        0,
        0,
        10,
        (0, 0),
    ));
    gnu.raw(&{
        let mut b = [0u8; 512];
        b[..10].copy_from_slice(b"../canary\0");
        b
    });
    let t = gnu.file("innocent", b"pwned").finish();
    rejected(s.apply(&t), "'..'");
    assert_eq!(fs::read_dir(&s.root).unwrap().count(), 0);
    s.assert_untouched();
}

/// UNPACK-10
#[test]
fn absolute_names_are_clamped_into_the_root() {
    let s = Sandbox::new();
    let inside = format!("/etc/{}", s.host_canary);
    let t = Tar::new()
        .file(&inside, b"inside")
        .file("/abs", b"abs")
        .file("//./x//y", b"y")
        .finish();
    s.apply(&t).unwrap();
    assert_eq!(fs::read(s.at(&inside[1..])).unwrap(), b"inside");
    assert_eq!(fs::read(s.at("abs")).unwrap(), b"abs");
    assert_eq!(fs::read(s.at("x/y")).unwrap(), b"y");
    s.assert_untouched();
}

/// UNPACK-20: symlinks planted by a lower layer resolve inside the root.
#[test]
fn writes_through_symlinks_planted_in_a_lower_layer_land_inside() {
    let s = Sandbox::new();
    s.apply(
        &Tar::new()
            .symlink("x", "/etc")
            .symlink("up", "../../../..")
            .symlink("t", "/tmp")
            .finish(),
    )
    .unwrap();
    let c = &s.host_canary;
    let t = Tar::new()
        .file(&format!("x/{c}"), b"1")
        .file(&format!("up/{c}"), b"2")
        .file(&format!("up/etc/{c}"), b"3")
        .file(&format!("t/{c}"), b"4") // dangling: <root>/tmp is created
        .dir(&format!("x/{c}.d/"))
        .symlink(&format!("up/{c}.l"), "/")
        .finish();
    s.apply(&t).unwrap();
    assert_eq!(
        fs::read(s.at(&format!("etc/{c}"))).unwrap(),
        b"3",
        "x/ and up/etc/ are <root>/etc"
    );
    assert_eq!(fs::read(s.at(c)).unwrap(), b"2");
    assert_eq!(fs::read(s.at(&format!("tmp/{c}"))).unwrap(), b"4");
    assert!(s.at(&format!("etc/{c}.d")).is_dir());
    assert!(fs::symlink_metadata(s.at(&format!("{c}.l")))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        fs::symlink_metadata(s.at("t"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "symlink itself kept"
    );
    s.assert_untouched();
}

/// UNPACK-20: the same within one layer, also for chmod/chown/xattr targets.
#[test]
fn writes_through_symlinks_planted_in_the_same_layer_land_inside() {
    let s = Sandbox::new();
    let c = &s.host_canary;
    let t = Tar::new()
        .symlink("x", "/etc")
        .symlink("y", "../..")
        .file(&format!("x/{c}"), b"1")
        .file(&format!("y/{c}"), b"2")
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o777,
                ..hdr("y/etc/")
            },
            b"",
        ) // chmod through a symlink: <root>/etc
        .symlink("z", "..")
        .entry(
            Hdr {
                kind: b'5',
                mode: 0o700,
                ..hdr("z/")
            },
            b"",
        ) // replaces the symlink z
        .finish();
    s.apply(&t).unwrap();
    assert_eq!(fs::read(s.at(&format!("etc/{c}"))).unwrap(), b"1");
    assert_eq!(fs::read(s.at(c)).unwrap(), b"2");
    assert_eq!(mode(&s.at("etc")), 0o777);
    assert!(fs::symlink_metadata(s.at("y"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(s.at("z")).unwrap().is_dir());
    assert_eq!(mode(&s.at("z")), 0o700);
    assert_ne!(mode(Path::new("/etc")), 0o777);
    s.assert_untouched();
}

/// UNPACK-20, UNPACK-22: merged-/usr images.
#[test]
fn merged_usr_symlink_parent_lands_in_usr_bin() {
    let s = Sandbox::new();
    s.apply(
        &Tar::new()
            .dir("usr/")
            .dir("usr/bin/")
            .symlink("bin", "usr/bin")
            .symlink("lib", "/usr/lib")
            .finish(),
    )
    .unwrap();
    s.apply(
        &Tar::new()
            .file("bin/sh", b"sh")
            .file("lib/libc.so", b"libc")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::read(s.at("usr/bin/sh")).unwrap(), b"sh");
    // usr/lib did not exist: the dangling symlink's target is created inside the root.
    assert_eq!(fs::read(s.at("usr/lib/libc.so")).unwrap(), b"libc");
    assert!(fs::symlink_metadata(s.at("bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    s.assert_untouched();
}

/// UNPACK-22: missing parents are created however deep, and a path longer than the
/// kernel takes is an error, not a crash.
#[test]
fn deep_missing_parents_are_created() {
    // The test's own tree walks and the temporary directory's removal recurse: give
    // them room. ferry's own walks are iterative.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let s = Sandbox::new();
            let deep = format!("{}f", "d/".repeat(2000));
            s.apply(&Tar::new().file(&deep, b"deep").finish()).unwrap();
            assert_eq!(fs::read(s.at(&deep)).unwrap(), b"deep");
            let too_long = format!("{}f", "d/".repeat(3000));
            let err = s
                .apply(&Tar::new().file(&too_long, b"x").finish())
                .unwrap_err();
            assert!(matches!(err, Error::UnpackIo { .. }), "{err:?}");
            s.assert_untouched();
            // Whiting out the deep tree removes it without recursion.
            s.apply(&Tar::new().file(".wh.d", b"").finish()).unwrap();
            assert!(!exists(&s.at("d")));
        })
        .unwrap()
        .join()
        .unwrap();
}

/// UNPACK-20, UNPACK-23: the cached parent directory is not reused once replaced.
#[test]
fn replacing_a_directory_by_a_symlink_redirects_later_entries() {
    let s = Sandbox::new();
    let t = Tar::new()
        .dir("d/")
        .file("d/a", b"a")
        .symlink("d", "/elsewhere")
        .file("d/b", b"b")
        .finish();
    s.apply(&t).unwrap();
    assert!(fs::symlink_metadata(s.at("d"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(s.at("elsewhere/b")).unwrap(), b"b");
    assert!(!exists(&s.at("elsewhere/a")));
    s.assert_untouched();
}

/// UNPACK-14
#[test]
fn entries_naming_the_root_cannot_replace_it() {
    let s = Sandbox::new();
    for name in [".", "/", "./", ""] {
        let t = Tar::new().symlink(name, "/etc").finish();
        rejected(s.apply(&t), "only a directory can name the root");
        assert!(
            s.root.is_dir()
                && !fs::symlink_metadata(&s.root)
                    .unwrap()
                    .file_type()
                    .is_symlink()
        );
    }
    rejected(s.apply(&Tar::new().file("./", b"x").finish()), "root");
    rejected(s.apply(&Tar::new().hardlink("x", "/").finish()), "root");
    // A directory entry for the root sets the root's metadata.
    s.apply(
        &Tar::new()
            .entry(
                Hdr {
                    kind: b'5',
                    mode: 0o711,
                    mtime: 42,
                    ..hdr("./")
                },
                b"",
            )
            .finish(),
    )
    .unwrap();
    assert_eq!(mode(&s.root), 0o711);
    assert_eq!(fs::metadata(&s.root).unwrap().mtime(), 42);
    s.assert_untouched();
}

/// UNPACK-12
#[test]
fn hardlinks_cannot_reach_host_files() {
    let s = Sandbox::new();
    let host = fs::symlink_metadata("/etc/passwd").unwrap();
    rejected(
        s.apply(&Tar::new().hardlink("l", "../../etc/passwd").finish()),
        "'..'",
    );
    rejected(
        s.apply(&Tar::new().hardlink("l", "/../etc/passwd").finish()),
        "'..'",
    );
    // Absolute and symlinked targets are looked up inside the root: not there, so an error.
    let err = s
        .apply(&Tar::new().hardlink("l", "/etc/passwd").finish())
        .unwrap_err();
    assert!(
        matches!(err, Error::UnpackIo { .. })
            && err.to_string().contains("hard link to \"etc/passwd\""),
        "{err}"
    );
    s.apply(&Tar::new().symlink("x", "/etc").finish()).unwrap();
    assert!(s
        .apply(&Tar::new().hardlink("l", "x/passwd").finish())
        .is_err());
    // When the root has such a file, the link is to that one.
    s.apply(
        &Tar::new()
            .file("etc/passwd", b"inside")
            .hardlink("l", "x/passwd")
            .finish(),
    )
    .unwrap();
    assert_eq!(fs::read(s.at("l")).unwrap(), b"inside");
    assert_eq!(
        fs::symlink_metadata(s.at("l")).unwrap().ino(),
        fs::symlink_metadata(s.at("etc/passwd")).unwrap().ino()
    );
    assert_eq!(
        fs::symlink_metadata("/etc/passwd").unwrap().nlink(),
        host.nlink()
    );
    s.assert_untouched();
}

/// UNPACK-13
#[test]
fn whiteouts_with_odd_names_are_rejected() {
    let s = Sandbox::new();
    s.apply(&Tar::new().file("a/keep", b"k").finish()).unwrap();
    for name in [
        "a/.wh.",
        "a/.wh..",
        "a/.wh...",
        ".wh..",
        ".wh...",
        "../.wh.canary",
        "a/../.wh.a",
    ] {
        let t = Tar::new().file(name, b"").finish();
        let err = s.apply(&t).unwrap_err();
        assert!(
            matches!(err, Error::UnpackRejected { .. }),
            "{name}: {err:?}"
        );
    }
    assert_eq!(fs::read(s.at("a/keep")).unwrap(), b"k");
    s.assert_untouched();
}

/// UNPACK-15
#[test]
fn out_of_range_ids_are_rejected() {
    let s = Sandbox::new();
    let pax = |k: &str, v: &str| vec![(k.as_bytes().to_vec(), v.as_bytes().to_vec())];
    rejected(
        s.apply(
            &Tar::new()
                .entry(
                    Hdr {
                        pax: pax("uid", "4294967295"),
                        ..hdr("u")
                    },
                    b"",
                )
                .finish(),
        ),
        "uid 4294967295",
    );
    rejected(
        s.apply(
            &Tar::new()
                .entry(
                    Hdr {
                        pax: pax("gid", "18446744073709551615"),
                        ..hdr("g")
                    },
                    b"",
                )
                .finish(),
        ),
        "gid",
    );
    // GNU base-256 uid field.
    let mut h = common::header(b"b256", b'0', b"", 0o644, 0, 0, 0, 0, (0, 0));
    h[108..116].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0]);
    common::set_checksum(&mut h);
    rejected(s.apply(&Tar::new().raw(&h).finish()), "uid 4294967296");
    // The largest valid id is accepted.
    s.apply(
        &Tar::new()
            .entry(
                Hdr {
                    pax: pax("uid", "4294967294"),
                    ..hdr("ok")
                },
                b"",
            )
            .finish(),
    )
    .unwrap();
    if is_root() {
        assert_eq!(
            fs::symlink_metadata(s.at("ok")).unwrap().uid(),
            4_294_967_294
        );
    }
    assert!(!exists(&s.at("u")) && !exists(&s.at("g")) && !exists(&s.at("b256")));
    s.assert_untouched();
}

/// Yields a tar stream of one huge file of zeros without holding it, counting what was read.
struct ZeroFile {
    header: Vec<u8>,
    left: u64,
    read: u64,
}

impl Read for ZeroFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.header.is_empty() {
            let n = buf.len().min(self.header.len());
            buf[..n].copy_from_slice(&self.header[..n]);
            self.header.drain(..n);
            return Ok(n);
        }
        let n = buf.len().min(self.left as usize);
        buf[..n].fill(0);
        self.left -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

fn bomb(size: u64) -> ZeroFile {
    ZeroFile {
        header: common::header(b"bomb", b'0', b"", 0o644, 0, 0, 0, size, (0, 0)).to_vec(),
        left: size,
        read: 0,
    }
}

/// Counts the bytes a reader hands out, 4 KiB at most per read (as a network stream).
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = buf.len().min(4096);
        let n = self.inner.read(&mut buf[..len])?;
        self.read += n as u64;
        Ok(n)
    }
}

fn assert_byte_limit(err: Error, limit: u64) {
    match &err {
        Error::UnpackLimit { what, limit: l, .. } => {
            assert_eq!((*what, *l), ("max-bytes", limit));
        }
        other => panic!("expected the byte limit, got {other:?}"),
    }
    let want = format!(
        "unpack limit max-bytes ({} MiB) reached at entry \"bomb\"",
        limit >> 20
    );
    assert!(err.to_string().contains(&want), "{err}");
}

/// UNPACK-50, UNPACK-52
#[test]
fn gzip_bomb_stops_at_the_byte_limit() {
    let s = Sandbox::new();
    let size = 1u64 << 30; // 1 GiB of zeros, about 1 MiB of gzip
    let mut enc = flate2::read::GzEncoder::new(bomb(size), flate2::Compression::default());
    let mut compressed = Vec::new();
    enc.read_to_end(&mut compressed).unwrap();
    assert!(compressed.len() < 8 << 20);
    let limit = 16u64 << 20;
    let mut input = Counted {
        inner: &compressed[..],
        read: 0,
    };
    let mut budget = Budget::new(Limits {
        max_bytes: limit,
        ..Limits::default()
    });
    let err = apply_layer(
        &s.root,
        &mut input,
        Compression::Gzip,
        None,
        Whiteouts::Apply,
        &mut budget,
    )
    .unwrap_err();
    assert_byte_limit(err, limit);
    assert!(fs::metadata(s.at("bomb")).unwrap().len() <= limit);
    assert!(
        input.read < compressed.len() as u64 / 10,
        "stopped early: read {} of {}",
        input.read,
        compressed.len()
    );
    s.assert_untouched();
}

/// UNPACK-50, UNPACK-52
#[test]
fn zstd_bomb_stops_at_the_byte_limit() {
    let s = Sandbox::new();
    let size = 6u64 << 30;
    let mut compressed = Vec::new();
    let mut enc = zstd::stream::read::Encoder::new(bomb(size), 19).unwrap();
    enc.read_to_end(&mut compressed).unwrap();
    assert!(compressed.len() < 4 << 20, "{}", compressed.len());
    let limit = 8u64 << 20;
    let mut input = Counted {
        inner: &compressed[..],
        read: 0,
    };
    let mut budget = Budget::new(Limits {
        max_bytes: limit,
        ..Limits::default()
    });
    let err = apply_layer(
        &s.root,
        &mut input,
        Compression::Zstd,
        None,
        Whiteouts::Apply,
        &mut budget,
    )
    .unwrap_err();
    assert_byte_limit(err, limit);
    assert!(fs::metadata(s.at("bomb")).unwrap().len() <= limit);
    assert!(
        input.read < compressed.len() as u64 / 10,
        "stopped early: read {} of {}",
        input.read,
        compressed.len()
    );
    s.assert_untouched();
}

/// A plain tar stream of `count` empty files, generated while read.
struct ManyEntries {
    count: u64,
    next: u64,
    block: Vec<u8>,
}

impl Read for ManyEntries {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.block.is_empty() {
            if self.next == self.count {
                return Ok(0);
            }
            let name = format!("f{:07}", self.next);
            self.block =
                common::header(name.as_bytes(), b'0', b"", 0o644, 0, 0, 0, 0, (0, 0)).to_vec();
            self.next += 1;
        }
        let n = buf.len().min(self.block.len());
        buf[..n].copy_from_slice(&self.block[..n]);
        self.block.drain(..n);
        Ok(n)
    }
}

/// UNPACK-51
#[test]
fn million_entry_layer_stops_at_the_entry_limit() {
    let s = Sandbox::new();
    let mut layer = ManyEntries {
        count: 1_000_000,
        next: 0,
        block: Vec::new(),
    };
    let limit = 20_000;
    let mut budget = Budget::new(Limits {
        max_entries: limit,
        ..Limits::default()
    });
    let err = apply_layer(
        &s.root,
        &mut layer,
        Compression::None,
        None,
        Whiteouts::Apply,
        &mut budget,
    )
    .unwrap_err();
    match &err {
        Error::UnpackLimit {
            what,
            limit: l,
            entry,
            ..
        } => {
            assert_eq!((*what, *l), ("max-entries", limit));
            assert_eq!(entry, "f0020000");
        }
        other => panic!("expected the entry limit, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("unpack limit max-entries (20000 entries) reached at entry \"f0020000\"; raise it with --max-entries"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&s.root).unwrap().count() as u64, limit);
    // Reading stopped near the limit (1 MiB of read-ahead is 2048 headers).
    assert!(layer.next < limit + 4096, "generated {}", layer.next);
    s.assert_untouched();
}

/// UNPACK-50, UNPACK-51
#[test]
fn the_budget_is_shared_across_an_images_layers() {
    let s = Sandbox::new();
    let one = Tar::new().file("a", b"a").file("b", b"b").finish();
    let mut budget = Budget::new(Limits {
        max_entries: 3,
        max_bytes: 1 << 20,
    });
    s.apply_with(&one, Compression::None, Whiteouts::Apply, &mut budget)
        .unwrap();
    assert_eq!(budget.entries_left(), 1);
    assert_eq!(budget.bytes_left(), (1 << 20) - one.len() as u64);
    let err = s
        .apply_with(&one, Compression::None, Whiteouts::Apply, &mut budget)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnpackLimit {
                what: "max-entries",
                limit: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let mut budget = Budget::new(Limits {
        max_entries: 100,
        max_bytes: one.len() as u64 * 2 - 1,
    });
    s.apply_with(&one, Compression::None, Whiteouts::Apply, &mut budget)
        .unwrap();
    let err = s
        .apply_with(&one, Compression::None, Whiteouts::Apply, &mut budget)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnpackLimit {
                what: "max-bytes",
                ..
            }
        ),
        "{err:?}"
    );
    s.assert_untouched();
}

/// UNPACK-2
#[test]
fn unsupported_and_malformed_headers_are_rejected() {
    let s = Sandbox::new();
    let mut bad_sum = common::header(b"x", b'0', b"", 0o644, 0, 0, 0, 0, (0, 0));
    bad_sum[0] = b'y';
    rejected(s.apply(&Tar::new().raw(&bad_sum).finish()), "checksum");
    let sparse = common::header(b"s", b'S', b"", 0o644, 0, 0, 0, 0, (0, 0));
    rejected(s.apply(&Tar::new().raw(&sparse).finish()), "sparse");
    let huge_pax = common::header(b"PaxHeader", b'x', b"", 0o644, 0, 0, 0, 1 << 30, (0, 0));
    rejected(
        s.apply(&Tar::new().raw(&huge_pax).finish()),
        "extended header",
    );
    s.assert_untouched();
}

// ---------------------------------------------------------------- against umoci

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn umoci(args: &[&str]) {
    run(std::process::Command::new("umoci").args(args));
}

/// The layers of `layout:tag`: (media type, blob path, diff_id).
fn layers_of(layout: &Path, tag: &str) -> Vec<(String, std::path::PathBuf, Digest)> {
    let json =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
    let blob = |d: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(d.as_str().unwrap().strip_prefix("sha256:").unwrap())
    };
    let index = json(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest = json(&blob(&manifest["digest"]));
    let config = json(&blob(&manifest["config"]["digest"]));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                blob(&l["digest"]),
                Digest::parse(d.as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// UNPACK-2, UNPACK-12, UNPACK-21, UNPACK-30, UNPACK-40: same tree as `umoci unpack`.
#[test]
fn unpacks_like_umoci() {
    if !is_root()
        || std::process::Command::new("umoci")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and umoci");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let l = tmp.path().join("layout");
    let image = format!("{}:t", l.display());
    let bundle = tmp.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    umoci(&["init", "--layout", l.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    // Layer 1: busybox, symlinks, hard links, setuid, fifo, dirs with odd modes.
    umoci(&["unpack", "--image", &image, bundle.to_str().unwrap()]);
    let w = |p: &str, data: &[u8]| {
        let p = rootfs.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    fs::hard_link(rootfs.join("bin/busybox"), rootfs.join("bin/ls")).unwrap();
    w("etc/hostname", b"ferry\n");
    w("etc/motd", b"hello\n");
    w("usr/local/bin/su", b"#!/bin/sh\n");
    fs::set_permissions(
        rootfs.join("usr/local/bin/su"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    fs::create_dir_all(rootfs.join("tmp")).unwrap();
    fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    run(std::process::Command::new("mkfifo").arg(rootfs.join("run-fifo")));
    w("var/cache/a", b"a");
    w("var/cache/sub/b", b"b");
    w("opt/gone/x", b"x");
    std::os::unix::fs::chown(rootfs.join("etc/motd"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", rootfs.join("abs-link")).unwrap();
    umoci(&[
        "repack",
        "--refresh-bundle",
        "--image",
        &image,
        bundle.to_str().unwrap(),
    ]);
    // Layer 2 (umoci repack): a whiteout, a changed file, a file replaced by a directory.
    fs::remove_dir_all(rootfs.join("opt/gone")).unwrap();
    fs::remove_file(rootfs.join("etc/hostname")).unwrap();
    fs::create_dir_all(rootfs.join("etc/hostname")).unwrap();
    w("etc/motd", b"changed\n");
    umoci(&[
        "repack",
        "--refresh-bundle",
        "--image",
        &image,
        bundle.to_str().unwrap(),
    ]);
    // Layer 3 (GNU tar + raw add-layer): an opaque directory and a hard link to a lower file.
    let extra = tmp.path().join("extra");
    fs::create_dir_all(extra.join("var/cache")).unwrap();
    fs::write(extra.join("var/cache/.wh..wh..opq"), b"").unwrap();
    fs::write(extra.join("var/cache/new"), b"new").unwrap();
    let tarball = tmp.path().join("extra.tar");
    run(std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&extra)
        .args(["--owner=0", "--group=0", "--hard-dereference", "var"]));
    // Append a hard link entry `bin/busybox-link` -> `bin/busybox` (a file of layer 1).
    let mut raw = fs::read(&tarball).unwrap();
    while raw.ends_with(&[0u8; 512]) {
        raw.truncate(raw.len() - 512);
    }
    raw.extend_from_slice(&common::header(
        b"bin/busybox-link",
        b'1',
        b"bin/busybox",
        0o755,
        0,
        0,
        1_600_000_000,
        0,
        (0, 0),
    ));
    raw.extend_from_slice(&[0u8; 1024]);
    fs::write(&tarball, &raw).unwrap();
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &image,
        tarball.to_str().unwrap(),
    ]);

    let reference = tmp.path().join("reference");
    umoci(&["unpack", "--image", &image, reference.to_str().unwrap()]);
    let ours = tmp.path().join("ours");
    fs::create_dir(&ours).unwrap();
    let mut budget = Budget::new(Limits::default());
    let layers = layers_of(&l, "t");
    assert_eq!(layers.len(), 3);
    for (media_type, blob, diff_id) in &layers {
        let compression = Compression::of_layer(media_type).unwrap();
        apply_layer(
            &ours,
            fs::File::open(blob).unwrap(),
            compression,
            Some(diff_id),
            Whiteouts::Apply,
            &mut budget,
        )
        .unwrap();
    }
    let expected = tree::snapshot(&reference.join("rootfs"));
    let actual = tree::snapshot(&ours);
    // Everything is compared, directory mtimes and the top directory included: umoci
    // applies directory times after their content too, so they match exactly.
    let opts = tree::Options::exact();
    let diffs = tree::diff(&expected, &actual, &opts);
    assert!(
        diffs.is_empty(),
        "ferry differs from umoci:\n{}",
        diffs.join("\n")
    );
    // The interesting cases are really in there.
    assert_eq!(actual["usr/local/bin/su"].mode, 0o4755);
    assert_eq!(
        actual["bin/busybox-link"].links,
        vec!["bin/busybox", "bin/busybox-link", "bin/ls"]
    );
    assert_eq!(actual["run-fifo"].kind, 'p');
    assert_eq!(actual["etc/hostname"].kind, 'd');
    assert!(!actual.contains_key("opt/gone") && !actual.contains_key("var/cache/a"));
    assert!(actual.contains_key("var/cache/new"));
}

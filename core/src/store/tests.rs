//! Store behaviour, each test citing the `specs/store.md` requirement it proves.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime};

use super::*;
use crate::media;

const OCTETS: &str = "application/octet-stream";
/// Size of the blob the multi-process tests ingest.
const BIG: usize = 3 << 20;
const CHILD_MODE: &str = "FERRY_STORE_TEST_CHILD";
const CHILD_ROOT: &str = "FERRY_STORE_TEST_ROOT";

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Deterministic, non-repeating-looking test bytes.
fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

fn put(store: &Store, bytes: &[u8], media_type: &str) -> Digest {
    let d = Digest::sha256(bytes);
    store.put_blob(&d, bytes, media_type, Some("test")).unwrap();
    d
}

/// Every file under `ROOT/ingest/`.
fn partials(store: &Store) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for alg in ALGORITHMS {
        for e in fs::read_dir(store.root().join("ingest").join(alg.as_str())).unwrap() {
            found.push(e.unwrap().path());
        }
    }
    found
}

/// Every file under `ROOT/blobs/`, whatever its name.
fn blob_files(store: &Store) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for alg in ALGORITHMS {
        for e in fs::read_dir(store.root().join("blobs").join(alg.as_str())).unwrap() {
            found.push(e.unwrap().path());
        }
    }
    found
}

fn set_mtime(path: &Path, age: Duration) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn store_is_send_sync_and_ingest_and_lease_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<Ingest>();
    send::<Lease>();
}

// STORE-1, STORE-2
#[test]
fn committed_blob_is_read_only_and_readable() {
    let (_dir, store) = new_store();
    let bytes = data(5000);
    let d = put(&store, &bytes, media::OCI_LAYER_GZIP);
    let path = store.blob_path(&d);
    assert_eq!(path, store.root().join("blobs/sha256").join(d.hex()));
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert_eq!(store.blob_size(&d).unwrap(), Some(5000));
    assert_eq!(store.read_blob(&d, 5000).unwrap(), bytes);
    let mut read = Vec::new();
    store.open_blob(&d).unwrap().read_to_end(&mut read).unwrap();
    assert_eq!(read, bytes);
    assert_eq!(store.digests().unwrap(), vec![d.clone()]);
    let rec = store.blob_record(&d).unwrap().unwrap();
    assert_eq!(
        (rec.size, rec.media_type.as_str(), rec.source.as_deref()),
        (5000, media::OCI_LAYER_GZIP, Some("test"))
    );
    assert!(rec.created > 0 && rec.last_used >= rec.created);
    assert!(partials(&store).is_empty(), "a commit leaves no partial");
}

#[test]
fn reading_missing_or_oversized_blobs_fails_with_named_errors() {
    let (_dir, store) = new_store();
    let d = put(&store, &data(100), OCTETS);
    assert!(matches!(
        store.read_blob(&d, 99),
        Err(Error::TooLarge {
            size: 100,
            limit: 99,
            ..
        })
    ));
    let absent = Digest::sha256(b"absent");
    assert!(matches!(store.open_blob(&absent), Err(Error::BlobNotFound(x)) if x == absent));
    assert!(matches!(
        store.read_blob(&absent, 10),
        Err(Error::BlobNotFound(_))
    ));
    assert_eq!(store.blob_size(&absent).unwrap(), None);
    assert_eq!(store.blob_record(&absent).unwrap(), None);
}

// STORE-3
#[test]
fn commit_of_wrong_bytes_leaves_no_blob_and_no_partial() {
    let (_dir, store) = new_store();
    let good = data(1000);
    let d = Digest::sha256(&good);
    let mut bad = good.clone();
    bad[10] ^= 1;
    let mut ingest = store.ingest(&d, Some(1000)).unwrap();
    ingest.write_all(&bad).unwrap();
    match ingest.commit(OCTETS, None).unwrap_err() {
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            assert!(what.contains(&d.to_string()), "{what}");
            assert_eq!(expected, d);
            assert_eq!(actual, Digest::sha256(&bad));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(blob_files(&store).is_empty());
    assert!(partials(&store).is_empty());
    assert_eq!(store.blob_record(&d).unwrap(), None);
    // Without a declared size the digest still decides.
    let mut ingest = store.ingest(&d, None).unwrap();
    ingest.write_all(&bad[..999]).unwrap();
    assert!(matches!(
        ingest.commit(OCTETS, None),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(blob_files(&store).is_empty() && partials(&store).is_empty());
}

// STORE-3
#[test]
fn complete_wrong_bytes_are_not_kept_when_the_ingest_is_dropped() {
    let (_dir, store) = new_store();
    let good = data(1000);
    let d = Digest::sha256(&good);
    let mut bad = good.clone();
    bad[999] ^= 1;
    // As when a source's stream fails its own check at its end: no commit, just a drop.
    let mut ingest = store.ingest(&d, Some(1000)).unwrap();
    ingest.write_all(&bad).unwrap();
    drop(ingest);
    assert!(partials(&store).is_empty(), "{:?}", partials(&store));
    // Right bytes, not yet committed, and bytes short of the size stay for a resume.
    let mut ingest = store.ingest(&d, Some(1000)).unwrap();
    ingest.write_all(&good[..600]).unwrap();
    drop(ingest);
    assert_eq!(partials(&store).len(), 1);
    let mut ingest = store.ingest(&d, Some(1000)).unwrap();
    assert_eq!(ingest.offset(), 600);
    ingest.write_all(&good[600..]).unwrap();
    drop(ingest);
    assert_eq!(store.ingest(&d, Some(1000)).unwrap().offset(), 1000);
}

// STORE-3
#[test]
fn commit_of_wrong_size_fails_and_removes_partial() {
    let (_dir, store) = new_store();
    let bytes = data(1000);
    let d = Digest::sha256(&bytes);
    let mut short = store.ingest(&d, Some(1000)).unwrap();
    short.write_all(&bytes[..999]).unwrap();
    match short.commit(OCTETS, None).unwrap_err() {
        Error::SizeMismatch {
            what,
            expected: 1000,
            actual: 999,
        } => assert!(what.contains(&d.to_string())),
        other => panic!("unexpected {other}"),
    }
    assert!(blob_files(&store).is_empty() && partials(&store).is_empty());

    // Going past the size fails at once and restarts the ingest from zero.
    let mut long = store.ingest(&d, Some(1000)).unwrap();
    long.write_all(&bytes[..600]).unwrap();
    assert!(matches!(
        long.write_all(&bytes[..600]),
        Err(Error::SizeMismatch {
            expected: 1000,
            actual: 1200,
            ..
        })
    ));
    assert_eq!(long.offset(), 0);
    long.write_all(&bytes).unwrap();
    assert_eq!(long.commit(OCTETS, None).unwrap(), 1000);
    assert_eq!(store.read_blob(&d, 1000).unwrap(), bytes);
}

// STORE-4
#[test]
fn dropped_ingest_resumes_from_offset_with_right_digest() {
    let (_dir, store) = new_store();
    let bytes = data(100_000);
    let d = Digest::sha256(&bytes);
    {
        let mut ingest = store.ingest(&d, Some(100_000)).unwrap();
        assert_eq!(ingest.offset(), 0);
        ingest.write_all(&bytes[..40_000]).unwrap();
        assert_eq!(ingest.offset(), 40_000);
    }
    assert_eq!(
        store.blob_size(&d).unwrap(),
        None,
        "nothing visible before commit"
    );
    let mut ingest = store.ingest(&d, Some(100_000)).unwrap();
    assert_eq!(ingest.offset(), 40_000);
    ingest.write_all(&bytes[40_000..]).unwrap();
    assert_eq!(ingest.commit(OCTETS, Some("resumed")).unwrap(), 100_000);
    assert_eq!(store.read_blob(&d, u64::MAX).unwrap(), bytes);
}

// STORE-4: the resume point's hash state comes from the bytes on disk, not from trust.
#[test]
fn resumed_ingest_rehashes_partial_bytes() {
    let (_dir, store) = new_store();
    let bytes = data(10_000);
    let d = Digest::sha256(&bytes);
    let mut ingest = store.ingest(&d, Some(10_000)).unwrap();
    ingest.write_all(&bytes[..5000]).unwrap();
    drop(ingest);
    let partial = store.inner.partial_path(&d);
    let mut on_disk = fs::read(&partial).unwrap();
    on_disk[100] ^= 0xff;
    fs::write(&partial, &on_disk).unwrap();
    let mut ingest = store.ingest(&d, Some(10_000)).unwrap();
    assert_eq!(ingest.offset(), 5000);
    ingest.write_all(&bytes[5000..]).unwrap();
    assert!(matches!(
        ingest.commit(OCTETS, None),
        Err(Error::DigestMismatch { .. })
    ));
    assert_eq!(store.blob_size(&d).unwrap(), None);
    assert!(partials(&store).is_empty());
}

// STORE-4
#[test]
fn complete_but_corrupt_partial_restarts_at_zero() {
    let (_dir, store) = new_store();
    let bytes = data(2000);
    let d = Digest::sha256(&bytes);
    let partial = store.inner.partial_path(&d);
    fs::write(&partial, data(2001)).unwrap();
    assert_eq!(
        store.ingest(&d, Some(2000)).unwrap().offset(),
        0,
        "longer than the size"
    );
    fs::write(&partial, vec![0; 2000]).unwrap();
    let mut ingest = store.ingest(&d, Some(2000)).unwrap();
    assert_eq!(ingest.offset(), 0, "right size, wrong digest");
    ingest.write_all(&bytes).unwrap();
    ingest.commit(OCTETS, None).unwrap();
    assert_eq!(store.read_blob(&d, 2000).unwrap(), bytes);
}

// STORE-6
#[test]
fn ingest_of_committed_blob_is_at_full_offset_and_only_records() {
    let (_dir, store) = new_store();
    let bytes = data(3000);
    let d = put(&store, &bytes, media::OCI_CONFIG);
    let first = store.blob_record(&d).unwrap().unwrap();

    let mut ingest = store.ingest(&d, Some(3000)).unwrap();
    assert_eq!(ingest.offset(), 3000);
    assert!(matches!(
        ingest.write_all(b"x"),
        Err(Error::SizeMismatch { .. })
    ));
    ingest.write_all(&[]).unwrap();
    assert_eq!(ingest.commit("other/type", Some("other")).unwrap(), 3000);
    let rec = store.blob_record(&d).unwrap().unwrap();
    assert_eq!(
        (rec.media_type, rec.source, rec.created),
        (first.media_type, first.source, first.created)
    );
    assert!(partials(&store).is_empty(), "no empty partial stays behind");

    // Dropping it without commit is fine too; a wrong size is refused.
    drop(store.ingest(&d, None).unwrap());
    assert!(partials(&store).is_empty());
    assert!(matches!(
        store.ingest(&d, Some(3001)),
        Err(Error::SizeMismatch {
            expected: 3001,
            actual: 3000,
            ..
        })
    ));

    // reset() turns it into a fresh ingest that replaces the blob with verified bytes.
    let mut again = store.ingest(&d, Some(3000)).unwrap();
    again.reset().unwrap();
    assert_eq!(again.offset(), 0);
    again.write_all(&bytes).unwrap();
    again.commit(OCTETS, None).unwrap();
    assert_eq!(store.read_blob(&d, 3000).unwrap(), bytes);
    assert_eq!(store.digests().unwrap(), vec![d]);
}

// STORE-5
#[test]
fn threads_on_two_store_instances_ingest_one_digest_once() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        Store::open(dir.path()).unwrap(),
        Store::open(dir.path()).unwrap(),
    ];
    let bytes = Arc::new(data(1 << 20));
    let d = Digest::sha256(&bytes);
    let barrier = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (store, bytes, d, barrier) = (
                stores[i % 2].clone(),
                bytes.clone(),
                d.clone(),
                barrier.clone(),
            );
            thread::spawn(move || {
                barrier.wait();
                let mut ingest = store.ingest(&d, Some(bytes.len() as u64)).unwrap();
                let start = ingest.offset();
                for chunk in bytes[start as usize..].chunks(64 << 10) {
                    ingest.write_all(chunk).unwrap();
                    thread::yield_now();
                }
                ingest.commit(OCTETS, Some("thread")).unwrap();
                start
            })
        })
        .collect();
    let mut starts: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    starts.sort();
    let len = bytes.len() as u64;
    assert_eq!(
        starts,
        vec![0, len, len, len],
        "one writer; the others waited and found it committed"
    );
    assert_eq!(stores[1].read_blob(&d, len).unwrap(), *bytes);
    assert_eq!(blob_files(&stores[0]).len(), 1);
    assert!(partials(&stores[0]).is_empty());
}

// STORE-7
#[test]
fn concurrent_opens_of_a_new_root_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("new");
    let barrier = Arc::new(Barrier::new(4));
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let (root, barrier) = (root.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                Store::open(&root).map(drop)
            })
        })
        .collect();
    for o in openers {
        o.join().unwrap().unwrap();
    }
}

// STORE-7
#[test]
fn database_is_wal_at_current_version_and_newer_versions_are_refused() {
    let (dir, store) = new_store();
    drop(store);
    let db = dir.path().join("metadata.db");
    let c = Connection::open(&db).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, db::SCHEMA_VERSION);
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    match Store::open(dir.path()).unwrap_err() {
        Error::StoreVersion {
            found: 99,
            supported,
            ..
        } => assert_eq!(supported, db::SCHEMA_VERSION),
        other => panic!("unexpected {other}"),
    }
}

// STORE-1
#[test]
fn default_root_follows_euid_and_xdg() {
    assert_eq!(
        default_root_for(true, Some("/x".into()), Some("/home/u".into())),
        Path::new("/var/lib/ferry")
    );
    assert_eq!(
        default_root_for(false, Some("/x".into()), Some("/home/u".into())),
        Path::new("/x/ferry")
    );
    assert_eq!(
        default_root_for(false, Some("rel".into()), Some("/home/u".into())),
        Path::new("/home/u/.local/share/ferry")
    );
    assert_eq!(
        default_root_for(false, None, Some("/home/u".into())),
        Path::new("/home/u/.local/share/ferry")
    );
}

fn image(name: &str, tag: Option<&str>, digest: &Digest) -> ImageRecord {
    ImageRecord {
        name: name.into(),
        tag: tag.map(str::to_string),
        digest: digest.clone(),
        media_type: media::OCI_MANIFEST.into(),
        size: 42,
        created: Some("2024-01-01T00:00:00Z".into()),
        platform: Some("linux/amd64".into()),
        updated: 1_700_000_000,
    }
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

// STORE-8
#[test]
fn images_upsert_find_list_and_remove() {
    let (_dir, store) = new_store();
    let (d1, d2) = (Digest::sha256(b"one"), Digest::sha256(b"two"));
    let busybox = "docker.io/library/busybox";
    store
        .set_image(&image(busybox, Some("latest"), &d1))
        .unwrap();
    store
        .set_image(&image(busybox, Some("latest"), &d2))
        .unwrap();
    store.set_image(&image(busybox, None, &d1)).unwrap();
    store.set_image(&image(busybox, None, &d1)).unwrap();
    store
        .set_image(&image("docker.io/library/alpine", Some("3"), &d1))
        .unwrap();

    assert_eq!(
        store.find_image(&reference("busybox")).unwrap(),
        image(busybox, Some("latest"), &d2)
    );
    let listed: Vec<_> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.tag, r.digest))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "docker.io/library/alpine".to_string(),
                Some("3".to_string()),
                d1.clone()
            ),
            (busybox.to_string(), None, d1.clone()),
            (busybox.to_string(), Some("latest".to_string()), d2.clone()),
        ]
    );

    match store.find_image(&reference("busybox:1.0")).unwrap_err() {
        Error::ImageNotFound(r) => assert_eq!(r, "docker.io/library/busybox:1.0"),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(
        store
            .remove_image(&reference("busybox:latest"))
            .unwrap()
            .digest,
        d2
    );
    assert!(matches!(
        store.find_image(&reference("busybox")),
        Err(Error::ImageNotFound(_))
    ));
    assert!(matches!(
        store.remove_image(&reference("busybox")),
        Err(Error::ImageNotFound(_))
    ));
    assert_eq!(store.images().unwrap().len(), 2);
}

// STORE-8
#[test]
fn find_image_by_digest_reference() {
    let (_dir, store) = new_store();
    let (d1, d2) = (Digest::sha256(b"one"), Digest::sha256(b"two"));
    let name = "registry.example:5000/team/app";
    store.set_image(&image(name, Some("v1"), &d1)).unwrap();
    store.set_image(&image(name, None, &d2)).unwrap();
    store.set_image(&image(name, Some("v2"), &d2)).unwrap();

    let by = |s: &str| store.find_image(&reference(&format!("{name}{s}")));
    assert_eq!(by(&format!("@{d1}")).unwrap().tag.as_deref(), Some("v1"));
    assert_eq!(
        by(&format!("@{d2}")).unwrap().tag,
        None,
        "the digest-only record first"
    );
    assert_eq!(by(&format!(":v2@{d2}")).unwrap().tag.as_deref(), Some("v2"));
    assert!(matches!(
        by(&format!("@{}", Digest::sha256(b"three"))),
        Err(Error::ImageNotFound(_))
    ));
    assert!(store
        .find_image(&reference(&format!("other/app@{d1}")))
        .is_err());

    assert_eq!(
        store
            .remove_image(&reference(&format!("{name}@{d2}")))
            .unwrap()
            .tag,
        None
    );
    assert_eq!(by(&format!("@{d2}")).unwrap().tag.as_deref(), Some("v2"));
}

// STORE-8
#[test]
fn set_image_refuses_unnormalized_names() {
    let (_dir, store) = new_store();
    let d = Digest::sha256(b"x");
    for bad in ["busybox", "docker.io/busybox", "docker.io/library/BusyBox"] {
        assert!(
            matches!(
                store.set_image(&image(bad, Some("1"), &d)),
                Err(Error::InvalidReference { .. })
            ),
            "{bad}"
        );
    }
    assert!(store.images().unwrap().is_empty());
}

// STORE-9
#[test]
fn roots_add_list_and_remove_by_kind_and_key() {
    let (_dir, store) = new_store();
    let (d1, d2, d3) = (
        Digest::sha256(b"1"),
        Digest::sha256(b"2"),
        Digest::sha256(b"3"),
    );
    store.add_root("signature", "k", &d1).unwrap();
    store.add_root("signature", "k", &d1).unwrap();
    store.add_root("signature", "k", &d2).unwrap();
    store.add_root("signature", "a", &d3).unwrap();
    store.add_root("snapshot", "k", &d3).unwrap();
    let mut want = vec![("k".to_string(), d1.clone()), ("k".to_string(), d2.clone())];
    want.sort();
    want.insert(0, ("a".to_string(), d3.clone()));
    assert_eq!(store.roots("signature").unwrap(), want);
    store.remove_roots("signature", "k").unwrap();
    assert_eq!(
        store.roots("signature").unwrap(),
        vec![("a".to_string(), d3.clone())]
    );
    assert_eq!(
        store.roots("snapshot").unwrap(),
        vec![("k".to_string(), d3)]
    );
    assert!(store.roots("none").unwrap().is_empty());
}

fn descriptor(media_type: &str, d: &Digest, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","size":{size},"digest":"{d}"}}"#)
}

/// Stores an image manifest over `config` and `layers`; returns its digest.
fn put_manifest(store: &Store, config: &Digest, layers: &[&Digest]) -> Digest {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| descriptor(media::OCI_LAYER_GZIP, l, 1))
        .collect();
    let json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
        media::OCI_MANIFEST,
        descriptor(media::OCI_CONFIG, config, 1),
        layers.join(",")
    );
    put(store, json.as_bytes(), media::OCI_MANIFEST)
}

fn put_index(store: &Store, manifests: &[&Digest]) -> Digest {
    let children: Vec<String> = manifests
        .iter()
        .map(|m| {
            format!(
                r#"{{"mediaType":"{}","size":1,"digest":"{m}","platform":{{"os":"linux","architecture":"amd64"}}}}"#,
                media::OCI_MANIFEST
            )
        })
        .collect();
    let json = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
        media::OCI_INDEX,
        children.join(",")
    );
    put(store, json.as_bytes(), media::OCI_INDEX)
}

// STORE-11, STORE-12
#[test]
fn gc_keeps_what_names_and_roots_reach_and_removes_the_rest() {
    let (_dir, store) = new_store();
    let config = put(
        &store,
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        media::OCI_CONFIG,
    );
    let (l1, l2) = (
        put(&store, b"layer one", media::OCI_LAYER_GZIP),
        put(&store, b"layer two", media::OCI_LAYER_GZIP),
    );
    let manifest = put_manifest(&store, &config, &[&l1, &l2]);
    let absent_child = Digest::sha256(b"a manifest that was never pulled");
    let index = put_index(&store, &[&manifest, &absent_child]);
    store
        .set_image(&image("docker.io/library/app", Some("1"), &index))
        .unwrap();

    let signature = put(&store, b"a signature payload", OCTETS);
    store.add_root("signature", "app", &signature).unwrap();
    let (snap_config, l3) = (
        put(&store, b"{}", media::OCI_CONFIG),
        put(&store, b"layer three", media::OCI_LAYER_GZIP),
    );
    let snapshot_manifest = put_manifest(&store, &snap_config, &[&l3]);
    store.add_root("snapshot", "s", &snapshot_manifest).unwrap();

    let orphan = put(&store, b"nobody wants me", OCTETS);
    let l4 = put(&store, b"layer four", media::OCI_LAYER_GZIP);
    let orphan_manifest = put_manifest(&store, &config, &[&l4]);
    let mut garbage = vec![orphan.clone(), l4.clone(), orphan_manifest.clone()];
    garbage.sort();
    let garbage_bytes: u64 = garbage
        .iter()
        .map(|d| store.blob_size(d).unwrap().unwrap())
        .sum();
    let mut live = vec![
        config,
        l1,
        l2,
        manifest,
        index,
        signature,
        snap_config,
        l3,
        snapshot_manifest,
    ];
    live.sort();

    let mut report = store.gc().unwrap();
    report.removed_blobs.sort();
    assert_eq!(report.removed_blobs, garbage);
    assert_eq!(report.freed_bytes, garbage_bytes);
    assert_eq!(report.removed_ingests, 0);
    assert_eq!(store.digests().unwrap(), live);
    for d in &garbage {
        assert_eq!(store.blob_record(d).unwrap(), None, "record of {d} swept");
    }
    for d in &live {
        assert!(
            store.blob_record(d).unwrap().is_some(),
            "record of {d} kept"
        );
    }

    // Once the name and roots go, everything goes.
    store.remove_image(&reference("app:1")).unwrap();
    store.remove_roots("signature", "app").unwrap();
    store.remove_roots("snapshot", "s").unwrap();
    assert_eq!(store.gc().unwrap().removed_blobs.len(), live.len());
    assert!(store.digests().unwrap().is_empty());
    assert!(blob_files(&store).is_empty());
}

// STORE-13
#[test]
fn gc_removes_abandoned_ingests_and_keeps_locked_and_recent_ones() {
    let (_dir, store) = new_store();
    let day = Duration::from_secs(25 * 60 * 60);
    let partial_of = |bytes: &[u8], len: usize, age: Option<Duration>| {
        let p = store.inner.partial_path(&Digest::sha256(bytes));
        fs::write(&p, &bytes[..len]).unwrap();
        if let Some(age) = age {
            set_mtime(&p, age);
        }
        p
    };
    let old = partial_of(b"old partial bytes", 5, Some(day));
    let recent = partial_of(b"recent partial bytes", 5, None);
    let empty = partial_of(b"empty partial", 0, None);
    let committed = put(&store, b"committed", OCTETS);
    store.add_root("test", "keep", &committed).unwrap();
    fs::write(store.inner.partial_path(&committed), b"comm").unwrap();
    let junk = store.root().join("ingest/sha256/not-a-digest");
    fs::write(&junk, b"junk").unwrap();

    let held_bytes = b"held partial bytes";
    let held_digest = Digest::sha256(held_bytes);
    let mut held = store.ingest(&held_digest, None).unwrap();
    held.write_all(&held_bytes[..4]).unwrap();
    set_mtime(&store.inner.partial_path(&held_digest), day);

    let report = store.gc().unwrap();
    assert_eq!(report.removed_ingests, 4, "old, empty, committed, junk");
    assert_eq!(report.freed_bytes, 5 + 4 + 4);
    assert!(!old.exists() && !empty.exists() && !junk.exists());
    assert!(!store.inner.partial_path(&committed).exists());
    assert!(recent.exists(), "a recent partial stays for resume");
    assert_eq!(store.digests().unwrap(), vec![committed]);

    // The held ingest was not touched and still commits.
    held.write_all(&held_bytes[4..]).unwrap();
    held.commit(OCTETS, None).unwrap();
    assert!(store.blob_size(&held_digest).unwrap().is_some());
}

// STORE-10
#[test]
fn gc_waits_for_a_lease_and_try_gc_refuses_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let (puller, collector) = (
        Store::open(dir.path()).unwrap(),
        Store::open(dir.path()).unwrap(),
    );
    let pulled = b"committed by a pull that has not named it yet";
    let orphan = put(&puller, pulled, OCTETS);
    let lease = puller.lease().unwrap();
    let second = puller.lease().unwrap();

    match collector.try_gc().unwrap_err() {
        Error::Busy {
            what: "gc", reason, ..
        } => assert!(reason.contains("lease"), "{reason}"),
        other => panic!("unexpected {other}"),
    }
    let (tx, rx) = mpsc::channel();
    let gc = {
        let collector = collector.clone();
        thread::spawn(move || tx.send(collector.gc()).unwrap())
    };
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "gc must wait for the lease"
    );
    assert!(matches!(collector.try_gc(), Err(Error::Busy { .. })));
    drop(lease);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "one lease is still held"
    );
    assert_eq!(
        puller.blob_size(&orphan).unwrap(),
        Some(pulled.len() as u64),
        "nothing swept under a lease"
    );
    drop(second);
    let report = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    gc.join().unwrap();
    assert_eq!(report.removed_blobs, vec![orphan]);
}

// STORE-10
#[test]
fn gc_refuses_instead_of_waiting_for_its_own_lease() {
    let (_dir, store) = new_store();
    let lease = store.lease().unwrap();
    assert!(matches!(store.gc(), Err(Error::Busy { .. })));
    assert!(matches!(store.clone().try_gc(), Err(Error::Busy { .. })));
    drop(lease);
    store.gc().unwrap();
}

// STORE-14: an ingest dropped without commit, and a partial a dead process left without a lock.
#[test]
fn crashed_ingests_leave_invisible_resumable_partials() {
    let dir = tempfile::tempdir().unwrap();
    let (dropped, orphaned) = (data(50_000), data(30_000));
    let (d1, d2) = (Digest::sha256(&dropped), Digest::sha256(&orphaned));
    {
        let store = Store::open(dir.path()).unwrap();
        let mut ingest = store.ingest(&d1, Some(50_000)).unwrap();
        ingest.write_all(&dropped[..20_000]).unwrap();
    }
    fs::write(
        dir.path().join("ingest/sha256").join(d2.hex()),
        &orphaned[..7000],
    )
    .unwrap();

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.blob_size(&d1).unwrap(), None);
    assert_eq!(store.blob_size(&d2).unwrap(), None);
    assert!(store.digests().unwrap().is_empty() && blob_files(&store).is_empty());
    for (d, bytes, offset) in [(&d1, &dropped, 20_000), (&d2, &orphaned, 7000)] {
        let mut ingest = store.ingest(d, Some(bytes.len() as u64)).unwrap();
        assert_eq!(ingest.offset(), offset);
        ingest.write_all(&bytes[offset as usize..]).unwrap();
        ingest.commit(OCTETS, None).unwrap();
        assert_eq!(&store.read_blob(d, u64::MAX).unwrap(), bytes);
    }
    assert!(partials(&store).is_empty());
}

// STORE-14: killed between making the partial read-only and renaming it.
#[test]
fn complete_read_only_partial_commits_on_next_ingest() {
    let (_dir, store) = new_store();
    let bytes = data(4096);
    let d = Digest::sha256(&bytes);
    let partial = store.inner.partial_path(&d);
    fs::write(&partial, &bytes).unwrap();
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o444)).unwrap();
    let ingest = store.ingest(&d, Some(4096)).unwrap();
    assert_eq!(ingest.offset(), 4096);
    assert_eq!(ingest.commit(OCTETS, None).unwrap(), 4096);
    assert_eq!(store.read_blob(&d, 4096).unwrap(), bytes);
}

/// Not a test on its own: the child process of the multi-process tests, idle unless
/// `FERRY_STORE_TEST_CHILD` names what to do.
#[test]
fn child_process_helper() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let store = Store::open(std::env::var(CHILD_ROOT).unwrap()).unwrap();
    let bytes = data(BIG);
    let d = Digest::sha256(&bytes);
    let mut ingest = store.ingest(&d, Some(BIG as u64)).unwrap();
    match mode.as_str() {
        "resume" => {
            let offset = ingest.offset();
            println!("CHILD offset={offset}");
            ingest.write_all(&bytes[offset as usize..]).unwrap();
            ingest.commit(OCTETS, Some("child")).unwrap();
        }
        "crash" => {
            ingest.write_all(&bytes[..BIG / 2]).unwrap();
            println!("CHILD ready");
            thread::sleep(Duration::from_secs(600));
        }
        other => panic!("unknown child mode {other:?}"),
    }
}

/// A child process, killed if the test ends (or fails) before it exits.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(mode: &str, root: &Path) -> ChildGuard {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::child_process_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_ROOT, root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// The first `CHILD …` line the child prints.
fn child_says(child: &mut ChildGuard) -> String {
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next() {
        // libtest prints `test <name> ... ` before the test's own output on the same line.
        let line = line.unwrap();
        if let Some(at) = line.find("CHILD ") {
            // Keep reading, so the child does not die writing to a closed pipe.
            thread::spawn(move || lines.for_each(drop));
            return line[at + "CHILD ".len()..].to_string();
        }
    }
    panic!("child exited without a word: {:?}", child.0.wait());
}

// STORE-5
#[test]
fn second_process_waits_for_the_ingest_lock_then_resumes() {
    let (dir, store) = new_store();
    let bytes = data(BIG);
    let d = Digest::sha256(&bytes);
    let mut ingest = store.ingest(&d, Some(BIG as u64)).unwrap();
    ingest.write_all(&bytes[..BIG / 3]).unwrap();
    let mut child = spawn_child("resume", dir.path());
    thread::sleep(Duration::from_millis(700));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the child must wait while we hold the ingest"
    );
    drop(ingest);
    assert_eq!(child_says(&mut child), format!("offset={}", BIG / 3));
    assert!(child.0.wait().unwrap().success());
    assert_eq!(store.read_blob(&d, BIG as u64).unwrap(), bytes);
    assert_eq!(
        store.blob_record(&d).unwrap().unwrap().source.as_deref(),
        Some("child")
    );
}

// STORE-14
#[test]
fn sigkilled_ingest_leaves_a_consistent_resumable_store() {
    let (dir, store) = new_store();
    let bytes = data(BIG);
    let d = Digest::sha256(&bytes);
    let mut child = spawn_child("crash", dir.path());
    assert_eq!(child_says(&mut child), "ready");
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let store2 = Store::open(dir.path()).unwrap();
    assert_eq!(store2.blob_size(&d).unwrap(), None);
    assert!(blob_files(&store2).is_empty());
    let mut ingest = store.ingest(&d, Some(BIG as u64)).unwrap();
    assert_eq!(ingest.offset(), (BIG / 2) as u64);
    ingest.write_all(&bytes[BIG / 2..]).unwrap();
    ingest.commit(OCTETS, None).unwrap();
    assert_eq!(store2.read_blob(&d, BIG as u64).unwrap(), bytes);
}

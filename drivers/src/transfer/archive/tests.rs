//! Save and load over synthetic images in temporary stores (specs/archive.md). The e2e
//! suite (`tests/e2e/tests/airgap.rs`) checks the formats against skopeo.

use std::io::{Read, Write};
use std::path::Path;

use ferry_core::media;
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Reference, Store};
use ferry_signing::{generate_key, sign, Policy, PrivateKey};

use super::*;
use crate::transfer::signatures::{signatures_in_store, store_signature};

/// An uncompressed layer tar holding one file.
fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

/// Incompressible bytes.
fn noise(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut d = Digest::sha256(b"seed");
    while out.len() < len {
        d = Digest::sha256(d.hex().as_bytes());
        out.extend_from_slice(&hex::decode(d.hex()).unwrap());
    }
    out.truncate(len);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Puts an image of `layers` (uncompressed tars; stored gzip-compressed when `gz`) into
/// `store` under `reference`; returns its manifest digest.
fn put_image(store: &Store, reference: &str, layers: &[Vec<u8>], gz: bool) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(Digest::sha256(tar).to_string());
        let (blob, mt) = if gz {
            (gzip(tar), media::OCI_LAYER_GZIP)
        } else {
            (tar.clone(), media::OCI_LAYER_TAR)
        };
        let d = Digest::sha256(&blob);
        store.put_blob(&d, &blob, mt, None).unwrap();
        descs.push(
            serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": blob.len()}),
        );
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = Digest::sha256(&config);
    store
        .put_blob(&config_digest, &config, media::OCI_CONFIG, None)
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let digest = Digest::sha256(&manifest);
    store
        .put_blob(&digest, &manifest, media::OCI_MANIFEST, None)
        .unwrap();
    let r = Reference::parse(reference).unwrap();
    store
        .set_image(&ImageRecord {
            name: r.name(),
            tag: r.tag().map(str::to_string),
            digest: digest.clone(),
            media_type: media::OCI_MANIFEST.into(),
            size: 0,
            created: None,
            platform: Some("linux/amd64".into()),
            updated: 1,
        })
        .unwrap();
    digest
}

fn store(dir: &Path, name: &str) -> Store {
    Store::open(dir.join(name)).unwrap()
}

fn refs(list: &[&str]) -> Vec<Reference> {
    list.iter().map(|r| Reference::parse(r).unwrap()).collect()
}

fn save_to_vec(store: &Store, list: &[&str], options: &SaveOptions) -> Vec<u8> {
    let mut out = Vec::new();
    save(store, &refs(list), options, &mut out).unwrap();
    out
}

fn load_from(store: &Store, bytes: &[u8]) -> Result<LoadReport> {
    load(store, bytes, &Policy::accept_all(), &LoadOptions::default())
}

/// Names, blobs and partials: what a test compares to say "the store is as before".
type Snapshot = (
    Vec<(String, Option<String>, Digest)>,
    Vec<Digest>,
    Vec<String>,
);

fn snapshot(store: &Store) -> Snapshot {
    let names = store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.tag, i.digest))
        .collect();
    let mut partials: Vec<String> = std::fs::read_dir(store.root().join("ingest/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    partials.sort();
    let stray: Vec<String> = std::fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-load-"))
        .collect();
    partials.extend(stray);
    (names, store.digests().unwrap(), partials)
}

const BASE: &str = "registry.example.com/team/base:1";
const APP: &str = "registry.example.com/team/app:1";

/// A store with BASE (one gzip layer) and APP (BASE's layer plus one).
fn source(dir: &Path) -> (Store, Digest, Digest) {
    let s = store(dir, "a");
    let base_layer = layer_tar("bin/base", &noise(300_000));
    let app_layer = layer_tar("app/hello.txt", b"hello");
    let base = put_image(&s, BASE, std::slice::from_ref(&base_layer), true);
    let app = put_image(&s, APP, &[base_layer, app_layer], true);
    (s, base, app)
}

#[test]
fn ferry_archive_round_trip_names_the_same_digests_arc_2_10() {
    let dir = tempfile::tempdir().unwrap();
    let (a, base, app) = source(dir.path());
    let bytes = save_to_vec(&a, &[BASE, APP], &SaveOptions::default());
    let b = store(dir.path(), "b");
    let report = load_from(&b, &bytes).unwrap();
    assert_eq!(report.format, Format::Ferry);
    assert_eq!(report.images.len(), 2);
    assert_eq!(
        b.find_image(&Reference::parse(BASE).unwrap())
            .unwrap()
            .digest,
        base
    );
    assert_eq!(
        b.find_image(&Reference::parse(APP).unwrap())
            .unwrap()
            .digest,
        app
    );
    assert_eq!(a.digests().unwrap(), b.digests().unwrap());
    // The TOC is first and lists the blob entries in order.
    let mut archive = tar::Archive::new(&bytes[..]);
    let paths: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(&paths[..3], &[TOC_FILE, "oci-layout", "index.json"]);
    let blobs: Vec<&String> = paths
        .iter()
        .filter(|p| digest_of_path(p).is_some())
        .collect();
    assert_eq!(
        blobs.len(),
        6,
        "{paths:?}: 2 manifests, 2 configs, 2 layers"
    );
}

#[test]
fn saving_the_same_images_twice_gives_the_same_bytes_arc_2() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = source(dir.path());
    let one = save_to_vec(&a, &[APP], &SaveOptions::default());
    let two = save_to_vec(&a, &[APP], &SaveOptions::default());
    assert_eq!(one, two);
}

#[test]
fn loading_again_changes_nothing_arc_13() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = source(dir.path());
    let bytes = save_to_vec(&a, &[APP], &SaveOptions::default());
    let b = store(dir.path(), "b");
    let first = load_from(&b, &bytes).unwrap();
    assert!(first.images[0].changed);
    let before = b.images().unwrap();
    let again = load_from(&b, &bytes).unwrap();
    assert!(!again.images[0].changed);
    assert_eq!(again.blobs_added, 0);
    assert_eq!(b.images().unwrap(), before, "updated time kept too");
}

#[test]
fn truncated_archive_leaves_the_store_as_before_at_every_cut_arc_10() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = source(dir.path());
    let bytes = save_to_vec(&a, &[BASE, APP], &SaveOptions::default());
    let b = store(dir.path(), "b");
    let before = snapshot(&b);
    // Cuts inside the TOC, inside a layer, at entry boundaries and before the end blocks.
    let mut cuts: Vec<usize> = (1..20).map(|i| bytes.len() * i / 20).collect();
    cuts.extend([100, 512, 1024, 1536, bytes.len() - 1024, bytes.len() - 1]);
    for cut in cuts {
        match load_from(&b, &bytes[..cut]) {
            Err(e) => assert!(
                e.to_string().contains("truncated") || e.kind == ErrorKind::Corrupt,
                "cut at {cut}: {e}"
            ),
            // Cutting only the end-of-archive zero blocks leaves every entry whole.
            Ok(_) => {
                assert!(
                    cut >= bytes.len() - 1024,
                    "cut at {cut} of {} loaded",
                    bytes.len()
                );
                continue;
            }
        }
        assert_eq!(snapshot(&b), before, "cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_anywhere_fails_the_load_and_changes_nothing_arc_9_10() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = source(dir.path());
    let bytes = save_to_vec(&a, &[APP], &SaveOptions::default());
    let b = store(dir.path(), "b");
    let before = snapshot(&b);
    // Flip a byte of every blob entry's data.
    let mut archive = tar::Archive::new(&bytes[..]);
    let offsets: Vec<u64> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| digest_of_path(&e.path().unwrap().to_string_lossy()).is_some())
        .map(|e| e.raw_file_position() + e.size() / 2)
        .collect();
    assert!(offsets.len() >= 4);
    for at in offsets {
        let mut bad = bytes.clone();
        bad[at as usize] ^= 0x20;
        let err = load_from(&b, &bad).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert_eq!(err.kind, ErrorKind::Corrupt);
        assert_eq!(snapshot(&b), before);
    }
}

#[test]
fn excluded_blobs_stay_out_and_must_be_in_the_loading_store_arc_6() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = source(dir.path());
    let b = store(dir.path(), "b");
    load_from(&b, &save_to_vec(&a, &[BASE], &SaveOptions::default())).unwrap();
    let have = read_digest_list(
        &b.digests()
            .unwrap()
            .iter()
            .map(|d| format!("{d}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let options = SaveOptions {
        exclude: have.clone(),
        ..SaveOptions::default()
    };
    let full = save_to_vec(&a, &[APP], &SaveOptions::default());
    let inc = save_to_vec(&a, &[APP], &options);
    assert!(
        inc.len() < full.len() / 2,
        "{} vs {}",
        inc.len(),
        full.len()
    );
    let mut archive = tar::Archive::new(&inc[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if let Some(d) = digest_of_path(&e.path().unwrap().to_string_lossy()) {
            assert!(!have.contains(&d), "{d} was excluded");
        }
    }
    // A store without the excluded blobs refuses it at once; one with them loads it.
    let empty = store(dir.path(), "c");
    let err = load_from(&empty, &inc).unwrap_err();
    assert!(err.to_string().contains("leaves out blob"), "{err}");
    assert_eq!(snapshot(&empty).0, Vec::new());
    load_from(&b, &inc).unwrap();
    assert_eq!(
        b.find_image(&Reference::parse(APP).unwrap())
            .unwrap()
            .digest,
        a.find_image(&Reference::parse(APP).unwrap())
            .unwrap()
            .digest
    );
    // Only ferry archives may leave blobs out.
    let mut out = Vec::new();
    let oci = SaveOptions {
        format: Format::OciArchive,
        exclude: have,
        ..SaveOptions::default()
    };
    assert!(save(&a, &refs(&[APP]), &oci, &mut out).is_err());
}

#[test]
fn compressed_streams_are_detected_by_magic_bytes_arc_1_9() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, app) = source(dir.path());
    let zstd_options = SaveOptions {
        compression: StreamCompression::Zstd,
        ..SaveOptions::default()
    };
    let zst = save_to_vec(&a, &[APP], &zstd_options);
    assert!(zst.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
    let b = store(dir.path(), "b");
    let r = load_from(&b, &zst).unwrap();
    assert_eq!(r.compression, StreamCompression::Zstd);
    assert_eq!(r.images[0].digest, app);
    let gz = gzip(&save_to_vec(&a, &[APP], &SaveOptions::default()));
    let c = store(dir.path(), "c");
    let r = load_from(&c, &gz).unwrap();
    assert_eq!(r.compression, StreamCompression::Gzip);
    assert_eq!(r.images[0].digest, app);
}

#[test]
fn docker_archive_has_uncompressed_layers_named_by_diff_id_and_loads_back_arc_8_11() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = source(dir.path());
    let options = SaveOptions {
        format: Format::DockerArchive,
        ..SaveOptions::default()
    };
    let bytes = save_to_vec(&a, &[APP, BASE], &options);
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut layers = 0;
    let mut first = None;
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        first.get_or_insert(path.clone());
        if let Some(hex) = path.strip_suffix("/layer.tar") {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert_eq!(Digest::sha256(&data).hex(), hex);
            layers += 1;
        }
    }
    assert_eq!(first.as_deref(), Some("manifest.json"));
    assert_eq!(layers, 2, "the shared layer once");
    let b = store(dir.path(), "b");
    let r = load_from(&b, &bytes).unwrap();
    assert_eq!(r.format, Format::DockerArchive);
    let app = b.find_image(&Reference::parse(APP).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&b.read_blob(&app.digest, 1 << 20).unwrap()).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], media::OCI_LAYER_TAR);
    }
    // The config is the same bytes: the same image ID.
    let a_manifest: serde_json::Value = serde_json::from_slice(
        &a.read_blob(
            &a.find_image(&Reference::parse(APP).unwrap())
                .unwrap()
                .digest,
            1 << 20,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["config"]["digest"], a_manifest["config"]["digest"]);
    // And it loads the same again (fixed manifest bytes).
    assert!(!load_from(&b, &bytes).unwrap().images[0].changed);
}

#[test]
fn plain_tag_ref_names_need_a_name_arc_12() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _, app) = source(dir.path());
    let options = SaveOptions {
        format: Format::OciArchive,
        ..SaveOptions::default()
    };
    let bytes = save_to_vec(&a, &[APP], &options);
    // Rewrite index.json as skopeo's oci-archive:FILE:v1 names it.
    let mut out = tar::Builder::new(Vec::new());
    let mut archive = tar::Archive::new(&bytes[..]);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if path == "index.json" {
            let mut index: serde_json::Value = serde_json::from_slice(&data).unwrap();
            index["manifests"][0]["annotations"] =
                serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
            data = serde_json::to_vec(&index).unwrap();
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        out.append_data(&mut h, &path, &data[..]).unwrap();
    }
    let bytes = out.into_inner().unwrap();
    let b = store(dir.path(), "b");
    let err = load_from(&b, &bytes).unwrap_err();
    assert!(err.to_string().contains("--name"), "{err}");
    let options = LoadOptions {
        name: Some("example.org/x/app".into()),
        ..LoadOptions::default()
    };
    let r = load(&b, &bytes[..], &Policy::accept_all(), &options).unwrap();
    assert_eq!(r.images[0].reference, "example.org/x/app:v1");
    assert_eq!(r.images[0].digest, app);
}

struct Keys {
    dir: tempfile::TempDir,
    key: PrivateKey,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let files = generate_key(dir.path(), "team").unwrap();
    Keys {
        key: PrivateKey::load(&files.private_key).unwrap(),
        dir,
    }
}

fn policy(keys: &Keys) -> Policy {
    let path = keys.dir.path().join("policy.toml");
    std::fs::write(
        &path,
        "[default]\naction = \"reject\"\n\n[[rule]]\nprefix = \"registry.example.com/team\"\n\
         action = \"signed-by\"\nkeys = [\"team.pub\"]\n",
    )
    .unwrap();
    Policy::load(&path).unwrap()
}

#[test]
fn signatures_travel_and_the_policy_decides_before_anything_is_named_arc_5_10() {
    let dir = tempfile::tempdir().unwrap();
    let (a, base, app) = source(dir.path());
    let k = keys();
    let envelope = sign(&k.key, &Reference::parse(APP).unwrap(), &app, None).unwrap();
    store_signature(&a, &app, &envelope).unwrap();
    let policy = policy(&k);

    // APP is signed: it loads under the signed-by policy, with its signature.
    let signed = save_to_vec(&a, &[APP], &SaveOptions::default());
    let b = store(dir.path(), "b");
    let r = load(&b, &signed[..], &policy, &LoadOptions::default()).unwrap();
    assert_eq!(r.images[0].signatures, 1);
    assert_eq!(
        signatures_in_store(&b, &app).unwrap(),
        vec![envelope.clone()]
    );

    // BASE is not signed: an archive with both is refused whole.
    let both = save_to_vec(&a, &[APP, BASE], &SaveOptions::default());
    let c = store(dir.path(), "c");
    let before = snapshot(&c);
    let err = load(&c, &both[..], &policy, &LoadOptions::default()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Rejected, "{err}");
    assert_eq!(snapshot(&c), before);
    assert!(signatures_in_store(&c, &app).unwrap().is_empty());
    let _ = base;

    // The oci-archive carries the set too, under the signature tag.
    let oci = SaveOptions {
        format: Format::OciArchive,
        ..SaveOptions::default()
    };
    let bytes = save_to_vec(&a, &[APP], &oci);
    let d = store(dir.path(), "d");
    let r = load(&d, &bytes[..], &policy, &LoadOptions::default()).unwrap();
    assert_eq!(r.images[0].signatures, 1);
}

#[test]
fn a_blob_missing_from_the_store_fails_the_save_before_writing_arc_14() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let app = put_image(&s, APP, &[layer_tar("x", b"y")], false);
    let manifest: serde_json::Value =
        serde_json::from_slice(&s.read_blob(&app, 1 << 20).unwrap()).unwrap();
    let layer = Digest::parse(manifest["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let path = s.blob_path(&layer);
    std::fs::remove_file(&path).unwrap();
    let mut out = Vec::new();
    let err = save(&s, &refs(&[APP]), &SaveOptions::default(), &mut out).unwrap_err();
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    assert!(out.is_empty());
}

#[test]
fn a_blob_damaged_at_rest_fails_the_save_and_the_stream_stays_unfinished_arc_14() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let app = put_image(&s, APP, &[layer_tar("x", &[1u8; 10_000])], false);
    let manifest: serde_json::Value =
        serde_json::from_slice(&s.read_blob(&app, 1 << 20).unwrap()).unwrap();
    let layer = Digest::parse(manifest["layers"][0]["digest"].as_str().unwrap()).unwrap();
    let path = s.blob_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[600] ^= 1;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let mut out = Vec::new();
    let err = save(&s, &refs(&[APP]), &SaveOptions::default(), &mut out).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    // What was written is no archive a loader takes.
    let b = store(dir.path(), "b");
    assert!(load_from(&b, &out).is_err());
    assert!(b.images().unwrap().is_empty());
}

//! Key files, key ids and cosign key files (SIG-1 to SIG-5, SIG-19).

mod common;

use std::os::unix::fs::PermissionsExt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use ferry_signing::{
    generate_key, import_cosign_key, sign, Error, IdentityMatch, PrivateKey, PublicKey,
};
use sha2::{Digest as _, Sha256};
use IdentityMatch::Exact;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

#[test]
fn generated_private_key_is_0600_pkcs8_and_public_key_is_spki_sig_1_sig_2() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate_key(dir.path(), "team").unwrap();
    assert_eq!(files.private_key, dir.path().join("team.key"));
    assert_eq!(files.public_key, dir.path().join("team.pub"));
    assert_eq!(mode(&files.private_key), 0o600);
    assert_eq!(mode(&files.public_key) & 0o600, 0o600);
    let private = std::fs::read_to_string(&files.private_key).unwrap();
    assert!(
        private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{private}"
    );
    let public = std::fs::read_to_string(&files.public_key).unwrap();
    assert!(
        public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public}"
    );
    // Only the two files: no temporary file is left behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["team.key", "team.pub"]);
}

#[test]
fn private_key_is_0600_even_with_a_permissive_umask_sig_2() {
    // The mode is given when the file is created; a umask of 0 must not widen it.
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: umask(2) cannot fail. It is process-wide; no other test in this binary
    // asserts on the mode of a file it creates without setting it explicitly.
    let old = unsafe { libc::umask(0) };
    let files = generate_key(dir.path(), "open");
    unsafe { libc::umask(old) };
    assert_eq!(mode(&files.unwrap().private_key), 0o600);
}

#[test]
fn generation_refuses_to_overwrite_either_file_sig_2() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_key(dir.path(), "k").unwrap();
    let before = std::fs::read(&first.private_key).unwrap();
    match generate_key(dir.path(), "k") {
        Err(Error::KeyExists { path }) => assert_eq!(path, first.private_key),
        other => panic!("expected KeyExists, got {other:?}"),
    }
    assert_eq!(std::fs::read(&first.private_key).unwrap(), before);

    // Only the .pub exists: still refused, and no .key appears.
    std::fs::write(dir.path().join("p.pub"), "mine").unwrap();
    let e = generate_key(dir.path(), "p").unwrap_err();
    assert!(
        matches!(&e, Error::KeyExists { path } if path.ends_with("p.pub")),
        "{e}"
    );
    assert!(e.to_string().contains("p.pub"), "{e}");
    assert!(!dir.path().join("p.key").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("p.pub")).unwrap(),
        "mine"
    );

    // A dangling symlink is not overwritten either.
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("l.key")).unwrap();
    assert!(matches!(
        generate_key(dir.path(), "l"),
        Err(Error::KeyExists { .. })
    ));
    assert!(!dir.path().join("elsewhere").exists());
}

#[test]
fn generation_rejects_names_that_are_not_plain_file_names_sig_1() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["../escape", "a/b", "", ".hidden"] {
        assert!(
            matches!(
                generate_key(dir.path(), bad),
                Err(Error::InvalidKeyName { .. })
            ),
            "{bad}"
        );
    }
    assert!(!dir.path().parent().unwrap().join("escape.key").exists());
}

#[test]
fn generation_into_a_missing_directory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let e = generate_key(&missing, "k").unwrap_err();
    assert!(e.to_string().contains("no-such-dir"), "{e}");
}

#[test]
fn key_id_is_sha256_of_the_raw_public_key_and_stable_sig_3() {
    let dir = tempfile::tempdir().unwrap();
    let files = generate_key(dir.path(), "k").unwrap();
    let private = PrivateKey::load(&files.private_key).unwrap();
    let public = PublicKey::load(&files.public_key).unwrap();
    assert_eq!(private.id(), &files.id);
    assert_eq!(public.id(), &files.id);
    assert_eq!(PublicKey::load(&files.public_key).unwrap().id(), &files.id);
    // Independently: the raw key is the last 32 bytes of the SPKI DER.
    let der = pem_der(&std::fs::read_to_string(&files.public_key).unwrap());
    let raw = &der[der.len() - 32..];
    let want = hex::encode(&Sha256::digest(raw)[..8]);
    assert_eq!(files.id.to_string(), want);
}

#[test]
fn key_id_of_a_fixed_key_never_changes_sig_3() {
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::load(&write_private(dir.path(), "rfc.key", RFC8410_PRIVATE)).unwrap();
    // RFC 8410 §10.1 is the public key of RFC 8410 §10.3's private key.
    assert_eq!(
        key.public_key().to_pem(),
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n"
    );
    assert_eq!(key.id().to_string(), "e744c0791320c328");
}

#[test]
fn private_key_readable_by_group_or_others_is_refused_sig_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_private(dir.path(), "k.key", RFC8410_PRIVATE);
    for bad in [0o640, 0o604, 0o644, 0o660, 0o610] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
        match PrivateKey::load(&path) {
            Err(e @ Error::KeyPermissions { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("k.key") && msg.contains(&format!("{bad:04o}")),
                    "{msg}"
                );
                assert!(msg.contains("chmod 600"), "{msg}");
            }
            other => panic!("mode {bad:o}: expected KeyPermissions, got {other:?}"),
        }
    }
    for good in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(good)).unwrap();
        assert!(PrivateKey::load(&path).is_ok(), "mode {good:o}");
    }
}

#[test]
fn debug_of_a_private_key_prints_no_secret_sig_4() {
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::load(&write_private(dir.path(), "k.key", RFC8410_PRIVATE)).unwrap();
    let debug = format!("{key:?} {key:#?}");
    let seed = hex::decode(RFC8410_SEED_HEX).unwrap();
    let pem_body = RFC8410_PRIVATE.lines().nth(1).unwrap();
    for secret in [
        RFC8410_SEED_HEX.to_string(),
        RFC8410_SEED_HEX.to_uppercase(),
        RFC8410_SEED_HEX[..8].to_string(),
        format!("{:?}", &seed[..4])
            .trim_end_matches(']')
            .to_string(),
        pem_body.to_string(),
        STANDARD.encode(&seed)[..12].to_string(),
    ] {
        assert!(!debug.contains(&secret), "Debug leaks {secret}: {debug}");
    }
    assert!(
        debug.contains("redacted") && debug.contains(&key.id().to_string()),
        "{debug}"
    );
}

#[test]
fn key_load_errors_name_the_file_and_the_problem_sig_4_sig_5() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let garbage = write_private(
        d,
        "garbage.key",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let public_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
    let public_as_private = write_private(d, "pub-as.key", public_pem);
    let private_as_public = write_private(d, "priv-as.pub", RFC8410_PRIVATE);
    let big = write_private(d, "big.key", &"A".repeat(17 * 1024));
    let cases: Vec<(ferry_signing::Result<()>, &str, &str)> = vec![
        (
            PrivateKey::load(&d.join("missing.key")).map(drop),
            "missing.key",
            "No such file",
        ),
        (
            PrivateKey::load(&garbage).map(drop),
            "garbage.key",
            "PKCS#8",
        ),
        (
            PrivateKey::load(&public_as_private).map(drop),
            "pub-as.key",
            "PKCS#8",
        ),
        (
            PrivateKey::load(d).map(drop),
            d.to_str().unwrap(),
            "not a regular file",
        ),
        (PrivateKey::load(&big).map(drop), "big.key", "larger than"),
        (
            PublicKey::load(&private_as_public).map(drop),
            "priv-as.pub",
            "SPKI",
        ),
        (
            PublicKey::load(&d.join("missing.pub")).map(drop),
            "missing.pub",
            "No such file",
        ),
    ];
    for (result, file, problem) in cases {
        let e = result.unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(problem), "{file}: {e}");
    }
}

#[test]
fn weak_public_keys_are_refused_sig_5() {
    // The identity point (y = 1) has small order; a signature check against it proves nothing.
    let mut der = hex::decode("302a300506032b6570032100").unwrap();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    der.extend_from_slice(&identity);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&der)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weak.pub");
    std::fs::write(&path, pem).unwrap();
    let e = PublicKey::load(&path).unwrap_err().to_string();
    assert!(e.contains("weak.pub") && e.contains("weak"), "{e}");
}

/// SIG-1: OpenSSL reads ferry's private key (PKCS#8 version 1) and derives the same public
/// key; ferry reads OpenSSL's; what either signs, the other verifies.
#[test]
fn keys_cross_with_openssl_both_ways_sig_1() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl (scripts/install-deps installs it)");
        (out.status.success(), out.stdout, out.stderr)
    };
    let ok = |args: &[&str]| {
        let (success, stdout, stderr) = run(args);
        assert!(
            success,
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&stderr)
        );
        stdout
    };
    let image = reference("registry.example.com/team/app:1");
    let manifest = digest("manifest");

    // ferry's key in openssl: the same public key, and openssl verifies ferry's signature.
    let files = generate_key(dir.path(), "ferry").unwrap();
    let public = ok(&["pkey", "-in", "ferry.key", "-pubout"]);
    assert_eq!(
        String::from_utf8(public).unwrap(),
        std::fs::read_to_string(&files.public_key).unwrap()
    );
    let signed = sign(
        &PrivateKey::load(&files.private_key).unwrap(),
        &image,
        &manifest,
        None,
    )
    .unwrap();
    let (payload, signature) = parts(&signed);
    std::fs::write(dir.path().join("payload"), &payload).unwrap();
    std::fs::write(dir.path().join("sig"), &signature).unwrap();
    ok(&[
        "pkeyutl",
        "-verify",
        "-rawin",
        "-pubin",
        "-inkey",
        "ferry.pub",
        "-in",
        "payload",
        "-sigfile",
        "sig",
    ]);
    std::fs::write(dir.path().join("other"), b"another payload").unwrap();
    let (verified, _, _) = run(&[
        "pkeyutl",
        "-verify",
        "-rawin",
        "-pubin",
        "-inkey",
        "ferry.pub",
        "-in",
        "other",
        "-sigfile",
        "sig",
    ]);
    assert!(!verified, "openssl accepted a signature of other bytes");

    // openssl's key in ferry: it loads, and ferry verifies what openssl signs with it.
    ok(&["genpkey", "-algorithm", "ed25519", "-out", "ossl.key"]);
    ok(&["pkey", "-in", "ossl.key", "-pubout", "-out", "ossl.pub"]);
    std::fs::set_permissions(
        dir.path().join("ossl.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let theirs = PrivateKey::load(&dir.path().join("ossl.key")).unwrap();
    let their_public = PublicKey::load(&dir.path().join("ossl.pub")).unwrap();
    assert_eq!(theirs.id(), their_public.id());
    // The payload ferry writes for that key, signed by openssl.
    let (payload, _) = parts(&sign(&theirs, &image, &manifest, None).unwrap());
    std::fs::write(dir.path().join("payload"), &payload).unwrap();
    let signature = ok(&[
        "pkeyutl", "-sign", "-rawin", "-inkey", "ossl.key", "-in", "payload",
    ]);
    let from_openssl = envelope(&payload, &signature);
    let trusted = [their_public];
    assert!(from_openssl
        .verify(&trusted, &image, &manifest, Exact)
        .is_ok());
    let mut forged = signature.clone();
    forged[0] ^= 1;
    assert!(envelope(&payload, &forged)
        .verify(&trusted, &image, &manifest, Exact)
        .is_err());

    // ECDSA P-256, cosign's key type: openssl's key loads in ferry; what ferry signs openssl
    // verifies (DER over SHA-256), and what openssl signs ferry verifies.
    ok(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "ec.key",
    ]);
    ok(&["pkey", "-in", "ec.key", "-pubout", "-out", "ec.pub"]);
    std::fs::set_permissions(
        dir.path().join("ec.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ec = PrivateKey::load(&dir.path().join("ec.key")).unwrap();
    let ec_public = PublicKey::load(&dir.path().join("ec.pub")).unwrap();
    assert_eq!(ec.public_key(), &ec_public);
    assert_eq!(ec_public.algorithm(), "ecdsa-p256");
    let (payload, signature) = parts(&sign(&ec, &image, &manifest, None).unwrap());
    std::fs::write(dir.path().join("payload"), &payload).unwrap();
    std::fs::write(dir.path().join("sig"), &signature).unwrap();
    ok(&[
        "dgst",
        "-sha256",
        "-verify",
        "ec.pub",
        "-signature",
        "sig",
        "payload",
    ]);
    let cosign_payload = common::payload("registry.example.com/team/app", &manifest);
    std::fs::write(dir.path().join("payload"), &cosign_payload).unwrap();
    let signature = ok(&["dgst", "-sha256", "-sign", "ec.key", "payload"]);
    let from_openssl = envelope(cosign_payload.as_bytes(), &signature);
    let trusted = [ec_public];
    assert!(from_openssl
        .verify(&trusted, &image, &manifest, IdentityMatch::Repository)
        .is_ok());
    assert!(from_openssl
        .verify(&trusted, &image, &manifest, Exact)
        .is_err());
}

/// SIG-19: a key exported in cosign's encrypted form imports back as the same key, only with
/// its passphrase, never over an existing file; the imported key signs.
#[test]
fn cosign_key_files_export_and_import_sig_19() {
    let dir = tempfile::tempdir().unwrap();
    let (original, _) = p256_key(dir.path(), "orig.key");
    let pem = std::fs::read_to_string(dir.path().join("orig.key")).unwrap();
    let sealed = original.to_cosign_pem(b"s3cret").unwrap();
    assert!(sealed.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
    assert!(!sealed.contains(pem.lines().nth(1).unwrap()));

    let e = import_cosign_key(dir.path(), "imported", &sealed, b"wrong").unwrap_err();
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    assert!(!dir.path().join("imported.key").exists());
    let files = import_cosign_key(dir.path(), "imported", &sealed, b"s3cret").unwrap();
    assert_eq!(&files.id, original.id());
    assert_eq!(mode(&files.private_key), 0o600);
    let imported = PrivateKey::load(&files.private_key).unwrap();
    assert_eq!(imported.public_key(), original.public_key());
    assert_eq!(
        PublicKey::load(&files.public_key).unwrap(),
        *original.public_key()
    );
    let image = reference("registry.example.com/team/app:1");
    let e = sign(&imported, &image, &digest("m"), None).unwrap();
    assert!(e
        .verify(
            std::slice::from_ref(original.public_key()),
            &image,
            &digest("m"),
            Exact
        )
        .is_ok());
    let again = import_cosign_key(dir.path(), "imported", &sealed, b"s3cret").unwrap_err();
    assert!(matches!(again, Error::KeyExists { .. }), "{again}");

    // Ed25519 keys travel the same way.
    let ed = generate_key(dir.path(), "ed").unwrap();
    let ed_key = PrivateKey::load(&ed.private_key).unwrap();
    let files =
        import_cosign_key(dir.path(), "ed2", &ed_key.to_cosign_pem(b"").unwrap(), b"").unwrap();
    assert_eq!(files.id, ed.id);
}

/// SIG-5: a public key of another type (another curve, RSA, X25519, Ed448) is refused when it
/// is loaded, naming the file; it never becomes a key that signatures are checked against.
#[test]
fn public_keys_of_other_types_are_refused_naming_the_file_sig_5() {
    let dir = tempfile::tempdir().unwrap();
    for (name, algorithm) in [
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
        ),
        (
            "secp256k1",
            &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ][..],
        ),
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"][..],
        ),
        ("x25519", &["-algorithm", "X25519"][..]),
        ("ed448", &["-algorithm", "ED448"][..]),
    ] {
        let private = dir.path().join(format!("{name}.key"));
        let public = dir.path().join(format!("{name}.pub"));
        for args in [
            [
                &["genpkey", "-out", private.to_str().unwrap()][..],
                algorithm,
            ]
            .concat(),
            vec![
                "pkey",
                "-in",
                private.to_str().unwrap(),
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ],
        ] {
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .expect("openssl (scripts/install-deps installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        let e = PublicKey::load(&public).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{name}.pub")) && e.contains("not an Ed25519 or ECDSA P-256"),
            "{name}: {e}"
        );
    }
}

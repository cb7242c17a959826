//! Signing and verifying one signature, and the attacks a verifier must reject (SIG-6 to SIG-11).

mod common;

use std::time::SystemTime;

use common::*;
use ferry_signing::{
    sign, Error, IdentityMatch, PrivateKey, PublicKey, SignatureEnvelope, PAYLOAD_MEDIA_TYPE,
};

use IdentityMatch::{Exact, Repository};

const APP1: &str = "registry.example.com/team/app:1";

struct Fixture {
    _dir: tempfile::TempDir,
    signer: TestKey,
    other: TestKey,
    rfc: PublicKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = new_key(dir.path(), "signer");
    let other = new_key(dir.path(), "other");
    let rfc_private =
        PrivateKey::load(&write_private(dir.path(), "rfc.key", RFC8410_PRIVATE)).unwrap();
    let rfc = rfc_private.public_key().clone();
    Fixture {
        _dir: dir,
        signer,
        other,
        rfc,
    }
}

fn signed(f: &Fixture, image: &str, manifest: &str) -> SignatureEnvelope {
    sign(
        &f.signer.private,
        &reference(image),
        &digest(manifest),
        Some(SystemTime::now()),
    )
    .unwrap()
}

#[test]
fn a_valid_signature_verifies_and_names_its_key_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "m1");
    let trusted = [f.other.public.clone(), f.signer.public.clone()];
    let key = e
        .verify(&trusted, &reference(APP1), &digest("m1"), Exact)
        .unwrap();
    assert_eq!(key, &f.signer.public);
    // Through the stored envelope and through a layer and back, as it travels.
    let stored = SignatureEnvelope::from_bytes(&e.to_bytes()).unwrap();
    let layer = SignatureEnvelope::from_layer(e.payload().to_vec(), &e.signature_base64()).unwrap();
    for again in [stored, layer] {
        assert_eq!(again, e);
        assert_eq!(
            again
                .verify(&trusted, &reference(APP1), &digest("m1"), Exact)
                .unwrap(),
            &f.signer.public
        );
    }
    assert_eq!(
        PAYLOAD_MEDIA_TYPE,
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
}

#[test]
fn short_names_are_signed_and_verified_in_normalized_form_sig_6() {
    let f = fixture();
    let e = sign(&f.signer.private, &reference("busybox"), &digest("m"), None).unwrap();
    let (payload, _) = parts(&e);
    let payload = String::from_utf8(payload).unwrap();
    assert!(
        payload.contains(r#""docker-reference":"docker.io/library/busybox:latest""#),
        "{payload}"
    );
    let trusted = [f.signer.public.clone()];
    assert!(e
        .verify(
            &trusted,
            &reference("docker.io/library/busybox:latest"),
            &digest("m"),
            Exact
        )
        .is_ok());
}

#[test]
fn a_signature_for_another_name_is_rejected_sig_10() {
    let f = fixture();
    let e = signed(&f, "registry.example.com/team/other:1", "m1");
    let err = e
        .verify(
            std::slice::from_ref(&f.signer.public),
            &reference(APP1),
            &digest("m1"),
            Exact,
        )
        .unwrap_err();
    match &err {
        Error::IdentityMismatch {
            signed, requested, ..
        } => {
            assert_eq!(signed, "registry.example.com/team/other:1");
            assert_eq!(requested, "registry.example.com/team/app:1");
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
}

#[test]
fn a_signature_for_another_digest_is_rejected_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "m1");
    let err = e
        .verify(
            std::slice::from_ref(&f.signer.public),
            &reference(APP1),
            &digest("m2"),
            Exact,
        )
        .unwrap_err();
    match &err {
        Error::DigestMismatch {
            signed, expected, ..
        } => {
            assert_eq!(signed, &digest("m1").to_string());
            assert_eq!(expected, &digest("m2"));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

#[test]
fn a_signature_by_an_unknown_key_is_rejected_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "m1");
    let err = e
        .verify(
            &[f.other.public.clone(), f.rfc.clone()],
            &reference(APP1),
            &digest("m1"),
            Exact,
        )
        .unwrap_err();
    match &err {
        Error::UntrustedSignature { tried, .. } => {
            assert_eq!(tried, &[f.other.public.id().clone(), f.rfc.id().clone()]);
        }
        other => panic!("expected UntrustedSignature, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(APP1) && msg.contains(&f.other.public.id().to_string()),
        "{msg}"
    );
    // No trusted keys at all: nothing verifies.
    assert!(matches!(
        e.verify(&[], &reference(APP1), &digest("m1"), Exact),
        Err(Error::UntrustedSignature { .. })
    ));
}

#[test]
fn changing_any_payload_byte_breaks_the_signature_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "m1");
    let (payload, signature) = parts(&e);
    let trusted = [f.signer.public.clone()];
    for i in 0..payload.len() {
        let mut p = payload.clone();
        p[i] ^= 0x01;
        let forged = envelope(&p, &signature);
        let r = forged.verify(&trusted, &reference(APP1), &digest("m1"), Exact);
        assert!(
            matches!(r, Err(Error::UntrustedSignature { .. })),
            "byte {i}: {r:?}"
        );
    }
    // Appending or dropping a byte breaks it too.
    let mut longer = payload.clone();
    longer.push(b' ');
    assert!(envelope(&longer, &signature)
        .verify(&trusted, &reference(APP1), &digest("m1"), Exact)
        .is_err());
    let shorter = &payload[..payload.len() - 1];
    assert!(envelope(shorter, &signature)
        .verify(&trusted, &reference(APP1), &digest("m1"), Exact)
        .is_err());
}

#[test]
fn changing_any_signature_byte_breaks_the_signature_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "m1");
    let (payload, signature) = parts(&e);
    let trusted = [f.signer.public.clone()];
    for i in 0..signature.len() {
        for bit in [0x01, 0x80] {
            let mut s = signature.clone();
            s[i] ^= bit;
            let r = envelope(&payload, &s).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
            assert!(
                matches!(r, Err(Error::UntrustedSignature { .. })),
                "byte {i} bit {bit:x}: {r:?}"
            );
        }
    }
}

#[test]
fn a_malleated_signature_with_s_plus_l_is_rejected_sig_10() {
    // S + L is the same scalar mod L; accepting it would make signatures malleable.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let f = fixture();
    let e = signed(&f, APP1, "m1");
    let (payload, mut signature) = parts(&e);
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(signature[32 + i]) + u16::from(L[i]) + carry;
        signature[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L fits in 256 bits");
    let trusted = [f.signer.public.clone()];
    let r = envelope(&payload, &signature).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
    assert!(matches!(r, Err(Error::UntrustedSignature { .. })), "{r:?}");
}

#[test]
fn a_signature_for_app_1_replayed_for_app_2_with_the_same_digest_is_rejected_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "same manifest");
    let app2 = reference("registry.example.com/team/app:2");
    let trusted = [f.signer.public.clone()];
    let r = e.verify(&trusted, &app2, &digest("same manifest"), Exact);
    assert!(
        matches!(&r, Err(Error::IdentityMismatch { signed, .. }) if signed.ends_with("app:1")),
        "{r:?}"
    );
}

#[test]
fn envelopes_swapped_between_two_images_are_rejected_sig_10() {
    let f = fixture();
    let a = reference("registry.example.com/team/a:1");
    let b = reference("registry.example.com/team/b:1");
    let ea = sign(&f.signer.private, &a, &digest("ma"), None).unwrap();
    let eb = sign(&f.signer.private, &b, &digest("mb"), None).unwrap();
    let trusted = [f.signer.public.clone()];
    assert!(ea.verify(&trusted, &a, &digest("ma"), Exact).is_ok());
    assert!(eb.verify(&trusted, &b, &digest("mb"), Exact).is_ok());
    assert!(matches!(
        eb.verify(&trusted, &a, &digest("ma"), Exact),
        Err(Error::IdentityMismatch { .. })
    ));
    assert!(matches!(
        ea.verify(&trusted, &b, &digest("mb"), Exact),
        Err(Error::IdentityMismatch { .. })
    ));
    // Swapping manifests under one name is caught by the digest.
    let a2 = sign(&f.signer.private, &a, &digest("ma2"), None).unwrap();
    assert!(matches!(
        a2.verify(&trusted, &a, &digest("ma"), Exact),
        Err(Error::DigestMismatch { .. })
    ));
}

#[test]
fn an_unknown_critical_field_is_rejected_an_unknown_optional_field_is_accepted_sig_6() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload(APP1, &digest("m1"));
    // Sanity: the plain payload is accepted, so the rejections below are about the field.
    assert!(forge(base.as_bytes())
        .verify(&trusted, &reference(APP1), &digest("m1"), Exact)
        .is_ok());

    let critical = base.replacen(r#""type":"#, r#""runAs":"root","type":"#, 1);
    let r = forge(critical.as_bytes()).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
    assert!(
        matches!(&r, Err(Error::InvalidPayload { reason, .. }) if reason.contains("unknown field `runAs`")),
        "{r:?}"
    );

    let optional = base.replacen(
        r#""optional":null"#,
        r#""optional":{"creator":"cosign","timestamp":1735787045,"x-future":{"a":[1.5,2]}}"#,
        1,
    );
    let r = forge(optional.as_bytes()).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
    assert!(r.is_ok(), "{optional}: {r:?}");
}

#[test]
fn a_wrong_type_or_version_is_rejected_sig_6() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload(APP1, &digest("m1"));
    for other in [
        "ferry signature v1",
        "cosign container image signature v2",
        "atomic container signature",
        "Cosign Container Image Signature",
    ] {
        let p = base.replacen("cosign container image signature", other, 1);
        let r = forge(p.as_bytes()).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
        assert!(
            matches!(&r, Err(Error::InvalidPayload { reason, .. }) if reason.contains(other)),
            "{other}: {r:?}"
        );
    }
}

#[test]
fn duplicate_key_payloads_are_rejected_though_correctly_signed_sig_6() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload(APP1, &digest("m1"));
    let evil = "registry.example.com/evil/app:1";
    let variants = [
        // A second identity: a lax parser might take either one.
        base.replacen(
            &format!(r#""docker-reference":"{APP1}""#),
            &format!(r#""docker-reference":"{APP1}","docker-reference":"{evil}""#),
            1,
        ),
        base.replacen(
            r#""image":{"#,
            &format!(r#""identity":{{"docker-reference":"{evil}"}},"image":{{"#),
            1,
        ),
        base.replacen(
            r#""docker-manifest-digest":"#,
            &format!(
                r#""docker-manifest-digest":"{}","docker-manifest-digest":"#,
                digest("m2")
            ),
            1,
        ),
        base.replacen(r#""optional":null"#, r#""optional":null,"optional":{}"#, 1),
    ];
    for p in variants {
        let r = forge(p.as_bytes()).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
        assert!(
            matches!(&r, Err(Error::InvalidPayload { reason, .. }) if reason.contains("duplicate key")),
            "{p}: {r:?}"
        );
    }
}

#[test]
fn other_signers_layouts_of_the_same_claims_are_accepted_sig_6() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload(APP1, &digest("m1"));
    for p in [
        format!("{base}\n"),
        base.replace("\":", "\" : ").replace(",\"", ",\n  \""),
        base.replacen(r#","optional":null"#, "", 1),
        base.replacen("app", r"\u0061pp", 1),
        format!(
            r#"{{"optional":{{"creator":"x"}},"critical":{{"type":"cosign container image signature","image":{{"docker-manifest-digest":"{}"}},"identity":{{"docker-reference":"{APP1}"}}}}}}"#,
            digest("m1")
        ),
    ] {
        let r = forge(p.as_bytes()).verify(&trusted, &reference(APP1), &digest("m1"), Exact);
        assert!(r.is_ok(), "{p}: {r:?}");
    }
}

#[test]
fn a_repository_only_signature_counts_only_under_repository_match_sig_10() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let d = digest("m1");
    // cosign's usual form: the repository without a tag.
    let repo = forge(payload("registry.example.com/team/app", &d).as_bytes());
    let r = repo.verify(&trusted, &reference(APP1), &d, Exact);
    assert!(
        matches!(&r, Err(Error::IdentityMismatch { signed, .. }) if signed == "registry.example.com/team/app"),
        "{r:?}"
    );
    assert!(repo
        .verify(&trusted, &reference(APP1), &d, Repository)
        .is_ok());
    // Another tag is another claim, under either match.
    let other_tag = forge(payload("registry.example.com/team/app:2", &d).as_bytes());
    for m in [Exact, Repository] {
        assert!(matches!(
            other_tag.verify(&trusted, &reference(APP1), &d, m),
            Err(Error::IdentityMismatch { .. })
        ));
    }
    // Another repository, a reference pinning a digest, or no reference at all.
    for identity in [
        "registry.example.com/team/other".to_string(),
        format!("registry.example.com/team/app@{d}"),
        format!("registry.example.com/team/app:1@{d}"),
        "registry.example.com/team/App".to_string(),
        String::new(),
    ] {
        let e = forge(payload(&identity, &d).as_bytes());
        assert!(
            matches!(
                e.verify(&trusted, &reference(APP1), &d, Repository),
                Err(Error::IdentityMismatch { .. })
            ),
            "{identity}"
        );
    }
    // Docker Hub names as cosign writes them.
    let hub = forge(payload("index.docker.io/library/busybox", &d).as_bytes());
    assert!(hub
        .verify(&trusted, &reference("busybox:1"), &d, Repository)
        .is_ok());
}

#[test]
fn ecdsa_p256_signatures_verify_with_their_key_only_sig_10() {
    let dir = tempfile::tempdir().unwrap();
    let (key, signing) = p256_key(dir.path(), "p256.key");
    let public_path = dir.path().join("p256.pub");
    std::fs::write(&public_path, key.public_key().to_pem()).unwrap();
    let public = PublicKey::load(&public_path).unwrap();
    assert_eq!(public.algorithm(), "ecdsa-p256");
    assert_eq!(&public, key.public_key());

    let d = digest("m1");
    let e = sign(&key, &reference(APP1), &d, None).unwrap();
    let (p, sig) = parts(&e);
    // ASN.1 DER: a SEQUENCE of two INTEGERs.
    assert_eq!(sig[0], 0x30, "{sig:02x?}");
    assert!(e
        .verify(std::slice::from_ref(&public), &reference(APP1), &d, Exact)
        .is_ok());
    // A raw (r || s) signature of the same bytes is not DER and is refused.
    let raw: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&signing, &p);
    let r = envelope(&p, &raw.to_bytes()).verify(
        std::slice::from_ref(&public),
        &reference(APP1),
        &d,
        Exact,
    );
    assert!(matches!(r, Err(Error::UntrustedSignature { .. })), "{r:?}");
    // Not by an Ed25519 key, and an Ed25519 signature not by it.
    let f = fixture();
    assert!(matches!(
        e.verify(
            std::slice::from_ref(&f.signer.public),
            &reference(APP1),
            &d,
            Exact
        ),
        Err(Error::UntrustedSignature { .. })
    ));
    let ed = signed(&f, APP1, "m1");
    assert!(matches!(
        ed.verify(std::slice::from_ref(&public), &reference(APP1), &d, Exact),
        Err(Error::UntrustedSignature { .. })
    ));
    // Any flipped bit breaks it.
    for i in 0..sig.len() {
        let mut s = sig.clone();
        s[i] ^= 0x01;
        assert!(
            envelope(&p, &s)
                .verify(std::slice::from_ref(&public), &reference(APP1), &d, Exact)
                .is_err(),
            "byte {i}"
        );
    }
}

#[test]
fn signing_and_verifying_need_a_tag_and_a_consistent_digest_sig_10_sig_11() {
    let f = fixture();
    let d = digest("m1");
    let untagged = reference(&format!("registry.example.com/team/app@{d}"));
    assert!(matches!(
        sign(&f.signer.private, &untagged, &d, None),
        Err(Error::NoTag { .. })
    ));
    let e = signed(&f, APP1, "m1");
    let trusted = [f.signer.public.clone()];
    assert!(matches!(
        e.verify(&trusted, &untagged, &d, Exact),
        Err(Error::NoTag { .. })
    ));

    let pinned_elsewhere = reference(&format!("{APP1}@{}", digest("m2")));
    assert!(matches!(
        sign(&f.signer.private, &pinned_elsewhere, &d, None),
        Err(Error::DigestConflict { .. })
    ));
    assert!(matches!(
        e.verify(&trusted, &pinned_elsewhere, &d, Exact),
        Err(Error::DigestConflict { .. })
    ));
    // Pinned to the same digest is fine.
    let pinned = reference(&format!("{APP1}@{d}"));
    assert!(e.verify(&trusted, &pinned, &d, Exact).is_ok());
}

#[test]
fn signing_is_deterministic_for_the_same_inputs_sig_11() {
    let f = fixture();
    let a = sign(&f.signer.private, &reference(APP1), &digest("m1"), None).unwrap();
    let b = sign(&f.signer.private, &reference(APP1), &digest("m1"), None).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    let (payload, _) = parts(&a);
    let want = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{APP1}"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":{{"creator":"ferry {}"}}}}"#,
        digest("m1"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(String::from_utf8(payload).unwrap(), want);
}

/// The DER SEQUENCE of two INTEGERs with content `r` and `s` (already minimal or not), with
/// the given length encoding of the SEQUENCE.
fn der_sequence(r: &[u8], s: &[u8], long_length: bool) -> Vec<u8> {
    let mut body = vec![0x02, r.len() as u8];
    body.extend_from_slice(r);
    body.extend_from_slice(&[0x02, s.len() as u8]);
    body.extend_from_slice(s);
    let mut out = vec![0x30];
    if long_length {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    out
}

/// The INTEGER contents of a DER ECDSA signature: (r, s).
fn der_integers(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(der[0], 0x30);
    let r_len = der[3] as usize;
    let r = der[4..4 + r_len].to_vec();
    let s = der[6 + r_len..].to_vec();
    assert_eq!(der[5 + r_len] as usize, s.len());
    (r, s)
}

/// SIG-8, SIG-10 step 3: a P-256 signature verifies in strict DER form only; both the low-S and the
/// high-S form verify, as cosign (Go's crypto/ecdsa) and the sigstore crate accept both.
#[test]
fn p256_signatures_verify_in_strict_der_with_either_s_sig_8_sig_10() {
    let dir = tempfile::tempdir().unwrap();
    let (key, signing) = p256_key(dir.path(), "p256.key");
    let trusted = [key.public_key().clone()];
    let d = digest("m1");
    let p = sign(&key, &reference(APP1), &d, None)
        .unwrap()
        .payload()
        .to_vec();
    let verifies = |sig: &[u8]| {
        envelope(&p, sig)
            .verify(&trusted, &reference(APP1), &d, Exact)
            .is_ok()
    };
    let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&signing, &p);
    let low_der = sig
        .normalize_s()
        .unwrap_or(sig)
        .to_der()
        .as_bytes()
        .to_vec();
    let high_der = flip_s(&low_der);
    let high = p256::ecdsa::Signature::from_der(&high_der).unwrap();
    assert!(
        high.normalize_s().is_some(),
        "the flipped signature is high-S"
    );
    assert!(verifies(&low_der), "low-S DER");
    assert!(verifies(&high_der), "high-S DER");

    // BER and other encodings of the same numbers are not DER: refused.
    let (r, s) = der_integers(&low_der);
    assert_eq!(der_sequence(&r, &s, false), low_der);
    let padded = |i: &[u8]| [&[0u8][..], i].concat();
    let mut trailing = low_der.clone();
    trailing.push(0);
    for (what, sig) in [
        ("long-form length", der_sequence(&r, &s, true)),
        (
            "r with a needless leading zero",
            der_sequence(&padded(&r), &s, false),
        ),
        (
            "s with a needless leading zero",
            der_sequence(&r, &padded(&s), false),
        ),
        ("a byte after the SEQUENCE", trailing),
    ] {
        assert!(!verifies(&sig), "{what}: {sig:02x?}");
    }
}

/// SIG-10 step 5: under `match = "repository"` the signed repository must be the requested
/// one exactly, not a longer name, a sibling with the same beginning, or a parent.
#[test]
fn a_repository_signature_vouches_for_its_repository_alone_sig_10() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let d = digest("m1");
    let repo = forge(payload("registry.example.com/team/app", &d).as_bytes());
    for requested in [
        "registry.example.com/team/app-other:1",
        "registry.example.com/team/app/sub:1",
        "registry.example.com/team/ap:1",
        "registry.example.com/team:1",
        "registry.example.com:5000/team/app:1",
        "other.example.com/team/app:1",
    ] {
        let r = repo.verify(&trusted, &reference(requested), &d, Repository);
        assert!(
            matches!(r, Err(Error::IdentityMismatch { .. })),
            "{requested}: {r:?}"
        );
    }
    // A signature naming app:1 vouches neither for app:2 nor, as a repository, for app-other.
    let tagged = forge(payload(APP1, &d).as_bytes());
    for requested in [
        "registry.example.com/team/app:2",
        "registry.example.com/team/app-other:1",
    ] {
        for m in [Exact, Repository] {
            assert!(
                tagged
                    .verify(&trusted, &reference(requested), &d, m)
                    .is_err(),
                "{requested} {m:?}"
            );
        }
    }
}

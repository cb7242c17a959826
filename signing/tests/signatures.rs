//! Signing and verifying one envelope, and the attacks a verifier must reject (SIG-6 to SIG-11).

mod common;

use std::time::SystemTime;

use common::*;
use ferry_signing::{sign, Error, PrivateKey, PublicKey, SignatureEnvelope, SIGNATURE_MEDIA_TYPE};

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
    let key = e.verify(&trusted, &reference(APP1), &digest("m1")).unwrap();
    assert_eq!(key, &f.signer.public);
    assert_eq!(e.key_id_hint(), Some(f.signer.public.id()));
    // Through bytes and back, as it travels.
    let again = SignatureEnvelope::from_bytes(&e.to_bytes()).unwrap();
    assert_eq!(
        again
            .verify(&trusted, &reference(APP1), &digest("m1"))
            .unwrap(),
        &f.signer.public
    );
    assert_eq!(
        SIGNATURE_MEDIA_TYPE,
        "application/vnd.ferry.signature.v1+json"
    );
}

#[test]
fn short_names_are_signed_and_verified_in_normalized_form_sig_6() {
    let f = fixture();
    let e = sign(&f.signer.private, &reference("busybox"), &digest("m"), None).unwrap();
    let (payload, _) = parts(&e);
    let payload = String::from_utf8(payload).unwrap();
    assert!(
        payload.contains(r#""name":"docker.io/library/busybox","tag":"latest""#),
        "{payload}"
    );
    let trusted = [f.signer.public.clone()];
    assert!(e
        .verify(
            &trusted,
            &reference("docker.io/library/busybox:latest"),
            &digest("m")
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
        )
        .unwrap_err();
    match &err {
        Error::UntrustedSignature { tried, hint, .. } => {
            assert_eq!(tried, &[f.other.public.id().clone(), f.rfc.id().clone()]);
            assert_eq!(hint.as_ref(), Some(f.signer.public.id()));
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
        e.verify(&[], &reference(APP1), &digest("m1")),
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
        let forged = envelope(&p, &signature, None);
        let r = forged.verify(&trusted, &reference(APP1), &digest("m1"));
        assert!(
            matches!(r, Err(Error::UntrustedSignature { .. })),
            "byte {i}: {r:?}"
        );
    }
    // Appending or dropping a byte breaks it too.
    let mut longer = payload.clone();
    longer.push(b' ');
    assert!(envelope(&longer, &signature, None)
        .verify(&trusted, &reference(APP1), &digest("m1"))
        .is_err());
    let shorter = &payload[..payload.len() - 1];
    assert!(envelope(shorter, &signature, None)
        .verify(&trusted, &reference(APP1), &digest("m1"))
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
            let r = envelope(&payload, &s, None).verify(&trusted, &reference(APP1), &digest("m1"));
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
    let r = envelope(&payload, &signature, None).verify(&trusted, &reference(APP1), &digest("m1"));
    assert!(matches!(r, Err(Error::UntrustedSignature { .. })), "{r:?}");
}

#[test]
fn a_signature_for_app_1_replayed_for_app_2_with_the_same_digest_is_rejected_sig_10() {
    let f = fixture();
    let e = signed(&f, APP1, "same manifest");
    let app2 = reference("registry.example.com/team/app:2");
    let trusted = [f.signer.public.clone()];
    let r = e.verify(&trusted, &app2, &digest("same manifest"));
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
    assert!(ea.verify(&trusted, &a, &digest("ma")).is_ok());
    assert!(eb.verify(&trusted, &b, &digest("mb")).is_ok());
    assert!(matches!(
        eb.verify(&trusted, &a, &digest("ma")),
        Err(Error::IdentityMismatch { .. })
    ));
    assert!(matches!(
        ea.verify(&trusted, &b, &digest("mb")),
        Err(Error::IdentityMismatch { .. })
    ));
    // Swapping manifests under one name is caught by the digest.
    let a2 = sign(&f.signer.private, &a, &digest("ma2"), None).unwrap();
    assert!(matches!(
        a2.verify(&trusted, &a, &digest("ma")),
        Err(Error::DigestMismatch { .. })
    ));
}

#[test]
fn an_unknown_critical_field_is_rejected_an_unknown_optional_field_is_accepted_sig_6() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload("registry.example.com/team/app", "1", &digest("m1"));
    // Sanity: the plain payload is accepted, so the rejections below are about the field.
    assert!(forge(base.as_bytes(), None)
        .verify(&trusted, &reference(APP1), &digest("m1"))
        .is_ok());

    let critical = base.replacen(r#""type":"#, r#""runAs":"root","type":"#, 1);
    let r = forge(critical.as_bytes(), None).verify(&trusted, &reference(APP1), &digest("m1"));
    assert!(
        matches!(&r, Err(Error::InvalidPayload { reason, .. }) if reason.contains("unknown field `runAs`")),
        "{r:?}"
    );

    let optional = format!(
        r#"{},"optional":{{"created":"2025-01-02T03:04:05Z","x-future":{{"a":[1,2]}}}}}}"#,
        &base[..base.len() - 1]
    );
    let r = forge(optional.as_bytes(), None).verify(&trusted, &reference(APP1), &digest("m1"));
    assert!(r.is_ok(), "{optional}: {r:?}");
}

#[test]
fn a_wrong_type_or_version_is_rejected_sig_6() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload("registry.example.com/team/app", "1", &digest("m1"));
    for other in [
        "ferry signature v2",
        "ferry signature",
        "atomic container signature",
        "Ferry Signature V1",
    ] {
        let p = base.replacen("ferry signature v1", other, 1);
        let r = forge(p.as_bytes(), None).verify(&trusted, &reference(APP1), &digest("m1"));
        assert!(
            matches!(&r, Err(Error::InvalidPayload { reason, .. }) if reason.contains(other)),
            "{other}: {r:?}"
        );
    }
}

#[test]
fn non_canonical_or_duplicate_key_payloads_are_rejected_though_correctly_signed_sig_7() {
    let f = fixture();
    let trusted = [f.rfc.clone()];
    let base = payload("registry.example.com/team/app", "1", &digest("m1"));
    let variants = [
        format!("{base}\n"),
        base.replace(':', ": "),
        base.replacen(
            r#""name":"registry.example.com/team/app","tag":"1""#,
            r#""tag":"1","name":"registry.example.com/team/app""#,
            1,
        ),
        // A second name: a lax parser might take either one.
        base.replacen(
            r#""tag":"1""#,
            r#""tag":"1","name":"registry.example.com/evil/app""#,
            1,
        ),
        base.replacen(r#""tag":"1""#, r#""tag":"2","tag":"1""#, 1),
        base.replacen("app", r"\u0061pp", 1),
    ];
    for p in variants {
        let r = forge(p.as_bytes(), None).verify(&trusted, &reference(APP1), &digest("m1"));
        assert!(
            matches!(&r, Err(Error::InvalidPayload { reason, .. }) if reason.contains("canonical")),
            "{p}: {r:?}"
        );
    }
}

#[test]
fn the_key_id_hint_neither_grants_nor_withholds_trust_sig_10() {
    let f = fixture();
    let base = payload("registry.example.com/team/app", "1", &digest("m1"));
    let signer_id = f.signer.public.id().to_string();
    let other_id = f.other.public.id().to_string();
    // Signed by the RFC key but claiming to be the trusted signer: rejected.
    let liar = forge(base.as_bytes(), Some(&signer_id));
    let only_signer = [f.signer.public.clone()];
    let r = liar.verify(&only_signer, &reference(APP1), &digest("m1"));
    assert!(matches!(r, Err(Error::UntrustedSignature { .. })), "{r:?}");
    // Signed by the trusted RFC key but with another key's id, or none: accepted by the RFC key.
    let trusted = [f.other.public.clone(), f.rfc.clone()];
    for hint in [Some(other_id.as_str()), None] {
        let e = forge(base.as_bytes(), hint);
        assert_eq!(
            e.verify(&trusted, &reference(APP1), &digest("m1")).unwrap(),
            &f.rfc
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
        e.verify(&trusted, &untagged, &d),
        Err(Error::NoTag { .. })
    ));

    let pinned_elsewhere = reference(&format!("{APP1}@{}", digest("m2")));
    assert!(matches!(
        sign(&f.signer.private, &pinned_elsewhere, &d, None),
        Err(Error::DigestConflict { .. })
    ));
    assert!(matches!(
        e.verify(&trusted, &pinned_elsewhere, &d),
        Err(Error::DigestConflict { .. })
    ));
    // Pinned to the same digest is fine.
    let pinned = reference(&format!("{APP1}@{d}"));
    assert!(e.verify(&trusted, &pinned, &d).is_ok());
}

#[test]
fn signing_is_deterministic_for_the_same_inputs_sig_11() {
    let f = fixture();
    let a = sign(&f.signer.private, &reference(APP1), &digest("m1"), None).unwrap();
    let b = sign(&f.signer.private, &reference(APP1), &digest("m1"), None).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    let (payload, _) = parts(&a);
    let want = format!(
        r#"{{"critical":{{"image":{{"name":"registry.example.com/team/app","tag":"1"}},"manifest":{{"digest":"{}"}},"type":"ferry signature v1"}},"optional":{{"key_id":"{}"}}}}"#,
        digest("m1"),
        f.signer.public.id()
    );
    assert_eq!(String::from_utf8(payload).unwrap(), want);
}

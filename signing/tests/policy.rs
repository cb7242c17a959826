//! Trust policy files, verdicts and TrustedImage (POL-1 to POL-11).

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use ferry_signing::{sign, Acceptance, Error, Policy, SignatureEnvelope, Verdict};

struct Site {
    dir: tempfile::TempDir,
    a: TestKey,
    b: TestKey,
    stranger: TestKey,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    Site {
        a: new_key(&keys, "a"),
        b: new_key(&keys, "b"),
        stranger: new_key(&keys, "stranger"),
        dir,
    }
}

impl Site {
    fn policy(&self, text: &str) -> Policy {
        Policy::load(&write_policy(self.dir.path(), text)).unwrap()
    }

    fn policy_err(&self, text: &str) -> String {
        Policy::load(&write_policy(self.dir.path(), text))
            .unwrap_err()
            .to_string()
    }

    fn sig(&self, key: &TestKey, image: &str, manifest: &str) -> SignatureEnvelope {
        sign(
            &key.private,
            &reference(image),
            &digest(manifest),
            Some(SystemTime::now()),
        )
        .unwrap()
    }
}

fn verdict(p: &Policy, image: &str, manifest: &str, sigs: &[SignatureEnvelope]) -> Verdict {
    p.evaluate(&reference(image), &digest(manifest), sigs)
        .unwrap()
}

fn rejected(v: Verdict) -> String {
    match v {
        Verdict::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

const TEAM_SIGNED: &str = r#"
[default]
action = "accept"

[[rule]]
prefix = "reg.io/team"
action = "signed-by"
keys = ["keys/a.pub", "keys/b.pub"]
"#;

#[test]
fn a_signed_image_under_signed_by_is_accepted_by_its_key_pol_6() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let v = verdict(
        &p,
        "reg.io/team/app:1",
        "m",
        &[s.sig(&s.b, "reg.io/team/app:1", "m")],
    );
    assert_eq!(
        v,
        Verdict::Accepted {
            how: Acceptance::SignedBy(vec![s.b.public.id().clone()])
        }
    );
}

#[test]
fn an_unsigned_image_under_signed_by_is_rejected_pol_6() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let reason = rejected(verdict(&p, "reg.io/team/app:1", "m", &[]));
    assert!(reason.contains("reg.io/team/app:1@sha256:"), "{reason}");
    assert!(reason.contains("no signatures were found"), "{reason}");
    assert!(
        reason.contains(&s.a.public.id().to_string())
            && reason.contains(&s.b.public.id().to_string()),
        "{reason}"
    );
    assert!(
        reason.contains("rule \"reg.io/team\"") && reason.contains("policy.toml, line"),
        "{reason}"
    );
}

#[test]
fn signatures_by_untrusted_keys_or_for_other_images_are_rejected_with_each_problem_pol_6() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let sigs = [
        s.sig(&s.stranger, "reg.io/team/app:1", "m"),
        s.sig(&s.a, "reg.io/team/app:2", "m"),
        s.sig(&s.a, "reg.io/team/app:1", "other manifest"),
    ];
    let reason = rejected(verdict(&p, "reg.io/team/app:1", "m", &sigs));
    assert!(reason.contains("0 valid of 3 found"), "{reason}");
    assert!(
        reason.contains("signature 1: ")
            && reason.contains("verifies with none of the trusted keys"),
        "{reason}"
    );
    assert!(
        reason.contains("signature 2: ")
            && reason.contains("is for reg.io/team/app:2, not reg.io/team/app:1"),
        "{reason}"
    );
    assert!(
        reason.contains("signature 3: ") && reason.contains(&digest("other manifest").to_string()),
        "{reason}"
    );
}

#[test]
fn a_bad_envelope_does_not_spoil_a_good_one_pol_6() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let sigs = [
        s.sig(&s.stranger, "reg.io/team/app:1", "m"),
        s.sig(&s.a, "reg.io/team/app:1", "m"),
    ];
    assert!(matches!(
        verdict(&p, "reg.io/team/app:1", "m", &sigs),
        Verdict::Accepted { .. }
    ));
}

#[test]
fn threshold_2_with_one_valid_signature_is_rejected_and_with_two_accepted_pol_6() {
    let s = site();
    let p = s.policy(&TEAM_SIGNED.replace("keys = [", "threshold = 2\nkeys = ["));
    let by_a = s.sig(&s.a, "reg.io/team/app:1", "m");
    let by_b = s.sig(&s.b, "reg.io/team/app:1", "m");
    let by_stranger = s.sig(&s.stranger, "reg.io/team/app:1", "m");
    let reason = rejected(verdict(
        &p,
        "reg.io/team/app:1",
        "m",
        &[by_a.clone(), by_stranger],
    ));
    assert!(
        reason.contains("requires valid signatures by 2 of the keys"),
        "{reason}"
    );
    assert!(reason.contains("1 valid of 2 found"), "{reason}");
    // Both keys, listed in the rule's order whatever the order of the signatures.
    let v = verdict(&p, "reg.io/team/app:1", "m", &[by_b, by_a]);
    assert_eq!(
        v,
        Verdict::Accepted {
            how: Acceptance::SignedBy(vec![s.a.public.id().clone(), s.b.public.id().clone()])
        }
    );
}

#[test]
fn two_signatures_by_the_same_key_count_once_pol_6() {
    let s = site();
    let p = s.policy(&TEAM_SIGNED.replace("keys = [", "threshold = 2\nkeys = ["));
    let image = reference("reg.io/team/app:1");
    let first = sign(
        &s.a.private,
        &image,
        &digest("m"),
        Some(SystemTime::UNIX_EPOCH),
    )
    .unwrap();
    let second = sign(
        &s.a.private,
        &image,
        &digest("m"),
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(60)),
    )
    .unwrap();
    assert_ne!(first, second, "two distinct envelopes");
    let reason = rejected(verdict(
        &p,
        "reg.io/team/app:1",
        "m",
        &[first.clone(), second, first],
    ));
    assert!(reason.contains("1 valid of 3 found"), "{reason}");
}

#[test]
fn a_name_under_reject_is_rejected_even_when_signed_pol_6() {
    let s = site();
    let p = s.policy(
        r#"
[default]
action = "signed-by"
keys = ["keys/a.pub"]

[[rule]]
prefix = "reg.io/banned"
action = "reject"
"#,
    );
    let reason = rejected(verdict(
        &p,
        "reg.io/banned/app:1",
        "m",
        &[s.sig(&s.a, "reg.io/banned/app:1", "m")],
    ));
    assert!(
        reason.contains("reg.io/banned/app:1")
            && reason.contains("rejected by rule \"reg.io/banned\""),
        "{reason}"
    );
    // The default (signed-by) applies elsewhere.
    assert!(matches!(
        verdict(
            &p,
            "reg.io/ok/app:1",
            "m",
            &[s.sig(&s.a, "reg.io/ok/app:1", "m")]
        ),
        Verdict::Accepted { .. }
    ));
    assert!(matches!(
        verdict(&p, "reg.io/ok/app:1", "m", &[]),
        Verdict::Rejected { .. }
    ));
}

#[test]
fn prefixes_match_on_path_component_boundaries_and_the_longest_wins_pol_5() {
    let s = site();
    let p = s.policy(
        r#"
[default]
action = "reject"

[[rule]]
prefix = "reg.io/team"
action = "signed-by"
keys = ["keys/a.pub"]

[[rule]]
prefix = "reg.io/team/public"
action = "accept"

[[rule]]
prefix = "reg.io:5000"
action = "accept"
"#,
    );
    let signed = |name: &str| p.requires_signature(&reference(name));
    assert!(
        signed("reg.io/team:1"),
        "the prefix itself is a name it matches"
    );
    assert!(signed("reg.io/team/app:1"));
    assert!(
        signed("reg.io/team/public-ish/app:1"),
        "public-ish is not under public"
    );
    assert!(
        !signed("reg.io/team/public/app:1"),
        "the longer prefix wins"
    );
    assert!(!signed("reg.io/team/public:1"));
    assert!(
        !signed("reg.io/teammate/app:1"),
        "teammate is not under team"
    );
    assert!(!signed("reg.io/te:1"));
    assert!(!signed("reg.io.evil.com/team/app:1"));
    assert!(matches!(
        verdict(&p, "reg.io/teammate/app:1", "m", &[]),
        Verdict::Rejected { .. }
    ));
    assert_eq!(
        verdict(&p, "reg.io/team/public/app:1", "m", &[]),
        Verdict::Accepted {
            how: Acceptance::Unsigned
        }
    );
    assert_eq!(
        verdict(&p, "reg.io:5000/x:1", "m", &[]),
        Verdict::Accepted {
            how: Acceptance::Unsigned
        }
    );
    let reason = rejected(verdict(&p, "reg.io:50001/x:1", "m", &[]));
    assert!(reason.contains("the default rule"), "{reason}");
}

#[test]
fn requires_signature_follows_the_rule_that_applies_pol_9() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    assert!(p.requires_signature(&reference("reg.io/team/app:1")));
    assert!(!p.requires_signature(&reference("reg.io/other/app:1")));
    assert!(!Policy::accept_all().requires_signature(&reference("reg.io/team/app:1")));
}

#[test]
fn an_untagged_reference_under_signed_by_is_rejected_pol_6() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let d = digest("m");
    let untagged = reference(&format!("reg.io/team/app@{d}"));
    let reason = rejected(
        p.evaluate(&untagged, &d, &[s.sig(&s.a, "reg.io/team/app:1", "m")])
            .unwrap(),
    );
    assert!(reason.contains("no tag"), "{reason}");
}

#[test]
fn a_reference_pinning_another_digest_is_an_error_not_a_verdict_pol_7() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let pinned = reference(&format!("reg.io/other/app:1@{}", digest("m1")));
    let r = p.evaluate(&pinned, &digest("m2"), &[]);
    assert!(matches!(r, Err(Error::DigestConflict { .. })), "{r:?}");
    assert!(p.check(&pinned, &digest("m2"), &[]).is_err());
}

#[test]
fn check_returns_a_trusted_image_pinned_to_the_digest_pol_8() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    let image = reference("reg.io/team/app:1");
    let t = p
        .check(
            &image,
            &digest("m"),
            &[s.sig(&s.a, "reg.io/team/app:1", "m")],
        )
        .unwrap();
    assert_eq!(
        t.reference().to_string(),
        format!("reg.io/team/app:1@{}", digest("m"))
    );
    assert_eq!(t.digest(), &digest("m"));
    assert_eq!(
        t.how(),
        &Acceptance::SignedBy(vec![s.a.public.id().clone()])
    );
    let unsigned = p
        .check(&reference("reg.io/other/x:2"), &digest("n"), &[])
        .unwrap();
    assert_eq!(unsigned.how(), &Acceptance::Unsigned);
}

#[test]
fn check_turns_a_rejection_into_an_error_naming_image_and_keys_pol_8() {
    let s = site();
    let p = s.policy(TEAM_SIGNED);
    match p.check(&reference("reg.io/team/app:1"), &digest("m"), &[]) {
        Err(Error::Rejected { image, reason }) => {
            assert_eq!(image, format!("reg.io/team/app:1@{}", digest("m")));
            assert!(reason.contains(&s.a.public.id().to_string()), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[test]
fn accept_all_accepts_unsigned_images_pol_10() {
    let p = Policy::accept_all();
    assert_eq!(p.source(), None);
    let t = p
        .check(&reference("anything:1"), &digest("m"), &[])
        .unwrap();
    assert_eq!(t.how(), &Acceptance::Unsigned);
}

#[test]
fn unknown_keys_in_the_policy_are_errors_naming_file_and_line_pol_1() {
    let s = site();
    for (text, line, needle) in [
        ("[default]\naction = \"accept\"\nactoin = \"reject\"\n", 3, "actoin"),
        ("[default]\naction = \"accept\"\n\n[[rule]]\nprefix = \"reg.io\"\naction = \"accept\"\nkeyz = []\n", 7, "keyz"),
        ("[default]\naction = \"accept\"\n[defaults]\naction = \"reject\"\n", 3, "defaults"),
        ("[default]\naction = \"acept\"\n", 2, "acept"),
    ] {
        let e = s.policy_err(text);
        assert!(e.contains("policy.toml") && e.contains(&format!("line {line}")), "{text:?}: {e}");
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn toml_syntax_errors_are_one_line_naming_file_and_line_pol_1() {
    // Found by the config_toml fuzz target: toml's message for a bad table header has a
    // line break in it.
    let e = site().policy_err("[default]\naction = \"accept\"\n[[rulr.io/x\"\n");
    assert!(e.contains("policy.toml") && e.contains("line 3"), "{e}");
    assert!(!e.contains('\n'), "{e:?}");
}

#[test]
fn invalid_rules_are_errors_naming_the_line_pol_1_pol_2_pol_4() {
    let s = site();
    let rule = |body: &str| format!("[default]\naction = \"accept\"\n\n[[rule]]\n{body}\n");
    for (text, line, needle) in [
        ("# no default\n[[rule]]\nprefix = \"reg.io\"\naction = \"accept\"\n".to_string(), None, "missing field `default`"),
        ("[default]\nprefix = \"reg.io\"\naction = \"accept\"\n".to_string(), Some(2), "[default] takes no prefix"),
        (rule("action = \"accept\""), Some(4), "needs a prefix"),
        (rule("prefix = \"busybox\"\naction = \"accept\""), Some(5), "did you mean \"docker.io/library/busybox\""),
        (rule("prefix = \"reg.io/team/\"\naction = \"accept\""), Some(5), "not a normalized image name"),
        (rule("prefix = \"reg.io\"\naction = \"accept\"\nkeys = [\"keys/a.pub\"]"), Some(7), "keys only apply"),
        (rule("prefix = \"reg.io\"\naction = \"reject\"\nthreshold = 1"), Some(7), "threshold only applies"),
        (rule("prefix = \"reg.io\"\naction = \"signed-by\""), Some(6), "needs keys"),
        (rule("prefix = \"reg.io\"\naction = \"signed-by\"\nkeys = []"), Some(7), "at least one key"),
        (rule("prefix = \"reg.io\"\naction = \"signed-by\"\nkeys = [\"keys/a.pub\"]\nthreshold = 0"), Some(8), "threshold 0 must be between 1 and the number of keys (1)"),
        (rule("prefix = \"reg.io\"\naction = \"signed-by\"\nkeys = [\"keys/a.pub\", \"keys/b.pub\"]\nthreshold = 3"), Some(8), "threshold 3"),
        (rule("prefix = \"reg.io\"\naction = \"signed-by\"\nkeys = [\"keys/a.pub\"]\nthreshold = -1"), Some(8), "threshold -1"),
        (format!("{}\n[[rule]]\nprefix = \"reg.io\"\naction = \"reject\"\n", rule("prefix = \"reg.io\"\naction = \"accept\"")), Some(9), "already has a rule on line 5"),
    ] {
        let e = s.policy_err(&text);
        assert!(e.contains(needle), "{text:?}: {e}");
        if let Some(line) = line {
            assert!(e.contains(&format!("policy.toml, line {line}:")), "{text:?}: {e}");
        }
    }
}

#[test]
fn the_same_key_twice_in_a_rule_is_an_error_pol_3() {
    let s = site();
    std::fs::copy(&s.a.pub_path, s.dir.path().join("keys/a-copy.pub")).unwrap();
    for keys in [
        r#"["keys/a.pub", "keys/a.pub"]"#,
        r#"["keys/a.pub", "keys/b.pub", "keys/a-copy.pub"]"#,
    ] {
        let e = s.policy_err(&format!(
            "[default]\naction = \"signed-by\"\nthreshold = 2\nkeys = {keys}\n"
        ));
        assert!(
            e.contains("line 4") && e.contains("same public key"),
            "{keys}: {e}"
        );
    }
}

#[test]
fn an_unreadable_or_invalid_public_key_is_an_error_never_accept_pol_3() {
    let s = site();
    std::fs::write(s.dir.path().join("keys/junk.pub"), "not a key").unwrap();
    // A FIFO with no writer: refused, not waited on.
    let fifo = std::ffi::CString::new(
        s.dir
            .path()
            .join("keys/fifo.pub")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    for (path, problem) in [
        ("keys/missing.pub", "No such file"),
        ("keys/junk.pub", "SPKI"),
        ("keys/a.key", "SPKI"),
        ("keys", "not a regular file"),
        ("keys/fifo.pub", "not a regular file"),
    ] {
        let e = s.policy_err(&format!("[default]\naction = \"accept\"\n[[rule]]\nprefix = \"reg.io\"\naction = \"signed-by\"\nkeys = [\n  \"{path}\",\n]\n"));
        assert!(
            e.contains("policy.toml, line 7") && e.contains(path) && e.contains(problem),
            "{path}: {e}"
        );
    }
}

#[test]
fn key_paths_resolve_against_the_policy_directory_pol_2() {
    let s = site();
    let abs = s.b.pub_path.display().to_string();
    let p = s.policy(&format!(
        "[default]\naction = \"signed-by\"\nkeys = [\"keys/a.pub\", \"{abs}\"]\n"
    ));
    // Loaded from another working directory, the relative path still finds keys/a.pub.
    assert!(Path::new("keys/a.pub").symlink_metadata().is_err());
    assert!(matches!(
        verdict(&p, "x.io/y:1", "m", &[s.sig(&s.a, "x.io/y:1", "m")]),
        Verdict::Accepted { .. }
    ));
    assert!(matches!(
        verdict(&p, "x.io/y:1", "m", &[s.sig(&s.b, "x.io/y:1", "m")]),
        Verdict::Accepted { .. }
    ));
    assert_eq!(p.source(), Some(s.dir.path().join("policy.toml").as_path()));
}

#[test]
fn a_policy_file_that_is_missing_or_not_toml_is_an_error_pol_1() {
    let s = site();
    let missing = Policy::load(&s.dir.path().join("nope.toml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.toml"), "{missing}");
    let broken = s.policy_err("[default\naction = 1\n");
    assert!(broken.contains("policy.toml, line 1"), "{broken}");
    let explicit = Policy::load_default(Some(&s.dir.path().join("nope.toml")))
        .unwrap_err()
        .to_string();
    assert!(explicit.contains("nope.toml"), "{explicit}");
}

/// A signature by `key` binding the repository `name` alone (cosign's usual form) to
/// `manifest`: the payload cosign writes, signed with the test key's private half.
fn repository_sig(key: &TestKey, name: &str, manifest: &str) -> SignatureEnvelope {
    let payload = payload(name, &digest(manifest));
    let pem = std::fs::read_to_string(key.pub_path.with_extension("key")).unwrap();
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use ed25519_dalek::Signer as _;
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    envelope(
        payload.as_bytes(),
        &signing.sign(payload.as_bytes()).to_bytes(),
    )
}

const REPOSITORY_MATCH: &str = r#"
[default]
action = "reject"

[[rule]]
prefix = "reg.io/team"
action = "signed-by"
keys = ["keys/a.pub"]
match = "repository"

[[rule]]
prefix = "reg.io/exact"
action = "signed-by"
keys = ["keys/a.pub"]
match = "exact"
"#;

#[test]
fn match_repository_accepts_a_repository_signature_without_proving_the_tag_pol_11() {
    let s = site();
    let p = s.policy(REPOSITORY_MATCH);
    let repo = repository_sig(&s.a, "reg.io/team/app", "m1");
    let trusted = p
        .check(
            &reference("reg.io/team/app:1"),
            &digest("m1"),
            std::slice::from_ref(&repo),
        )
        .unwrap();
    assert_eq!(
        trusted.how(),
        &Acceptance::SignedBy(vec![s.a.public.id().clone()])
    );
    assert!(!trusted.proves_tag());
    // Any tag of the repository naming that digest is accepted: the tag is not proven.
    assert!(p
        .check(
            &reference("reg.io/team/app:2"),
            &digest("m1"),
            std::slice::from_ref(&repo)
        )
        .is_ok());
    // Not another digest, not another repository, not by another key.
    assert!(p
        .check(
            &reference("reg.io/team/app:1"),
            &digest("m2"),
            std::slice::from_ref(&repo)
        )
        .is_err());
    assert!(p
        .check(&reference("reg.io/team/other:1"), &digest("m1"), &[repo])
        .is_err());
    let stranger = repository_sig(&s.stranger, "reg.io/team/app", "m1");
    assert!(p
        .check(&reference("reg.io/team/app:1"), &digest("m1"), &[stranger])
        .is_err());
    // A signature naming the tag proves it, under either match.
    let exact = s.sig(&s.a, "reg.io/team/app:1", "m1");
    let trusted = p
        .check(&reference("reg.io/team/app:1"), &digest("m1"), &[exact])
        .unwrap();
    assert!(trusted.proves_tag());
    let exact = s.sig(&s.a, "reg.io/exact/app:1", "m1");
    assert!(p
        .check(&reference("reg.io/exact/app:1"), &digest("m1"), &[exact])
        .unwrap()
        .proves_tag());
}

#[test]
fn the_default_match_is_exact_and_refuses_repository_signatures_pol_11() {
    let s = site();
    let p = s.policy(REPOSITORY_MATCH);
    let repo = repository_sig(&s.a, "reg.io/exact/app", "m1");
    let reason = rejected(verdict(
        &p,
        "reg.io/exact/app:1",
        "m1",
        std::slice::from_ref(&repo),
    ));
    assert!(
        reason.contains("is for reg.io/exact/app, not reg.io/exact/app:1"),
        "{reason}"
    );
    let p = s.policy(TEAM_SIGNED);
    let repo = repository_sig(&s.a, "reg.io/team/app", "m1");
    assert!(matches!(
        verdict(&p, "reg.io/team/app:1", "m1", &[repo]),
        Verdict::Rejected { .. }
    ));
    // `match` belongs to signed-by rules only, and takes only its two values.
    let e = s.policy_err("[default]\naction = \"accept\"\nmatch = \"repository\"\n");
    assert!(
        e.contains("line 3") && e.contains("match only applies"),
        "{e}"
    );
    let e = s.policy_err(
        "[default]\naction = \"signed-by\"\nkeys = [\"keys/a.pub\"]\nmatch = \"prefix\"\n",
    );
    assert!(e.contains("line 4") && e.contains("unknown variant"), "{e}");
}

/// POL-6, SIG-8: the second form of a P-256 signature (`n - s`, made without the key) is a
/// valid signature, but by the same key: it does not count towards a threshold twice.
#[test]
fn a_malleated_p256_signature_does_not_count_its_key_twice_pol_6() {
    let s = site();
    let (key, _) = p256_key(&s.dir.path().join("keys"), "ec.key");
    std::fs::write(s.dir.path().join("keys/ec.pub"), key.public_key().to_pem()).unwrap();
    let p = s.policy(
        "[default]\naction = \"signed-by\"\nkeys = [\"keys/ec.pub\", \"keys/a.pub\"]\nthreshold = 2\n",
    );
    let genuine = sign(&key, &reference("reg.io/team/app:1"), &digest("m1"), None).unwrap();
    let (payload, der) = parts(&genuine);
    let twin = envelope(&payload, &flip_s(&der));
    assert_ne!(twin, genuine);
    let reason = rejected(verdict(
        &p,
        "reg.io/team/app:1",
        "m1",
        &[genuine.clone(), twin],
    ));
    assert!(reason.contains("1 valid of 2 found"), "{reason}");
    // The second key's signature is what reaches the threshold.
    let by_a = s.sig(&s.a, "reg.io/team/app:1", "m1");
    assert_eq!(
        verdict(&p, "reg.io/team/app:1", "m1", &[genuine, by_a]),
        Verdict::Accepted {
            how: Acceptance::SignedBy(vec![key.id().clone(), s.a.public.id().clone()])
        }
    );
}

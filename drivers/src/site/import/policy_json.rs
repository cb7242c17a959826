//! containers-policy.json(5) into ferry's `policy.toml` where it maps: `reject`,
//! `insecureAcceptAnything`, and `sigstoreSigned` by public keys (`signed-by`); what
//! cannot map is an error and its scope rejects (POL-12).

use std::path::Path;

use ferry_signing::PublicKey;
use serde_json::Value;

use super::{bad_file, Action, InlineKey, Note, PolicyDraft};
use crate::Result;

/// Converts the `policy.json` `text` read from `path` (POL-12). Requirements ferry cannot
/// check become `reject` with an error [`Note`] each, so the result never accepts more
/// than the original.
/// Inline keys (`keyData`) are saved beside `policy_file`, and not carried without one.
pub(crate) fn import_policy_json(
    path: &Path,
    text: &str,
    policy_file: Option<&Path>,
) -> Result<PolicyDraft> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        bad_file(
            path,
            &format!("line {} column {}: {e}", e.line(), e.column()),
        )
    })?;
    let Value::Object(doc) = doc else {
        return Err(bad_file(path, "not a JSON object"));
    };
    let file = path.display().to_string();
    let mut out = Gathered {
        notes: Vec::new(),
        keys: Vec::new(),
        policy_file,
    };
    let default = doc
        .get("default")
        .ok_or_else(|| bad_file(path, "default: missing (containers requires it)"))?;
    let mut default = action(&file, "default", default, &mut out)
        .map_err(|why| bad_file(path, &format!("default: {why}")))?;
    let mut rules = Vec::new();
    for key in doc.keys().filter(|k| *k != "default" && *k != "transports") {
        out.notes.push(Note {
            error: false,
            place: format!("{file}: {key}"),
            text: "not used by ferry".into(),
        });
    }
    match doc.get("transports") {
        None => {}
        Some(Value::Object(transports)) => {
            for (transport, scopes) in transports {
                let tplace = format!("transports.{transport}");
                if transport != "docker" {
                    out.notes.push(Note {
                        error: false,
                        place: format!("{file}: {tplace}"),
                        text:
                            "not used by ferry: its names are registry names (the docker transport)"
                                .into(),
                    });
                    continue;
                }
                let Value::Object(scopes) = scopes else {
                    return Err(bad_file(
                        path,
                        &format!("{tplace}: not an object of scopes"),
                    ));
                };
                for (scope, reqs) in scopes {
                    let place = format!("{tplace}[{scope:?}]");
                    let act = action(&file, &place, reqs, &mut out)
                        .map_err(|why| bad_file(path, &format!("{place}: {why}")))?;
                    if scope.is_empty() {
                        // The docker transport's own default: every name ferry sees.
                        default = act;
                        continue;
                    }
                    match rule_prefix(scope) {
                        Ok(prefix) => {
                            rules.push((prefix, act, Some(format!("from {file}: {place}"))))
                        }
                        Err(why) => out.notes.push(Note {
                            // A rule that checked now falls to another one.
                            error: act != Action::Accept,
                            place: format!("{file}: {place}"),
                            text: format!("{why}: not carried over"),
                        }),
                    }
                }
            }
        }
        Some(_) => return Err(bad_file(path, "transports: not an object")),
    }
    // Only keys a rule names: an entry or scope not carried leaves its inline keys out.
    let named = |key: &InlineKey| {
        std::iter::once(&default)
            .chain(rules.iter().map(|r| &r.1))
            .any(|action| match action {
                Action::SignedBy { keys, .. } => keys
                    .iter()
                    .any(|k| key.path.file_name() == Some(std::ffi::OsStr::new(k))),
                _ => false,
            })
    };
    out.keys.retain(named);
    Ok(PolicyDraft {
        default,
        rules,
        notes: out.notes,
        keys: out.keys,
    })
}

/// What the conversion gathers besides actions.
struct Gathered<'a> {
    notes: Vec<Note>,
    keys: Vec<InlineKey>,
    /// The policy's file, beside which inline keys go; `None`: the policy is printed.
    policy_file: Option<&'a Path>,
}

/// The action of a requirement list (all must hold): `reject` if any requirement rejects,
/// `accept` if all accept anything, `signed-by` where the signature requirements map
/// (POL-12). A requirement that cannot map is an error [`Note`] and the list rejects.
fn action(
    file: &str,
    place: &str,
    reqs: &Value,
    out: &mut Gathered,
) -> std::result::Result<Action, String> {
    let Value::Array(reqs) = reqs else {
        return Err("not an array of requirements".into());
    };
    if reqs.is_empty() {
        return Err("an empty requirement list (containers refuses it)".into());
    }
    let mut kinds = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        let kind = req
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("requirement {i} has no \"type\""))?;
        match kind {
            "insecureAcceptAnything"
            | "reject"
            | "signedBy"
            | "sigstoreSigned"
            | "signedBaseLayer" => kinds.push(kind),
            other => return Err(format!("requirement {i}: unknown type {other:?}")),
        }
    }
    // A rejecting list is carried exactly, whatever else it holds.
    if kinds.contains(&"reject") {
        return Ok(Action::Reject);
    }
    let mut signed = Vec::new();
    let mut failed = false;
    for (i, (req, kind)) in reqs.iter().zip(&kinds).enumerate() {
        let entry = format!("{file}: {place}[{i}]");
        let carried = match *kind {
            "insecureAcceptAnything" => continue,
            "sigstoreSigned" => sigstore_signed(req, &entry, out),
            _ => Err(format!(
                "{kind} cannot be carried over: ferry checks cosign's key-based signatures (specs/signature.md), not this form"
            )),
        };
        match carried {
            Ok(req) => signed.push(req),
            Err(why) => {
                out.notes.push(Note {
                    error: true,
                    place: entry,
                    text: format!("{why}; the scope is reject until you give it ferry keys"),
                });
                failed = true;
            }
        }
    }
    if failed {
        return Ok(Action::Reject);
    }
    match signed.len() {
        0 => Ok(Action::Accept),
        1 => {
            let req = signed.remove(0);
            Ok(Action::SignedBy {
                keys: req.keys.into_iter().map(|(path, _)| path).collect(),
                threshold: 1,
                repository: req.repository,
            })
        }
        // Several signatures must all hold: ferry's threshold says so when each names
        // one key and all match identities alike.
        _ => {
            let repository = signed[0].repository;
            let mut keys: Vec<(String, PublicKey)> = Vec::new();
            for req in &signed {
                if req.keys.len() != 1 || req.repository != repository {
                    out.notes.push(Note {
                        error: true,
                        place: format!("{file}: {place}"),
                        text: "requires several signatures, one of them by any of several keys or with another signedIdentity: ferry's threshold cannot say so; the scope is reject".into(),
                    });
                    return Ok(Action::Reject);
                }
                if !keys.iter().any(|(_, k)| *k == req.keys[0].1) {
                    keys.push(req.keys[0].clone());
                }
            }
            Ok(Action::SignedBy {
                threshold: keys.len(),
                keys: keys.into_iter().map(|(path, _)| path).collect(),
                repository,
            })
        }
    }
}

/// A `sigstoreSigned` requirement as ferry carries it: any one of `keys` must sign.
struct Signed {
    /// The key files as the policy names them, with their keys, distinct.
    keys: Vec<(String, PublicKey)>,
    /// `match = "repository"` (`matchRepository`) rather than exact.
    repository: bool,
}

/// The fields containers-policy.json(5) defines for `sigstoreSigned`.
const SIGSTORE_FIELDS: [&str; 12] = [
    "type",
    "keyPath",
    "keyPaths",
    "keyData",
    "keyDatas",
    "fulcio",
    "pki",
    "rekorPublicKeyPath",
    "rekorPublicKeyPaths",
    "rekorPublicKeyData",
    "rekorPublicKeyDatas",
    "signedIdentity",
];

/// Maps a `sigstoreSigned` requirement found at `entry`, or says why it cannot be.
fn sigstore_signed(
    req: &Value,
    entry: &str,
    out: &mut Gathered,
) -> std::result::Result<Signed, String> {
    let fields = req.as_object().ok_or("sigstoreSigned: not an object")?;
    if let Some(unknown) = fields
        .keys()
        .find(|k| !SIGSTORE_FIELDS.contains(&k.as_str()))
    {
        return Err(format!(
            "sigstoreSigned: unknown field {unknown:?} (containers refuses the file)"
        ));
    }
    if fields.contains_key("fulcio") || fields.contains_key("pki") {
        return Err("sigstoreSigned with fulcio or pki (certificates, keyless) cannot be carried over: ferry verifies key-based signatures, without certificates or a transparency log".into());
    }
    if let Some(rekor) = fields.keys().find(|k| k.starts_with("rekorPublicKey")) {
        return Err(format!(
            "sigstoreSigned with {rekor} cannot be carried over: ferry verifies key-based signatures without a transparency log, so it cannot require a Rekor entry"
        ));
    }
    let sources: Vec<&str> = ["keyPath", "keyPaths", "keyData", "keyDatas"]
        .into_iter()
        .filter(|k| fields.contains_key(*k))
        .collect();
    let [source] = sources[..] else {
        return Err(
            "sigstoreSigned: exactly one of keyPath, keyPaths, keyData and keyDatas must be given"
                .into(),
        );
    };
    let values: Vec<&str> = match &fields[source] {
        Value::String(v) if !source.ends_with('s') => vec![v.as_str()],
        Value::Array(list) if source.ends_with('s') && !list.is_empty() => list
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or(format!("sigstoreSigned: {source} holds a non-string"))
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => {
            return Err(format!(
                "sigstoreSigned: {source} is not a {}",
                if source.ends_with('s') {
                    "non-empty array of strings"
                } else {
                    "string"
                }
            ))
        }
    };
    let repository = match fields.get("signedIdentity") {
        None => false,
        Some(identity) => match identity.get("type").and_then(Value::as_str) {
            Some("matchRepoDigestOrExact" | "matchExact") => false,
            Some("matchRepository") => true,
            Some(other) => {
                return Err(format!(
                    "sigstoreSigned signedIdentity {other:?} cannot be carried over: ferry matches a signature to the image's own name only (POL-11)"
                ))
            }
            None => return Err("sigstoreSigned: signedIdentity has no \"type\"".into()),
        },
    };
    let mut keys: Vec<(String, PublicKey)> = Vec::new();
    for value in values {
        let (path, key) = if source.starts_with("keyData") {
            inline_key(value, source, out)?
        } else {
            let path = key_path(value, entry, &mut out.notes)?;
            let key =
                PublicKey::load(Path::new(&path)).map_err(|e| format!("sigstoreSigned: {e}"))?;
            (path, key)
        };
        if !keys.iter().any(|(_, k)| *k == key) {
            keys.push((path, key));
        }
    }
    if repository {
        out.notes.push(Note {
            error: false,
            place: entry.to_string(),
            text: "signedIdentity matchRepository becomes match = \"repository\": a signature naming the repository alone or this very tag counts, one naming another tag does not (POL-11)".into(),
        });
    }
    Ok(Signed { keys, repository })
}

/// The base64 SPKI PEM key `data` of `source` (`keyData`, `keyDatas`) as a file beside the
/// policy: the path its rule names (relative, POL-2) and the key.
fn inline_key(
    data: &str,
    source: &str,
    out: &mut Gathered,
) -> std::result::Result<(String, PublicKey), String> {
    use base64::Engine as _;
    let Some(policy_file) = out.policy_file else {
        return Err(format!(
            "sigstoreSigned {source} (an inline key) is carried only when the policy is written to a file, beside which the key is saved"
        ));
    };
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("sigstoreSigned: {source} is not base64 ({e})"))?;
    let mut probe = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut probe, &pem).map_err(|e| e.to_string())?;
    let key = PublicKey::load(probe.path()).map_err(|e| {
        let text = e.to_string();
        // The probe file's name says nothing to the user: keep the reason.
        let why = text.split_once(": ").map_or(text.as_str(), |(_, why)| why);
        format!("sigstoreSigned: {source}: {why}")
    })?;
    let stem = policy_file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("policy");
    let pem = key.to_pem();
    // The same key inline twice is one file.
    if let Some(saved) = out.keys.iter().find(|k| k.pem == pem) {
        let name = saved.path.file_name().map(|n| n.to_string_lossy());
        return Ok((name.unwrap_or_default().into_owned(), key));
    }
    let name = format!("{stem}-key-{}.pub", out.keys.len() + 1);
    out.keys.push(InlineKey {
        path: policy_file.with_file_name(&name),
        pem,
    });
    Ok((name, key))
}

/// The key path a ferry policy holds for `given`: itself if absolute; a relative one is
/// read by containers/image from the working directory (the manual leaves it unsaid), so
/// it is resolved against this process's and the change noted.
fn key_path(
    given: &str,
    entry: &str,
    notes: &mut Vec<Note>,
) -> std::result::Result<String, String> {
    if given.is_empty() {
        return Err("sigstoreSigned: an empty key path".into());
    }
    let path = Path::new(given);
    if path.is_absolute() {
        return Ok(given.to_string());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| format!("sigstoreSigned: relative key path {given:?}: {e}"))?;
    let resolved = cwd.join(path).display().to_string();
    notes.push(Note {
        error: false,
        place: entry.to_string(),
        text: format!(
            "relative key path {given:?} is read from the working directory, as containers/image does: written as {resolved:?}"
        ),
    });
    Ok(resolved)
}

/// The ferry rule prefix for a docker-transport scope, or why there is none.
fn rule_prefix(scope: &str) -> std::result::Result<String, String> {
    if scope.contains('*') {
        return Err(format!(
            "scope {scope:?} is a wildcard; ferry's rules match name prefixes only"
        ));
    }
    if scope.contains('@')
        || scope.rsplit('/').next().is_some_and(|l| l.contains(':')) && scope.contains('/')
    {
        return Err(format!(
            "scope {scope:?} names a tag or digest; ferry's rules match names, not tags"
        ));
    }
    super::check_policy_prefix(scope)?;
    Ok(scope.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The action `import_policy_json` gives the scope `a.example.com/team` holding
    /// `reqs`, with the error notes' lines.
    fn scope(reqs: &str) -> (Action, Vec<String>) {
        let text = format!(
            r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"a.example.com/team": {reqs}}}}}}}"#
        );
        let draft = import_policy_json(Path::new("policy.json"), &text, None).unwrap();
        let errors = draft
            .notes
            .iter()
            .filter(|n| n.error)
            .map(|n| n.to_string())
            .collect();
        (draft.rules[0].1.clone(), errors)
    }

    #[test]
    fn sigstore_signed_by_keys_maps_to_signed_by_and_the_rest_rejects_named() {
        // POL-12
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str| {
            ferry_signing::generate_key(dir.path(), name)
                .unwrap()
                .public_key
                .display()
                .to_string()
        };
        let (a, b) = (key("a"), key("b"));
        let signed = |keys: &[&str], threshold, repository| Action::SignedBy {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            threshold,
            repository,
        };
        let req = |fields: &str| format!(r#"{{"type": "sigstoreSigned", {fields}}}"#);
        let one = req(&format!(r#""keyPath": "{a}""#));
        // The default identity, matchExact and matchRepoDigestOrExact: exact.
        assert_eq!(
            scope(&format!("[{one}]")),
            (signed(&[&a], 1, false), vec![])
        );
        for exact in ["matchExact", "matchRepoDigestOrExact"] {
            let r = req(&format!(
                r#""keyPath": "{a}", "signedIdentity": {{"type": "{exact}"}}"#
            ));
            assert_eq!(
                scope(&format!("[{r}]")).0,
                signed(&[&a], 1, false),
                "{exact}"
            );
        }
        // keyPaths: any one key; a key named twice counts once.
        let r = req(&format!(
            r#""keyPaths": ["{a}", "{b}", "{a}"], "signedIdentity": {{"type": "matchRepository"}}"#
        ));
        assert_eq!(scope(&format!("[{r}]")).0, signed(&[&a, &b], 1, true));
        // All must hold: one key each, so a threshold; insecureAcceptAnything adds nothing.
        let two = req(&format!(r#""keyPath": "{b}""#));
        assert_eq!(
            scope(&format!(
                r#"[{one}, {{"type": "insecureAcceptAnything"}}, {two}]"#
            ))
            .0,
            signed(&[&a, &b], 2, false)
        );
        // A list holding reject is reject, carried exactly.
        assert_eq!(
            scope(&format!(r#"[{one}, {{"type": "reject"}}]"#)),
            (Action::Reject, vec![])
        );
        // What ferry cannot check: the scope rejects, the entry named with the reason.
        let cases = [
            (
                req(
                    r#""fulcio": {"caPath": "/ca.pem", "oidcIssuer": "https://o", "subjectEmail": "u@example.com"}, "rekorPublicKeyPath": "/r.pub""#,
                ),
                "fulcio",
            ),
            (
                req(&format!(
                    r#""keyPath": "{a}", "rekorPublicKeyPath": "/r.pub""#
                )),
                "without a transparency log",
            ),
            (
                req(&format!(
                    r#""keyPath": "{a}", "signedIdentity": {{"type": "exactRepository", "dockerRepository": "b.example.com/x"}}"#
                )),
                "\"exactRepository\"",
            ),
            (
                req(&format!(
                    r#""keyPath": "{a}", "signedIdentity": {{"type": "remapIdentity", "prefix": "a.example.com", "signedPrefix": "b.example.com"}}"#
                )),
                "\"remapIdentity\"",
            ),
            (req(r#""keyData": "LS0t""#), "written to a file"),
            (
                req(r#""keyPath": "/nonexistent/k.pub""#),
                "/nonexistent/k.pub",
            ),
            (
                req(&format!(r#""keyPath": "{a}", "keyPaths": ["{b}"]"#)),
                "exactly one",
            ),
            (
                r#"{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}"#.to_string(),
                "signedBy",
            ),
        ];
        for (r, why) in cases {
            let (action, errors) = scope(&format!("[{one}, {r}]"));
            assert_eq!(action, Action::Reject, "{r}");
            assert!(
                errors.len() == 1
                    && errors[0].contains(r#"transports.docker["a.example.com/team"][1]: "#)
                    && errors[0].contains(why),
                "{r}: {errors:?}"
            );
        }
        // Several signatures, one by any of several keys: no threshold says so.
        let any = req(&format!(r#""keyPaths": ["{a}", "{b}"]"#));
        let (action, errors) = scope(&format!("[{any}, {two}]"));
        assert_eq!(action, Action::Reject);
        assert!(
            errors.len() == 1 && errors[0].contains("threshold cannot say so"),
            "{errors:?}"
        );
    }

    #[test]
    fn inline_keys_are_saved_once_beside_the_policy_and_only_where_a_rule_names_them() {
        // POL-12
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let public = ferry_signing::generate_key(dir.path(), "a")
            .unwrap()
            .public_key;
        let pem = std::fs::read_to_string(&public).unwrap();
        let data = base64::engine::general_purpose::STANDARD.encode(&pem);
        let text = format!(
            r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{
                "a.example.com/one": [{{"type": "sigstoreSigned", "keyDatas": ["{data}", "{data}"]}}],
                "a.example.com/two": [{{"type": "sigstoreSigned", "keyData": "{data}"}}],
                "a.example.com/gone": [{{"type": "sigstoreSigned", "keyData": "{data}"}}, {{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}}]
            }}}}}}"#
        );
        let policy_file = dir.path().join("etc/policy.toml");
        let draft =
            import_policy_json(Path::new("policy.json"), &text, Some(&policy_file)).unwrap();
        let saved = InlineKey {
            path: dir.path().join("etc/policy-key-1.pub"),
            pem: pem.clone(),
        };
        assert_eq!(draft.keys, vec![saved]);
        let signed = Action::SignedBy {
            keys: vec!["policy-key-1.pub".into()],
            threshold: 1,
            repository: false,
        };
        let action = |prefix: &str| {
            draft
                .rules
                .iter()
                .find(|r| r.0 == prefix)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(action("a.example.com/one"), signed);
        assert_eq!(action("a.example.com/two"), signed);
        assert_eq!(action("a.example.com/gone"), Action::Reject);

        // A scope left out (here with no other inline key) saves nothing.
        let text = format!(
            r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{
                "*.example.com": [{{"type": "sigstoreSigned", "keyData": "{data}"}}]
            }}}}}}"#
        );
        let draft =
            import_policy_json(Path::new("policy.json"), &text, Some(&policy_file)).unwrap();
        assert!(
            draft.keys.is_empty() && draft.rules.is_empty(),
            "{:?}",
            draft.keys
        );
    }

    #[test]
    fn scopes_with_tags_wildcards_or_unnormalized_names_are_not_rules() {
        // POL-12
        assert_eq!(
            rule_prefix("docker.io/library").unwrap(),
            "docker.io/library"
        );
        assert_eq!(
            rule_prefix("127.0.0.1:5000/team").unwrap(),
            "127.0.0.1:5000/team"
        );
        assert!(rule_prefix("*.example.com")
            .unwrap_err()
            .contains("wildcard"));
        assert!(rule_prefix("docker.io/library/busybox:latest")
            .unwrap_err()
            .contains("tag"));
        assert!(rule_prefix("busybox").is_err());
    }
}

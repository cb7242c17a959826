//! containers-policy.json(5) into ferry's `policy.toml` where it maps: `reject`,
//! `insecureAcceptAnything`, and `sigstoreSigned` by public keys (`signed-by`); what
//! cannot map is an error and its scope rejects (POL-12).

use std::path::Path;

use ferry_signing::PublicKey;
use serde_json::Value;

use super::{bad_file, Action, Note, PolicyDraft};
use crate::Result;

/// Converts the `policy.json` `text` read from `path` (POL-12). Requirements ferry cannot
/// check become `reject` with an error [`Note`] each, so the result never accepts more
/// than the original.
pub(crate) fn import_policy_json(path: &Path, text: &str) -> Result<PolicyDraft> {
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
    let mut notes = Vec::new();
    let default = doc
        .get("default")
        .ok_or_else(|| bad_file(path, "default: missing (containers requires it)"))?;
    let mut default = action(&file, "default", default, &mut notes)
        .map_err(|why| bad_file(path, &format!("default: {why}")))?;
    let mut rules = Vec::new();
    for key in doc.keys().filter(|k| *k != "default" && *k != "transports") {
        notes.push(Note {
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
                    notes.push(Note {
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
                    let act = action(&file, &place, reqs, &mut notes)
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
                        Err(why) => notes.push(Note {
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
    Ok(PolicyDraft {
        default,
        rules,
        notes,
    })
}

/// The action of a requirement list (all must hold): `reject` if any requirement rejects,
/// `accept` if all accept anything, `signed-by` where the signature requirements map
/// (POL-12). A requirement that cannot map is an error [`Note`] and the list rejects.
fn action(
    file: &str,
    place: &str,
    reqs: &Value,
    notes: &mut Vec<Note>,
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
            "sigstoreSigned" => sigstore_signed(req, &entry, notes),
            _ => Err(format!(
                "{kind} cannot be carried over: ferry checks cosign's key-based signatures (specs/signature.md), not this form"
            )),
        };
        match carried {
            Ok(req) => signed.push(req),
            Err(why) => {
                notes.push(Note {
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
                    notes.push(Note {
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
    notes: &mut Vec<Note>,
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
        return Err("sigstoreSigned with fulcio or pki (certificate-based, keyless) cannot be carried over: ferry verifies signatures by public keys only".into());
    }
    if let Some(rekor) = fields.keys().find(|k| k.starts_with("rekorPublicKey")) {
        return Err(format!(
            "sigstoreSigned with {rekor} cannot be carried over: ferry verifies key-based signatures without a transparency log, so it cannot require a Rekor entry"
        ));
    }
    if let Some(inline) = ["keyData", "keyDatas"]
        .iter()
        .find(|k| fields.contains_key(**k))
    {
        return Err(format!(
            "sigstoreSigned {inline} (an inline key) is not carried over: save the key to a file and name it in keyPath"
        ));
    }
    let paths: Vec<&str> = match (fields.get("keyPath"), fields.get("keyPaths")) {
        (Some(Value::String(p)), None) => vec![p.as_str()],
        (None, Some(Value::Array(list))) if !list.is_empty() => list
            .iter()
            .map(|p| p.as_str().ok_or("sigstoreSigned: keyPaths holds a non-string"))
            .collect::<std::result::Result<_, _>>()?,
        (None, None) => return Err("sigstoreSigned names no key (keyPath, keyPaths)".into()),
        _ => {
            return Err(
                "sigstoreSigned: exactly one of keyPath (a string) and keyPaths (a non-empty array) must be given"
                    .into(),
            )
        }
    };
    let repository = match fields.get("signedIdentity") {
        None => false,
        Some(identity) => match identity.get("type").and_then(Value::as_str) {
            Some("matchRepoDigestOrExact" | "matchExact") => false,
            Some("matchRepository") => {
                notes.push(Note {
                    error: false,
                    place: entry.to_string(),
                    text: "signedIdentity matchRepository becomes match = \"repository\": a signature naming the repository alone or this very tag counts, one naming another tag does not (POL-11)".into(),
                });
                true
            }
            Some(other) => {
                return Err(format!(
                    "sigstoreSigned signedIdentity {other:?} cannot be carried over: ferry matches a signature to the image's own name only (POL-11)"
                ))
            }
            None => return Err("sigstoreSigned: signedIdentity has no \"type\"".into()),
        },
    };
    let mut keys: Vec<(String, PublicKey)> = Vec::new();
    for given in paths {
        let path = key_path(given, entry, notes)?;
        let key = PublicKey::load(Path::new(&path)).map_err(|e| format!("sigstoreSigned: {e}"))?;
        if !keys.iter().any(|(_, k)| *k == key) {
            keys.push((path, key));
        }
    }
    Ok(Signed { keys, repository })
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

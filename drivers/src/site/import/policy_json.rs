//! containers-policy.json(5) into ferry's `policy.toml` where it maps: `reject` and
//! `insecureAcceptAnything`; signature requirements of other forms are errors (POL-12).

use std::path::Path;

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
                            // A rule that rejected now falls to a more permissive one.
                            error: act == Action::Reject,
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

/// The action of a requirement list: `reject` if any requirement rejects, `accept` if all
/// accept anything; any other requirement is noted as an error and rejects.
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
    let mut result = Action::Accept;
    for (i, req) in reqs.iter().enumerate() {
        let kind = req
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("requirement {i} has no \"type\""))?;
        match kind {
            "insecureAcceptAnything" => {}
            "reject" => result = Action::Reject,
            "signedBy" | "sigstoreSigned" | "signedBaseLayer" => {
                notes.push(Note {
                    error: true,
                    place: format!("{file}: {place}[{i}]"),
                    text: format!(
                        "{kind} cannot be carried over: ferry checks its own signatures (specs/signature.md, policy signed-by with ferry keys), not this form; the rule is reject until you give it ferry keys"
                    ),
                });
                result = Action::Reject;
            }
            other => return Err(format!("requirement {i}: unknown type {other:?}")),
        }
    }
    Ok(result)
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

//! The trust policy (POL-1 to POL-10), its verdicts, and the `TrustedImage` proof type.

use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_core::{Digest, Reference};
use serde::Deserialize;
use toml::Spanned;

use crate::envelope::check_pin;
use crate::error::ids;
use crate::{Error, IdentityMatch, KeyId, PublicKey, Result, SignatureEnvelope};

/// The system-wide policy file, the last place [`Policy::load_default`] looks (POL-10).
pub const SYSTEM_POLICY: &str = "/etc/ferry/policy.toml";
/// Largest policy file ferry reads (POL-1).
const MAX_POLICY_FILE: u64 = 1024 * 1024;

/// Which images ferry accepts, unsigned or signed by which keys (`specs/policy.md`).
#[derive(Debug, Clone)]
pub struct Policy {
    source: Option<PathBuf>,
    default: Requirement,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    prefix: String,
    line: usize,
    requirement: Requirement,
}

#[derive(Debug, Clone)]
enum Requirement {
    Reject,
    Accept,
    SignedBy {
        keys: Vec<PublicKey>,
        threshold: usize,
        identity: IdentityMatch,
    },
}

/// The outcome of evaluating an image against a policy (POL-6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The policy accepts the image.
    Accepted {
        /// Why: no signature needed, or which keys signed.
        how: Acceptance,
    },
    /// The policy rejects the image.
    Rejected {
        /// One line naming the image, the rule, the keys tried and each signature's problem.
        reason: String,
    },
}

/// How an accepted image was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// Without signatures: the rule says `accept`, or there is no policy.
    Unsigned,
    /// With valid signatures by these distinct keys, in the order the rule lists them.
    SignedBy(Vec<KeyId>),
}

/// An image the policy accepted: only [`Policy::check`] makes one (POL-8).
///
/// The runtime takes `&TrustedImage`, so an image that was not checked cannot be run.
/// Nothing outside this crate can build one:
///
/// ```compile_fail
/// let forged = ferry_signing::TrustedImage {
///     reference: "x:1".parse().unwrap(),
///     digest: ferry_core::Digest::sha256(b""),
///     how: ferry_signing::Acceptance::Unsigned,
/// };
/// ```
///
/// ```compile_fail
/// let forged = ferry_signing::TrustedImage::default();
/// ```
///
/// ```compile_fail
/// let forged: ferry_signing::TrustedImage = serde_json::from_str("{}").unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct TrustedImage {
    reference: Reference,
    digest: Digest,
    how: Acceptance,
    proves_tag: bool,
}

impl TrustedImage {
    /// The reference that was checked, pinned to the accepted digest (`NAME:TAG@DIGEST`).
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The digest of the accepted top manifest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// How the image was accepted.
    pub fn how(&self) -> &Acceptance {
        &self.how
    }

    /// Whether the signatures that accepted the image prove its tag: false when a rule with
    /// `match = "repository"` counted signatures naming the repository alone, which prove
    /// the digest and the repository only (POL-11). True for an image accepted unsigned.
    pub fn proves_tag(&self) -> bool {
        self.proves_tag
    }
}

/// A policy file as written (POL-1).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Spanned<RuleFile>,
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    prefix: Option<Spanned<String>>,
    action: Spanned<Action>,
    keys: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    threshold: Option<Spanned<i64>>,
    #[serde(rename = "match")]
    identity: Option<Spanned<Match>>,
}

/// A rule's `match` (POL-11).
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Match {
    Exact,
    Repository,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Action {
    Reject,
    Accept,
    SignedBy,
}

impl Policy {
    /// The policy used when there is no policy file: every image is accepted unsigned (POL-10).
    pub fn accept_all() -> Policy {
        Policy {
            source: None,
            default: Requirement::Accept,
            rules: Vec::new(),
        }
    }

    /// Finds and loads the policy: `explicit` (`--policy`), then `FERRY_POLICY`, then
    /// `$XDG_CONFIG_HOME/ferry/policy.toml`, then [`SYSTEM_POLICY`]; none is
    /// [`Policy::accept_all`] (POL-10).
    pub fn load_default(explicit: Option<&Path>) -> Result<Policy> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let named = explicit
            .map(Path::to_path_buf)
            .or_else(|| var("FERRY_POLICY"));
        let config_home = var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config")));
        let searched = config_home
            .map(|c| c.join("ferry").join("policy.toml"))
            .into_iter()
            .chain([PathBuf::from(SYSTEM_POLICY)]);
        load_first(named, searched)
    }

    /// Loads and validates a policy file, loading every key it names (POL-1 to POL-4).
    pub fn load(path: &Path) -> Result<Policy> {
        let text = read_policy_file(path)?;
        let file: PolicyFile = toml::from_str(&text).map_err(|e| Error::Policy {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(&text, s.start)),
            // toml's messages can span lines; POL-1 errors are one line.
            message: e.message().trim_end().replace('\n', "; "),
        })?;
        let at = |offset: usize, message: String| Error::Policy {
            path: path.to_path_buf(),
            line: Some(line_of(&text, offset)),
            message,
        };
        let base = path.parent().unwrap_or(Path::new(""));

        let default = file.default.into_inner();
        if let Some(prefix) = &default.prefix {
            return Err(at(prefix.span().start, "[default] takes no prefix".into()));
        }
        let default = requirement(default, base, &at)?;

        let mut rules: Vec<Rule> = Vec::new();
        for rule in file.rule {
            let start = rule.span().start;
            let mut rule = rule.into_inner();
            let Some(prefix) = rule.prefix.take() else {
                return Err(at(start, "[[rule]] needs a prefix".into()));
            };
            let prefix_start = prefix.span().start;
            let prefix = prefix.into_inner();
            validate_prefix(&prefix).map_err(|m| at(prefix_start, m))?;
            if let Some(other) = rules.iter().find(|r| r.prefix == prefix) {
                return Err(at(
                    prefix_start,
                    format!(
                        "prefix {prefix:?} already has a rule on line {}",
                        other.line
                    ),
                ));
            }
            rules.push(Rule {
                prefix,
                line: line_of(&text, prefix_start),
                requirement: requirement(rule, base, &at)?,
            });
        }
        tracing::debug!(path = %path.display(), rules = rules.len(), "loaded policy");
        Ok(Policy {
            source: Some(path.to_path_buf()),
            default,
            rules,
        })
    }

    /// The file this policy was loaded from, or `None` for [`Policy::accept_all`].
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The keys whose signatures the rule for this name counts; none unless it is
    /// `signed-by` (POL-2, POL-5).
    pub fn keys_for(&self, reference: &Reference) -> &[PublicKey] {
        match self.rule_for(&reference.name()).1 {
            Requirement::SignedBy { keys, .. } => keys,
            _ => &[],
        }
    }

    /// Whether the rule for this name requires signatures (POL-9).
    pub fn requires_signature(&self, reference: &Reference) -> bool {
        matches!(
            self.rule_for(&reference.name()).1,
            Requirement::SignedBy { .. }
        )
    }

    /// Decides whether the image `reference` with top manifest `manifest_digest` is accepted,
    /// given the signature envelopes found for it (POL-5, POL-6).
    ///
    /// Fails only when `reference` pins a digest other than `manifest_digest` (POL-7).
    pub fn evaluate(
        &self,
        reference: &Reference,
        manifest_digest: &Digest,
        signatures: &[SignatureEnvelope],
    ) -> Result<Verdict> {
        self.decide(reference, manifest_digest, signatures)
            .map(|(verdict, _)| verdict)
    }

    /// The verdict, and whether an acceptance proves the tag (POL-11).
    fn decide(
        &self,
        reference: &Reference,
        manifest_digest: &Digest,
        signatures: &[SignatureEnvelope],
    ) -> Result<(Verdict, bool)> {
        check_pin(reference, manifest_digest)?;
        let image = reference.pinned(manifest_digest.clone());
        let (rule, requirement) = self.rule_for(&reference.name());
        let (verdict, proves_tag) = match requirement {
            Requirement::Accept => (
                Verdict::Accepted {
                    how: Acceptance::Unsigned,
                },
                true,
            ),
            Requirement::Reject => (
                Verdict::Rejected {
                    reason: format!("image {image}: rejected by {rule}"),
                },
                false,
            ),
            Requirement::SignedBy {
                keys,
                threshold,
                identity,
            } => signed_by(
                reference,
                manifest_digest,
                &rule,
                (keys, *threshold, *identity),
                signatures,
            ),
        };
        tracing::debug!(image = %image, rule = %rule, verdict = ?verdict, "evaluated");
        Ok((verdict, proves_tag))
    }

    /// Evaluates like [`Policy::evaluate`] and turns acceptance into the [`TrustedImage`]
    /// proof, rejection into [`Error::Rejected`] (POL-8).
    pub fn check(
        &self,
        reference: &Reference,
        manifest_digest: &Digest,
        signatures: &[SignatureEnvelope],
    ) -> Result<TrustedImage> {
        let pinned = reference.pinned(manifest_digest.clone());
        match self.decide(reference, manifest_digest, signatures)? {
            (Verdict::Accepted { how }, proves_tag) => Ok(TrustedImage {
                reference: pinned,
                digest: manifest_digest.clone(),
                how,
                proves_tag,
            }),
            (Verdict::Rejected { reason }, _) => Err(Error::Rejected {
                image: pinned.to_string(),
                reason,
            }),
        }
    }

    /// The rule deciding for `name` (longest prefix on a `/` boundary, else the default),
    /// described for messages (POL-5).
    fn rule_for(&self, name: &str) -> (String, &Requirement) {
        let applies = |prefix: &str| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let file = self
            .source
            .as_ref()
            .map_or_else(|| "no policy file".to_string(), |p| p.display().to_string());
        match self
            .rules
            .iter()
            .filter(|r| applies(&r.prefix))
            .max_by_key(|r| r.prefix.len())
        {
            Some(r) => (
                format!("rule {:?} ({file}, line {})", r.prefix, r.line),
                &r.requirement,
            ),
            None => (format!("the default rule ({file})"), &self.default),
        }
    }
}

/// The verdict of a `signed-by` rule: `threshold` distinct keys of `keys` must have made a
/// valid signature among `signatures` (POL-6, SIG-10); and whether those that name the tag
/// alone reach the threshold (POL-11).
fn signed_by(
    reference: &Reference,
    manifest_digest: &Digest,
    rule: &str,
    (keys, threshold, identity): (&[PublicKey], usize, IdentityMatch),
    signatures: &[SignatureEnvelope],
) -> (Verdict, bool) {
    let key_ids: Vec<KeyId> = keys.iter().map(|k| k.id().clone()).collect();
    let scope = match identity {
        IdentityMatch::Exact => "",
        IdentityMatch::Repository => " naming the repository",
    };
    let needs = format!(
        "{rule} requires valid signatures{scope} by {threshold} of the keys [{}]",
        ids(&key_ids)
    );
    let image = reference.pinned(manifest_digest.clone());
    if image.tag().is_none() {
        let reason = format!("image {image}: {needs}, but has no tag for a signature to bind");
        return (Verdict::Rejected { reason }, false);
    }
    let mut signers: Vec<&PublicKey> = Vec::new();
    let mut tag_signers: Vec<&PublicKey> = Vec::new();
    let mut problems = Vec::new();
    for (i, envelope) in signatures.iter().enumerate() {
        match envelope.check(keys, reference, manifest_digest, identity) {
            Ok(v) => {
                signers.push(v.key);
                if v.names_tag {
                    tag_signers.push(v.key);
                }
            }
            Err(e) => problems.push(format!("signature {}: {e}", i + 1)),
        }
    }
    // Each key counts once, however many valid signatures it made.
    let signed: Vec<KeyId> = keys
        .iter()
        .filter(|k| signers.contains(k))
        .map(|k| k.id().clone())
        .collect();
    if signed.len() >= threshold {
        let proves_tag = keys.iter().filter(|k| tag_signers.contains(k)).count() >= threshold;
        let how = Acceptance::SignedBy(signed);
        return (Verdict::Accepted { how }, proves_tag);
    }
    let found = if signatures.is_empty() {
        "no signatures were found".to_string()
    } else {
        format!(
            "{} valid of {} found [{}]; {}",
            signed.len(),
            signatures.len(),
            ids(&signed),
            problems.join("; ")
        )
    };
    let reason = format!("image {image}: {needs}: {found}");
    (Verdict::Rejected { reason }, false)
}

/// The requirement a `[default]` or `[[rule]]` table states, with its keys loaded (POL-2, POL-3).
fn requirement(
    rule: RuleFile,
    base: &Path,
    at: &dyn Fn(usize, String) -> Error,
) -> Result<Requirement> {
    let action = *rule.action.get_ref();
    if action != Action::SignedBy {
        if let Some(keys) = &rule.keys {
            return Err(at(
                keys.span().start,
                "keys only apply to action \"signed-by\"".into(),
            ));
        }
        if let Some(t) = &rule.threshold {
            return Err(at(
                t.span().start,
                "threshold only applies to action \"signed-by\"".into(),
            ));
        }
        if let Some(m) = &rule.identity {
            return Err(at(
                m.span().start,
                "match only applies to action \"signed-by\"".into(),
            ));
        }
        return Ok(if action == Action::Accept {
            Requirement::Accept
        } else {
            Requirement::Reject
        });
    }
    let Some(key_paths) = rule.keys else {
        return Err(at(
            rule.action.span().start,
            "action \"signed-by\" needs keys".into(),
        ));
    };
    let list_start = key_paths.span().start;
    let mut keys: Vec<PublicKey> = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    for path in key_paths.into_inner() {
        let start = path.span().start;
        let path = base.join(path.into_inner());
        let key = PublicKey::load(&path).map_err(|e| at(start, e.to_string()))?;
        if let Some(i) = keys.iter().position(|k| k == &key) {
            return Err(at(
                start,
                format!(
                    "key {} is the same public key ({}) as {}; a threshold counts distinct keys",
                    path.display(),
                    key.id(),
                    paths[i].display()
                ),
            ));
        }
        keys.push(key);
        paths.push(path);
    }
    if keys.is_empty() {
        return Err(at(
            list_start,
            "action \"signed-by\" needs at least one key".into(),
        ));
    }
    let threshold = match rule.threshold {
        None => 1,
        Some(t) => {
            let n = *t.get_ref();
            if n < 1 || n > keys.len() as i64 {
                return Err(at(
                    t.span().start,
                    format!(
                        "threshold {n} must be between 1 and the number of keys ({})",
                        keys.len()
                    ),
                ));
            }
            n as usize
        }
    };
    let identity = match rule.identity.map(Spanned::into_inner) {
        None | Some(Match::Exact) => IdentityMatch::Exact,
        Some(Match::Repository) => IdentityMatch::Repository,
    };
    Ok(Requirement::SignedBy {
        keys,
        threshold,
        identity,
    })
}

/// Checks that `prefix` is a normalized name or a leading part of one (POL-4).
fn validate_prefix(prefix: &str) -> std::result::Result<(), String> {
    // Two more components keep a Docker Hub prefix from being read as a short name.
    let probe = format!("{prefix}/x/y");
    if Reference::parse(&probe).is_ok_and(|r| r.name() == probe) {
        return Ok(());
    }
    match Reference::parse(prefix) {
        Ok(r) if r.name() != prefix => Err(format!(
            "prefix {prefix:?} is not a normalized image name; did you mean {:?}?",
            r.name()
        )),
        _ => Err(format!(
            "prefix {prefix:?} is not a normalized image name or a leading part of one \
             (e.g. \"registry.example.com/team\", \"docker.io/library/busybox\")"
        )),
    }
}

/// Loads `named` if given (it must exist), else the first of `searched` that exists, else
/// [`Policy::accept_all`] (POL-10).
fn load_first(
    named: Option<PathBuf>,
    searched: impl IntoIterator<Item = PathBuf>,
) -> Result<Policy> {
    if let Some(path) = named {
        return Policy::load(&path);
    }
    for path in searched {
        // A dangling symlink counts as present: loading it fails instead of falling through.
        match path.symlink_metadata() {
            Ok(_) => return Policy::load(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "policy",
                    path,
                    source,
                })
            }
        }
    }
    tracing::debug!("no policy file; accepting every image unsigned");
    Ok(Policy::accept_all())
}

fn read_policy_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        what: "policy",
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_POLICY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let bad = |message: String| Error::Policy {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    if bytes.len() as u64 > MAX_POLICY_FILE {
        return Err(bad(format!("larger than {MAX_POLICY_FILE} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_must_be_normalized_names_pol_4() {
        for good in [
            "registry.example.com",
            "registry.example.com/team",
            "127.0.0.1:5000/team/app",
            "localhost",
            "[::1]:5000",
            "docker.io",
            "docker.io/library",
            "docker.io/library/busybox",
        ] {
            assert_eq!(validate_prefix(good), Ok(()), "{good}");
        }
        for (bad, hint) in [
            ("busybox", "did you mean \"docker.io/library/busybox\""),
            (
                "index.docker.io/library/x",
                "did you mean \"docker.io/library/x\"",
            ),
            ("reg.io/app:1", "did you mean \"reg.io/app\""),
            ("reg.io/team/", "leading part"),
            ("reg.io//team", "leading part"),
            ("", "leading part"),
            ("reg.io/Team", "leading part"),
            ("team/app", "did you mean \"docker.io/team/app\""),
        ] {
            let e = validate_prefix(bad).unwrap_err();
            assert!(e.contains(hint), "{bad}: {e}");
        }
    }

    fn tmp_policy(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn lookup_takes_the_named_file_then_the_first_existing_one_pol_10() {
        let dir = tempfile::tempdir().unwrap();
        let reject = tmp_policy(
            dir.path(),
            "reject.toml",
            "[default]\naction = \"reject\"\n",
        );
        let missing = dir.path().join("missing.toml");
        let image = Reference::parse("reg.io/a:1").unwrap();
        let d = Digest::sha256(b"m");
        let verdict = |p: &Policy| p.evaluate(&image, &d, &[]).unwrap();

        // Nothing anywhere: accept all.
        let p = load_first(None, [missing.clone(), dir.path().join("nope/policy.toml")]).unwrap();
        assert_eq!(p.source(), None);
        assert_eq!(
            verdict(&p),
            Verdict::Accepted {
                how: Acceptance::Unsigned
            }
        );
        // The first searched file that exists wins.
        let p = load_first(None, [missing.clone(), reject.clone()]).unwrap();
        assert_eq!(p.source(), Some(reject.as_path()));
        assert!(matches!(verdict(&p), Verdict::Rejected { .. }));
        // A named file must exist; it is never skipped in favour of accept-all.
        let e = load_first(Some(missing.clone()), [reject.clone()]).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        // A searched file that exists but is broken is an error, not a fall-through.
        let broken = tmp_policy(dir.path(), "broken.toml", "[default]\naction = \"maybe\"\n");
        assert!(load_first(None, [broken, reject.clone()]).is_err());
        let dangling = dir.path().join("dangling.toml");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        assert!(load_first(None, [dangling]).is_err());
    }

    #[test]
    fn line_numbers_are_one_based() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\n", 99), 2);
    }
}

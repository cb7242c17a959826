//! `ferry config import`: the site config and trust policy equivalent to what a machine
//! already has for podman (`registries.conf`, `policy.json`) or containerd (`certs.d`
//! directories of `hosts.toml`).
//!
//! Rules: `specs/site-config.md` (SITE-9 … SITE-12) and `specs/policy.md` (POL-12). What
//! cannot be carried over is returned as [`Note`]s, never dropped.

mod hosts_toml;
mod policy_json;
mod registries_conf;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use self::hosts_toml::import_certs_d;
use self::policy_json::import_policy_json;
use self::registries_conf::import_registries_conf;
use crate::site::config::{validate_prefix, SiteConfig};
use crate::{Error, ErrorKind, Result};

/// Most bytes read from one imported file.
const MAX_IMPORT_FILE: u64 = 4 << 20;

/// Something of the imported files that ferry's files do not carry as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Whether ferry's result is weaker than the original (a signature requirement that
    /// became `reject`): `ferry config import` then exits 1.
    pub error: bool,
    /// Where: `FILE: KEY`.
    pub place: String,
    /// What was not carried over and what ferry does instead.
    pub text: String,
}

impl std::fmt::Display for Note {
    /// One line, whatever keys and values the imported file held.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", one_line(&self.place), one_line(&self.text))
    }
}

/// The result of an import: a site config, a trust policy, or both, as file text.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// `sites.toml` text, validated by [`SiteConfig::parse`].
    pub site: Option<String>,
    /// `policy.toml` text.
    pub policy: Option<String>,
    /// What was not carried over, in file order.
    pub notes: Vec<Note>,
    /// Key files the policy names that a `policy.json` held inline (`keyData`): to be
    /// written before the policy.
    pub keys: Vec<InlineKey>,
}

/// A public key a `policy.json` held inline, as the file the imported policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineKey {
    /// Where to write it: beside the policy's file, whose rule names it relatively (POL-2).
    pub path: PathBuf,
    /// The key as SPKI PEM, checked to be an Ed25519 or ECDSA P-256 key.
    pub pem: String,
}

/// Imports `path`: a `registries.conf` or `hosts.toml` file, a `policy.json`, a
/// containerd `certs.d` directory, or a containers directory (`/etc/containers`: its
/// `registries.conf` and `policy.json`) (SITE-9). `output` and `policy_out` are where
/// the result will be written (`None`: stdout): the policy's file is `output` for a
/// `policy.json` alone, else `policy_out`; inline keys go beside it, and are not carried
/// when the policy has no file (POL-12).
pub fn import_path(
    path: &Path,
    output: Option<&Path>,
    policy_out: Option<&Path>,
) -> Result<Imported> {
    let meta = std::fs::metadata(path).map_err(|e| bad_file(path, &e.to_string()))?;
    if meta.is_dir() {
        let registries = path.join("registries.conf");
        let policy = path.join("policy.json");
        if registries.is_file() || policy.is_file() {
            let mut out = Imported::default();
            let mut blocked = Vec::new();
            if registries.is_file() {
                let site = import_registries_conf(&registries, &read_text(&registries)?)?;
                out.site = Some(site.text);
                out.notes.extend(site.notes);
                blocked = site.blocked;
            }
            let mut policy_draft = if policy.is_file() {
                import_policy_json(&policy, &read_text(&policy)?, policy_out)?
            } else {
                PolicyDraft::accept_by_default()
            };
            if !blocked.is_empty() || policy.is_file() {
                policy_draft.add_blocked(&blocked);
                out.policy = Some(policy_draft.render(&policy_sources(&registries, &policy)));
                out.notes.extend(policy_draft.notes);
            }
            out.keys = std::mem::take(&mut policy_draft.keys);
            return Ok(out);
        }
        let site = import_certs_d(path)?;
        return Ok(Imported {
            site: Some(site.0),
            notes: site.1,
            ..Imported::default()
        });
    }
    let format = Format::of_file(path);
    let policy_file = if format == Format::PolicyJson {
        output
    } else {
        policy_out
    };
    import_file(format, path, &read_text(path)?, policy_file)
}

/// The formats of single files `ferry config import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// containers-registries.conf(5), version 2.
    RegistriesConf,
    /// containerd's `REGISTRY/hosts.toml`.
    HostsToml,
    /// containers-policy.json(5).
    PolicyJson,
}

impl Format {
    /// The format a file's name says: `*.json` is a policy, `hosts.toml` containerd's,
    /// anything else a `registries.conf`.
    pub fn of_file(path: &Path) -> Format {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") {
            Format::PolicyJson
        } else if name == "hosts.toml" {
            Format::HostsToml
        } else {
            Format::RegistriesConf
        }
    }
}

/// Imports `text`, read from `path` (named in messages; for `hosts.toml` its directory
/// names the registry), as `format` (SITE-9).
/// The trust policy is printed, so inline keys are not carried.
pub fn import_text(format: Format, path: &Path, text: &str) -> Result<Imported> {
    import_file(format, path, text, None)
}

/// [`import_text`], the policy to be written to `policy_file`.
fn import_file(
    format: Format,
    path: &Path,
    text: &str,
    policy_file: Option<&Path>,
) -> Result<Imported> {
    match format {
        Format::PolicyJson => {
            let draft = import_policy_json(path, text, policy_file)?;
            Ok(Imported {
                site: None,
                policy: Some(draft.render(&[path.to_path_buf()])),
                notes: draft.notes,
                keys: draft.keys,
            })
        }
        Format::HostsToml => {
            let (site, notes) = hosts_toml::import_hosts_file(path, text)?;
            Ok(Imported {
                site: Some(site),
                notes,
                ..Imported::default()
            })
        }
        Format::RegistriesConf => {
            let site = import_registries_conf(path, text)?;
            let mut out = Imported {
                site: Some(site.text),
                notes: site.notes,
                ..Imported::default()
            };
            if !site.blocked.is_empty() {
                let mut draft = PolicyDraft::accept_by_default();
                draft.add_blocked(&site.blocked);
                out.policy = Some(draft.render(&[path.to_path_buf()]));
                out.notes.extend(draft.notes);
            }
            Ok(out)
        }
    }
}

fn policy_sources(registries: &Path, policy: &Path) -> Vec<PathBuf> {
    [registries, policy]
        .into_iter()
        .filter(|p| p.is_file())
        .map(Path::to_path_buf)
        .collect()
}

/// Reads a file to import (at most [`MAX_IMPORT_FILE`] bytes, UTF-8).
pub(crate) fn read_text(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| bad_file(path, &e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_IMPORT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad_file(path, &e.to_string()))?;
    if bytes.len() as u64 > MAX_IMPORT_FILE {
        return Err(bad_file(
            path,
            &format!("larger than {} MiB", MAX_IMPORT_FILE >> 20),
        ));
    }
    String::from_utf8(bytes).map_err(|_| bad_file(path, "not UTF-8 text"))
}

/// An error about an imported file, on one line: `FILE: why`.
pub(crate) fn bad_file(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Invalid,
        "",
        format!("{}: {}", path.display(), one_line(why)),
    )
}

/// `text` on one line: newlines become `; `, other control characters are escaped.
pub(crate) fn one_line(text: &str) -> String {
    text.trim_end()
        .replace('\n', "; ")
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A parse error in an imported TOML file, on one line naming the file, the line and,
/// where toml says, the key.
pub(crate) fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let at = e.span().map_or_else(String::new, |span| {
        let start = span.start.min(text.len());
        let line = text[..start].matches('\n').count() + 1;
        // The key is what the line holds before its `=`, if it holds one.
        let line_text = text[start..].lines().next().unwrap_or("");
        let line_text = text[..start]
            .rsplit('\n')
            .next()
            .map_or(line_text.to_string(), |head| format!("{head}{line_text}"));
        match line_text.split_once('=') {
            Some((key, _)) if !key.trim().is_empty() && !key.contains('[') => {
                format!("line {line}: {}: ", key.trim())
            }
            _ => format!("line {line}: "),
        }
    });
    bad_file(path, &format!("{at}{}", e.message()))
}

/// TOML text of a string value (quoted and escaped).
pub(crate) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A registry (or one of its mirrors) as the imported files name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Base URL of the registry API (what ferry appends `v2/…` to).
    pub url: url::Url,
    /// Other URLs of the same content, tried after `url` (podman's insecure fallback).
    pub fallback: Option<url::Url>,
    /// Plain http or unverified TLS allowed.
    pub insecure: bool,
    /// Where names live at the endpoint (`mirror/{name}`), `None` for the name's own path.
    pub repository: Option<String>,
}

/// A route in the making: sources and resolvers by index into [`SiteDraft::sources`].
#[derive(Debug, Default)]
pub(crate) struct RouteDraft {
    pub prefix: String,
    content: Vec<usize>,
    resolve: Vec<usize>,
    /// Comment lines written above the route.
    pub comments: Vec<String>,
}

impl RouteDraft {
    /// Adds `source` for content (pull by digest) and/or for tags, once each.
    pub fn add(&mut self, source: usize, content: bool, resolve: bool) {
        if content && !self.content.contains(&source) {
            self.content.push(source);
        }
        if resolve && !self.resolve.contains(&source) {
            self.resolve.push(source);
        }
    }

    /// Whether no source gives content.
    pub fn has_no_content(&self) -> bool {
        self.content.is_empty()
    }
}

/// A site config in the making.
#[derive(Debug, Default)]
pub(crate) struct SiteDraft {
    pub routes: Vec<RouteDraft>,
    sources: Vec<(String, Endpoint)>,
}

impl SiteDraft {
    /// The index of the source for `endpoint`, added under a name made from its host if
    /// no source has the same endpoint yet.
    pub fn source(&mut self, endpoint: Endpoint) -> usize {
        if let Some(i) = self.sources.iter().position(|(_, e)| *e == endpoint) {
            return i;
        }
        let base = endpoint
            .url
            .host_str()
            .map(|h| match endpoint.url.port() {
                Some(p) => format!("{h}-{p}"),
                None => h.to_string(),
            })
            .unwrap_or_else(|| "source".into());
        let mut name = base.clone();
        let mut n = 2;
        while self.sources.iter().any(|(s, _)| *s == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.sources.push((name, endpoint));
        self.sources.len() - 1
    }

    /// Whether a route for `prefix` is there already.
    pub fn has_route(&self, prefix: &str) -> bool {
        self.routes.iter().any(|r| r.prefix == prefix)
    }

    /// Whether `prefix` can be a route prefix; a [`Note`] saying why not otherwise.
    pub fn check_prefix(prefix: &str, place: &str) -> std::result::Result<(), Note> {
        if prefix.contains('*') && prefix != "*" {
            return Err(Note {
                error: false,
                place: place.to_string(),
                text: format!(
                    "prefix {prefix:?} is a wildcard; ferry's routes match name prefixes only: not carried over"
                ),
            });
        }
        validate_prefix(prefix).map_err(|why| Note {
            error: false,
            place: place.to_string(),
            text: format!("{why}: not carried over"),
        })
    }

    /// The `sites.toml` text: a header naming `from`, the notes as comments, the routes
    /// and sources; checked by [`SiteConfig::parse`].
    pub fn render(&self, from: &[PathBuf], notes: &[Note]) -> Result<String> {
        let mut out = header("site config", from, notes);
        for route in &self.routes {
            out.push('\n');
            for c in &route.comments {
                let _ = writeln!(out, "# {c}");
            }
            let names = |list: &[usize]| {
                list.iter()
                    .map(|&i| quoted(&self.sources[i].0))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "[[route]]");
            let _ = writeln!(out, "prefix = {}", quoted(&route.prefix));
            let _ = writeln!(out, "sources = [{}]", names(&route.content));
            let _ = writeln!(out, "resolve = [{}]", names(&route.resolve));
        }
        // Only sources a route uses: a route left out leaves its sources out too.
        let used = |i: &usize| {
            self.routes
                .iter()
                .any(|r| r.content.contains(i) || r.resolve.contains(i))
        };
        for (_, (name, e)) in self.sources.iter().enumerate().filter(|(i, _)| used(i)) {
            out.push('\n');
            let _ = writeln!(out, "[source.{}]", quoted(name));
            match &e.fallback {
                None => {
                    let _ = writeln!(out, "driver = \"registry\"");
                    let _ = writeln!(out, "url = {}", quoted(e.url.as_str()));
                }
                Some(second) => {
                    let _ = writeln!(out, "driver = \"mirror\"");
                    let _ = writeln!(
                        out,
                        "endpoints = [{}, {}]",
                        quoted(e.url.as_str()),
                        quoted(second.as_str())
                    );
                }
            }
            if e.insecure {
                let _ = writeln!(out, "insecure = true");
            }
            if let Some(r) = &e.repository {
                let _ = writeln!(out, "repository = {}", quoted(r));
            }
        }
        SiteConfig::parse(&out, "imported site config").map_err(|e| {
            let files: Vec<String> = from.iter().map(|p| p.display().to_string()).collect();
            Error::new(
                ErrorKind::Invalid,
                "",
                format!(
                    "{}: the imported site config is not valid (a bug in the importer): {e}",
                    files.join(", ")
                ),
            )
        })?;
        Ok(out)
    }
}

/// Whether ferry's policy accepts `prefix` as a rule prefix (POL-4), by loading a policy
/// with that one rule.
pub(crate) fn check_policy_prefix(prefix: &str) -> std::result::Result<(), String> {
    let probe = format!(
        "[default]\naction = \"accept\"\n[[rule]]\nprefix = {}\naction = \"reject\"\n",
        quoted(prefix)
    );
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut file, probe.as_bytes()).map_err(|e| e.to_string())?;
    ferry_signing::Policy::load(file.path())
        .map(|_| ())
        .map_err(|e| {
            let text = e.to_string();
            // The probe file's name and line say nothing to the user: keep the reason.
            text.rsplit_once(": ")
                .map_or(text.clone(), |(_, why)| why.to_string())
        })
}

/// The comment block opening an imported file.
fn header(what: &str, from: &[PathBuf], notes: &[Note]) -> String {
    let mut out = String::new();
    let files: Vec<String> = from.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(
        out,
        "# ferry {what} imported by `ferry config import` from {}.",
        files.join(", ")
    );
    if notes.is_empty() {
        let _ = writeln!(out, "# Everything was carried over.");
    } else {
        let _ = writeln!(out, "# Not carried over as it was:");
        for n in notes {
            let _ = writeln!(
                out,
                "#   {}{}",
                if n.error { "error: " } else { "" },
                one_line(&n.to_string())
            );
        }
    }
    out
}

/// A policy action ferry's `policy.toml` has for imported entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Accept,
    Reject,
    /// `signed-by`: `threshold` distinct keys of `keys` (absolute paths or paths beside
    /// the policy), under `match = "repository"` when `repository` (POL-2, POL-11).
    SignedBy {
        keys: Vec<String>,
        threshold: usize,
        repository: bool,
    },
}

impl Action {
    fn as_str(&self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::SignedBy { .. } => "signed-by",
        }
    }

    /// The action's keys of a `[default]` or `[[rule]]` table, one per line.
    fn toml_lines(&self) -> String {
        let mut out = format!("action = {}\n", quoted(self.as_str()));
        if let Action::SignedBy {
            keys,
            threshold,
            repository,
        } = self
        {
            let keys: Vec<String> = keys.iter().map(|k| quoted(k)).collect();
            let _ = writeln!(out, "keys = [{}]\nthreshold = {threshold}", keys.join(", "));
            if *repository {
                out.push_str("match = \"repository\"\n");
            }
        }
        out
    }
}

/// A trust policy in the making.
#[derive(Debug)]
pub(crate) struct PolicyDraft {
    pub default: Action,
    /// Rules: prefix, action, comment.
    pub rules: Vec<(String, Action, Option<String>)>,
    /// What was not carried over.
    pub notes: Vec<Note>,
    /// Inline keys the rules name.
    pub keys: Vec<InlineKey>,
}

impl PolicyDraft {
    /// A policy accepting every image, as ferry does without a policy file (POL-10).
    pub fn accept_by_default() -> Self {
        PolicyDraft {
            default: Action::Accept,
            rules: Vec::new(),
            notes: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Adds a `reject` rule per blocked prefix (registries.conf `blocked = true`),
    /// replacing a rule for the same prefix; a prefix no rule can have is an error note.
    pub fn add_blocked(&mut self, blocked: &[(String, String)]) {
        for (prefix, place) in blocked {
            let why = if prefix.contains('*') {
                Err("a wildcard; ferry's rules match name prefixes only".to_string())
            } else {
                check_policy_prefix(prefix)
            };
            if let Err(why) = why {
                self.notes.push(Note {
                    error: true,
                    place: place.clone(),
                    text: format!("blocked, but {prefix:?} cannot be a policy rule ({why}): its names are not rejected"),
                });
                continue;
            }
            if let Some(rule) = self.rules.iter_mut().find(|r| r.0 == *prefix) {
                if rule.1 != Action::Reject {
                    self.notes.push(Note {
                        error: false,
                        place: place.clone(),
                        text: format!(
                            "blocked: the policy's {} rule for {prefix:?} becomes reject",
                            rule.1.as_str()
                        ),
                    });
                }
                rule.1 = Action::Reject;
                rule.2 = Some(format!("blocked in {place}"));
            } else {
                self.rules.push((
                    prefix.clone(),
                    Action::Reject,
                    Some(format!("blocked in {place}")),
                ));
            }
        }
    }

    /// The `policy.toml` text.
    pub fn render(&self, from: &[PathBuf]) -> String {
        let mut out = header("trust policy", from, &self.notes);
        let _ = write!(out, "\n[default]\n{}", self.default.toml_lines());
        for (prefix, action, comment) in &self.rules {
            out.push('\n');
            if let Some(c) = comment {
                let _ = writeln!(out, "# {}", one_line(c));
            }
            let _ = write!(
                out,
                "[[rule]]\nprefix = {}\n{}",
                quoted(prefix),
                action.toml_lines()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_prefixes_a_policy_cannot_hold_are_errors_not_rules() {
        // POL-12, SITE-10. Found by the config_import fuzz target: a blocked prefix fit for
        // a route but not for the policy (POL-4) made a policy ferry refused to load.
        let text = "[[registry]]\nprefix = \"b}ocked.example.com/evil\"\nblocked = true\n\n\
                    [[registry]]\nprefix = \"*.example.com\"\nblocked = true\n\n\
                    [[registry]]\nprefix = \"evil.example.com\"\nblocked = true\n";
        let out = import_text(Format::RegistriesConf, Path::new("registries.conf"), text).unwrap();
        let policy = out.policy.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, &policy).unwrap();
        ferry_signing::Policy::load(&file).unwrap();
        assert!(policy.contains("prefix = \"evil.example.com\"\naction = \"reject\""));
        let errors: Vec<String> = out
            .notes
            .iter()
            .filter(|n| n.error)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("b}ocked")), "{errors:?}");
    }

    #[test]
    fn a_prefix_defined_twice_is_an_error_naming_file_and_prefix() {
        // SITE-9. Found by the config_import fuzz target: two [[registry]] tables with one
        // prefix made two routes, which the site config refuses (SITE-3).
        let text = "[[registry]]\nprefix = \"docker.io\"\n[[registry.mirror]]\nlocation = \"m.example.com\"\n\
                    [[registry]]\nprefix = \"docker.io\"\nblocked = true\n";
        let err = import_text(Format::RegistriesConf, Path::new("r.conf"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.conf: ") && err.contains("\"docker.io\" is defined twice"),
            "{err}"
        );
    }
}

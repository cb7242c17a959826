//! containers-registries.conf(5), version 2: `[[registry]]` prefix/location rewrites,
//! mirrors, `insecure`, `blocked` (SITE-10).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{toml_error, Endpoint, Note, RouteDraft, SiteDraft};
use crate::Result;

/// A `registries.conf` as ferry reads it.
#[derive(Deserialize)]
struct File {
    #[serde(rename = "unqualified-search-registries", default)]
    search: Vec<String>,
    #[serde(default)]
    registry: Vec<Registry>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct Registry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(rename = "mirror-by-digest-only", default)]
    by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(rename = "pull-from-mirror")]
    pull_from: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// A converted `registries.conf`.
pub(crate) struct SiteImport {
    /// The `sites.toml` text.
    pub text: String,
    /// What was not carried over.
    pub notes: Vec<Note>,
    /// Blocked prefixes and where they were blocked, for reject rules in the policy.
    pub blocked: Vec<(String, String)>,
}

/// Converts the `registries.conf` `text` read from `path` (SITE-10).
pub(crate) fn import_registries_conf(path: &Path, text: &str) -> Result<SiteImport> {
    let file: File = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let at = |what: &str| format!("{}: {what}", path.display());
    let mut notes = Vec::new();
    let mut note = |place: String, text: String| {
        notes.push(Note {
            error: false,
            place,
            text,
        })
    };
    if file.other.contains_key("registries") {
        return Err(super::bad_file(
            path,
            "[registries.*] is the version 1 format; ferry imports version 2 ([[registry]] tables)",
        ));
    }
    // containers reads drop-ins after the file; ferry converts one file at a time.
    let drop_ins = path
        .parent()
        .map(|d| d.join("registries.conf.d"))
        .and_then(|d| std::fs::read_dir(d).ok());
    let mut drop_ins: Vec<_> = drop_ins
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    drop_ins.sort();
    for d in drop_ins {
        note(
            d.display().to_string(),
            "a registries.conf.d drop-in: not read with this file (`ferry config import` converts it on its own)".into(),
        );
    }
    if !file.search.is_empty() {
        note(
            at("unqualified-search-registries"),
            format!(
                "ferry does not search {:?} for short names: a short name like `busybox` means docker.io/library/busybox, as with docker; write full names",
                file.search
            ),
        );
    }
    for key in file.other.keys() {
        note(at(key), "not used by ferry".into());
    }
    let mut site = SiteDraft::default();
    let mut blocked = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, reg) in file.registry.iter().enumerate() {
        let Some(prefix) = reg.prefix.clone().or_else(|| reg.location.clone()) else {
            note(
                at(&format!("[[registry]] #{}", i + 1)),
                "has neither prefix nor location: not carried over".into(),
            );
            continue;
        };
        if !seen.insert(prefix.clone()) {
            return Err(super::bad_file(
                path,
                &format!("[[registry]] prefix {prefix:?} is defined twice (containers refuses such a file too)"),
            ));
        }
        let place = at(&format!("[[registry]] prefix {prefix:?}"));
        for key in reg.other.keys() {
            note(format!("{place}: {key}"), "not used by ferry".into());
        }
        if reg.blocked {
            // Checked as a policy prefix (POL-4) when the rule is made.
            blocked.push((prefix.clone(), place.clone()));
            continue;
        }
        if let Err(n) = SiteDraft::check_prefix(&prefix, &place) {
            note(n.place, n.text);
            continue;
        }
        let mut route = RouteDraft {
            prefix: prefix.clone(),
            comments: vec![format!("from {place}")],
            ..RouteDraft::default()
        };
        for m in &reg.mirror {
            let mplace = format!("{place}: mirror {:?}", m.location);
            for key in m.other.keys() {
                note(format!("{mplace}: {key}"), "not used by ferry".into());
            }
            let endpoint = match endpoint_for(&prefix, &m.location, m.insecure) {
                Ok(e) => e,
                Err(why) => {
                    note(mplace, format!("{why}: not carried over"));
                    continue;
                }
            };
            let source = site.source(endpoint);
            let (tags, digests) = match m.pull_from.as_deref() {
                None | Some("all") => (!reg.by_digest_only, true),
                Some("digest-only") => (false, true),
                Some("tag-only") => {
                    note(
                        format!("{mplace}: pull-from-mirror"),
                        "tag-only: ferry also asks this mirror for the content of pulls by digest (every byte is verified against its digest)".into(),
                    );
                    (true, true)
                }
                Some(other) => {
                    note(
                        format!("{mplace}: pull-from-mirror"),
                        format!("unknown value {other:?} (expected all, digest-only or tag-only): mirror not carried over"),
                    );
                    continue;
                }
            };
            route.add(source, digests, tags);
        }
        let location = reg.location.clone().unwrap_or_else(|| prefix.clone());
        let origin = match endpoint_for(&prefix, &location, reg.insecure) {
            Ok(e) => e,
            Err(why) => {
                note(
                    format!("{place}: location"),
                    format!("{why}: route not carried over"),
                );
                continue;
            }
        };
        let plain = location == prefix && reg.mirror.is_empty() && !reg.insecure;
        if plain {
            // The same as no route: the name goes to its own registry.
            continue;
        }
        let origin = site.source(origin);
        route.add(origin, true, true);
        if reg.by_digest_only && !reg.mirror.is_empty() {
            route
                .comments
                .push("mirror-by-digest-only: the mirrors do not answer tags".into());
        }
        site.routes.push(route);
    }
    let text = site.render(&[path.to_path_buf()], &notes)?;
    Ok(SiteImport {
        text,
        notes,
        blocked,
    })
}

/// The endpoint serving names under `prefix` at `location` (`host[:port][/path]`):
/// `location/REST` for the name `prefix/REST`.
pub(crate) fn endpoint_for(
    prefix: &str,
    location: &str,
    insecure: bool,
) -> std::result::Result<Endpoint, String> {
    if location.contains("://") {
        return Err(format!(
            "location {location:?} has a scheme; registries.conf locations are host[:port][/path]"
        ));
    }
    let (host, path) = location.split_once('/').unwrap_or((location, ""));
    let prefix_path = prefix.split_once('/').map_or("", |(_, p)| p);
    // ferry's `repository` template puts the name's whole path at `{name}`: the location
    // path must end with the prefix's path for the rewrite to be one.
    let repository = if prefix_path.is_empty() {
        (!path.is_empty()).then(|| format!("{path}/{{name}}"))
    } else if path == prefix_path {
        None
    } else if let Some(head) = path.strip_suffix(&format!("/{prefix_path}")) {
        Some(format!("{head}/{{name}}"))
    } else {
        return Err(format!(
            "location {location:?} does not end with {prefix_path:?}: ferry's repository rewrite (`PATH/{{name}}`) only adds a path in front of the name's"
        ));
    };
    let api_host = match host.to_ascii_lowercase().as_str() {
        "docker.io" | "index.docker.io" => "registry-1.docker.io".to_string(),
        _ => host.to_string(),
    };
    let parse = |scheme: &str| {
        url::Url::parse(&format!("{scheme}://{api_host}/"))
            .ok()
            .filter(|u| u.host_str().is_some() && !api_host.is_empty())
            .ok_or_else(|| format!("location {location:?} has no valid host"))
    };
    let url = parse("https")?;
    // podman tries https and then plain http for an insecure registry: so does a ferry
    // mirror source with both endpoints.
    let fallback = if insecure { Some(parse("http")?) } else { None };
    Ok(Endpoint {
        url,
        fallback,
        insecure,
        repository,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_repository_rewrites_where_they_are_one() {
        // SITE-10
        let e = endpoint_for("docker.io", "ferry:5000/docker.io", false).unwrap();
        assert_eq!(e.url.as_str(), "https://ferry:5000/");
        assert_eq!(e.repository.as_deref(), Some("docker.io/{name}"));
        let e = endpoint_for("example.com/foo", "mirror.local/mirrors/foo", false).unwrap();
        assert_eq!(e.repository.as_deref(), Some("mirrors/{name}"));
        let e = endpoint_for("example.com/foo", "other.example.com/foo", false).unwrap();
        assert_eq!(e.repository, None);
        let e = endpoint_for("docker.io", "docker.io", true).unwrap();
        assert_eq!(e.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(
            e.fallback.map(|u| u.to_string()).as_deref(),
            Some("http://registry-1.docker.io/")
        );
        let err = endpoint_for("example.com/foo", "mirror.local/bar", false).unwrap_err();
        assert!(err.contains("does not end with \"foo\""), "{err}");
        assert!(endpoint_for("a.com", "https://b.com", false).is_err());
    }
}

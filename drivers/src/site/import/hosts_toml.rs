//! containerd's registry host configuration: a `certs.d` directory holding one
//! `REGISTRY/hosts.toml` per registry (`server`, `[host."URL"]` in order) (SITE-11).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::Deserialize;

use super::{bad_file, read_text, toml_error, Endpoint, Note, RouteDraft, SiteDraft};
use crate::Result;

/// Most registry directories read from one `certs.d`.
const MAX_REGISTRIES: usize = 10_000;

/// A `hosts.toml` as ferry reads it.
#[derive(Deserialize)]
struct File {
    server: Option<String>,
    #[serde(default)]
    host: Hosts,
    #[serde(flatten)]
    settings: Settings,
}

/// What `server` and each `[host."URL"]` may set.
#[derive(Deserialize, Default)]
struct Settings {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    skip_verify: bool,
    #[serde(default)]
    override_path: bool,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// The `[host."URL"]` tables in the order the file has them (containerd tries them in
/// that order).
#[derive(Default)]
struct Hosts(Vec<(String, Settings)>);

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Hosts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of [host.\"URL\"] tables")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Hosts, A::Error> {
                let mut hosts = Vec::new();
                while let Some((url, settings)) = map.next_entry::<String, Settings>()? {
                    hosts.push((url, settings));
                }
                Ok(Hosts(hosts))
            }
        }
        d.deserialize_map(InOrder)
    }
}

/// Converts a `certs.d` directory: one route per `REGISTRY/hosts.toml`, in name order
/// (`_default` is the `*` route) (SITE-11).
pub(crate) fn import_certs_d(dir: &Path) -> Result<(String, Vec<Note>)> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| bad_file(dir, &e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad_file(dir, &e.to_string()))?;
        let hosts = entry.path().join("hosts.toml");
        if hosts.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, hosts));
        }
        if files.len() > MAX_REGISTRIES {
            return Err(bad_file(
                dir,
                &format!("more than {MAX_REGISTRIES} registry directories"),
            ));
        }
    }
    if files.is_empty() {
        return Err(bad_file(
            dir,
            "no REGISTRY/hosts.toml (containerd certs.d), registries.conf or policy.json in this directory",
        ));
    }
    files.sort();
    let mut site = SiteDraft::default();
    let mut notes = Vec::new();
    for (registry, path) in &files {
        let text = read_text(path)?;
        add_registry(&mut site, &mut notes, registry, path, &text)?;
    }
    let from: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    let text = site.render(&from, &notes)?;
    Ok((text, notes))
}

/// Converts one `hosts.toml` file; the registry is the name of its directory.
pub(crate) fn import_hosts_file(path: &Path, text: &str) -> Result<(String, Vec<Note>)> {
    let registry = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            bad_file(
                path,
                "the registry is named by the directory holding hosts.toml; this one has none",
            )
        })?;
    let mut site = SiteDraft::default();
    let mut notes = Vec::new();
    add_registry(&mut site, &mut notes, registry, path, text)?;
    let text = site.render(&[path.to_path_buf()], &notes)?;
    Ok((text, notes))
}

fn add_registry(
    site: &mut SiteDraft,
    notes: &mut Vec<Note>,
    registry: &str,
    path: &Path,
    text: &str,
) -> Result<()> {
    let file: File = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let prefix = match registry {
        "_default" => "*".to_string(),
        r => r.to_ascii_lowercase(),
    };
    let place = path.display().to_string();
    if let Err(n) = SiteDraft::check_prefix(&prefix, &place) {
        notes.push(n);
        return Ok(());
    }
    if site.has_route(&prefix) {
        notes.push(Note {
            error: false,
            place,
            text: format!(
                "{prefix:?} is configured by another directory already: not carried over"
            ),
        });
        return Ok(());
    }
    let mut route = RouteDraft {
        prefix: prefix.clone(),
        comments: vec![format!("from {place}")],
        ..RouteDraft::default()
    };
    let mut note = |place: String, text: String| {
        notes.push(Note {
            error: false,
            place,
            text,
        })
    };
    for (url, settings) in &file.host.0 {
        let hplace = format!("{place}: host {url:?}");
        let Some(endpoint) = endpoint(url, settings, &hplace, &mut note) else {
            continue;
        };
        let (pull, resolve) = capabilities(settings, &hplace, &mut note);
        if registry != "docker.io" && registry != "_default" {
            note(
                hplace.clone(),
                format!("containerd adds ?ns={registry} to requests to this host; ferry asks for the name's own path (a mirror that tells registries apart by ns needs repository = \"{registry}/{{name}}\")"),
            );
        }
        if !pull && !resolve {
            continue;
        }
        let source = site.source(endpoint);
        route.add(source, pull, resolve);
    }
    // The server is the registry itself, asked last; `_default` has none of its own.
    let server = match (&file.server, registry) {
        (Some(s), _) => Some(s.clone()),
        (None, "_default") => None,
        (None, "docker.io") => Some("https://registry-1.docker.io".into()),
        (None, r) => Some(format!("https://{r}")),
    };
    if let Some(server) = server {
        let splace = format!("{place}: server");
        if let Some(endpoint) = endpoint(&server, &file.settings, &splace, &mut note) {
            let (pull, resolve) = capabilities(&file.settings, &splace, &mut note);
            let source = site.source(endpoint);
            route.add(source, pull, resolve);
        }
    } else {
        for key in file.settings.other.keys() {
            note(format!("{place}: {key}"), "not used by ferry".into());
        }
    }
    if route.has_no_content() {
        note(
            place,
            "no host may pull: route not carried over (names go to their own registry)".into(),
        );
        return Ok(());
    }
    site.routes.push(route);
    Ok(())
}

/// The endpoint for a host or server URL, or `None` with a note saying why not.
fn endpoint(
    url: &str,
    settings: &Settings,
    place: &str,
    note: &mut impl FnMut(String, String),
) -> Option<Endpoint> {
    for key in settings.other.keys() {
        note(
            format!("{place}: {key}"),
            "not used by ferry (TLS files and headers are not carried over)".into(),
        );
    }
    let mut parsed = match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => {
            note(
                place.to_string(),
                "not an http(s) URL with a host: not carried over".into(),
            );
            return None;
        }
    };
    let path = parsed.path().trim_end_matches('/').to_string();
    // containerd puts `/v2` after the URL's path unless override_path says the path is
    // the API root already; ferry's url is what `v2/…` is put after.
    let base = if settings.override_path {
        match path.strip_suffix("/v2") {
            Some(b) => b.to_string(),
            None => {
                note(
                    format!("{place}: override_path"),
                    format!("the API root {path:?} does not end with /v2, which ferry's url needs: not carried over"),
                );
                return None;
            }
        }
    } else {
        path
    };
    parsed.set_path(&format!("{base}/"));
    parsed.set_query(None);
    if parsed.host_str() == Some("docker.io") {
        // As containerd does: Docker Hub's API is at registry-1.docker.io.
        let _ = parsed.set_host(Some("registry-1.docker.io"));
    }
    let insecure = settings.skip_verify || parsed.scheme() == "http";
    Some(Endpoint {
        url: parsed,
        fallback: None,
        insecure,
        repository: None,
    })
}

/// Whether a host pulls (content) and resolves (tags): containerd's `pull` and `resolve`
/// capabilities; all when none are given.
fn capabilities(
    settings: &Settings,
    place: &str,
    note: &mut impl FnMut(String, String),
) -> (bool, bool) {
    let Some(caps) = &settings.capabilities else {
        return (true, true);
    };
    for c in caps {
        match c.as_str() {
            "pull" | "resolve" => {}
            "push" => note(
                format!("{place}: capabilities"),
                "push: ferry pushes to the source named on the command line".into(),
            ),
            other => note(
                format!("{place}: capabilities"),
                format!("unknown capability {other:?}"),
            ),
        }
    }
    let has = |c: &str| caps.iter().any(|x| x == c);
    (has("pull"), has("resolve"))
}

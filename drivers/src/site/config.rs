//! The site config: which sources serve which names, in `sites.toml`.
//!
//! Format and rules: `specs/site-config.md` (IDs SITE-1…). Changing this file changes how
//! images travel, never what they are called.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use crate::sources::s3::S3Layout;
use crate::{Error, ErrorKind, Result};

/// The route prefix that matches every name.
pub const DEFAULT_PREFIX: &str = "*";

/// A parsed and validated site config.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// The file it was read from (for messages), if any.
    pub path: Option<PathBuf>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// The `[unpack]` limits, where set.
    pub unpack: UnpackConfig,
}

/// Per-image unpack limits from the `[unpack]` section (SITE-8); `None` where unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackConfig {
    /// `max-bytes`: uncompressed bytes of all of an image's layers together.
    pub max_bytes: Option<u64>,
    /// `max-entries`: tar entries of all of an image's layers together.
    pub max_entries: Option<u64>,
}

/// Parses a size: a plain number of bytes (`1048576`), or a number and a unit, binary
/// (`KiB`, `MiB`, `GiB`, `TiB`) or decimal (`kB`, `MB`, `GB`, `TB`), case ignored and a
/// space allowed between (`512MiB`, `8 GiB`); at least 1 byte.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = (&t[..split], t[split..].trim_start());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{text:?} is not a size (expected bytes, or a number with KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (expected a whole number, e.g. 512MiB)"))?;
    match n.checked_mul(scale) {
        Some(0) => Err(format!("{text:?}: the size must be at least 1 byte")),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

/// Names under `prefix` travel through `sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// A name prefix on path-component boundaries, or `*`.
    pub prefix: String,
    /// Sources asked for content by digest, in order.
    pub sources: Vec<String>,
    /// Sources allowed to answer tag → digest, in order.
    pub resolve: Vec<String>,
}

/// One configured source: a driver and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// The source's name in the file.
    pub name: String,
    /// The driver and its settings.
    pub driver: DriverConfig,
}

/// Settings of each driver kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverConfig {
    /// An OCI distribution registry.
    Registry {
        /// Base URL, e.g. `https://registry.example.com`.
        url: url::Url,
        /// Allow plain HTTP and unverified TLS for this source.
        insecure: bool,
        /// Repository path template at this source (`{name}` is the image's repository path).
        repository: Option<String>,
        /// Where credentials come from.
        credentials: CredentialsConfig,
    },
    /// Several registry endpoints serving the same content, tried in order.
    Mirror {
        /// Endpoint base URLs.
        endpoints: Vec<url::Url>,
        /// Allow plain HTTP and unverified TLS.
        insecure: bool,
        /// Repository path template at the endpoints.
        repository: Option<String>,
        /// Seconds a failing endpoint is skipped.
        cooldown_secs: u64,
        /// Where credentials come from.
        credentials: CredentialsConfig,
    },
    /// An S3 bucket (any S3-compatible store).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Endpoint URL, for non-AWS stores.
        endpoint: Option<String>,
        /// Region (default `us-east-1`).
        region: String,
        /// Key prefix inside the bucket.
        prefix: String,
        /// How the bucket is laid out.
        layout: S3Layout,
    },
    /// An OCI image layout directory.
    OciLayout {
        /// The directory.
        path: PathBuf,
    },
    /// Other ferry nodes serving their stores.
    Peer {
        /// Peer base URLs.
        peers: Vec<url::Url>,
    },
}

/// Where a registry source's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsConfig {
    /// None.
    Anonymous,
    /// The host's entry in podman's and docker's auth files, or their credential helper
    /// (`ferry login` writes it; `specs/credentials.md`).
    DockerConfig,
    /// A user and a file holding the password.
    PasswordFile {
        /// User name.
        username: String,
        /// File whose first line is the password.
        password_file: PathBuf,
    },
}

impl CredentialsConfig {
    /// Says where the credentials come from, never what they are.
    pub fn describe(&self) -> String {
        match self {
            CredentialsConfig::Anonymous => "anonymous".into(),
            CredentialsConfig::DockerConfig => "auth files (podman's auth.json, then docker's config.json; credential helpers; specs/credentials.md)".into(),
            CredentialsConfig::PasswordFile { username, password_file } => {
                format!("user {username:?}, password from {}", password_file.display())
            }
        }
    }
}

// ---- the file format (serde side) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    source: BTreeMap<String, Spanned<RawSource>>,
    unpack: Option<RawUnpack>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnpack {
    #[serde(rename = "max-bytes")]
    max_bytes: Option<Spanned<RawSize>>,
    #[serde(rename = "max-entries")]
    max_entries: Option<Spanned<i64>>,
}

/// A size as written: `8589934592` or `"8GiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Spanned<String>,
    sources: Vec<Spanned<String>>,
    resolve: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    driver: Spanned<String>,
    url: Option<Spanned<String>>,
    endpoints: Option<Vec<Spanned<String>>>,
    peers: Option<Vec<Spanned<String>>>,
    insecure: Option<bool>,
    repository: Option<Spanned<String>>,
    credentials: Option<RawCredentials>,
    cooldown_secs: Option<u64>,
    bucket: Option<String>,
    endpoint: Option<Spanned<String>>,
    region: Option<String>,
    prefix: Option<String>,
    layout: Option<S3Layout>,
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCredentials {
    Named(String),
    PasswordFile(RawPasswordFile),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPasswordFile {
    username: String,
    password_file: PathBuf,
}

/// The fields each driver accepts (besides `driver`).
fn allowed_fields(driver: &str) -> Option<&'static [&'static str]> {
    Some(match driver {
        "registry" => &["url", "insecure", "repository", "credentials"],
        "mirror" => &[
            "endpoints",
            "insecure",
            "repository",
            "credentials",
            "cooldown_secs",
        ],
        "s3" => &["bucket", "endpoint", "region", "prefix", "layout"],
        "oci-layout" => &["path"],
        "peer" => &["peers"],
        _ => return None,
    })
}

impl RawSource {
    fn present_fields(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        let mut add = |present: bool, name: &'static str| {
            if present {
                f.push(name)
            }
        };
        add(self.url.is_some(), "url");
        add(self.endpoints.is_some(), "endpoints");
        add(self.peers.is_some(), "peers");
        add(self.insecure.is_some(), "insecure");
        add(self.repository.is_some(), "repository");
        add(self.credentials.is_some(), "credentials");
        add(self.cooldown_secs.is_some(), "cooldown_secs");
        add(self.bucket.is_some(), "bucket");
        add(self.endpoint.is_some(), "endpoint");
        add(self.region.is_some(), "region");
        add(self.prefix.is_some(), "prefix");
        add(self.layout.is_some(), "layout");
        add(self.path.is_some(), "path");
        f
    }
}

/// Turns byte offsets of the file into `FILE:LINE` for messages.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, offset: usize) -> String {
        let line = self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        format!("{}:{line}", self.file)
    }

    fn err(&self, offset: usize, msg: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Invalid,
            "",
            format!("{}: {msg}", self.at(offset)),
        )
    }
}

impl SiteConfig {
    /// Finds the site config: `explicit`, else `$FERRY_CONFIG`, `$XDG_CONFIG_HOME/ferry/sites.toml`
    /// (or `~/.config/ferry/sites.toml`), `/etc/ferry/sites.toml`; the first that exists.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("FERRY_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let candidates = xdg
            .map(|x| x.join("ferry/sites.toml"))
            .into_iter()
            .chain(std::iter::once(PathBuf::from("/etc/ferry/sites.toml")));
        candidates.into_iter().find(|p| p.exists())
    }

    /// Loads the config found by [`SiteConfig::locate`], or the empty config (every name's
    /// host is its registry) when there is none.
    pub fn load(explicit: Option<&Path>) -> Result<SiteConfig> {
        match Self::locate(explicit) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::new(
                        ErrorKind::Invalid,
                        "",
                        format!("site config {}: {e}", path.display()),
                    )
                })?;
                let mut config = Self::parse(&text, &path.display().to_string())?;
                config.path = Some(path);
                Ok(config)
            }
            None => Ok(SiteConfig::empty()),
        }
    }

    /// No routes: every name goes straight to the registry its host names.
    pub fn empty() -> SiteConfig {
        SiteConfig {
            path: None,
            routes: Vec::new(),
            sources: BTreeMap::new(),
            unpack: UnpackConfig::default(),
        }
    }

    /// Parses and validates config text; errors name `file` and the line.
    pub fn parse(text: &str, file: &str) -> Result<SiteConfig> {
        let loc = Locator { file, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // toml's messages can span lines; SITE-3 errors are one line.
            loc.err(offset, e.message().trim_end().replace('\n', "; "))
        })?;
        let mut sources = BTreeMap::new();
        for (name, spanned) in raw.source {
            let at = spanned.span().start;
            let source = convert_source(&name, spanned.into_inner(), &loc, at)?;
            sources.insert(name, source);
        }
        let mut routes = Vec::new();
        for spanned in raw.route {
            let at = spanned.span().start;
            let r = spanned.into_inner();
            let prefix = r.prefix.get_ref().clone();
            validate_prefix(&prefix).map_err(|why| loc.err(r.prefix.span().start, why))?;
            if routes.iter().any(|x: &Route| x.prefix == prefix) {
                return Err(loc.err(
                    r.prefix.span().start,
                    format!("route {prefix:?} is defined twice"),
                ));
            }
            if r.sources.is_empty() {
                return Err(loc.err(at, format!("route {prefix:?} has no sources")));
            }
            let check = |list: &[Spanned<String>]| -> Result<Vec<String>> {
                list.iter()
                    .map(|s| {
                        if sources.contains_key(s.get_ref()) {
                            Ok(s.get_ref().clone())
                        } else {
                            Err(loc
                                .err(s.span().start, format!("unknown source {:?}", s.get_ref())))
                        }
                    })
                    .collect()
            };
            let content = check(&r.sources)?;
            let resolve = match &r.resolve {
                Some(list) => check(list)?,
                None => content.clone(),
            };
            routes.push(Route {
                prefix,
                sources: content,
                resolve,
            });
        }
        let unpack = match raw.unpack {
            Some(u) => convert_unpack(u, &loc)?,
            None => UnpackConfig::default(),
        };
        Ok(SiteConfig {
            path: None,
            routes,
            sources,
            unpack,
        })
    }

    /// Why reads through this config may carry credentials, if they may: a registry or
    /// mirror source with credentials, an S3 source (keys from the environment), or names
    /// no route covers (read from their registry with the docker config's credentials).
    /// What a pull-through mirror serves, anyone who reaches it can read (MIRROR-8).
    pub fn credentials_in_use(&self) -> Option<String> {
        let credentialed = self.sources.values().find(|source| match &source.driver {
            DriverConfig::Registry { credentials, .. }
            | DriverConfig::Mirror { credentials, .. } => {
                *credentials != CredentialsConfig::Anonymous
            }
            DriverConfig::S3 { .. } => true,
            DriverConfig::OciLayout { .. } | DriverConfig::Peer { .. } => false,
        });
        if let Some(source) = credentialed {
            return Some(format!(
                "source {:?} reads with credentials ({})",
                source.name,
                source.credentials()
            ));
        }
        if !self.routes.iter().any(|r| r.prefix == DEFAULT_PREFIX) {
            return Some(
                "names no route covers are read from their registry with the docker config's credentials (no \"*\" route)"
                    .to_string(),
            );
        }
        None
    }

    /// The route for a full image name (longest prefix on component boundaries, then `*`).
    pub fn route_for(&self, name: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| prefix_matches(&r.prefix, name))
            .max_by_key(|r| {
                if r.prefix == DEFAULT_PREFIX {
                    0
                } else {
                    r.prefix.len() + 1
                }
            })
    }
}

/// Whether `prefix` covers `name`: equal, or followed by `/` or `:` in the name, or `*`.
pub fn prefix_matches(prefix: &str, name: &str) -> bool {
    prefix == DEFAULT_PREFIX
        || name == prefix
        || (name.starts_with(prefix) && matches!(name.as_bytes().get(prefix.len()), Some(b'/')))
}

/// Checks that `prefix` is a route prefix the file accepts (SITE-3): `*`, or a registry
/// host then path components, without tag, digest, spaces or empty parts.
pub fn validate_prefix(prefix: &str) -> std::result::Result<(), String> {
    if prefix == DEFAULT_PREFIX {
        return Ok(());
    }
    // A host (with optional port) then path components: no tag, digest, spaces or empty parts.
    let bad = prefix.is_empty()
        || prefix.contains('@')
        || prefix.contains(char::is_whitespace)
        || prefix.split('/').any(str::is_empty)
        || prefix.split('/').skip(1).any(|c| c.contains(':'));
    if bad {
        return Err(format!(
            "bad route prefix {prefix:?}: expected a name prefix like \"registry.example.com/team\" or \"*\""
        ));
    }
    Ok(())
}

fn convert_unpack(raw: RawUnpack, loc: &Locator) -> Result<UnpackConfig> {
    let max_bytes =
        match raw.max_bytes {
            None => None,
            Some(size) => {
                let parsed = match size.get_ref() {
                    RawSize::Bytes(n) => u64::try_from(*n)
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("{n} is not a size (expected at least 1 byte)")),
                    RawSize::Text(t) => parse_size(t),
                };
                Some(parsed.map_err(|why| {
                    loc.err(size.span().start, format!("[unpack] max-bytes: {why}"))
                })?)
            }
        };
    let max_entries = match raw.max_entries {
        None => None,
        Some(n) => Some(
            u64::try_from(*n.get_ref())
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    loc.err(
                        n.span().start,
                        format!(
                            "[unpack] max-entries: {} is not a count (expected at least 1)",
                            n.get_ref()
                        ),
                    )
                })?,
        ),
    };
    Ok(UnpackConfig {
        max_bytes,
        max_entries,
    })
}

fn parse_url(s: &Spanned<String>, loc: &Locator, what: &str) -> Result<url::Url> {
    let url = url::Url::parse(s.get_ref())
        .map_err(|e| loc.err(s.span().start, format!("bad {what} {:?}: {e}", s.get_ref())))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(loc.err(
            s.span().start,
            format!("bad {what} {:?}: scheme must be http or https", s.get_ref()),
        ));
    }
    if url.host_str().is_none() {
        return Err(loc.err(
            s.span().start,
            format!("bad {what} {:?}: no host", s.get_ref()),
        ));
    }
    Ok(url)
}

fn convert_source(name: &str, raw: RawSource, loc: &Locator, at: usize) -> Result<SourceConfig> {
    let driver = raw.driver.get_ref().as_str();
    let Some(allowed) = allowed_fields(driver) else {
        return Err(loc.err(
            raw.driver.span().start,
            format!("source {name:?}: unknown driver {driver:?} (expected registry, mirror, s3, oci-layout or peer)"),
        ));
    };
    if let Some(field) = raw
        .present_fields()
        .into_iter()
        .find(|f| !allowed.contains(f))
    {
        return Err(loc.err(
            at,
            format!("source {name:?}: key {field:?} does not apply to driver {driver:?}"),
        ));
    }
    let missing = |field: &str| {
        loc.err(
            at,
            format!("source {name:?}: driver {driver:?} needs {field:?}"),
        )
    };
    let credentials = match &raw.credentials {
        None => CredentialsConfig::DockerConfig,
        Some(RawCredentials::Named(s)) => match s.as_str() {
            "docker-config" => CredentialsConfig::DockerConfig,
            "anonymous" | "none" => CredentialsConfig::Anonymous,
            other => {
                return Err(loc.err(
                    at,
                    format!("source {name:?}: credentials {other:?}: expected \"docker-config\", \"anonymous\" or {{ username, password_file }}"),
                ))
            }
        },
        Some(RawCredentials::PasswordFile(p)) => CredentialsConfig::PasswordFile {
            username: p.username.clone(),
            password_file: p.password_file.clone(),
        },
    };
    if let Some(repo) = &raw.repository {
        if !repo.get_ref().contains("{name}") {
            return Err(loc.err(
                repo.span().start,
                format!(
                    "source {name:?}: repository {:?} must contain {{name}}",
                    repo.get_ref()
                ),
            ));
        }
    }
    let urls = |list: &Option<Vec<Spanned<String>>>, field: &str| -> Result<Vec<url::Url>> {
        let list = list.as_ref().ok_or_else(|| missing(field))?;
        if list.is_empty() {
            return Err(missing(field));
        }
        list.iter().map(|u| parse_url(u, loc, field)).collect()
    };
    let driver = match driver {
        "registry" => DriverConfig::Registry {
            url: parse_url(raw.url.as_ref().ok_or_else(|| missing("url"))?, loc, "url")?,
            insecure: raw.insecure.unwrap_or(false),
            repository: raw.repository.map(Spanned::into_inner),
            credentials,
        },
        "mirror" => DriverConfig::Mirror {
            endpoints: urls(&raw.endpoints, "endpoints")?,
            insecure: raw.insecure.unwrap_or(false),
            repository: raw.repository.map(Spanned::into_inner),
            cooldown_secs: raw.cooldown_secs.unwrap_or(30),
            credentials,
        },
        "s3" => DriverConfig::S3 {
            bucket: raw.bucket.ok_or_else(|| missing("bucket"))?,
            endpoint: match &raw.endpoint {
                Some(e) => Some(
                    parse_url(e, loc, "endpoint")?
                        .to_string()
                        .trim_end_matches('/')
                        .to_string(),
                ),
                None => None,
            },
            region: raw.region.unwrap_or_else(|| "us-east-1".into()),
            prefix: raw.prefix.unwrap_or_default(),
            layout: raw.layout.unwrap_or(S3Layout::Ferry),
        },
        "oci-layout" => DriverConfig::OciLayout {
            path: raw.path.ok_or_else(|| missing("path"))?,
        },
        "peer" => DriverConfig::Peer {
            peers: urls(&raw.peers, "peers")?,
        },
        _ => unreachable!("checked by allowed_fields"),
    };
    Ok(SourceConfig {
        name: name.to_string(),
        driver,
    })
}

/// The repository path of `name` at a source: the name minus its registry host, through
/// the source's `repository` template if it has one.
pub fn repository_at(name: &str, template: Option<&str>) -> String {
    let path = name.split_once('/').map_or(name, |(_, p)| p);
    match template {
        Some(t) => t.replace("{name}", path),
        None => path.to_string(),
    }
}

impl SourceConfig {
    /// Where this source keeps `name` (after any rewrite), for `ferry config explain`.
    pub fn location(&self, name: &str) -> String {
        match &self.driver {
            DriverConfig::Registry {
                url, repository, ..
            } => {
                format!(
                    "{}/v2/{}",
                    url.as_str().trim_end_matches('/'),
                    repository_at(name, repository.as_deref())
                )
            }
            DriverConfig::Mirror {
                endpoints,
                repository,
                ..
            } => endpoints
                .iter()
                .map(|u| {
                    format!(
                        "{}/v2/{}",
                        u.as_str().trim_end_matches('/'),
                        repository_at(name, repository.as_deref())
                    )
                })
                .collect::<Vec<_>>()
                .join(", then "),
            DriverConfig::S3 {
                bucket,
                endpoint,
                prefix,
                layout,
                ..
            } => {
                let at = endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default();
                match layout {
                    S3Layout::Ferry => format!("s3://{bucket}/{prefix}names/{name}{at} (ferry layout)"),
                    S3Layout::Distribution => format!(
                        "s3://{bucket}/{prefix}docker/registry/v2/repositories/{}{at} (distribution layout, read-only)",
                        repository_at(name, None)
                    ),
                }
            }
            DriverConfig::OciLayout { path } => {
                format!("{} (ref names {name}:TAG)", path.display())
            }
            DriverConfig::Peer { peers } => peers
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The driver's name as written in the file.
    pub fn driver_name(&self) -> &'static str {
        match &self.driver {
            DriverConfig::Registry { .. } => "registry",
            DriverConfig::Mirror { .. } => "mirror",
            DriverConfig::S3 { .. } => "s3",
            DriverConfig::OciLayout { .. } => "oci-layout",
            DriverConfig::Peer { .. } => "peer",
        }
    }

    /// Where credentials come from, for `ferry config explain` (never the secret).
    pub fn credentials(&self) -> String {
        match &self.driver {
            DriverConfig::Registry { credentials, .. }
            | DriverConfig::Mirror { credentials, .. } => credentials.describe(),
            DriverConfig::S3 { .. } => {
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment".into()
            }
            DriverConfig::OciLayout { .. } => "none (local files)".into(),
            DriverConfig::Peer { .. } => "none".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[route]]
prefix  = "registry.example.com/team"
sources = ["usb", "lan-mirror", "s3", "origin"]
resolve = ["origin"]

[[route]]
prefix = "*"
sources = ["origin"]

[source.origin]
driver = "registry"
url = "https://registry.example.com"
insecure = false
repository = "mirror/{name}"
credentials = "docker-config"

[source.lan-mirror]
driver = "mirror"
endpoints = ["http://10.0.0.5:5000", "http://10.0.0.6:5000"]

[source.s3]
driver = "s3"
bucket = "images"
endpoint = "http://127.0.0.1:9000"
prefix = "ferry/"
layout = "ferry"

[source.usb]
driver = "oci-layout"
path = "/media/usb/images"
"#;

    #[test]
    fn toml_syntax_errors_are_one_line_naming_file_and_line() {
        // SITE-3. Found by the config_toml fuzz target: toml's message for a bad table
        // header has a line break in it.
        let text = "[[route]]\nprefix = \"*\"\n[[rulr.io/x\"\n";
        let err = SiteConfig::parse(text, "sites.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sites.toml:3: "), "{err}");
        assert!(!err.contains('\n'), "{err:?}");
    }

    #[test]
    fn parses_the_documented_example() {
        // SITE-1
        let c = SiteConfig::parse(EXAMPLE, "sites.toml").unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].sources, ["usb", "lan-mirror", "s3", "origin"]);
        assert_eq!(c.routes[0].resolve, ["origin"]);
        assert_eq!(
            c.routes[1].resolve,
            ["origin"],
            "resolve defaults to the sources"
        );
        assert_eq!(c.sources.len(), 4);
        assert_eq!(
            c.sources["origin"].location("registry.example.com/team/app"),
            "https://registry.example.com/v2/mirror/team/app"
        );
    }

    #[test]
    fn longest_prefix_wins_on_component_boundaries() {
        // SITE-2
        let c = SiteConfig::parse(EXAMPLE, "sites.toml").unwrap();
        assert_eq!(
            c.route_for("registry.example.com/team/app").unwrap().prefix,
            "registry.example.com/team"
        );
        assert_eq!(
            c.route_for("registry.example.com/teammate/app")
                .unwrap()
                .prefix,
            "*"
        );
        assert_eq!(
            c.route_for("docker.io/library/busybox").unwrap().prefix,
            "*"
        );
        let no_default = SiteConfig::parse(
            &EXAMPLE.replace("prefix = \"*\"", "prefix = \"other.io\""),
            "f",
        )
        .unwrap();
        assert!(no_default.route_for("docker.io/library/busybox").is_none());
    }

    #[test]
    fn errors_name_file_and_line() {
        // SITE-3
        let cases = [
            (
                EXAMPLE.replace("insecure = false", "insecure = false\ncolour = \"blue\""),
                "sites.toml:15",
                "colour",
            ),
            (
                EXAMPLE.replace("driver = \"mirror\"", "driver = \"ftp\""),
                "sites.toml:19",
                "unknown driver",
            ),
            (
                EXAMPLE.replace("\"usb\", \"lan", "\"usbstick\", \"lan"),
                "sites.toml:4",
                "unknown source \"usbstick\"",
            ),
            (
                EXAMPLE.replace("https://registry.example.com\"", "registry.example.com\""),
                "sites.toml:13",
                "bad url",
            ),
            (
                EXAMPLE.replace("path = \"/media/usb/images\"", "url = \"http://x\""),
                "sites.toml:29",
                "does not apply",
            ),
            (
                EXAMPLE.replace("mirror/{name}", "mirror"),
                "sites.toml:15",
                "{name}",
            ),
        ];
        for (text, at, needle) in cases {
            let err = SiteConfig::parse(&text, "sites.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(at) && err.contains(needle),
                "want {at} and {needle:?} in: {err}"
            );
        }
    }

    #[test]
    fn sizes_take_plain_bytes_and_binary_or_decimal_units() {
        // SITE-8
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("8GiB", 8 << 30),
            ("8 gib", 8 << 30),
            ("4KiB", 4096),
            ("1TiB", 1 << 40),
            ("10MB", 10_000_000),
            ("2kB", 2_000),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for (text, why) in [
            ("", "not a size"),
            ("MiB", "not a size"),
            ("1.5GiB", "not a size"),
            ("-1", "not a size"),
            ("8 GiBs", "not a size"),
            ("0", "at least 1 byte"),
            ("0MiB", "at least 1 byte"),
            ("99999999999TiB", "too large"),
        ] {
            let err = parse_size(text).unwrap_err();
            assert!(
                err.contains(why) && err.contains(&format!("{text:?}")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn unpack_section_sets_limits_and_names_bad_values() {
        // SITE-8
        let c = SiteConfig::parse(
            "[unpack]\nmax-bytes = \"8GiB\"\nmax-entries = 1000000\n",
            "sites.toml",
        )
        .unwrap();
        assert_eq!(
            c.unpack,
            UnpackConfig {
                max_bytes: Some(8 << 30),
                max_entries: Some(1_000_000)
            }
        );
        let c = SiteConfig::parse("[unpack]\nmax-bytes = 4096\n", "f").unwrap();
        assert_eq!(c.unpack.max_bytes, Some(4096));
        assert_eq!(c.unpack.max_entries, None);
        assert_eq!(
            SiteConfig::parse(EXAMPLE, "f").unwrap().unpack,
            UnpackConfig::default()
        );
        for (text, want) in [
            (
                "[unpack]\nmax-bytes = \"8 gigs\"\n",
                "sites.toml:2: [unpack] max-bytes: \"8 gigs\" is not a size",
            ),
            (
                "[unpack]\nmax-bytes = 0\n",
                "sites.toml:2: [unpack] max-bytes: 0 is not a size",
            ),
            (
                "\n[unpack]\nmax-entries = -5\n",
                "sites.toml:3: [unpack] max-entries: -5 is not a count",
            ),
            (
                "[unpack]\nmax-files = 5\n",
                "sites.toml:2: unknown field `max-files`",
            ),
        ] {
            let err = SiteConfig::parse(text, "sites.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "want {want:?} in: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn repository_rewrite_uses_the_path_after_the_host() {
        assert_eq!(repository_at("reg.io/team/app", None), "team/app");
        assert_eq!(
            repository_at("reg.io/team/app", Some("mirror/{name}")),
            "mirror/team/app"
        );
    }
}

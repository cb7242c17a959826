//! The OCI distribution (v2) client: [`RegistryDriver`] speaks the registry HTTP API.
//!
//! Behaviours worth knowing:
//! - **Auth**: anonymous, Basic, and the bearer-token flow (`WWW-Authenticate: Bearer`),
//!   tokens cached per scope (pull vs push,pull) and fetched again once on a 401.
//! - **Ranges**: `fetch_blob` sends `Range`; a registry that ignores it and answers 200 is
//!   handled by discarding the first `offset` bytes here (the bytes are right, the prefix
//!   still travels).
//! - **Redirects** (blob storage on S3/CDN) are followed here, not by reqwest, and
//!   `Authorization` is dropped once a redirect leaves the registry's origin.
//! - **Retries**: connection errors, 5xx and 429 are retried a few times with exponential
//!   backoff (`Retry-After` honoured, capped); streamed uploads are not replayed.
//! - Blobs are streamed and not verified (the consumer verifies); manifests are capped at
//!   [`MAX_MANIFEST_SIZE`] and checked against their digest.

mod auth;
mod client;
pub mod credentials;
mod docker_config;
mod upload;

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{media, Digest, ManifestBlob, Reference};
use futures::{Stream, StreamExt as _};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use self::auth::Scope;
pub use self::auth::{parse_challenges, Challenge};
use self::client::{chain, host_port, is_loopback_host, read_limited, Body, Client, Request};
pub use self::docker_config::DockerConfig;
use crate::{
    BlobBody, ByteRange, ByteStream, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result,
};

/// Header carrying the registry's digest of a manifest or blob.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Tags asked for per page of `tags/list`.
const DEFAULT_TAG_PAGE: u32 = 1000;
/// Most pages of `tags/list` followed.
const MAX_TAG_PAGES: usize = 10_000;
/// Largest `tags/list` page read.
const MAX_TAG_PAGE_BYTES: usize = 16 << 20;
/// Blobs larger than this are uploaded in PATCH chunks of this size.
const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;
/// Most blob locations remembered for cross-repository mounts.
const MAX_KNOWN_LOCATIONS: usize = 65_536;

/// How a [`RegistryDriver`] authenticates.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (anonymous tokens where the registry hands them out).
    #[default]
    Anonymous,
    /// The first credentials for the registry's host in the auth files podman and docker
    /// keep, and their credential helpers (see [`credentials::AuthFiles`]); anonymous if
    /// there are none.
    DockerConfig,
    /// This username and password.
    Basic {
        /// The username.
        username: String,
        /// The password (or access token).
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::DockerConfig => f.write_str("DockerConfig"),
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Everything a [`RegistryDriver`] needs to know about one registry source.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The source name used in messages.
    pub source_name: String,
    /// The registry's base URL, e.g. `https://registry.example.com`.
    pub base_url: Url,
    /// Allow plain http to non-loopback hosts and unverified TLS certificates.
    pub insecure: bool,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Where names live in this registry: a template like `mirror/{name}`, `{name}` being
    /// the repository path of the image name; `None` means the repository path itself.
    pub repository: Option<String>,
}

/// A driver for one OCI distribution (v2) registry.
pub struct RegistryDriver {
    client: Client,
    repository: Option<String>,
    tag_page: u32,
    chunk_size: u64,
    /// Repositories of this registry known to hold a blob, for cross-repository mounts.
    known: Mutex<HashMap<Digest, String>>,
}

impl std::fmt::Debug for RegistryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDriver")
            .field("source_name", &self.client.source)
            .field("base_url", &self.client.base.as_str())
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

impl RegistryDriver {
    /// A driver for the registry `config` describes; refuses plain http to a non-loopback
    /// host unless `insecure`.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let source = config.source_name.as_str();
        let invalid = |msg: String| Error::new(ErrorKind::Invalid, source, msg);
        let mut base = config.base_url.clone();
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid(format!("registry URL {base} has no host")));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        let host = host_port(&base);
        let credentials = match config.credentials {
            Credentials::Anonymous => None,
            Credentials::Basic { username, password } => {
                Some(credentials::Login::Password { username, password })
            }
            Credentials::DockerConfig => credentials::AuthFiles::from_env()
                .lookup(&host)?
                .map(|(login, _)| login),
        };
        let client = Client::new(source, base, config.insecure, credentials)?;
        client
            .check_scheme(&client.base)
            .map_err(|why| invalid(format!("registry URL {}: {why}", client.base)))?;
        Ok(RegistryDriver {
            client,
            repository: config.repository,
            tag_page: DEFAULT_TAG_PAGE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The driver used for `host` (`host[:port]`) when no site config names it: https
    /// (plain http for loopback hosts), docker config credentials, source name = host.
    pub fn for_host(host: &str) -> Result<Self> {
        Self::new(RegistryConfig {
            source_name: host.to_string(),
            base_url: default_url(host)?,
            insecure: false,
            credentials: Credentials::DockerConfig,
            repository: None,
        })
    }

    /// The same driver asking for `n` tags per page of `tags/list` (default 1000).
    pub fn with_tag_page_size(mut self, n: u32) -> Self {
        self.tag_page = n.max(1);
        self
    }

    /// The same driver uploading blobs larger than `bytes` in resumable PATCH chunks of
    /// `bytes` each (default 16 MiB; smaller blobs go in one streamed PUT).
    pub fn with_upload_chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &Url {
        &self.client.base
    }

    /// The repository (path in this registry) that holds image name `name`.
    pub fn repository_for(&self, name: &str) -> Result<String> {
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::Invalid,
                &self.client.source,
                format!("image name {name:?}: {why}"),
            )
        };
        let path = name
            .split_once('/')
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("expected host/repository"))?;
        let repo = match &self.repository {
            Some(template) => template.replace("{name}", path),
            None => path.to_string(),
        };
        // Validate with the reference grammar (no tag, digest or odd characters).
        match Reference::parse(&format!("localhost/{repo}")) {
            Ok(r)
                if r.repository() == repo
                    && r.tag() == Some(ferry_core::reference::DEFAULT_TAG) =>
            {
                Ok(repo)
            }
            _ => Err(invalid(&format!("maps to invalid repository {repo:?}"))),
        }
    }

    /// Checks that the registry answers `/v2/` with these credentials (through the whole
    /// auth flow).
    pub async fn ping(&self) -> Result<()> {
        let url = self.client.url("v2/")?;
        let resp = self
            .client
            .send(Request::new(Method::GET, url, Scope::none()))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self
                .client
                .status_error(resp, &format!("registry {}", self.client.host))
                .await)
        }
    }

    fn remember(&self, digest: &Digest, repo: &str) {
        let mut known = self.known.lock().expect("known blobs lock");
        if known.len() >= MAX_KNOWN_LOCATIONS {
            known.clear();
        }
        known.insert(digest.clone(), repo.to_string());
    }

    fn validate_tag(&self, name: &str, tag: &str) -> Result<()> {
        match Reference::parse(&format!("localhost/x:{tag}")) {
            Ok(r) if r.tag() == Some(tag) => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Invalid,
                &self.client.source,
                format!("{name}: invalid tag {tag:?}"),
            )),
        }
    }

    /// GETs a manifest by tag or digest, refusing more than [`MAX_MANIFEST_SIZE`] bytes.
    async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>, Url)> {
        let url = self
            .client
            .url(&format!("v2/{repo}/manifests/{reference}"))?;
        let req = Request::new(Method::GET, url, Scope::pull(repo))
            .header(ACCEPT, &media::MANIFEST_TYPES.join(", "));
        let resp = self.client.send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(&self.client.source, what));
        }
        if !resp.status().is_success() {
            return Err(self.client.status_error(resp, what).await);
        }
        let url = resp.url().clone();
        let too_large = |size: u64| {
            Error::from_core(
                &self.client.source,
                ferry_core::Error::TooLarge {
                    what: format!("{what} from {url}"),
                    size,
                    limit: MAX_MANIFEST_SIZE,
                },
            )
        };
        if let Some(len) = content_length(&resp).filter(|&l| l > MAX_MANIFEST_SIZE) {
            return Err(too_large(len));
        }
        let content_type = content_type(&resp);
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE as usize)
            .await
            .map_err(|e| {
                if e.starts_with("body larger") {
                    too_large(MAX_MANIFEST_SIZE + 1)
                } else {
                    Error::unavailable(
                        &self.client.source,
                        format!("reading manifest {what} from {url}: {e}"),
                    )
                }
            })?;
        Ok((bytes, content_type, url))
    }
}

/// The base URL used for `host` (`host[:port]`) without a site config: `https://host/`,
/// `http://host/` for loopback hosts, Docker Hub's API host for `docker.io`.
pub fn default_url(host: &str) -> Result<Url> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Invalid,
            host,
            format!("registry host {host:?}: {why}"),
        )
    };
    let probe = Url::parse(&format!("http://{host}/")).map_err(|e| bad(&e.to_string()))?;
    if host.is_empty() || host_port(&probe) != host.to_ascii_lowercase() || probe.username() != "" {
        return Err(bad("expected host[:port]"));
    }
    let loopback = probe
        .host()
        .is_some_and(|h| is_loopback_host(&h.to_string()));
    let url = match host {
        "docker.io" | "index.docker.io" => "https://registry-1.docker.io/".to_string(),
        _ if loopback => format!("http://{host}/"),
        _ => format!("https://{host}/"),
    };
    Url::parse(&url).map_err(|e| bad(&e.to_string()))
}

/// Checks that `username`/`password` work at registry `host` (`GET /v2/` through the whole
/// auth flow, with the URL rules of [`RegistryDriver::for_host`]).
///
/// A registry that needs no credentials accepts any.
pub async fn check_login(host: &str, username: &str, password: &str) -> Result<()> {
    RegistryDriver::new(RegistryConfig {
        source_name: host.to_string(),
        base_url: default_url(host)?,
        insecure: false,
        credentials: Credentials::Basic {
            username: username.to_string(),
            password: password.to_string(),
        },
        repository: None,
    })?
    .ping()
    .await
}

#[async_trait]
impl Driver for RegistryDriver {
    fn source_name(&self) -> &str {
        &self.client.source
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: true,
            list_tags: true,
            write: true,
            ranges: true,
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        let repo = self.repository_for(name)?;
        self.validate_tag(name, tag)?;
        let what = format!("{name}:{tag}");
        let url = self.client.url(&format!("v2/{repo}/manifests/{tag}"))?;
        let req = Request::new(Method::HEAD, url, Scope::pull(&repo))
            .header(ACCEPT, &media::MANIFEST_TYPES.join(", "));
        let resp = self.client.send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(&self.client.source, &what));
        }
        if !resp.status().is_success() {
            return Err(self.client.status_error(resp, &what).await);
        }
        let digest = resp
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let content_type = content_type(&resp);
        if let (Some(digest), Some(size), Some(media_type)) =
            (digest, content_length(&resp), content_type.as_deref())
        {
            if media::is_manifest(media_type) {
                if size > MAX_MANIFEST_SIZE {
                    return Err(Error::from_core(
                        &self.client.source,
                        ferry_core::Error::TooLarge {
                            what: format!("manifest {what} at {}", resp.url()),
                            size,
                            limit: MAX_MANIFEST_SIZE,
                        },
                    ));
                }
                return Ok(Descriptor::new(
                    media_type.into(),
                    size,
                    ferry_core::oci_spec::image::Digest::from(&digest),
                ));
            }
        }
        // No usable digest or media type in the HEAD answer: GET the bytes and hash them.
        let (bytes, content_type, _) = self.get_manifest(&repo, tag, &what).await?;
        let blob = ManifestBlob::parse(bytes, content_type.as_deref(), None)
            .map_err(|e| Error::from_core(&self.client.source, e))?;
        Ok(blob.descriptor())
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        let repo = self.repository_for(name)?;
        let what = format!("manifest {name}@{digest}");
        let (bytes, content_type, url) =
            self.get_manifest(&repo, &digest.to_string(), &what).await?;
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(Error::from_core(
                &self.client.source,
                ferry_core::Error::DigestMismatch {
                    what: format!("{what} from {url}"),
                    expected: digest.clone(),
                    actual,
                },
            ));
        }
        Ok(ManifestBytes {
            bytes,
            content_type,
        })
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        let repo = self.repository_for(name)?;
        let what = format!("blob {name}@{digest}");
        if range.len == Some(0) {
            return Ok(BlobBody {
                len: Some(0),
                stream: Box::pin(futures::stream::empty()),
            });
        }
        let url = self.client.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let mut req = Request::new(Method::GET, url, Scope::pull(&repo));
        if !range.is_whole() {
            let spec = match range.len {
                Some(len) => format!("bytes={}-{}", range.offset, range.offset + len - 1),
                None => format!("bytes={}-", range.offset),
            };
            req = req.header(RANGE, &spec);
        }
        let resp = self.client.send(req).await?;
        let status = resp.status();
        let url = resp.url().clone();
        let (skip, len) = match status {
            StatusCode::NOT_FOUND => return Err(Error::not_found(&self.client.source, &what)),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(self.client.error(
                    ErrorKind::Invalid,
                    format!(
                        "{what}: range from byte {} not satisfiable at {url}",
                        range.offset
                    ),
                ))
            }
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(range.offset) {
                    return Err(self.client.error(
                        ErrorKind::Invalid,
                        format!(
                            "{what}: asked {url} for bytes from {}, got Content-Range {start:?}",
                            range.offset
                        ),
                    ));
                }
                (0, content_length(&resp))
            }
            StatusCode::OK => {
                // Whole body: for a ranged request, skip the prefix here.
                let len = content_length(&resp).map(|l| {
                    let rest = l.saturating_sub(range.offset);
                    range.len.map_or(rest, |want| want.min(rest))
                });
                (range.offset, len)
            }
            _ => return Err(self.client.status_error(resp, &what).await),
        };
        self.remember(digest, &repo);
        let source = self.client.source.clone();
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| {
                Error::unavailable(&source, format!("reading {what} from {url}: {}", chain(&e)))
            })
        });
        let take = if skip > 0 { range.len } else { None };
        Ok(BlobBody {
            len,
            stream: Box::pin(skip_take(stream, skip, take)),
        })
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let repo = self.repository_for(name)?;
        let what = format!("blob {name}@{digest}");
        let url = self.client.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .client
            .send(Request::new(Method::HEAD, url, Scope::pull(&repo)))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let size = content_length(&resp).ok_or_else(|| {
                    self.client.error(
                        ErrorKind::Invalid,
                        format!(
                            "{what}: {} answered HEAD without Content-Length",
                            resp.url()
                        ),
                    )
                })?;
                self.remember(digest, &repo);
                Ok(Some(size))
            }
            _ => Err(self.client.status_error(resp, &what).await),
        }
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        let repo = self.repository_for(name)?;
        let mut url = self.client.url(&format!("v2/{repo}/tags/list"))?;
        url.query_pairs_mut()
            .append_pair("n", &self.tag_page.to_string());
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let resp = self
                .client
                .send(Request::new(Method::GET, url.clone(), Scope::pull(&repo)))
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Error::not_found(&self.client.source, name));
            }
            if !resp.status().is_success() {
                return Err(self
                    .client
                    .status_error(resp, &format!("tags of {name}"))
                    .await);
            }
            let next = next_link(&resp);
            let page_url = resp.url().clone();
            let body = read_limited(resp, MAX_TAG_PAGE_BYTES).await.map_err(|e| {
                Error::unavailable(
                    &self.client.source,
                    format!("reading tags of {name} from {page_url}: {e}"),
                )
            })?;
            #[derive(serde::Deserialize)]
            struct TagList {
                tags: Option<Vec<String>>,
            }
            let page: TagList = serde_json::from_slice(&body).map_err(|e| {
                self.client.error(
                    ErrorKind::Invalid,
                    format!("tags of {name} from {page_url}: bad JSON: {e}"),
                )
            })?;
            tags.extend(page.tags.unwrap_or_default());
            let Some(next) = next else { return Ok(tags) };
            let next = page_url.join(&next).map_err(|e| {
                self.client.error(
                    ErrorKind::Invalid,
                    format!("tags of {name}: bad Link {next:?} from {page_url}: {e}"),
                )
            })?;
            if next.origin() != self.client.base.origin() {
                return Err(self.client.error(
                    ErrorKind::Invalid,
                    format!("tags of {name}: Link from {page_url} leaves the registry ({next})"),
                ));
            }
            url = next;
        }
        Err(self.client.error(
            ErrorKind::Invalid,
            format!("tags of {name}: more than {MAX_TAG_PAGES} pages"),
        ))
    }

    async fn put_blob(
        &self,
        name: &str,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        let repo = self.repository_for(name)?;
        let what = format!("blob {name}@{digest}");
        if let Some(have) = self.blob_size(name, digest).await? {
            if have == size {
                return Ok(());
            }
            return Err(self.client.error(
                ErrorKind::Invalid,
                format!("{what}: the registry has it with {have} bytes, not {size}"),
            ));
        }
        // Start an upload, asking to mount the blob from another repository that has it.
        let from = self
            .known
            .lock()
            .expect("known blobs lock")
            .get(digest)
            .filter(|r| **r != repo)
            .cloned();
        let mut url = self.client.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let mut scope = Scope::push(&repo);
        if let Some(from) = &from {
            url.query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", from);
            scope = scope.and_pull(from);
        }
        let req = Request::new(Method::POST, url, scope).body(Body::Bytes(Bytes::new()));
        let resp = self.client.send(req).await?;
        match resp.status() {
            StatusCode::CREATED if from.is_some() => {
                tracing::debug!(%digest, from = from.as_deref(), to = %repo, "mounted blob");
                self.remember(digest, &repo);
                return Ok(());
            }
            StatusCode::ACCEPTED => {}
            _ => {
                return Err(self
                    .client
                    .status_error(resp, &format!("starting upload of {what}"))
                    .await)
            }
        }
        let location = upload::next_location(&resp).ok_or_else(|| {
            self.client.error(
                ErrorKind::Invalid,
                format!(
                    "{what}: {} started an upload without a Location",
                    resp.url()
                ),
            )
        })?;
        let upload = upload::Upload {
            client: &self.client,
            repo: &repo,
            what: &what,
            digest: digest.to_string(),
            size,
        };
        if size > self.chunk_size {
            upload.chunked(location, body, self.chunk_size).await?;
        } else {
            upload.monolithic(location, body).await?;
        }
        self.remember(digest, &repo);
        Ok(())
    }

    async fn put_manifest(
        &self,
        name: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let repo = self.repository_for(name)?;
        let digest = Digest::sha256(bytes);
        let reference = match tag {
            Some(t) => {
                self.validate_tag(name, t)?;
                t.to_string()
            }
            None => digest.to_string(),
        };
        let what = match tag {
            Some(t) => format!("manifest {name}:{t}"),
            None => format!("manifest {name}@{digest}"),
        };
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::from_core(
                &self.client.source,
                ferry_core::Error::TooLarge {
                    what,
                    size: bytes.len() as u64,
                    limit: MAX_MANIFEST_SIZE,
                },
            ));
        }
        let url = self
            .client
            .url(&format!("v2/{repo}/manifests/{reference}"))?;
        let req = Request::new(Method::PUT, url, Scope::push(&repo))
            .header(CONTENT_TYPE, media_type)
            .body(Body::Bytes(Bytes::copy_from_slice(bytes)));
        let resp = self.client.send(req).await?;
        if !resp.status().is_success() {
            return Err(self
                .client
                .status_error(resp, &format!("pushing {what}"))
                .await);
        }
        let theirs = resp
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        match theirs {
            Some(d) if d != digest => Err(self.client.error(
                ErrorKind::Invalid,
                format!("pushing {what}: the registry stored it as {d}"),
            )),
            _ => Ok(digest),
        }
    }
}

/// `Content-Length` as sent (reqwest's own accessor is 0 for HEAD answers).
fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Type` without parameters.
fn content_type(resp: &Response) -> Option<String> {
    let v = resp.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let t = v.split(';').next()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_link(resp: &Response) -> Option<String> {
    resp.headers()
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
            params
                .split(';')
                .any(|p| {
                    let p = p.trim().replace(' ', "");
                    p == "rel=\"next\"" || p == "rel=next"
                })
                .then(|| target.to_string())
        })
}

/// Drops the first `skip` bytes of a stream and ends it after `take` more bytes.
fn skip_take<S>(stream: S, skip: u64, take: Option<u64>) -> impl Stream<Item = Result<Bytes>> + Send
where
    S: Stream<Item = Result<Bytes>> + Send + Unpin,
{
    futures::stream::unfold(
        (stream, skip, take),
        |(mut s, mut skip, mut left)| async move {
            loop {
                if left == Some(0) {
                    return None;
                }
                match s.next().await? {
                    Err(e) => return Some((Err(e), (s, skip, Some(0)))),
                    Ok(mut b) => {
                        if skip > 0 {
                            let n = skip.min(b.len() as u64);
                            b = b.slice(n as usize..);
                            skip -= n;
                        }
                        if b.is_empty() {
                            continue;
                        }
                        if let Some(l) = left {
                            if (b.len() as u64) > l {
                                b.truncate(l as usize);
                            }
                            left = Some(l - b.len() as u64);
                        }
                        return Some((Ok(b), (s, skip, left)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A body made of these chunks.
    pub(crate) fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        Box::pin(futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    /// Every byte of a body (panics on an error chunk).
    pub(crate) async fn collect(s: impl Stream<Item = Result<Bytes>>) -> Vec<u8> {
        let parts: Vec<Result<Bytes>> = s.collect().await;
        parts
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn skip_take_cuts_across_chunk_boundaries() {
        let data: &[&'static [u8]] = &[b"abc", b"defg", b"hij"];
        assert_eq!(
            collect(skip_take(chunks(data), 0, None)).await,
            b"abcdefghij"
        );
        assert_eq!(collect(skip_take(chunks(data), 4, None)).await, b"efghij");
        assert_eq!(collect(skip_take(chunks(data), 2, Some(3))).await, b"cde");
        assert_eq!(collect(skip_take(chunks(data), 20, None)).await, b"");
    }

    #[test]
    fn default_urls_use_http_only_for_loopback() {
        let u = |h: &str| default_url(h).unwrap().to_string();
        assert_eq!(u("127.0.0.1:5000"), "http://127.0.0.1:5000/");
        assert_eq!(u("localhost"), "http://localhost/");
        assert_eq!(u("[::1]:5000"), "http://[::1]:5000/");
        assert_eq!(u("registry.example.com"), "https://registry.example.com/");
        assert_eq!(u("10.1.2.3:5000"), "https://10.1.2.3:5000/");
        assert_eq!(u("docker.io"), "https://registry-1.docker.io/");
        for bad in ["", "a/b", "user@host", "host?x"] {
            assert!(default_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_to_remote_hosts_needs_insecure() {
        let config = |url: &str, insecure| RegistryConfig {
            source_name: "s".into(),
            base_url: Url::parse(url).unwrap(),
            insecure,
            credentials: Credentials::Anonymous,
            repository: None,
        };
        let err = RegistryDriver::new(config("http://registry.example.com", false)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid);
        assert!(err.message.contains("insecure"), "{err}");
        assert!(RegistryDriver::new(config("http://registry.example.com", true)).is_ok());
        assert!(RegistryDriver::new(config("http://127.0.0.1:5000", false)).is_ok());
    }

    #[test]
    fn names_map_to_repositories_through_the_template() {
        let mut config = RegistryConfig {
            source_name: "s".into(),
            base_url: Url::parse("https://r.example.com").unwrap(),
            insecure: false,
            credentials: Credentials::Anonymous,
            repository: None,
        };
        let d = RegistryDriver::new(config.clone()).unwrap();
        assert_eq!(
            d.repository_for("127.0.0.1:5000/team/app").unwrap(),
            "team/app"
        );
        assert_eq!(
            d.repository_for("docker.io/library/busybox").unwrap(),
            "library/busybox"
        );
        for bad in [
            "app",
            "host/",
            "host/../x",
            "host/a?b",
            "host/A",
            "host/a:b",
        ] {
            assert!(d.repository_for(bad).is_err(), "{bad}");
        }
        config.repository = Some("mirror/{name}".into());
        let d = RegistryDriver::new(config).unwrap();
        assert_eq!(
            d.repository_for("docker.io/library/busybox").unwrap(),
            "mirror/library/busybox"
        );
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

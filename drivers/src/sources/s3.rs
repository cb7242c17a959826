//! The `s3` driver: images in an S3 bucket (AWS or any S3-compatible store), in ferry's own
//! layout (readable and writable) or in the layout a CNCF distribution registry writes
//! with its s3 storage driver (read-only).
//!
//! Key layout and rules: `specs/s3-layout.md` (IDs `S3-n` below refer to it). Bodies are
//! streamed, never buffered whole; nothing is stored under a blob's final key before its
//! bytes have matched its digest (S3-6).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{Digest, Hasher, ManifestBlob};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use serde::{Deserialize, Serialize};

use crate::sources::oci_layout::check_name_tag;
use crate::{
    BlobBody, ByteRange, ByteStream, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result,
};

/// Blobs up to this size are uploaded with one PUT; larger ones as a multipart upload.
const SINGLE_PUT_MAX: u64 = 8 * 1024 * 1024;
/// Size of each part of a multipart upload (S3 wants at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once; bounds the memory a large upload holds.
const PART_CONCURRENCY: usize = 2;
/// Largest tag record or distribution link read.
const MAX_SMALL_OBJECT: u64 = 64 * 1024;
/// Attempts after the first on connection errors, timeouts and 5xx answers.
const MAX_RETRIES: usize = 3;
/// Time after which a failing request is no longer retried.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time to set up a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one request may take, body included; a blob transfer cut off by it is
/// `Unavailable` and the pull engine resumes it from the byte it reached.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Where a CNCF distribution registry keeps everything below its root directory.
const DISTRIBUTION_ROOT: &str = "docker/registry/v2";

/// How the objects of a bucket are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Layout {
    /// ferry's own layout (`specs/s3-layout.md`, S3-2 to S3-6), readable and writable.
    #[default]
    Ferry,
    /// The layout a CNCF distribution registry's s3 storage driver writes (S3-7), read-only.
    Distribution,
}

/// Where and how to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The source name the driver reports in messages.
    pub source_name: String,
    /// The bucket.
    pub bucket: String,
    /// The endpoint URL of an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` if unsure: most S3-compatible stores accept it).
    pub region: String,
    /// Key prefix below which the layout lives (S3-1); empty for the bucket's root.
    pub prefix: String,
    /// How the bucket is laid out.
    pub layout: S3Layout,
    /// Whether a plain `http://` endpoint is allowed.
    pub allow_http: bool,
    /// How requests are signed.
    pub credentials: S3Credentials,
}

/// Where the keys that sign requests come from.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum S3Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) from the
    /// environment; unsigned requests when neither key is set.
    #[default]
    Environment,
    /// Keys given in the configuration.
    Keys {
        /// Access key ID.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: String,
        /// Session token of temporary credentials.
        session_token: Option<String>,
    },
    /// Unsigned requests (a public bucket).
    Anonymous,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Credentials::Environment => f.write_str("Environment"),
            S3Credentials::Keys { access_key_id, .. } => f
                .debug_struct("Keys")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
            S3Credentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl S3Config {
    /// A configuration for `bucket` on AWS in `us-east-1`: ferry layout, no prefix, HTTPS,
    /// keys from the environment.
    pub fn new(source_name: impl Into<String>, bucket: impl Into<String>) -> Self {
        S3Config {
            source_name: source_name.into(),
            bucket: bucket.into(),
            endpoint: None,
            region: "us-east-1".into(),
            prefix: String::new(),
            layout: S3Layout::Ferry,
            allow_http: false,
            credentials: S3Credentials::Environment,
        }
    }
}

/// A bucket as a source (and, in the ferry layout, a sink) of images.
#[derive(Clone)]
pub struct S3Driver {
    source_name: String,
    bucket: String,
    prefix: String,
    layout: S3Layout,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver")
            .field("source_name", &self.source_name)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// What a tag object of the ferry layout holds (S3-3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagRecord {
    digest: Digest,
    media_type: String,
    size: u64,
}

impl S3Driver {
    /// A driver for the bucket `config` names; no request is made until it is used.
    pub fn new(config: S3Config) -> Result<Self> {
        let invalid = |m: String| Error::new(ErrorKind::Invalid, &config.source_name, m);
        if config.bucket.is_empty() {
            return Err(invalid("s3 source without a bucket".into()));
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(config.allow_http)
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT),
            )
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            if endpoint.starts_with("http://") && !config.allow_http {
                return Err(invalid(format!(
                    "s3 endpoint {endpoint} is plain HTTP, which this source does not allow"
                )));
            }
            // S3-compatible stores rarely have per-bucket DNS names: use path-style URLs.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        let keys = match config.credentials.clone() {
            S3Credentials::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => Some((access_key_id, secret_access_key, session_token)),
            S3Credentials::Anonymous => None,
            S3Credentials::Environment => {
                match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                    (Some(id), Some(secret)) => Some((id, secret, env("AWS_SESSION_TOKEN"))),
                    (None, None) => None,
                    (Some(_), None) | (None, Some(_)) => {
                        return Err(invalid(
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together"
                                .into(),
                        ))
                    }
                }
            }
        };
        builder = match keys {
            Some((id, secret, token)) => {
                let builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                match token {
                    Some(token) => builder.with_token(token),
                    None => builder,
                }
            }
            None => builder.with_skip_signature(true),
        };
        let store = builder
            .build()
            .map_err(|e| invalid(format!("s3 bucket {}: {}", config.bucket, one_line(&e))))?;
        Ok(S3Driver {
            source_name: config.source_name,
            bucket: config.bucket,
            prefix: config.prefix.trim_matches('/').to_string(),
            layout: config.layout,
            store: Arc::new(store),
        })
    }

    /// The key of `rel` below the configured prefix (S3-1).
    fn key(&self, rel: &str) -> Result<Path> {
        let full = if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        Path::parse(&full).map_err(|e| self.invalid(format!("invalid object key {full:?}: {e}")))
    }

    /// `s3://bucket/key`, for messages.
    fn url(&self, key: &Path) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn invalid(&self, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, &self.source_name, message)
    }

    /// Sorts an object store failure of `op` on `key` into a category (S3-8).
    fn store_error(&self, op: &str, key: &Path, e: &object_store::Error) -> Error {
        use object_store::Error as E;
        let kind = match e {
            E::NotFound { .. } => ErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::Unauthorized,
            E::NotSupported { .. } | E::NotImplemented => ErrorKind::Unsupported,
            E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => ErrorKind::Invalid,
            // Connection failures, timeouts, 5xx after retries, broken bodies.
            _ => ErrorKind::Unavailable,
        };
        Error::new(
            kind,
            &self.source_name,
            format!("{op} {}: {}", self.url(key), one_line(e)),
        )
    }

    /// The key of blob `digest` (S3-2, S3-7).
    fn blob_key(&self, digest: &Digest) -> Result<Path> {
        let (alg, hex) = (digest.algorithm().as_str(), digest.hex());
        match self.layout {
            S3Layout::Ferry => self.key(&format!("blobs/{alg}/{hex}")),
            S3Layout::Distribution => self.key(&format!(
                "{DISTRIBUTION_ROOT}/blobs/{alg}/{}/{hex}/data",
                &hex[..2]
            )),
        }
    }

    /// The distribution repository directory of image `name` (S3-7): its path without host.
    fn repository_dir(&self, name: &str) -> Result<String> {
        let reference = check_name_tag(&self.source_name, name, None)?;
        Ok(format!(
            "{DISTRIBUTION_ROOT}/repositories/{}",
            reference.repository()
        ))
    }

    /// Whether distribution repository `name` links `digest` as a layer or manifest (S3-7).
    async fn linked(&self, name: &str, what: Linked, digest: &Digest) -> Result<bool> {
        let dir = match what {
            Linked::Layer => "_layers",
            Linked::Manifest => "_manifests/revisions",
        };
        let key = self.key(&format!(
            "{}/{dir}/{}/{}/link",
            self.repository_dir(name)?,
            digest.algorithm().as_str(),
            digest.hex()
        ))?;
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_error("HEAD", &key, &e)),
        }
    }

    /// The key of blob `digest` as image `name` may read it, or `NotFound`.
    async fn readable_blob_key(&self, name: &str, digest: &Digest, what: Linked) -> Result<Path> {
        let key = self.blob_key(digest)?;
        match self.layout {
            S3Layout::Ferry => check_name_tag(&self.source_name, name, None).map(drop)?,
            S3Layout::Distribution => {
                if !self.linked(name, what, digest).await? {
                    return Err(Error::not_found(
                        &self.source_name,
                        format!(
                            "{} {digest} in repository {} of {}",
                            what.noun(),
                            self.repository_dir(name)?,
                            self.url(&key)
                        ),
                    ));
                }
            }
        }
        Ok(key)
    }

    /// Reads a small object whole, refusing one larger than `limit`.
    async fn read_small(&self, key: &Path, limit: u64) -> Result<(Vec<u8>, Attributes)> {
        let got = self
            .store
            .get(key)
            .await
            .map_err(|e| self.store_error("GET", key, &e))?;
        if got.meta.size > limit {
            return Err(self.invalid(format!(
                "{} has {} bytes, more than the {limit} expected",
                self.url(key),
                got.meta.size
            )));
        }
        let attributes = got.attributes.clone();
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.store_error("GET", key, &e))?;
        Ok((bytes.to_vec(), attributes))
    }

    /// Reads manifest `digest` at `key` and checks its bytes against the digest.
    async fn read_manifest(&self, key: &Path, digest: &Digest) -> Result<ManifestBytes> {
        let (bytes, attributes) = match self.read_small(key, MAX_MANIFEST_SIZE).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Error::not_found(
                    &self.source_name,
                    format!("manifest {digest} ({})", self.url(key)),
                ))
            }
            other => other?,
        };
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(Error::corrupt(
                &self.source_name,
                format!(
                    "manifest {digest} at {}: digest mismatch: the object hashes to {actual}",
                    self.url(key)
                ),
            ));
        }
        let content_type = attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        Ok(ManifestBytes {
            bytes,
            content_type,
        })
    }

    /// Ferry layout: the tag object of `name:tag` (S3-3).
    fn tag_key(&self, name: &str, tag: &str) -> Result<Path> {
        self.key(&format!("names/{name}/tags/{tag}"))
    }

    /// Ferry layout: uploads `body` to blob `digest`, stored only if it checks out (S3-6).
    async fn upload_blob(
        &self,
        digest: &Digest,
        size: u64,
        body: ByteStream,
        content_type: Option<&str>,
    ) -> Result<()> {
        let key = self.blob_key(digest)?;
        let mut attributes = Attributes::new();
        if let Some(t) = content_type {
            attributes.insert(Attribute::ContentType, t.to_string().into());
        }
        let mut check = BodyCheck::new(self, digest, size);
        if size <= SINGLE_PUT_MAX {
            let chunks: Vec<Bytes> = body
                .and_then(|chunk| futures::future::ready(check.feed(&chunk).map(|()| chunk)))
                .try_collect()
                .await?;
            check.finish()?;
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.store
                .put_opts(&key, PutPayload::from_iter(chunks), options)
                .await
                .map_err(|e| self.store_error("PUT", &key, &e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart_opts(
                &key,
                PutMultipartOptions {
                    attributes,
                    ..PutMultipartOptions::default()
                },
            )
            .await
            .map_err(|e| self.store_error("start multipart upload of", &key, &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let streamed: Result<()> = async {
            let mut body = body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                check.feed(&chunk)?;
                writer
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(|e| self.store_error("upload part of", &key, &e))?;
                writer.put(chunk);
            }
            check.finish()
        }
        .await;
        match streamed {
            // The object appears only now, when the upload completes.
            Ok(()) => writer
                .finish()
                .await
                .map(drop)
                .map_err(|e| self.store_error("complete multipart upload of", &key, &e)),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(
                        "{}",
                        self.store_error("abort multipart upload of", &key, &abort)
                    );
                }
                Err(e)
            }
        }
    }
}

/// What a distribution repository links.
#[derive(Debug, Clone, Copy)]
enum Linked {
    /// A layer or config blob (`_layers`).
    Layer,
    /// A manifest revision (`_manifests/revisions`).
    Manifest,
}

impl Linked {
    fn noun(self) -> &'static str {
        match self {
            Linked::Layer => "blob",
            Linked::Manifest => "manifest",
        }
    }
}

/// Hashes and counts a body being uploaded, failing as soon as it is too long.
struct BodyCheck<'a> {
    driver: &'a S3Driver,
    digest: &'a Digest,
    size: u64,
    seen: u64,
    hasher: Hasher,
}

impl<'a> BodyCheck<'a> {
    fn new(driver: &'a S3Driver, digest: &'a Digest, size: u64) -> Self {
        BodyCheck {
            driver,
            digest,
            size,
            seen: 0,
            hasher: Hasher::new(digest.algorithm()),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        self.seen += chunk.len() as u64;
        if self.seen > self.size {
            return Err(Error::corrupt(
                &self.driver.source_name,
                format!(
                    "blob {}: body is longer than the declared {} bytes",
                    self.digest, self.size
                ),
            ));
        }
        self.hasher.update(chunk);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.seen != self.size {
            return Err(Error::corrupt(
                &self.driver.source_name,
                format!(
                    "blob {}: body has {} bytes, declared {}",
                    self.digest, self.seen, self.size
                ),
            ));
        }
        let actual =
            std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm())).finish();
        if &actual != self.digest {
            return Err(Error::corrupt(
                &self.driver.source_name,
                format!(
                    "blob {}: digest mismatch: the body hashes to {actual}; not stored",
                    self.digest
                ),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for S3Driver {
    fn source_name(&self) -> &str {
        &self.source_name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: true,
            list_tags: true,
            write: self.layout == S3Layout::Ferry,
            ranges: true,
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        check_name_tag(&self.source_name, name, Some(tag))?;
        match self.layout {
            S3Layout::Ferry => {
                let key = self.tag_key(name, tag)?;
                let (bytes, _) = match self.read_small(&key, MAX_SMALL_OBJECT).await {
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Err(Error::not_found(
                            &self.source_name,
                            format!("{name}:{tag} ({})", self.url(&key)),
                        ))
                    }
                    other => other?,
                };
                let record: TagRecord = serde_json::from_slice(&bytes).map_err(|e| {
                    self.invalid(format!(
                        "tag object {} is not a tag record: {e}",
                        self.url(&key)
                    ))
                })?;
                Ok(Descriptor::new(
                    record.media_type.as_str().into(),
                    record.size,
                    ferry_core::oci_spec::image::Digest::from(&record.digest),
                ))
            }
            S3Layout::Distribution => {
                let key = self.key(&format!(
                    "{}/_manifests/tags/{tag}/current/link",
                    self.repository_dir(name)?
                ))?;
                let (bytes, _) = match self.read_small(&key, MAX_SMALL_OBJECT).await {
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Err(Error::not_found(
                            &self.source_name,
                            format!("{name}:{tag} ({})", self.url(&key)),
                        ))
                    }
                    other => other?,
                };
                let text = String::from_utf8_lossy(&bytes);
                let digest = Digest::parse(text.trim())
                    .map_err(|e| self.invalid(format!("tag link {}: {e}", self.url(&key))))?;
                let manifest = self
                    .read_manifest(&self.blob_key(&digest)?, &digest)
                    .await?;
                // The manifest's own mediaType field decides (S3-7).
                let blob = ManifestBlob::parse(manifest.bytes, None, Some(&digest))
                    .map_err(|e| Error::from_core(&self.source_name, e))?;
                Ok(blob.descriptor())
            }
        }
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        let key = self
            .readable_blob_key(name, digest, Linked::Manifest)
            .await?;
        self.read_manifest(&key, digest).await
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        let key = self.readable_blob_key(name, digest, Linked::Layer).await?;
        if range.len == Some(0) {
            return Ok(BlobBody {
                len: Some(0),
                stream: Box::pin(futures::stream::empty()),
            });
        }
        let range = match (range.offset, range.len) {
            (0, None) => None,
            (offset, None) => Some(GetRange::Offset(offset)),
            (offset, Some(len)) => Some(GetRange::Bounded(offset..offset.saturating_add(len))),
        };
        let options = GetOptions {
            range,
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&key, options)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::not_found(
                    &self.source_name,
                    format!("blob {digest} ({})", self.url(&key)),
                ),
                e => self.store_error("GET", &key, &e),
            })?;
        let len = got.range.end - got.range.start;
        let (driver, key) = (self.clone(), key.clone());
        let stream = got
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| driver.store_error("read body of", &key, &e)));
        Ok(BlobBody {
            len: Some(len),
            stream: Box::pin(stream),
        })
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let key = match self.readable_blob_key(name, digest, Linked::Layer).await {
            Ok(key) => key,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error("HEAD", &key, &e)),
        }
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        check_name_tag(&self.source_name, name, None)?;
        let dir = match self.layout {
            S3Layout::Ferry => self.key(&format!("names/{name}/tags"))?,
            S3Layout::Distribution => {
                self.key(&format!("{}/_manifests/tags", self.repository_dir(name)?))?
            }
        };
        let listed = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| self.store_error("LIST", &dir, &e))?;
        let mut tags: Vec<String> = match self.layout {
            // Ferry: one object per tag. Distribution: one "directory" per tag.
            S3Layout::Ferry => listed
                .objects
                .iter()
                .filter_map(|o| o.location.filename().map(str::to_string))
                .collect(),
            S3Layout::Distribution => listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect(),
        };
        if tags.is_empty() {
            return Err(Error::not_found(
                &self.source_name,
                format!("image {name} (no tags below {})", self.url(&dir)),
            ));
        }
        tags.sort();
        Ok(tags)
    }

    async fn put_blob(
        &self,
        name: &str,
        digest: &Digest,
        size: u64,
        body: ByteStream,
    ) -> Result<()> {
        if self.layout != S3Layout::Ferry {
            return Err(Error::unsupported(
                &self.source_name,
                "writing to a distribution-layout bucket",
            ));
        }
        check_name_tag(&self.source_name, name, None)?;
        if self.blob_size(name, digest).await? == Some(size) {
            return Ok(());
        }
        self.upload_blob(digest, size, body, None).await
    }

    async fn put_manifest(
        &self,
        name: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        if self.layout != S3Layout::Ferry {
            return Err(Error::unsupported(
                &self.source_name,
                "writing to a distribution-layout bucket",
            ));
        }
        check_name_tag(&self.source_name, name, tag)?;
        let blob = ManifestBlob::parse(bytes.to_vec(), Some(media_type), None)
            .map_err(|e| Error::from_core(&self.source_name, e))?;
        if blob.media_type != media_type {
            return Err(self.invalid(format!(
                "manifest {} declares media type {:?}, not {media_type:?}",
                blob.digest, blob.media_type
            )));
        }
        let size = bytes.len() as u64;
        let body = Bytes::copy_from_slice(bytes);
        self.upload_blob(
            &blob.digest,
            size,
            Box::pin(futures::stream::once(async { Ok(body) })),
            Some(media_type),
        )
        .await?;
        if let Some(tag) = tag {
            // The tag is written last: it never points at a manifest that is not there (S3-3).
            let key = self.tag_key(name, tag)?;
            let record = TagRecord {
                digest: blob.digest.clone(),
                media_type: media_type.to_string(),
                size,
            };
            let json = serde_json::to_vec(&record)
                .map_err(|e| self.invalid(format!("tag record to JSON: {e}")))?;
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, "application/json".into());
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.store
                .put_opts(&key, PutPayload::from(json), options)
                .await
                .map_err(|e| self.store_error("PUT", &key, &e))?;
        }
        Ok(blob.digest)
    }
}

/// An error's message on one line, cut at 500 characters.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match s.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

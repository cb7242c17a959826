//! Pushes (SERVE-9..12), only with `--allow-push`: blob uploads spooled to a file, then
//! committed through the store's verified ingest; cross-repository mounts; manifest PUTs.

use std::collections::HashMap;
use std::io::{Read as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::manifest::{descriptor_digest, parse_config, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Manifest, ManifestBlob, Platform, Store};
use ferry_drivers::transfer::signatures::{
    envelope_of_layer, signature_tag, signature_tag_digest, store_signature, MAX_SIGNATURES,
};
use ferry_signing::MAX_PAYLOAD_SIZE;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

use crate::error::{ApiError, ApiResult, Error};
use crate::limits::BodyChunks;
use crate::names::{parse_digest, validate_tag};
use crate::range::content_range_start;
use crate::{App, CONTENT_DIGEST};

/// Kind of the store roots that keep pushed blobs until a manifest names them (SERVE-10).
pub const UPLOAD_ROOT_KIND: &str = "serve-upload";
/// How long a pushed blob is kept without a manifest naming it (SERVE-10).
const UPLOAD_ROOT_TTL: Duration = Duration::from_secs(3600);
/// How often the roots of pushed blobs are swept.
const ROOT_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Uploads open at once; more are refused with 429 until some finish or expire (SERVE-17).
pub(crate) const MAX_UPLOADS: usize = 1024;
/// Bytes copied per read when committing a spooled upload.
const COPY_CHUNK: usize = 1 << 20;

/// Uploads in progress: a spool file per upload under `ROOT/serve/uploads/`.
pub(crate) struct Uploads {
    dir: PathBuf,
    /// An upload untouched for this long is dropped (SERVE-17).
    timeout: Duration,
    sessions: Mutex<HashMap<String, Slot>>,
}

enum Slot {
    /// A request is writing to it.
    Busy,
    Idle(Session),
}

struct Session {
    repo: String,
    offset: u64,
    hasher: Sha256,
    touched: Instant,
}

impl Uploads {
    /// Creates (or empties) the spool directory of the store at `root`.
    /// Uploads untouched for `timeout` are dropped by [`sweep_forever`].
    pub(crate) fn open(root: &Path, timeout: Duration) -> Result<Uploads, Error> {
        let dir = root.join("serve").join("uploads");
        let io = |e: std::io::Error| {
            Error::Store(ferry_core::Error::io("create upload directory", &dir, e))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Uploads do not survive a restart: their hash state was in memory.
        for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Uploads {
            dir,
            timeout,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn create(&self, repo: &str) -> ApiResult<String> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let mut sessions = self.sessions.lock().expect("uploads");
        if sessions.len() >= MAX_UPLOADS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                format!(
                    "upload to {repo} refused: {MAX_UPLOADS} uploads are open; retry when some finish"
                ),
            ));
        }
        std::fs::File::create(self.path(&id))
            .map_err(|e| ApiError::internal(format!("create upload {id}: {e}")))?;
        sessions.insert(
            id.clone(),
            Slot::Idle(Session {
                repo: repo.to_string(),
                offset: 0,
                hasher: Sha256::new(),
                touched: Instant::now(),
            }),
        );
        Ok(id)
    }

    /// Takes the session out for one request (others see it busy).
    fn take(&self, repo: &str, id: &str) -> ApiResult<Session> {
        let unknown = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                format!("upload {id} of {repo} is unknown (finished, cancelled or expired)"),
            )
        };
        let mut sessions = self.sessions.lock().expect("uploads");
        match sessions.get(id) {
            Some(Slot::Idle(s)) if s.repo == repo => {}
            Some(Slot::Busy) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "BLOB_UPLOAD_INVALID",
                    format!("upload {id} of {repo} is busy with another request"),
                ))
            }
            _ => return Err(unknown()),
        }
        match sessions.insert(id.to_string(), Slot::Busy) {
            Some(Slot::Idle(s)) => Ok(s),
            _ => Err(unknown()),
        }
    }

    fn put_back(&self, id: &str, mut session: Session) {
        session.touched = Instant::now();
        self.sessions
            .lock()
            .expect("uploads")
            .insert(id.to_string(), Slot::Idle(session));
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().expect("uploads").remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Where upload `id` stands; asking counts as touching it.
    fn offset(&self, repo: &str, id: &str) -> ApiResult<u64> {
        match self.sessions.lock().expect("uploads").get_mut(id) {
            Some(Slot::Idle(s)) if s.repo == repo => {
                s.touched = Instant::now();
                Ok(s.offset)
            }
            Some(Slot::Busy) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "BLOB_UPLOAD_INVALID",
                format!("upload {id} of {repo} is busy with another request"),
            )),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                format!("upload {id} of {repo} is unknown"),
            )),
        }
    }

    /// Drops uploads no request touched for longer than the timeout, spool files included.
    fn expire(&self) {
        let expired: Vec<String> = self
            .sessions
            .lock()
            .expect("uploads")
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Idle(s) if s.touched.elapsed() > self.timeout))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::info!("upload {id} expired after {:?} untouched", self.timeout);
            self.remove(&id);
        }
    }

    /// How often to look for expired uploads: a quarter of the timeout, within 0.1 s..60 s.
    fn sweep_every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }
}

/// Drops expired uploads (SERVE-17) and, every [`ROOT_SWEEP_EVERY`], the roots of pushed
/// blobs no manifest named within [`UPLOAD_ROOT_TTL`] (SERVE-10).
pub(crate) async fn sweep_forever(app: App) {
    let mut roots_swept = Instant::now();
    loop {
        tokio::time::sleep(app.0.uploads.sweep_every()).await;
        app.0.uploads.expire();
        if roots_swept.elapsed() < ROOT_SWEEP_EVERY {
            continue;
        }
        roots_swept = Instant::now();
        let swept = app
            .blocking(|store| expire_upload_roots(store).map_err(ApiError::store))
            .await;
        if let Err(e) = swept {
            tracing::warn!("sweeping upload roots: {}", e.message);
        }
    }
}

fn expire_upload_roots(store: &Store) -> ferry_core::Result<()> {
    let now = unix_now();
    let mut keys: Vec<String> = store
        .roots(UPLOAD_ROOT_KIND)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.dedup();
    for key in keys {
        let stale = key
            .parse::<i64>()
            .map_or(true, |t| now - t > UPLOAD_ROOT_TTL.as_secs() as i64);
        if stale {
            store.remove_roots(UPLOAD_ROOT_KIND, &key)?;
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn require_push(app: &App) -> ApiResult<()> {
    if app.0.allow_push {
        Ok(())
    } else {
        Err(ApiError::read_only())
    }
}

/// `POST /v2/<repo>/blobs/uploads/[?digest=|?mount=&from=]` (SERVE-9, SERVE-11).
pub(crate) async fn start_upload(
    app: &App,
    repo: &str,
    query: &HashMap<String, String>,
    body: Body,
) -> ApiResult<Response> {
    require_push(app)?;
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest(mount)?;
        let wanted = digest.clone();
        let present = app
            .blocking(move |store| store.blob_size(&wanted).map_err(ApiError::store))
            .await?;
        if present.is_some() && !app.is_corrupt(&digest) {
            return Ok(created_blob(repo, &digest));
        }
        // Not here: a normal upload, as the spec says.
    }
    let id = app.0.uploads.create(repo)?;
    if let Some(digest) = query.get("digest") {
        let digest = match parse_digest(digest) {
            Ok(d) => d,
            Err(e) => {
                app.0.uploads.remove(&id);
                return Err(e);
            }
        };
        let session = app.0.uploads.take(repo, &id)?;
        return finish(app, repo, &id, session, &digest, body).await;
    }
    Ok(accepted(repo, &id, 0))
}

/// `PATCH /v2/<repo>/blobs/uploads/<id>`: appends the body at the upload's offset (SERVE-9).
pub(crate) async fn patch_upload(
    app: &App,
    repo: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require_push(app)?;
    let mut session = app.0.uploads.take(repo, id)?;
    if let Some(start) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(content_range_start)
    {
        if start != session.offset {
            let offset = session.offset;
            app.0.uploads.put_back(id, session);
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                format!("upload {id} of {repo} is at byte {offset}, not {start}"),
            )
            .with_header(header::RANGE, &range_value(offset))
            .with_header(header::LOCATION, &upload_location(repo, id)));
        }
    }
    let written = append(app, id, &mut session, body).await;
    let offset = session.offset;
    app.0.uploads.put_back(id, session);
    written?;
    Ok(accepted(repo, id, offset))
}

/// `PUT /v2/<repo>/blobs/uploads/<id>?digest=`: the last bytes, then verify and commit (SERVE-9).
pub(crate) async fn finish_upload(
    app: &App,
    repo: &str,
    id: &str,
    query: &HashMap<String, String>,
    body: Body,
) -> ApiResult<Response> {
    require_push(app)?;
    let digest = parse_digest(query.get("digest").map_or("", String::as_str))?;
    let session = app.0.uploads.take(repo, id)?;
    finish(app, repo, id, session, &digest, body).await
}

/// `GET /v2/<repo>/blobs/uploads/<id>`: where the upload stands.
pub(crate) async fn upload_status(app: &App, repo: &str, id: &str) -> ApiResult<Response> {
    require_push(app)?;
    let offset = app.0.uploads.offset(repo, id)?;
    let mut resp = accepted(repo, id, offset);
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// `DELETE /v2/<repo>/blobs/uploads/<id>`: drops the upload.
pub(crate) async fn cancel_upload(app: &App, repo: &str, id: &str) -> ApiResult<Response> {
    require_push(app)?;
    app.0.uploads.offset(repo, id)?;
    app.0.uploads.remove(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Appends a request body to the spool file, hashing what was written.
async fn append(app: &App, id: &str, session: &mut Session, body: Body) -> ApiResult<()> {
    let path = app.0.uploads.path(id);
    let io = |op: &str, e: std::io::Error| ApiError::internal(format!("{op} upload {id}: {e}"));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .await
        .map_err(|e| io("open", e))?;
    file.seek(SeekFrom::Start(session.offset))
        .await
        .map_err(|e| io("seek", e))?;
    let mut chunks = BodyChunks::new(body, app.0.read_timeout);
    let mut result = Ok(());
    loop {
        let chunk = match chunks.next().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                // What arrived so far is kept: the client asks where it stands and resumes.
                result = Err(e.answer("BLOB_UPLOAD_INVALID", &format!("upload {id}")));
                break;
            }
        };
        if let Err(e) = file.write_all(&chunk).await {
            result = Err(io("write", e));
            break;
        }
        session.hasher.update(&chunk);
        session.offset += chunk.len() as u64;
    }
    // Keep the file exactly the hashed bytes (a failed write may have left a tail).
    file.flush().await.map_err(|e| io("flush", e))?;
    file.set_len(session.offset)
        .await
        .map_err(|e| io("truncate", e))?;
    result
}

/// Appends the last body, checks the digest, commits through the store's ingest.
async fn finish(
    app: &App,
    repo: &str,
    id: &str,
    mut session: Session,
    digest: &Digest,
    body: Body,
) -> ApiResult<Response> {
    if let Err(e) = append(app, id, &mut session, body).await {
        app.0.uploads.put_back(id, session);
        return Err(e);
    }
    let actual = match digest.algorithm() {
        ferry_core::Algorithm::Sha256 => Digest::parse(&format!(
            "sha256:{}",
            hex::encode(session.hasher.clone().finalize())
        ))
        .map_err(|e| ApiError::internal(e.to_string()))?,
        // Rare: hash the spool file again with the named algorithm.
        other => {
            let path = app.0.uploads.path(id);
            app.blocking(move |_| hash_file(&path, other)).await?
        }
    };
    if &actual != digest {
        app.0.uploads.remove(id);
        return Err(ApiError::digest_invalid(format!(
            "upload {id} of {repo}: {} bytes hash to {actual}, not {digest}",
            session.offset
        )));
    }
    let size = session.offset;
    let path = app.0.uploads.path(id);
    let wanted = digest.clone();
    let committed = app
        .blocking(move |store| commit_file(store, &path, &wanted, size))
        .await;
    app.0.uploads.remove(id);
    committed?;
    Ok(created_blob(repo, digest))
}

fn hash_file(path: &Path, algorithm: ferry_core::Algorithm) -> ApiResult<Digest> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| ApiError::internal(format!("open {}: {e}", path.display())))?;
    let mut hasher = ferry_core::Hasher::new(algorithm);
    let mut buf = vec![0; COPY_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ApiError::internal(format!("read {}: {e}", path.display())))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes the spool file through `Store::ingest` (which hashes again) and commits it, then
/// keeps it with an upload root until a manifest names it (SERVE-10). Blocking.
fn commit_file(store: &Store, path: &Path, digest: &Digest, size: u64) -> ApiResult<()> {
    let store_err = |e: ferry_core::Error| match e {
        ferry_core::Error::DigestMismatch { .. } | ferry_core::Error::SizeMismatch { .. } => {
            ApiError::digest_invalid(e.to_string())
        }
        other => ApiError::store(other),
    };
    let _lease = store.lease().map_err(ApiError::store)?;
    let mut ingest = store.ingest(digest, Some(size)).map_err(store_err)?;
    if ingest.offset() != size {
        ingest.reset().map_err(store_err)?;
        let mut file = std::fs::File::open(path)
            .map_err(|e| ApiError::internal(format!("open {}: {e}", path.display())))?;
        let mut buf = vec![0; COPY_CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ApiError::internal(format!("read {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            ingest.write_all(&buf[..n]).map_err(store_err)?;
        }
    }
    ingest
        .commit("application/octet-stream", Some("push"))
        .map_err(store_err)?;
    store
        .add_root(UPLOAD_ROOT_KIND, &unix_now().to_string(), digest)
        .map_err(ApiError::store)
}

fn upload_location(repo: &str, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>` of an upload (`0-0` before the first byte, as registries do).
fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn accepted(repo: &str, id: &str, offset: u64) -> Response {
    let mut resp = StatusCode::ACCEPTED.into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (header::LOCATION.as_str(), upload_location(repo, id)),
        (header::RANGE.as_str(), range_value(offset)),
        ("docker-upload-uuid", id.to_string()),
        (header::CONTENT_LENGTH.as_str(), "0".to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(
                header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                v,
            );
        }
    }
    resp
}

fn created_blob(repo: &str, digest: &Digest) -> Response {
    created(&format!("/v2/{repo}/blobs/{digest}"), digest)
}

fn created(location: &str, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(CONTENT_DIGEST, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// Layers clients never push (foreign / non-distributable): a manifest may name them absent.
fn non_distributable(media_type: &str) -> bool {
    media_type.contains("foreign") || media_type.contains("nondistributable")
}

/// `PUT /v2/<repo>/manifests/<tag|digest>` (SERVE-12).
pub(crate) async fn put_manifest(
    app: &App,
    repo: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    require_push(app)?;
    let bytes = read_manifest_body(app, repo, reference, headers, body).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let (tag, expected) = if reference.contains(':') {
        (None, Some(parse_digest(reference)?))
    } else {
        validate_tag(reference)?;
        (Some(reference.to_string()), None)
    };
    let blob = ManifestBlob::parse(bytes, content_type.as_deref(), expected.as_ref()).map_err(
        |e| match e {
            ferry_core::Error::DigestMismatch { .. } => {
                ApiError::digest_invalid(format!("manifest for {repo}@{reference}: {e}"))
            }
            other => ApiError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("manifest for {repo}:{reference}: {other}"),
            ),
        },
    )?;
    let name = app.catalog().await?.push_name(repo);
    let digest = blob.digest.clone();
    let repo_owned = repo.to_string();
    app.blocking(move |store| store_manifest(store, &repo_owned, &name, tag.as_deref(), &blob))
        .await?;
    app.names_changed();
    Ok(created(&format!("/v2/{repo}/manifests/{digest}"), &digest))
}

/// The body of a manifest PUT, at most [`MAX_MANIFEST_SIZE`] bytes: a larger
/// `Content-Length` is refused before any byte is read, a longer body as soon as it passes
/// the limit (SERVE-16).
async fn read_manifest_body(
    app: &App,
    repo: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Vec<u8>> {
    let what = format!("manifest for {repo}:{reference}");
    let too_large = |size: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
            format!("{what}: {size} is over the limit of {MAX_MANIFEST_SIZE} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&n| n > MAX_MANIFEST_SIZE) {
        return Err(too_large(format!("Content-Length {declared}")));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut chunks = BodyChunks::new(body, app.0.read_timeout);
    while let Some(chunk) = chunks
        .next()
        .await
        .map_err(|e| e.answer("MANIFEST_INVALID", &what))?
    {
        if (bytes.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
            return Err(too_large("the body".to_string()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Checks what a manifest references, stores it, and names it (or, for a ferry signature
/// set under a signature tag, keeps its signatures). Blocking.
fn store_manifest(
    store: &Store,
    repo: &str,
    name: &str,
    tag: Option<&str>,
    blob: &ManifestBlob,
) -> ApiResult<()> {
    let _lease = store.lease().map_err(ApiError::store)?;
    let missing = |d: &Digest| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!("manifest for {repo} references {d}, which was not pushed"),
        )
    };
    let bad = |e: ferry_core::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("manifest for {repo}: {e}"),
        )
    };
    let mut size = blob.bytes.len() as u64;
    let mut created = None;
    let mut platform = None;
    match &blob.manifest {
        Manifest::Image(m) => {
            for d in std::iter::once(m.config()).chain(m.layers()) {
                let digest = descriptor_digest(d).map_err(bad)?;
                size += d.size();
                if store.blob_size(&digest).map_err(ApiError::store)?.is_none()
                    && !non_distributable(d.media_type().as_ref())
                {
                    return Err(missing(&digest));
                }
            }
            // A signature set under its signature tag, whoever wrote it: keep its signatures
            // (SERVE-5, SIG-15).
            if let Some(tag) = tag {
                let subject = match m.subject() {
                    Some(subject) => Some(descriptor_digest(subject).map_err(bad)?),
                    None => signature_tag_digest(tag),
                };
                if let Some(subject) = subject {
                    if signature_tag(&subject) == tag {
                        keep_signatures(store, &subject, m.layers())?;
                        store
                            .put_blob(&blob.digest, &blob.bytes, &blob.media_type, Some("push"))
                            .map_err(ApiError::store)?;
                        return Ok(());
                    }
                }
            }
            let config_digest = descriptor_digest(m.config()).map_err(bad)?;
            if let Ok(bytes) = store.read_blob(&config_digest, MAX_CONFIG_SIZE) {
                if let Ok(config) = parse_config(&bytes, &config_digest) {
                    created = config.created().clone();
                    platform = Some(Platform::of_config(&config).to_string());
                }
            }
        }
        Manifest::Index(index) => {
            for child in index.manifests() {
                let digest = descriptor_digest(child).map_err(bad)?;
                size += child.size();
                if store.blob_size(&digest).map_err(ApiError::store)?.is_none() {
                    return Err(missing(&digest));
                }
            }
        }
    }
    store
        .put_blob(&blob.digest, &blob.bytes, &blob.media_type, Some("push"))
        .map_err(ApiError::store)?;
    store
        .set_image(&ImageRecord {
            name: name.to_string(),
            tag: tag.map(str::to_string),
            digest: blob.digest.clone(),
            media_type: blob.media_type.clone(),
            size,
            created,
            platform,
            updated: unix_now(),
        })
        .map_err(|e| match e {
            ferry_core::Error::InvalidReference { .. } => {
                ApiError::name_invalid(repo, &e.to_string())
            }
            other => ApiError::store(other),
        })?;
    tracing::info!(name, tag, digest = %blob.digest, "pushed manifest");
    Ok(())
}

/// Keeps the signatures of a pushed signature set as signatures of `subject` (SIG-17).
fn keep_signatures(
    store: &Store,
    subject: &Digest,
    layers: &[ferry_core::oci_spec::image::Descriptor],
) -> ApiResult<()> {
    for layer in layers.iter().take(MAX_SIGNATURES) {
        let Ok(digest) = descriptor_digest(layer) else {
            continue;
        };
        let kept = store
            .read_blob(&digest, MAX_PAYLOAD_SIZE as u64)
            .map_err(|e| e.to_string())
            .and_then(|payload| envelope_of_layer(layer, payload))
            .and_then(|envelope| {
                store_signature(store, subject, &envelope).map_err(|e| e.to_string())
            });
        if let Err(e) = kept {
            tracing::warn!("signature set of {subject}: layer {digest}: {e}; skipped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ranges_name_the_last_byte() {
        assert_eq!(range_value(0), "0-0");
        assert_eq!(range_value(10), "0-9");
    }
}

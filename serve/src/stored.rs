//! Answers from what the store holds: manifests with their exact bytes, blobs streamed
//! from their files (with ranges), and signature sets synthesized from the signatures the
//! store keeps. Shared by the distribution API, the peer API and the mirror.

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{media, Digest, ManifestBlob, Store};
use ferry_drivers::transfer::signatures::{
    signature_set_manifest, signatures_in_store, SIGNATURE_CONFIG,
};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use crate::error::{ApiError, ApiResult};
use crate::range::{span, Span};
use crate::{App, CONTENT_DIGEST};

/// Bytes read from a blob file per chunk of a response body.
const READ_CHUNK: usize = 256 << 10;

/// A manifest ready to send: exact bytes, media type, digest.
pub(crate) struct ManifestBody {
    pub(crate) bytes: Vec<u8>,
    pub(crate) media_type: String,
    pub(crate) digest: Digest,
}

impl ManifestBody {
    /// The answer to GET (bytes) or HEAD (headers only).
    pub(crate) fn response(self, head: bool) -> Response {
        let len = self.bytes.len();
        let mut resp = if head {
            Body::empty().into_response()
        } else {
            Body::from(self.bytes).into_response()
        };
        let h = resp.headers_mut();
        insert(h, header::CONTENT_TYPE, &self.media_type);
        insert(h, header::CONTENT_LENGTH, &len.to_string());
        insert(h, CONTENT_DIGEST, &self.digest.to_string());
        insert(h, header::ETAG, &format!("\"{}\"", self.digest));
        resp
    }
}

/// Sets header `name` when `value` is a valid header value.
pub(crate) fn insert(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A committed blob as a manifest, `None` if it is absent or not a manifest. Blocking.
pub(crate) fn read_manifest(
    app: &App,
    store: &Store,
    digest: &Digest,
) -> ApiResult<Option<ManifestBody>> {
    if app.is_corrupt(digest) {
        return Err(corrupt_error(digest));
    }
    let bytes = match store.read_blob(digest, MAX_MANIFEST_SIZE) {
        Ok(bytes) => bytes,
        Err(ferry_core::Error::BlobNotFound(_) | ferry_core::Error::TooLarge { .. }) => {
            return Ok(None)
        }
        Err(e) => return Err(ApiError::store(e)),
    };
    let recorded = store
        .blob_record(digest)
        .map_err(ApiError::store)?
        .map(|r| r.media_type);
    match ManifestBlob::parse(bytes, recorded.as_deref(), Some(digest)) {
        Ok(blob) => Ok(Some(ManifestBody {
            bytes: blob.bytes,
            media_type: blob.media_type,
            digest: blob.digest,
        })),
        Err(ferry_core::Error::DigestMismatch { actual, .. }) => {
            app.mark_corrupt(digest, &actual);
            Err(corrupt_error(digest))
        }
        Err(_) => Ok(None),
    }
}

/// The answer for a blob found corrupt at rest.
pub(crate) fn corrupt_error(digest: &Digest) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "BLOB_CORRUPT",
        format!("blob {digest} is corrupt in this store; not serving it"),
    )
}

/// The signature set of manifest `subject` (SIG-13) built from the signatures the store
/// keeps for it (SIG-17), `None` when it keeps none (SERVE-5). Blocking.
pub(crate) fn signature_set(store: &Store, subject: &Digest) -> ApiResult<Option<ManifestBody>> {
    let mut envelopes = Vec::new();
    for envelope in signatures_in_store(store, subject)
        .map_err(|e| ApiError::internal(format!("signatures of {subject}: {e}")))?
    {
        // A layer is served only with its blob, the payload.
        if store
            .blob_size(&envelope.payload_digest())
            .map_err(ApiError::store)?
            .is_some()
        {
            envelopes.push(envelope);
        }
    }
    if envelopes.is_empty() {
        return Ok(None);
    }
    let Some(subject_size) = store.blob_size(subject).map_err(ApiError::store)? else {
        return Ok(None);
    };
    let subject_type = store
        .blob_record(subject)
        .map_err(ApiError::store)?
        .map(|r| r.media_type)
        .filter(|t| media::is_manifest(t))
        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
    let descriptor = Descriptor::new(
        subject_type.as_str().into(),
        subject_size,
        ferry_core::oci_spec::image::Digest::from(subject),
    );
    let bytes = signature_set_manifest(&descriptor, &envelopes);
    Ok(Some(ManifestBody {
        digest: Digest::sha256(&bytes),
        media_type: media::OCI_MANIFEST.to_string(),
        bytes,
    }))
}

/// Streams committed blob `digest` (or the range `Range` asks for) from its file (SERVE-4).
pub(crate) async fn send_blob(
    app: &App,
    digest: &Digest,
    range: Option<&HeaderValue>,
    head: bool,
) -> ApiResult<Response> {
    if app.is_corrupt(digest) {
        return Err(corrupt_error(digest));
    }
    let wanted = digest.clone();
    let file = app
        .blocking(move |store| match store.open_blob(&wanted) {
            Ok(file) => {
                let size = file
                    .metadata()
                    .map_err(|e| ApiError::internal(format!("stat blob {wanted}: {e}")))?
                    .len();
                Ok(Some((file, size)))
            }
            Err(ferry_core::Error::BlobNotFound(_)) => Ok(None),
            Err(e) => Err(ApiError::store(e)),
        })
        .await?;
    let Some((file, size)) = file else {
        // The config blob of every signature set: served even when no store has it (SERVE-5).
        if *digest == Digest::sha256(SIGNATURE_CONFIG) {
            return Ok(memory_blob(digest, SIGNATURE_CONFIG, head));
        }
        return Err(ApiError::blob_unknown(digest));
    };
    let (status, start, len) = match span(range.and_then(|v| v.to_str().ok()), size) {
        Span::Whole => (StatusCode::OK, 0, size),
        Span::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Span::Unsatisfiable => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                format!("blob {digest} has {size} bytes; the range asked for is outside it"),
            )
            .with_header(header::CONTENT_RANGE, &format!("bytes */{size}")))
        }
    };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        let mut file = tokio::fs::File::from_std(file);
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::internal(format!("seek in blob {digest}: {e}")))?;
        }
        Body::from_stream(ReaderStream::with_capacity(file.take(len), READ_CHUNK))
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    insert(h, header::CONTENT_TYPE, "application/octet-stream");
    insert(h, header::CONTENT_LENGTH, &len.to_string());
    insert(h, CONTENT_DIGEST, &digest.to_string());
    insert(h, header::ACCEPT_RANGES, "bytes");
    insert(h, header::ETAG, &format!("\"{digest}\""));
    if status == StatusCode::PARTIAL_CONTENT {
        insert(
            h,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(resp)
}

/// A blob held in memory as an answer.
fn memory_blob(digest: &Digest, bytes: &'static [u8], head: bool) -> Response {
    let mut resp = if head {
        Body::empty().into_response()
    } else {
        Body::from(bytes).into_response()
    };
    let h = resp.headers_mut();
    insert(h, header::CONTENT_TYPE, "application/octet-stream");
    insert(h, header::CONTENT_LENGTH, &bytes.len().to_string());
    insert(h, CONTENT_DIGEST, &digest.to_string());
    resp
}

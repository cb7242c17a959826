//! The peer API under `/ferry/v1/` (PEER-1..5): content by digest for other ferry nodes,
//! whatever name it came with, and per-piece BLAKE3 hashes of committed blobs.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_core::{Digest, Hasher, Store};
use ferry_drivers::sources::peer::RELAY_EXTENT;
use ferry_drivers::transfer::signatures::{signature_tag, ROOT_KIND};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::names::{parse_digest, validate_tag};
use crate::relay::Relay;
use crate::stored::{corrupt_error, read_manifest, send_blob, signature_set, ManifestBody};
use crate::App;

/// Header marking an answer a relaying node made from its upstream (PEER-7).
pub const RELAYED: &str = "ferry-relayed";
/// Bytes per piece of a piece table (PEER-3); the last piece may be shorter.
pub const PIECE_SIZE: u64 = 1 << 20;
/// Most piece tables kept in memory.
const MAX_TABLES: usize = 4096;
/// Bytes read per step while hashing a blob for its table.
const READ_CHUNK: usize = 1 << 20;

/// The BLAKE3 hash of every piece of a committed blob, announced to peers (PEER-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PieceTable {
    /// The blob's digest (`sha256:<hex>`).
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// Bytes per piece; piece `i` covers `[i * piece_size, min((i + 1) * piece_size, size))`.
    pub piece_size: u64,
    /// Lowercase hex BLAKE3 of each piece, in order.
    pub pieces: Vec<String>,
}

/// Piece tables computed by this process, one computation per blob at a time.
#[derive(Default)]
pub(crate) struct PieceTables {
    cells: Mutex<HashMap<Digest, Arc<tokio::sync::OnceCell<Arc<PieceTable>>>>>,
}

/// Why a table could not be made.
enum TableError {
    Missing,
    /// The blob's bytes hash to this, not to its name.
    Corrupt(Digest),
    Failed(ApiError),
}

/// Reads a committed blob once: its BLAKE3 piece hashes, checked against its digest. Blocking.
fn compute_table(store: &Store, digest: &Digest) -> Result<PieceTable, TableError> {
    let mut file = match store.open_blob(digest) {
        Ok(f) => f,
        Err(ferry_core::Error::BlobNotFound(_)) => return Err(TableError::Missing),
        Err(e) => return Err(TableError::Failed(ApiError::store(e))),
    };
    let failed = |e: std::io::Error| {
        TableError::Failed(ApiError::internal(format!("read blob {digest}: {e}")))
    };
    let mut whole = Hasher::new(digest.algorithm());
    let mut piece = blake3::Hasher::new();
    let mut in_piece = 0u64;
    let mut size = 0u64;
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min((PIECE_SIZE - in_piece) as usize);
            piece.update(&rest[..take]);
            in_piece += take as u64;
            rest = &rest[take..];
            if in_piece == PIECE_SIZE {
                pieces.push(piece.finalize().to_hex().to_string());
                piece = blake3::Hasher::new();
                in_piece = 0;
            }
        }
        size += n as u64;
    }
    if in_piece > 0 || size == 0 {
        pieces.push(piece.finalize().to_hex().to_string());
    }
    let actual = whole.finish();
    if &actual != digest {
        return Err(TableError::Corrupt(actual));
    }
    Ok(PieceTable {
        digest: digest.to_string(),
        size,
        piece_size: PIECE_SIZE,
        pieces,
    })
}

impl App {
    /// The piece table of a committed blob, computed once per process (PEER-3).
    async fn piece_table(&self, digest: &Digest) -> ApiResult<Arc<PieceTable>> {
        if self.is_corrupt(digest) {
            return Err(corrupt_error(digest));
        }
        let cell = {
            let mut cells = self.0.pieces.cells.lock().expect("piece tables");
            if cells.len() >= MAX_TABLES && !cells.contains_key(digest) {
                cells.clear();
            }
            cells.entry(digest.clone()).or_default().clone()
        };
        let app = self.clone();
        let wanted = digest.clone();
        cell.get_or_try_init(|| async move {
            let result = {
                let wanted = wanted.clone();
                let store = app.store().clone();
                tokio::task::spawn_blocking(move || compute_table(&store, &wanted))
                    .await
                    .map_err(|e| {
                        TableError::Failed(ApiError::internal(format!("piece task failed: {e}")))
                    })
                    .and_then(|r| r)
            };
            match result {
                Ok(table) => Ok(Arc::new(table)),
                Err(TableError::Missing) => Err(ApiError::blob_unknown(&wanted)),
                Err(TableError::Corrupt(actual)) => {
                    app.mark_corrupt(&wanted, &actual);
                    Err(corrupt_error(&wanted))
                }
                Err(TableError::Failed(e)) => Err(e),
            }
        })
        .await
        .cloned()
    }
}

/// `GET /ferry/v1/node`: this is a ferry node, and its piece size (PEER-1).
pub(crate) async fn node() -> Response {
    Json(serde_json::json!({"ferry": {"api": 1, "pieceSize": PIECE_SIZE}})).into_response()
}

/// Query of `blobs`: the image name, which a relaying node needs to find its upstream.
#[derive(Debug, Deserialize)]
pub(crate) struct BlobQuery {
    name: Option<String>,
}

/// `GET|HEAD /ferry/v1/blobs/<digest>[?name=]` with `Range`: any committed blob (PEER-2);
/// with `--relay` and a name, pieces of blobs this node does not have (PEER-7).
pub(crate) async fn blob(
    State(app): State<App>,
    method: Method,
    Path(digest): Path<String>,
    Query(query): Query<BlobQuery>,
    headers: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    let result = async {
        let digest = parse_digest(&digest)?;
        let range = headers.get(header::RANGE);
        match send_blob(&app, &digest, range, head).await {
            Err(e) if e.status == StatusCode::NOT_FOUND => match (&app.0.relay, &query.name) {
                (Some(relay), Some(name)) => relay_blob(relay, name, &digest, range, head).await,
                _ => Err(e),
            },
            other => other,
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A relayed answer: the size (HEAD) or one piece (a single `Range`) (PEER-7).
async fn relay_blob(
    relay: &Relay,
    name: &str,
    digest: &Digest,
    range: Option<&HeaderValue>,
    head: bool,
) -> ApiResult<Response> {
    let size = relay.size(name, digest).await?;
    let mut resp = if head {
        StatusCode::OK.into_response()
    } else {
        let (start, end) = match range
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        {
            Some((a, b)) if a <= b && b < size => (a, b),
            None if size <= RELAY_EXTENT => (0, size.saturating_sub(1)),
            _ => {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    format!(
                        "relay of {digest}: ask for one range `bytes=a-b` inside its {size} bytes"
                    ),
                )
                .with_header(header::CONTENT_RANGE, &format!("bytes */{size}")))
            }
        };
        let len = end + 1 - start;
        let mut resp = if size == 0 {
            (StatusCode::PARTIAL_CONTENT, bytes::Bytes::new()).into_response()
        } else {
            let body = Body::from_stream(relay.piece(name, digest, size, start, len).await?);
            (StatusCode::PARTIAL_CONTENT, body).into_response()
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
            h.insert(header::CONTENT_LENGTH, v);
        }
        resp
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(RELAYED, HeaderValue::from_static("1"));
    if head {
        if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
            h.insert(header::CONTENT_LENGTH, v);
        }
    }
    Ok(resp)
}

/// `GET /ferry/v1/pieces/<digest>`: the piece table of a committed blob (PEER-3).
pub(crate) async fn pieces(State(app): State<App>, Path(digest): Path<String>) -> Response {
    let result = async {
        let digest = parse_digest(&digest)?;
        let table = app.piece_table(&digest).await?;
        Ok::<_, ApiError>(Json(table.as_ref().clone()).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET|HEAD /ferry/v1/manifests/<digest>`: a committed manifest or a signature set the
/// store's signatures make, with its media type (PEER-2).
pub(crate) async fn manifest(
    State(app): State<App>,
    method: Method,
    Path(digest): Path<String>,
) -> Response {
    let result = async {
        let digest = parse_digest(&digest)?;
        let app2 = app.clone();
        let body = app
            .blocking(move |store| {
                if let Some(m) = read_manifest(&app2, store, &digest)? {
                    return Ok(m);
                }
                let mut subjects: Vec<String> = store
                    .roots(ROOT_KIND)
                    .map_err(ApiError::store)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                subjects.dedup();
                for subject in subjects.iter().filter_map(|s| Digest::parse(s).ok()) {
                    if let Some(set) = signature_set(store, &subject)? {
                        if set.digest == digest {
                            return Ok(set);
                        }
                    }
                }
                Err(ApiError::manifest_unknown(&digest))
            })
            .await?;
        Ok::<_, ApiError>(body.response(method == Method::HEAD))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Query of `resolve` and `tags`.
#[derive(Debug, Deserialize)]
pub(crate) struct NameQuery {
    name: String,
    tag: Option<String>,
}

/// `GET /ferry/v1/resolve?name=&tag=`: the descriptor a full image name's tag names in this
/// store, including signature tags (PEER-4).
pub(crate) async fn resolve(State(app): State<App>, Query(q): Query<NameQuery>) -> Response {
    let result = async {
        let tag = q.tag.clone().unwrap_or_default();
        validate_tag(&tag)?;
        let catalog = app.catalog().await?;
        let what = format!("{}:{tag}", q.name);
        let body: ManifestBody = match catalog.named(&q.name, &tag) {
            Some(record) => {
                let digest = record.digest.clone();
                let app2 = app.clone();
                app.blocking(move |store| {
                    read_manifest(&app2, store, &digest)?
                        .ok_or_else(|| ApiError::manifest_unknown(what))
                })
                .await?
            }
            None => {
                let subject = catalog
                    .images
                    .iter()
                    .filter(|r| r.name == q.name)
                    .map(|r| r.digest.clone())
                    .find(|d| signature_tag(d) == tag);
                let Some(subject) = subject else {
                    return Err(ApiError::manifest_unknown(what));
                };
                app.blocking(move |store| {
                    signature_set(store, &subject)?.ok_or_else(|| ApiError::manifest_unknown(what))
                })
                .await?
            }
        };
        Ok::<_, ApiError>(
            Json(serde_json::json!({
                "mediaType": body.media_type,
                "digest": body.digest.to_string(),
                "size": body.bytes.len(),
            }))
            .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /ferry/v1/tags?name=`: the tags of a full image name (PEER-4).
pub(crate) async fn tags(State(app): State<App>, Query(q): Query<NameQuery>) -> Response {
    let result = async {
        let catalog = app.catalog().await?;
        let mut tags: Vec<String> = catalog
            .images
            .iter()
            .filter(|r| r.name == q.name)
            .filter_map(|r| r.tag.clone())
            .collect();
        if !catalog.images.iter().any(|r| r.name == q.name) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("image {:?} is not in this store", q.name),
            ));
        }
        tags.sort();
        tags.dedup();
        Ok::<_, ApiError>(Json(serde_json::json!({"name": q.name, "tags": tags})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_tables_hash_each_piece_and_check_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..(PIECE_SIZE * 2 + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        let digest = Digest::sha256(&bytes);
        store.put_blob(&digest, &bytes, "x", None).unwrap();
        let table = compute_table(&store, &digest).ok().unwrap();
        assert_eq!(table.size, bytes.len() as u64);
        assert_eq!(table.pieces.len(), 3);
        let ps = PIECE_SIZE as usize;
        assert_eq!(
            table.pieces[0],
            blake3::hash(&bytes[..ps]).to_hex().as_str()
        );
        assert_eq!(
            table.pieces[2],
            blake3::hash(&bytes[2 * ps..]).to_hex().as_str()
        );

        // Bytes changed at rest: the table is refused.
        let path = store.blob_path(&digest);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let mut changed = bytes.clone();
        changed[5] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert!(matches!(
            compute_table(&store, &digest),
            Err(TableError::Corrupt(_))
        ));
    }
}

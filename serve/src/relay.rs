//! Relaying (PEER-7), only with `--relay`: a node asked by a peer for a piece of a blob it
//! has not committed fetches that piece from its own upstream sources (the route of the
//! image name in its site config, without peer sources), once, and keeps it in a bounded
//! memory cache for the other peers that ask. Rendezvous hashing makes every requester ask
//! the same node for the same piece, so the origin sends each piece about once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use ferry_core::{Digest, Reference};
use ferry_drivers::config::{DriverConfig, SiteConfig};
use ferry_drivers::route::sources_for;
use ferry_drivers::{ByteRange, Driver, ErrorKind};
use futures::future::{BoxFuture, FutureExt as _, Shared};
use futures::StreamExt as _;

use crate::error::{ApiError, ApiResult};

/// Largest piece relayed in one request.
pub const MAX_RELAY_PIECE: u64 = 64 << 20;
/// Most upstream routes and blob sizes remembered.
const MAX_REMEMBERED: usize = 4096;

/// How a node relays.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The site config whose routes say where the node's upstream is.
    pub config: SiteConfig,
    /// Most bytes of pieces kept in memory for other peers.
    pub cache_bytes: u64,
}

type Key = (Digest, u64, u64);
/// The upstream sources of one image name.
type Upstream = Arc<Vec<Arc<dyn Driver>>>;
type Flight = Shared<BoxFuture<'static, Result<Bytes, ApiError>>>;

/// Relayed pieces: in flight (one upstream fetch each) and cached.
pub(crate) struct Relay {
    config: SiteConfig,
    upstreams: Mutex<HashMap<String, Upstream>>,
    sizes: Mutex<HashMap<Digest, u64>>,
    inflight: Mutex<HashMap<Key, Flight>>,
    cache: Mutex<Cache>,
}

struct Cache {
    pieces: HashMap<Key, Bytes>,
    order: VecDeque<Key>,
    bytes: u64,
    limit: u64,
}

impl Cache {
    fn get(&self, key: &Key) -> Option<Bytes> {
        self.pieces.get(key).cloned()
    }

    fn put(&mut self, key: Key, bytes: Bytes) {
        if bytes.len() as u64 > self.limit || self.pieces.contains_key(&key) {
            return;
        }
        self.bytes += bytes.len() as u64;
        self.pieces.insert(key.clone(), bytes);
        self.order.push_back(key);
        while self.bytes > self.limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.pieces.remove(&old) {
                self.bytes -= b.len() as u64;
            }
        }
    }
}

impl Relay {
    pub(crate) fn new(options: RelayOptions) -> Relay {
        Relay {
            config: options.config,
            upstreams: Mutex::new(HashMap::new()),
            sizes: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache {
                pieces: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                limit: options.cache_bytes,
            }),
        }
    }

    /// The content sources of `name`'s route, peers left out (so relays never loop).
    fn upstream(&self, name: &str) -> ApiResult<Upstream> {
        let reference = Reference::parse(name)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string()))?;
        let key = reference.name();
        if let Some(found) = self.upstreams.lock().expect("relay upstreams").get(&key) {
            return Ok(found.clone());
        }
        let sources = sources_for(&self.config, &reference)
            .map_err(|e| ApiError::internal(format!("relay: route of {key}: {e}")))?;
        let upstream: Vec<Arc<dyn Driver>> = sources
            .content
            .into_iter()
            .filter(|d| {
                !matches!(
                    self.config.sources.get(d.source_name()).map(|s| &s.driver),
                    Some(DriverConfig::Peer { .. })
                )
            })
            .collect();
        let upstream = Arc::new(upstream);
        let mut upstreams = self.upstreams.lock().expect("relay upstreams");
        if upstreams.len() >= MAX_REMEMBERED {
            upstreams.clear();
        }
        upstreams.insert(key, upstream.clone());
        Ok(upstream)
    }

    /// The size of blob `digest` of `name` at the first upstream that has it.
    pub(crate) async fn size(&self, name: &str, digest: &Digest) -> ApiResult<u64> {
        if let Some(size) = self.sizes.lock().expect("relay sizes").get(digest) {
            return Ok(*size);
        }
        let mut failures = Vec::new();
        for source in self.upstream(name)?.iter() {
            match source.blob_size(name, digest).await {
                Ok(Some(size)) => {
                    let mut sizes = self.sizes.lock().expect("relay sizes");
                    if sizes.len() >= MAX_REMEMBERED {
                        sizes.clear();
                    }
                    sizes.insert(digest.clone(), size);
                    return Ok(size);
                }
                Ok(None) => failures.push(format!("{}: not found", source.source_name())),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(ApiError::blob_unknown(format!(
            "{digest} (relay for {name}: {})",
            if failures.is_empty() {
                "no upstream source".to_string()
            } else {
                failures.join("; ")
            }
        )))
    }

    /// Bytes `start..start+len` of blob `digest` of `name`: cached, or fetched from the
    /// upstream once however many peers ask at the same time.
    pub(crate) async fn piece(
        &self,
        name: &str,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> ApiResult<Bytes> {
        let key: Key = (digest.clone(), start, len);
        if let Some(bytes) = self.cache.lock().expect("relay cache").get(&key) {
            return Ok(bytes);
        }
        let flight = {
            let mut inflight = self.inflight.lock().expect("relay flights");
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let upstream = self.upstream(name)?;
                    let (name, digest) = (name.to_string(), digest.clone());
                    let f = async move { fetch(&upstream, &name, &digest, start, len).await }
                        .boxed()
                        .shared();
                    inflight.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        let result = flight.await;
        self.inflight.lock().expect("relay flights").remove(&key);
        if let Ok(bytes) = &result {
            self.cache
                .lock()
                .expect("relay cache")
                .put(key, bytes.clone());
        }
        result
    }
}

/// One range from the first upstream that serves it whole.
async fn fetch(
    upstream: &[Arc<dyn Driver>],
    name: &str,
    digest: &Digest,
    start: u64,
    len: u64,
) -> Result<Bytes, ApiError> {
    let mut failures = Vec::new();
    for source in upstream {
        let range = ByteRange {
            offset: start,
            len: Some(len),
        };
        let result = async {
            let mut body = source.fetch_blob(name, digest, range).await?;
            let mut buf = BytesMut::with_capacity(len as usize);
            while let Some(chunk) = body.stream.next().await {
                let chunk = chunk?;
                if (buf.len() + chunk.len()) as u64 > len {
                    return Err(ferry_drivers::Error::corrupt(
                        source.source_name(),
                        format!("blob {digest}: more than the {len} bytes asked for"),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            if buf.len() as u64 != len {
                return Err(ferry_drivers::Error::unavailable(
                    source.source_name(),
                    format!(
                        "blob {digest}: range from {start} ended after {} of {len} bytes",
                        buf.len()
                    ),
                ));
            }
            Ok(buf.freeze())
        }
        .await;
        match result {
            Ok(bytes) => {
                tracing::debug!(%digest, start, len, source = source.source_name(), "relayed piece");
                return Ok(bytes);
            }
            Err(e) => failures.push(e),
        }
    }
    let detail: Vec<String> = failures.iter().map(ToString::to_string).collect();
    let all_missing =
        !failures.is_empty() && failures.iter().all(|f| f.kind == ErrorKind::NotFound);
    let message = format!(
        "relay of {name}@{digest} bytes {start}+{len}: {}",
        if detail.is_empty() {
            "no upstream source".to_string()
        } else {
            detail.join("; ")
        }
    );
    Err(if all_missing {
        ApiError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message)
    } else {
        ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_evicts_oldest_pieces_beyond_its_limit() {
        let mut cache = Cache {
            pieces: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit: 10,
        };
        let d = Digest::sha256(b"x");
        cache.put((d.clone(), 0, 4), Bytes::from_static(b"aaaa"));
        cache.put((d.clone(), 4, 4), Bytes::from_static(b"bbbb"));
        cache.put((d.clone(), 8, 4), Bytes::from_static(b"cccc"));
        assert!(cache.get(&(d.clone(), 0, 4)).is_none());
        assert_eq!(cache.get(&(d.clone(), 8, 4)).unwrap(), "cccc");
        assert_eq!(cache.bytes, 8);
        cache.put((d.clone(), 0, 11), Bytes::from_static(b"too large!!"));
        assert_eq!(cache.bytes, 8);
    }
}

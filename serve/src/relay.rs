//! Relaying (PEER-7), only with `--relay`: a node asked by a peer for a piece of a blob it
//! has not committed fetches the extent holding it from its own upstream sources (the
//! route of the image name in its site config, without peer sources), once, serves it to
//! every asker as it arrives, and keeps it in a bounded memory cache for the peers that ask
//! later. Every requester asks the same node for the same extent, so the origin sends each
//! byte about once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use ferry_core::{Digest, Reference};
use ferry_drivers::site::config::{DriverConfig, SiteConfig};
use ferry_drivers::site::route::sources_for;
use ferry_drivers::sources::peer::RELAY_EXTENT;
use ferry_drivers::{ByteRange, Driver, ErrorKind};
use futures::{Stream, StreamExt as _};
use tokio::sync::{Notify, Semaphore};

use crate::error::{ApiError, ApiResult};

/// Most upstream routes and blob sizes remembered.
const MAX_REMEMBERED: usize = 4096;

/// How a node relays.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The site config whose routes say where the node's upstream is.
    pub config: SiteConfig,
    /// Most bytes of relayed extents kept in memory for other peers.
    pub cache_bytes: u64,
}

type Key = (Digest, u64, u64);
/// The upstream sources of one image name.
type Upstream = Arc<Vec<Arc<dyn Driver>>>;

/// Most extents fetched from upstream at once: more wait (bounds memory in flight to
/// 128 MiB whatever peers ask).
const MAX_FETCHES: usize = 32;
/// Bytes of a relayed extent are handed on in blocks of this size as they arrive.
const BLOCK: usize = 256 << 10;

/// Relayed extents: arriving (one upstream fetch each, served as it arrives) and cached.
pub(crate) struct Relay {
    config: SiteConfig,
    upstreams: Mutex<HashMap<String, Upstream>>,
    sizes: Mutex<HashMap<Digest, u64>>,
    extents: Arc<Mutex<Extents>>,
    /// Upstream fetches at once (memory in flight: this times [`RELAY_EXTENT`]).
    fetching: Arc<Semaphore>,
}

/// Every extent the relay knows: arriving ones and, oldest first, arrived ones kept for the
/// peers that have not asked yet, within `limit` bytes.
struct Extents {
    map: HashMap<Key, Arc<Extent>>,
    arrived: VecDeque<Key>,
    bytes: u64,
    limit: u64,
}

impl Extents {
    /// Keeps arrived extent `key` for later askers, dropping the oldest beyond the limit.
    fn keep(&mut self, key: Key, len: u64) {
        if len > self.limit {
            self.map.remove(&key);
            return;
        }
        self.arrived.push_back(key);
        self.bytes += len;
        while self.bytes > self.limit {
            let Some(old) = self.arrived.pop_front() else {
                break;
            };
            if let Some(extent) = self.map.remove(&old) {
                self.bytes -= extent.len;
            }
        }
    }
}

/// One relayed extent: the blocks that have arrived so far and how the fetch ended.
struct Extent {
    len: u64,
    state: Mutex<ExtentState>,
    changed: Notify,
}

#[derive(Default)]
struct ExtentState {
    blocks: Vec<Bytes>,
    /// An upstream source answered: bytes are on their way.
    answered: bool,
    /// `Some` once the fetch ended: all `len` bytes are in `blocks`, or why not.
    outcome: Option<Result<(), ApiError>>,
}

impl Extent {
    fn update(&self, f: impl FnOnce(&mut ExtentState)) {
        f(&mut self.state.lock().expect("relay extent"));
        self.changed.notify_waiters();
    }

    /// Waits until `ready` holds for the state, and maps it.
    async fn wait<T>(&self, mut ready: impl FnMut(&ExtentState) -> Option<T>) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(value) = ready(&self.state.lock().expect("relay extent")) {
                return value;
            }
            notified.await;
        }
    }
}

impl Relay {
    pub(crate) fn new(options: RelayOptions) -> Relay {
        Relay {
            config: options.config,
            upstreams: Mutex::new(HashMap::new()),
            sizes: Mutex::new(HashMap::new()),
            fetching: Arc::new(Semaphore::new(MAX_FETCHES)),
            extents: Arc::new(Mutex::new(Extents {
                map: HashMap::new(),
                arrived: VecDeque::new(),
                bytes: 0,
                limit: options.cache_bytes,
            })),
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

    /// Bytes `start..start+len` of blob `digest` (`size` bytes) of `name`, as a stream. The
    /// range lies inside one extent of [`RELAY_EXTENT`] bytes, which is kept from an earlier
    /// fetch or fetched from the upstream once however many peers ask for parts of it at the
    /// same time, each asker served its bytes as they arrive. Fails before the first byte
    /// if no upstream source answers; a fetch that breaks off later ends the stream with an
    /// error.
    pub(crate) async fn piece(
        &self,
        name: &str,
        digest: &Digest,
        size: u64,
        start: u64,
        len: u64,
    ) -> ApiResult<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let extent_start = start / RELAY_EXTENT * RELAY_EXTENT;
        let extent_len = RELAY_EXTENT.min(size - extent_start);
        if start + len > extent_start + extent_len {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                format!(
                    "relay of {digest}: a range must lie inside one extent of {RELAY_EXTENT} bytes"
                ),
            ));
        }
        let key: Key = (digest.clone(), extent_start, extent_len);
        let upstream = self.upstream(name)?;
        let extent = {
            let mut extents = self.extents.lock().expect("relay extents");
            match extents.map.get(&key) {
                Some(extent) => extent.clone(),
                None => {
                    let extent = Arc::new(Extent {
                        len: extent_len,
                        state: Mutex::default(),
                        changed: Notify::new(),
                    });
                    extents.map.insert(key.clone(), extent.clone());
                    let fetch = Fetch {
                        upstream,
                        name: name.to_string(),
                        key,
                        extent: extent.clone(),
                        extents: self.extents.clone(),
                        fetching: self.fetching.clone(),
                    };
                    tokio::spawn(fetch.run());
                    extent
                }
            }
        };
        let early = extent
            .wait(|s| match &s.outcome {
                Some(Err(e)) if s.blocks.is_empty() => Some(Some(e.clone())),
                _ if s.answered || s.outcome.is_some() => Some(None),
                _ => None,
            })
            .await;
        if let Some(e) = early {
            return Err(e);
        }
        // The bytes wanted, as offsets in the extent; the stream walks its blocks.
        let (lo, hi) = (start - extent_start, start - extent_start + len);
        let walk = Walk {
            extent,
            next: 0,
            at: 0,
            lo,
            hi,
        };
        Ok(futures::stream::unfold(walk, Walk::step))
    }
}

/// Where a stream of part `lo..hi` of an extent is: block `next` starts at offset `at`.
struct Walk {
    extent: Arc<Extent>,
    next: usize,
    at: u64,
    lo: u64,
    hi: u64,
}

impl Walk {
    /// The next bytes of the part, waiting for them to arrive; `None` at its end or after
    /// an error.
    async fn step(mut self) -> Option<(std::io::Result<Bytes>, Walk)> {
        loop {
            if self.at >= self.hi {
                return None;
            }
            let block = self
                .extent
                .wait(|s| match (s.blocks.get(self.next), &s.outcome) {
                    (Some(block), _) => Some(Ok(block.clone())),
                    (None, None) => None,
                    (None, Some(Ok(()))) => Some(Err(std::io::Error::other(
                        "relay: the extent ended before the range",
                    ))),
                    (None, Some(Err(e))) => Some(Err(std::io::Error::other(e.message.clone()))),
                })
                .await;
            let block = match block {
                Ok(block) => block,
                Err(e) => {
                    self.at = self.hi;
                    return Some((Err(e), self));
                }
            };
            let (from, to) = (self.at, self.at + block.len() as u64);
            self.next += 1;
            self.at = to;
            let (a, b) = (from.max(self.lo), to.min(self.hi));
            if a < b {
                let part = block.slice((a - from) as usize..(b - from) as usize);
                return Some((Ok(part), self));
            }
        }
    }
}

/// The fetch of one relayed extent from the upstream, run as its own task so it goes on
/// whoever asked for it and whoever gave up.
struct Fetch {
    upstream: Upstream,
    name: String,
    key: Key,
    extent: Arc<Extent>,
    extents: Arc<Mutex<Extents>>,
    fetching: Arc<Semaphore>,
}

impl Fetch {
    async fn run(self) {
        let (digest, start, len) = self.key.clone();
        let outcome = match self.fetching.clone().acquire_owned().await {
            Ok(_permit) => self.fetch(&digest, start, len).await,
            Err(_) => Err(ApiError::internal("relay: fetches closed")),
        };
        let ok = outcome.is_ok();
        self.extent.update(|s| s.outcome = Some(outcome));
        let mut extents = self.extents.lock().expect("relay extents");
        if ok {
            extents.keep(self.key, len);
        } else {
            // A failed extent is fetched anew by the next asker.
            extents.map.remove(&self.key);
        }
    }

    /// Fills the extent from the first upstream source that serves it; one that breaks off
    /// is followed by the next, from the byte where it stopped.
    async fn fetch(&self, digest: &Digest, start: u64, len: u64) -> Result<(), ApiError> {
        let name = &self.name;
        let mut got = 0u64;
        let mut failures = Vec::new();
        for source in self.upstream.iter() {
            let range = ByteRange {
                offset: start + got,
                len: Some(len - got),
            };
            let result = async {
                let mut body = source.fetch_blob(name, digest, range).await?;
                self.extent.update(|s| s.answered = true);
                let mut block = BytesMut::with_capacity(BLOCK);
                while let Some(chunk) = body.stream.next().await {
                    let chunk = chunk?;
                    if got + (block.len() + chunk.len()) as u64 > len {
                        return Err(ferry_drivers::Error::corrupt(
                            source.source_name(),
                            format!("blob {digest}: more than the {len} bytes asked for"),
                        ));
                    }
                    block.extend_from_slice(&chunk);
                    if block.len() >= BLOCK {
                        got += block.len() as u64;
                        let full = std::mem::replace(&mut block, BytesMut::with_capacity(BLOCK));
                        self.extent.update(|s| s.blocks.push(full.freeze()));
                    }
                }
                if !block.is_empty() {
                    got += block.len() as u64;
                    self.extent.update(|s| s.blocks.push(block.freeze()));
                }
                if got != len {
                    return Err(ferry_drivers::Error::unavailable(
                        source.source_name(),
                        format!(
                            "blob {digest}: range from {start} ended after {got} of {len} bytes"
                        ),
                    ));
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::debug!(%digest, start, len, source = source.source_name(), "relayed extent");
                    return Ok(());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrived(len: u64) -> Arc<Extent> {
        Arc::new(Extent {
            len,
            state: Mutex::new(ExtentState {
                blocks: vec![Bytes::from(vec![0u8; len as usize])],
                answered: true,
                outcome: Some(Ok(())),
            }),
            changed: Notify::new(),
        })
    }

    #[test]
    fn kept_extents_are_dropped_oldest_first_beyond_the_limit() {
        let mut extents = Extents {
            map: HashMap::new(),
            arrived: VecDeque::new(),
            bytes: 0,
            limit: 10,
        };
        let d = Digest::sha256(b"x");
        for (start, len) in [(0, 4), (4, 4), (8, 4), (12, 11)] {
            extents.map.insert((d.clone(), start, len), arrived(len));
            extents.keep((d.clone(), start, len), len);
        }
        assert!(!extents.map.contains_key(&(d.clone(), 0, 4)));
        assert!(extents.map.contains_key(&(d.clone(), 4, 4)));
        assert!(extents.map.contains_key(&(d.clone(), 8, 4)));
        assert!(
            !extents.map.contains_key(&(d.clone(), 12, 11)),
            "larger than the whole cache: not kept, nothing else dropped for it"
        );
        assert_eq!(extents.bytes, 8);
    }
}

//! The peer driver: content by digest from other ferry nodes (`ferry serve`), large blobs in
//! pieces from several peers at once, every piece checked before it is handed on.
//!
//! Design and wire format: `specs/peer.md` (PEER-n).
//!
//! - **Where**: every usable peer is asked (`HEAD /ferry/v1/blobs/<digest>`) whether it has
//!   the blob; the peers that do are its *holders*.
//! - **Who serves which piece**: rendezvous hashing of (peer, blob, piece) ranks the holders
//!   for each piece; the top one serves it, the next ones are fallbacks. Every requester
//!   computes the same ranking, so the load of a blob spreads evenly over its holders.
//! - **Integrity**: blobs up to [`SMALL_BLOB`] bytes are fetched whole and checked against
//!   their digest here. Larger ones use the holders' piece tables (BLAKE3 per piece,
//!   computed by the serving node from a blob it checked against its digest); the table most
//!   holders agree on is used, and each piece is checked against it as it arrives. A peer
//!   that sends a wrong piece (or disagrees about the table) is excluded for that blob and
//!   the piece comes from the next holder. The store still checks the whole blob at commit.
//! - **Dead peers**: a connection failure or timeout marks a peer down for a cool-down, so
//!   a dead peer costs one short timeout per pull, not one per blob.
//! - **Tags**: peers can answer tags ([`Driver::resolve`] works), but routes never ask them
//!   for unsigned names (`route::sources_for` leaves peer sources out of `resolve`); for
//!   names the policy wants signed, the signature vouches for the answer (POL-9).

use std::collections::{HashMap, HashSet};
use std::net::ToSocketAddrs as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{media, Digest};
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::{
    BlobBody, ByteRange, ByteStream, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result,
};

/// Blobs up to this size are fetched whole from one peer and checked against their digest.
pub const SMALL_BLOB: u64 = 4 << 20;
/// Bytes per relayed piece asked for in one request (PEER-7): every requester cuts a blob
/// the same way.
pub const RELAY_PIECE: u64 = 1 << 20;
/// Bytes a relay fetches from its upstream in one request (PEER-7): the pieces of one
/// extent all go to the same relay, so the origin answers one request per extent.
pub const RELAY_EXTENT: u64 = 4 << 20;
/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 1;
/// Largest chunk handed to the consumer.
const OUT_CHUNK: usize = 1 << 20;
/// Largest piece table read (a 64 GiB blob in 1 MiB pieces is about 4.4 MB of JSON).
const MAX_TABLE_BYTES: usize = 16 << 20;
/// Largest piece accepted in a table.
const MAX_PIECE_SIZE: u64 = 64 << 20;
/// Largest JSON answer of `resolve` and `tags`.
const MAX_JSON_BYTES: usize = 4 << 20;

/// Settings of a [`PeerDriver`].
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The source name used in messages.
    pub source_name: String,
    /// Base URLs of the peers (`http://host:port`, optionally with `user:password@`).
    pub peers: Vec<Url>,
    /// Longest time to open a connection to a peer.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer (a piece table may take longer: the
    /// peer hashes the blob first).
    pub stall_timeout: Duration,
    /// Longest wait for a piece table.
    pub table_timeout: Duration,
    /// How long a peer that could not be reached is skipped.
    pub cooldown: Duration,
    /// Pieces of one blob in flight at once (memory: this times the piece size).
    pub window: usize,
}

impl PeerConfig {
    /// Defaults: 2 s to connect, 10 s without progress, 5 min for a table, 30 s cool-down,
    /// 4 pieces in flight.
    pub fn new(source_name: &str, peers: Vec<Url>) -> Self {
        PeerConfig {
            source_name: source_name.to_string(),
            peers,
            connect_timeout: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(10),
            table_timeout: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            window: 4,
        }
    }
}

/// Other ferry nodes serving their stores (`ferry serve`), asked for content by digest.
#[derive(Clone)]
pub struct PeerDriver(Arc<Inner>);

struct Inner {
    source_name: String,
    peers: Vec<Peer>,
    /// For blobs, manifests and small answers: short stall timeout.
    http: reqwest::Client,
    /// For piece tables, which a peer computes before answering.
    tables: reqwest::Client,
    table_timeout: Duration,
    cooldown: Duration,
    window: usize,
    health: Mutex<Health>,
}

impl std::fmt::Debug for PeerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDriver")
            .field("source_name", &self.0.source_name)
            .field(
                "peers",
                &self.0.peers.iter().map(|p| &p.label).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One peer: where it is and how to log in.
struct Peer {
    base: Url,
    /// The base URL without credentials, for messages.
    label: String,
    basic: Option<(String, String)>,
}

#[derive(Default)]
struct Health {
    /// Peers that could not be reached, until when they are skipped.
    down: HashMap<usize, Instant>,
    /// Peers that served wrong bytes (or a disagreeing table) for a blob.
    excluded: HashSet<(usize, Digest)>,
}

/// A peer's failure, sorted the way the driver acts on it.
#[derive(Debug)]
enum Fault {
    /// The peer does not have it.
    Missing,
    /// The peer could not be reached or broke off: skip it for the cool-down.
    Down(String),
    /// The peer served wrong bytes or says its copy is corrupt: exclude it for this blob.
    Corrupt(String),
    /// Anything else (unexpected status): exclude it for this blob.
    Other(String),
}

/// The piece table a serving node announces for a committed blob (PEER-3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PieceTable {
    digest: String,
    size: u64,
    piece_size: u64,
    pieces: Vec<String>,
}

/// The order in which peers (by base URL, e.g. `http://10.0.0.7:7070`) are asked for piece
/// `piece` of blob `digest` (PEER-4; whole small blobs are piece 0): every node computes the
/// same order.
pub fn rank(labels: &[&str], digest: &Digest, piece: u64) -> Vec<usize> {
    let key = digest.to_string();
    let mut ids: Vec<usize> = (0..labels.len()).collect();
    ids.sort_by_key(|&i| std::cmp::Reverse(score(labels[i].trim_end_matches('/'), &key, piece)));
    ids
}

/// The relay asked first for extent `extent` of blob `digest` (PEER-7): extents are dealt
/// round-robin over all peers in the blob's rendezvous order, so every relay fetches an
/// even share of every blob and every node picks the same relay. Panics if `labels` is
/// empty.
pub fn relay_owner(labels: &[&str], digest: &Digest, extent: u64) -> usize {
    let order = rank(labels, digest, u64::MAX);
    order[(extent % order.len() as u64) as usize]
}

/// The rendezvous score of peer `label` for `key` (and piece): highest serves.
fn score(label: &str, key: &str, piece: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(label.as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    h.update(&[0]);
    h.update(&piece.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The peers a configured URL names (PEER-8): one per address its host name resolves to,
/// so one DNS name (a Kubernetes headless service, a round-robin record) names a fleet;
/// an IP address, or a name that does not resolve now, stands for itself.
fn fleet(url: &Url) -> Vec<Url> {
    let Some(url::Host::Domain(domain)) = url.host() else {
        return vec![url.clone()];
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<std::net::IpAddr> = match (domain, port).to_socket_addrs() {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::debug!("peer {url}: {domain} does not resolve now ({e})");
            Vec::new()
        }
    };
    let mut out: Vec<Url> = Vec::new();
    for ip in addresses {
        let mut each = url.clone();
        if each.set_ip_host(ip).is_ok() && !out.contains(&each) {
            out.push(each);
        }
    }
    if out.is_empty() {
        out.push(url.clone());
    }
    out
}

impl PeerDriver {
    /// A driver over `config.peers`, each host name standing for every address it resolves
    /// to now (PEER-8); refuses URLs that are not http(s) or have no host.
    pub fn new(config: PeerConfig) -> Result<Self> {
        let source = config.source_name.as_str();
        let invalid = |msg: String| Error::new(ErrorKind::Invalid, source, msg);
        if config.peers.is_empty() {
            return Err(invalid("no peers configured".into()));
        }
        let mut peers: Vec<Peer> = Vec::new();
        for url in config.peers.iter().flat_map(fleet) {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(invalid(format!("peer URL {url} is not http(s)://host")));
            }
            let basic = (!url.username().is_empty()).then(|| {
                (
                    percent_decode(url.username()),
                    percent_decode(url.password().unwrap_or("")),
                )
            });
            let mut base = url.clone();
            let _ = base.set_username("");
            let _ = base.set_password(None);
            base.set_query(None);
            base.set_fragment(None);
            if !base.path().ends_with('/') {
                let path = format!("{}/", base.path());
                base.set_path(&path);
            }
            let label = base.as_str().trim_end_matches('/').to_string();
            if !peers.iter().any(|p| p.label == label) {
                peers.push(Peer { base, label, basic });
            }
        }
        let build = |read_timeout: Option<Duration>| {
            // Few idle connections per peer: each keeps a read buffer of up to 400 KiB,
            // and a pull talks to every peer.
            let mut b = reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .pool_max_idle_per_host(IDLE_PER_PEER)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION"), " (peer)"));
            if let Some(t) = read_timeout {
                b = b.read_timeout(t);
            }
            b.build()
                .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))
        };
        Ok(PeerDriver(Arc::new(Inner {
            source_name: config.source_name.clone(),
            http: build(Some(config.stall_timeout))?,
            tables: build(None)?,
            table_timeout: config.table_timeout,
            cooldown: config.cooldown,
            window: config.window.max(1),
            peers,
            health: Mutex::new(Health::default()),
        })))
    }

    /// The configured peers, as `scheme://host:port` without credentials.
    pub fn peer_labels(&self) -> Vec<String> {
        self.0.peers.iter().map(|p| p.label.clone()).collect()
    }
}

impl Inner {
    fn error(&self, kind: ErrorKind, message: String) -> Error {
        Error::new(kind, &self.source_name, message)
    }

    /// Peers not down and not excluded for `digest`, best first for `key`/`piece`.
    fn ranked(
        &self,
        key: &str,
        piece: u64,
        digest: Option<&Digest>,
        among: &[usize],
    ) -> Vec<usize> {
        let health = self.health.lock().expect("peer health");
        let mut ids: Vec<usize> = among
            .iter()
            .copied()
            .filter(|i| {
                health
                    .down
                    .get(i)
                    .is_none_or(|t| t.elapsed() >= self.cooldown)
            })
            .filter(|i| digest.is_none_or(|d| !health.excluded.contains(&(*i, d.clone()))))
            .collect();
        ids.sort_by_key(|i| std::cmp::Reverse(score(&self.peers[*i].label, key, piece)));
        ids
    }

    fn all(&self) -> Vec<usize> {
        (0..self.peers.len()).collect()
    }

    fn mark_down(&self, i: usize, why: &str) {
        tracing::warn!(
            "source {:?}: peer {} is unreachable ({why}); skipping it for {:?}",
            self.source_name,
            self.peers[i].label,
            self.cooldown
        );
        self.health
            .lock()
            .expect("peer health")
            .down
            .insert(i, Instant::now());
    }

    fn exclude(&self, i: usize, digest: &Digest, why: &str) {
        tracing::warn!(
            "source {:?}: {why}; excluding peer {} for {digest}",
            self.source_name,
            self.peers[i].label
        );
        self.health
            .lock()
            .expect("peer health")
            .excluded
            .insert((i, digest.clone()));
    }

    /// Acts on a peer's fault for `digest`: down, or excluded for the blob.
    fn record(&self, i: usize, digest: Option<&Digest>, fault: &Fault) {
        match (fault, digest) {
            (Fault::Down(why), _) => self.mark_down(i, why),
            (Fault::Corrupt(why) | Fault::Other(why), Some(d)) => self.exclude(i, d, why),
            _ => {}
        }
    }

    /// Sends one request to peer `i`.
    async fn send(
        &self,
        i: usize,
        table: bool,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        range: Option<(u64, u64)>,
    ) -> std::result::Result<reqwest::Response, Fault> {
        let peer = &self.peers[i];
        let mut url = peer
            .base
            .join(path)
            .map_err(|e| Fault::Other(format!("bad path {path:?}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let client = if table { &self.tables } else { &self.http };
        let mut req = client.request(method, url);
        if let Some((a, b)) = range {
            req = req.header(RANGE, format!("bytes={a}-{b}"));
        }
        if let Some((u, p)) = &peer.basic {
            req = req.basic_auth(u, Some(p));
        }
        if table {
            req = req.timeout(self.table_timeout);
        }
        req.send()
            .await
            .map_err(|e| Fault::Down(format!("{}/{path}: {}", peer.label, chain(&e))))
    }

    /// What a non-success status means; reads the OCI error code of the body.
    async fn status_fault(&self, i: usize, resp: reqwest::Response, what: &str) -> Fault {
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Fault::Missing;
        }
        let body = read_capped(resp, 4096).await.unwrap_or_default();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        let message = format!(
            "{what} at peer {}: {status}{}",
            self.peers[i].label,
            if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            }
        );
        match status {
            _ if code == "BLOB_CORRUPT" => Fault::Corrupt(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Fault::Other(message),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Fault::Down(message),
            _ => Fault::Other(message),
        }
    }

    /// The peers that hold `digest`, with the size most of them report (PEER-2).
    async fn locate(&self, digest: &Digest) -> Result<(Vec<usize>, u64)> {
        let candidates = self.ranked(&digest.to_string(), u64::MAX, Some(digest), &self.all());
        if candidates.is_empty() {
            let excluded = self
                .health
                .lock()
                .expect("peer health")
                .excluded
                .iter()
                .any(|(_, d)| d == digest);
            return Err(if excluded {
                self.error(
                    ErrorKind::Corrupt,
                    format!(
                        "blob {digest}: digest mismatch: every peer that has it served wrong bytes"
                    ),
                )
            } else {
                self.error(
                    ErrorKind::Unavailable,
                    format!("blob {digest}: no peer reachable"),
                )
            });
        }
        let path = format!("ferry/v1/blobs/{digest}");
        let answers = futures::future::join_all(candidates.iter().map(|&i| {
            let path = path.clone();
            async move {
                let answer = match self.send(i, false, Method::HEAD, &path, &[], None).await {
                    Ok(resp) if resp.status().is_success() => resp
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or_else(|| {
                            Fault::Other(format!(
                                "blob {digest} at peer {}: HEAD without Content-Length",
                                self.peers[i].label
                            ))
                        }),
                    Ok(resp) => Err(self.status_fault(i, resp, &format!("blob {digest}")).await),
                    Err(f) => Err(f),
                };
                (i, answer)
            }
        }))
        .await;
        let mut sizes: Vec<(usize, u64)> = Vec::new();
        let (mut missing, mut failures) = (0, Vec::new());
        for (i, answer) in answers {
            match answer {
                Ok(size) => sizes.push((i, size)),
                Err(Fault::Missing) => missing += 1,
                Err(f) => {
                    self.record(i, Some(digest), &f);
                    failures.push(f);
                }
            }
        }
        if sizes.is_empty() {
            return Err(self.no_holder(&format!("blob {digest}"), missing, &failures));
        }
        // Peers hold one content: a size most of them disagree with is a wrong copy.
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for (_, s) in &sizes {
            *votes.entry(*s).or_default() += 1;
        }
        let best = sizes[0].1;
        let size = votes
            .iter()
            .max_by_key(|(s, n)| (**n, **s == best))
            .map(|(s, _)| *s)
            .unwrap_or(best);
        let mut holders = Vec::new();
        for (i, s) in sizes {
            if s == size {
                holders.push(i);
            } else {
                self.exclude(
                    i,
                    digest,
                    &format!(
                        "blob {digest}: peer {} has {s} bytes, other peers {size}",
                        self.peers[i].label
                    ),
                );
            }
        }
        Ok((holders, size))
    }

    /// The error when no peer could serve `what`.
    fn no_holder(&self, what: &str, missing: usize, failures: &[Fault]) -> Error {
        let detail: Vec<String> = failures
            .iter()
            .map(|f| match f {
                Fault::Missing => "not found".to_string(),
                Fault::Down(m) | Fault::Corrupt(m) | Fault::Other(m) => m.clone(),
            })
            .collect();
        let kind = if failures.iter().any(|f| matches!(f, Fault::Corrupt(_))) {
            ErrorKind::Corrupt
        } else if missing > 0 {
            ErrorKind::NotFound
        } else {
            ErrorKind::Unavailable
        };
        let mut message = if kind == ErrorKind::NotFound {
            format!("not found: {what}: no peer has it")
        } else {
            format!("{what}: no peer could serve it")
        };
        if !detail.is_empty() {
            message.push_str(&format!(" ({})", detail.join("; ")));
        }
        self.error(kind, message)
    }

    /// A blob of at most [`SMALL_BLOB`] bytes from the best holder, checked against its
    /// digest; a wrong copy excludes its peer and the next holder is asked.
    async fn fetch_small(
        &self,
        digest: &Digest,
        holders: &[usize],
        size: u64,
        name: Option<&str>,
    ) -> Result<Bytes> {
        let path = format!("ferry/v1/blobs/{digest}");
        let query: Vec<(&str, &str)> = name.iter().map(|n| ("name", *n)).collect();
        let mut failures = Vec::new();
        for i in self.ranked(&digest.to_string(), 0, Some(digest), holders) {
            let result = async {
                let resp = self
                    .send(i, false, Method::GET, &path, &query, None)
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.status_fault(i, resp, &format!("blob {digest}")).await);
                }
                let bytes = read_capped(resp, size as usize).await.map_err(|e| {
                    Fault::Down(format!(
                        "blob {digest} from peer {}: {e}",
                        self.peers[i].label
                    ))
                })?;
                let actual = Digest::of(digest.algorithm(), &bytes);
                if bytes.len() as u64 != size || &actual != digest {
                    return Err(Fault::Corrupt(format!(
                        "blob {digest} from peer {}: digest mismatch: {} bytes hashing to {actual}",
                        self.peers[i].label,
                        bytes.len()
                    )));
                }
                Ok(bytes)
            }
            .await;
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(f) => {
                    self.record(i, Some(digest), &f);
                    failures.push(f);
                }
            }
        }
        Err(self.no_holder(&format!("blob {digest}"), 0, &failures))
    }

    /// The piece table most holders agree on, and those holders; the others are excluded
    /// for this blob (PEER-3).
    async fn table(
        &self,
        digest: &Digest,
        holders: &[usize],
        size: u64,
    ) -> Result<(PieceTable, Vec<usize>)> {
        let path = format!("ferry/v1/pieces/{digest}");
        let answers = futures::future::join_all(holders.iter().map(|&i| {
            let path = path.clone();
            async move {
                let result = async {
                    let resp = self.send(i, true, Method::GET, &path, &[], None).await?;
                    if !resp.status().is_success() {
                        return Err(self
                            .status_fault(i, resp, &format!("piece table of {digest}"))
                            .await);
                    }
                    let body = read_capped(resp, MAX_TABLE_BYTES).await.map_err(|e| {
                        Fault::Down(format!(
                            "piece table of {digest} from peer {}: {e}",
                            self.peers[i].label
                        ))
                    })?;
                    let table: PieceTable = serde_json::from_slice(&body).map_err(|e| {
                        Fault::Other(format!(
                            "piece table of {digest} from peer {}: bad JSON: {e}",
                            self.peers[i].label
                        ))
                    })?;
                    check_table(&table, digest, size).map_err(|why| {
                        Fault::Corrupt(format!(
                            "piece table of {digest} from peer {}: {why}",
                            self.peers[i].label
                        ))
                    })?;
                    Ok(table)
                }
                .await;
                (i, result)
            }
        }))
        .await;
        let mut groups: Vec<(PieceTable, Vec<usize>)> = Vec::new();
        let mut failures = Vec::new();
        for (i, answer) in answers {
            match answer {
                Ok(table) => match groups.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, peers)) => peers.push(i),
                    None => groups.push((table, vec![i])),
                },
                Err(f) => {
                    self.record(i, Some(digest), &f);
                    failures.push(f);
                }
            }
        }
        // The table most holders announce; a tie goes to the best-ranked holder's.
        let rank = self.ranked(&digest.to_string(), u64::MAX, None, holders);
        let position = |peers: &Vec<usize>| {
            peers
                .iter()
                .filter_map(|p| rank.iter().position(|r| r == p))
                .min()
                .unwrap_or(usize::MAX)
        };
        groups.sort_by_key(|(_, peers)| (std::cmp::Reverse(peers.len()), position(peers)));
        let mut groups = groups.into_iter();
        let Some((table, agreeing)) = groups.next() else {
            return Err(self.no_holder(&format!("blob {digest}"), 0, &failures));
        };
        for (_, peers) in groups {
            for i in peers {
                self.exclude(
                    i,
                    digest,
                    &format!(
                        "blob {digest}: peer {} announces a piece table other peers disagree with",
                        self.peers[i].label
                    ),
                );
            }
        }
        Ok((table, agreeing))
    }

    /// Piece `p` of a blob, from the best-ranked peer of the plan that serves it right
    /// (PEER-4, PEER-7).
    async fn fetch_piece(&self, plan: &Plan, p: u64) -> Result<Vec<Bytes>> {
        let digest = &plan.digest;
        let start = p * plan.piece_size;
        let end = (start + plan.piece_size).min(plan.size);
        let want = plan.hashes.as_ref().map(|h| h[p as usize].as_str());
        let path = format!("ferry/v1/blobs/{digest}");
        let query: Vec<(&str, &str)> = plan.name.iter().map(|n| ("name", n.as_str())).collect();
        let mut failures = Vec::new();
        let order = match plan.extent_pieces {
            // Relays: the extent's owner first, then the rest in rendezvous order.
            Some(per_extent) => {
                let extent = p / per_extent;
                let labels: Vec<&str> = self.peers.iter().map(|p| p.label.as_str()).collect();
                let owner = relay_owner(&labels, digest, extent);
                let mut order = self.ranked(&digest.to_string(), extent, Some(digest), &plan.peers);
                if let Some(at) = order.iter().position(|&i| i == owner) {
                    order.remove(at);
                    order.insert(0, owner);
                }
                order
            }
            None => self.ranked(&digest.to_string(), p, Some(digest), &plan.peers),
        };
        for i in order {
            let what = format!(
                "blob {digest} piece {p} (bytes {start}-{}) from peer {}",
                end - 1,
                self.peers[i].label
            );
            let result = async {
                let resp = self
                    .send(i, false, Method::GET, &path, &query, Some((start, end - 1)))
                    .await?;
                let whole = start == 0 && end == plan.size;
                match resp.status() {
                    StatusCode::PARTIAL_CONTENT => {}
                    StatusCode::OK if whole => {}
                    s if s.is_success() => {
                        return Err(Fault::Other(format!("{what}: {s} to a range request")))
                    }
                    _ => return Err(self.status_fault(i, resp, &what).await),
                }
                let (chunks, actual) = read_piece(resp, end - start, want.is_some())
                    .await
                    .map_err(|e| Fault::Down(format!("{what}: {e}")))?;
                if let (Some(want), Some(actual)) = (want, actual) {
                    if actual.to_hex().as_str() != want {
                        return Err(Fault::Corrupt(format!(
                            "{what}: digest mismatch: BLAKE3 {} where the piece table says {want}",
                            actual.to_hex()
                        )));
                    }
                }
                Ok(chunks)
            }
            .await;
            match result {
                Ok(chunks) => return Ok(chunks),
                Err(f) => {
                    self.record(i, Some(digest), &f);
                    failures.push(f);
                }
            }
        }
        Err(self.no_holder(&format!("blob {digest} piece {p}"), 0, &failures))
    }

    /// The peers that relay `digest` of `name` (PEER-7), with the size most of them report.
    async fn relays(&self, name: &str, digest: &Digest) -> Result<(Vec<usize>, u64)> {
        let candidates = self.ranked(&digest.to_string(), u64::MAX, Some(digest), &self.all());
        let path = format!("ferry/v1/blobs/{digest}");
        let answers = futures::future::join_all(candidates.iter().map(|&i| {
            let path = path.clone();
            async move {
                let answer = match self
                    .send(i, false, Method::HEAD, &path, &[("name", name)], None)
                    .await
                {
                    Ok(resp) if resp.status().is_success() => resp
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or(Fault::Missing),
                    Ok(resp) => Err(self
                        .status_fault(i, resp, &format!("relay of {digest}"))
                        .await),
                    Err(f) => Err(f),
                };
                (i, answer)
            }
        }))
        .await;
        let mut sizes: HashMap<u64, Vec<usize>> = HashMap::new();
        let (mut missing, mut failures) = (0, Vec::new());
        for (i, answer) in answers {
            match answer {
                Ok(size) => sizes.entry(size).or_default().push(i),
                Err(Fault::Missing) => missing += 1,
                Err(f) => {
                    self.record(i, Some(digest), &f);
                    failures.push(f);
                }
            }
        }
        sizes
            .into_iter()
            .max_by_key(|(_, peers)| peers.len())
            .map(|(size, peers)| (peers, size))
            .ok_or_else(|| self.no_holder(&format!("blob {digest}"), missing, &failures))
    }
}

/// How the pieces of one blob are fetched.
struct Plan {
    digest: Digest,
    size: u64,
    piece_size: u64,
    /// BLAKE3 of each piece (from the agreed piece table); `None` for relayed pieces.
    hashes: Option<Vec<String>>,
    /// The peers that serve it (holders agreeing on the table, or relays).
    peers: Vec<usize>,
    /// The image name, for relays.
    name: Option<String>,
    /// For relays: pieces per extent (all pieces of an extent go to its relay).
    extent_pieces: Option<u64>,
}

/// Checks a piece table's shape against the blob it is for.
fn check_table(table: &PieceTable, digest: &Digest, size: u64) -> std::result::Result<(), String> {
    if table.digest != digest.to_string() {
        return Err(format!("it is for {}", table.digest));
    }
    if table.size != size {
        return Err(format!("it says {} bytes, not {size}", table.size));
    }
    if table.piece_size == 0 || table.piece_size > MAX_PIECE_SIZE {
        return Err(format!("piece size {} out of range", table.piece_size));
    }
    let count = size.div_ceil(table.piece_size).max(1);
    if table.pieces.len() as u64 != count {
        return Err(format!(
            "{} pieces where {size} bytes make {count}",
            table.pieces.len()
        ));
    }
    if let Some(bad) = table
        .pieces
        .iter()
        .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!("bad piece hash {bad:?}"));
    }
    Ok(())
}

/// Reads a body of at most `limit` bytes (more is an error).
async fn read_capped(resp: reqwest::Response, limit: usize) -> std::result::Result<Bytes, String> {
    let expected = resp.content_length().unwrap_or(0).min(limit as u64) as usize;
    let mut stream = resp.bytes_stream();
    let mut buf = BytesMut::with_capacity(expected);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| chain(&e))?;
        if buf.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A body of exactly `len` bytes, as the chunks it arrived in (no copy), and, if `hash`,
/// its BLAKE3.
async fn read_piece(
    resp: reqwest::Response,
    len: u64,
    hash: bool,
) -> std::result::Result<(Vec<Bytes>, Option<blake3::Hash>), String> {
    let mut stream = resp.bytes_stream();
    let (mut chunks, mut got) = (Vec::new(), 0u64);
    let mut hasher = hash.then(blake3::Hasher::new);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| chain(&e))?;
        got += chunk.len() as u64;
        if got > len {
            return Err(format!("body larger than {len} bytes"));
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        chunks.push(chunk);
    }
    if got != len {
        return Err(format!("body ended after {got} of {len} bytes"));
    }
    Ok((chunks, hasher.map(|h| h.finalize())))
}

/// Bytes `a..b` of the concatenation of `chunks`, without copying.
fn cut(chunks: Vec<Bytes>, a: u64, b: u64) -> impl Iterator<Item = Bytes> {
    let mut at = 0u64;
    chunks.into_iter().filter_map(move |chunk| {
        let (from, to) = (at, at + chunk.len() as u64);
        at = to;
        let (lo, hi) = (from.max(a), to.min(b));
        (lo < hi).then(|| chunk.slice((lo - from) as usize..(hi - from) as usize))
    })
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `bytes` into chunks of at most [`OUT_CHUNK`] (no copies).
fn chunks(bytes: Bytes) -> impl futures::Stream<Item = Result<Bytes>> + Send {
    let n = bytes.len().div_ceil(OUT_CHUNK);
    futures::stream::iter(
        (0..n).map(move |k| Ok(bytes.slice(k * OUT_CHUNK..((k + 1) * OUT_CHUNK).min(bytes.len())))),
    )
}

#[async_trait]
impl Driver for PeerDriver {
    fn source_name(&self) -> &str {
        &self.0.source_name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: true,
            list_tags: true,
            write: false,
            ranges: true,
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        self.0.resolve(name, tag).await
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        self.0.fetch_manifest(name, digest).await
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        self.0.fetch_blob(name, digest, range).await
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        self.0.blob_size(name, digest).await
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        self.0.list_tags(name).await
    }
}

/// The driver operations, on the shared state.
impl Inner {
    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        let what = format!("{name}:{tag}");
        let mut failures = Vec::new();
        for i in self.ranked(name, 0, None, &self.all()) {
            let result = async {
                let resp = self
                    .send(
                        i,
                        false,
                        Method::GET,
                        "ferry/v1/resolve",
                        &[("name", name), ("tag", tag)],
                        None,
                    )
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.status_fault(i, resp, &what).await);
                }
                let body = read_capped(resp, MAX_JSON_BYTES).await.map_err(|e| {
                    Fault::Down(format!("{what} from peer {}: {e}", self.peers[i].label))
                })?;
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Answer {
                    media_type: String,
                    digest: String,
                    size: u64,
                }
                let bad = |why: String| {
                    Fault::Other(format!("{what} from peer {}: {why}", self.peers[i].label))
                };
                let a: Answer =
                    serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON: {e}")))?;
                let digest = Digest::parse(&a.digest).map_err(|e| bad(e.to_string()))?;
                if !media::is_manifest(&a.media_type) || a.size > MAX_MANIFEST_SIZE {
                    return Err(bad(format!(
                        "not a manifest descriptor ({}, {} bytes)",
                        a.media_type, a.size
                    )));
                }
                Ok(Descriptor::new(
                    a.media_type.as_str().into(),
                    a.size,
                    ferry_core::oci_spec::image::Digest::from(&digest),
                ))
            }
            .await;
            match result {
                Ok(desc) => return Ok(desc),
                Err(f) => {
                    self.record(i, None, &f);
                    failures.push(f);
                }
            }
        }
        let missing = failures
            .iter()
            .filter(|f| matches!(f, Fault::Missing))
            .count();
        Err(self.no_holder(&what, missing, &failures))
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        let what = format!("manifest {name}@{digest}");
        let path = format!("ferry/v1/manifests/{digest}");
        let mut failures = Vec::new();
        for i in self.ranked(&digest.to_string(), 0, Some(digest), &self.all()) {
            let result = async {
                let resp = self.send(i, false, Method::GET, &path, &[], None).await?;
                if !resp.status().is_success() {
                    return Err(self.status_fault(i, resp, &what).await);
                }
                let content_type = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
                let bytes = read_capped(resp, MAX_MANIFEST_SIZE as usize)
                    .await
                    .map_err(|e| {
                        Fault::Down(format!("{what} from peer {}: {e}", self.peers[i].label))
                    })?;
                let actual = Digest::of(digest.algorithm(), &bytes);
                if &actual != digest {
                    return Err(Fault::Corrupt(format!(
                        "{what} from peer {}: digest mismatch: the bytes hash to {actual}",
                        self.peers[i].label
                    )));
                }
                Ok(ManifestBytes {
                    bytes: bytes.to_vec(),
                    content_type,
                })
            }
            .await;
            match result {
                Ok(m) => return Ok(m),
                Err(f) => {
                    self.record(i, Some(digest), &f);
                    failures.push(f);
                }
            }
        }
        let missing = failures
            .iter()
            .filter(|f| matches!(f, Fault::Missing))
            .count();
        Err(self.no_holder(&what, missing, &failures))
    }

    async fn fetch_blob(
        self: &Arc<Self>,
        name: &str,
        digest: &Digest,
        range: ByteRange,
    ) -> Result<BlobBody> {
        // Holders of the committed blob first; relays when no peer has it (PEER-7).
        let (holders, size, relayed) = match self.locate(digest).await {
            Ok((holders, size)) => (holders, size, false),
            Err(e) if e.kind == ErrorKind::NotFound => match self.relays(name, digest).await {
                Ok((relays, size)) => (relays, size, true),
                Err(_) => {
                    return Err(Error::new(
                        e.kind,
                        &e.source_name,
                        format!("{} (for {name})", e.message),
                    ))
                }
            },
            Err(e) => {
                return Err(Error::new(
                    e.kind,
                    &e.source_name,
                    format!("{} (for {name})", e.message),
                ))
            }
        };
        let start = range.offset;
        let end = match range.len {
            Some(len) => start.saturating_add(len).min(size),
            None => size,
        };
        if start > size || (start == size && size > 0 && range.len != Some(0)) {
            return Err(self.error(
                ErrorKind::Invalid,
                format!(
                    "blob {name}@{digest}: range from byte {start} is outside its {size} bytes"
                ),
            ));
        }
        let len = end.saturating_sub(start);
        if len == 0 {
            return Ok(BlobBody {
                len: Some(0),
                stream: Box::pin(futures::stream::empty()),
            });
        }
        if size <= SMALL_BLOB {
            let bytes = self
                .fetch_small(digest, &holders, size, relayed.then_some(name))
                .await?;
            return Ok(BlobBody {
                len: Some(len),
                stream: Box::pin(chunks(bytes.slice(start as usize..end as usize))),
            });
        }
        let plan = if relayed {
            Plan {
                digest: digest.clone(),
                size,
                piece_size: RELAY_PIECE,
                hashes: None,
                peers: holders,
                name: Some(name.to_string()),
                extent_pieces: Some(RELAY_EXTENT / RELAY_PIECE),
            }
        } else {
            let (table, agreeing) = self.table(digest, &holders, size).await?;
            Plan {
                digest: digest.clone(),
                size,
                piece_size: table.piece_size,
                hashes: Some(table.pieces),
                peers: agreeing,
                name: None,
                extent_pieces: None,
            }
        };
        let ps = plan.piece_size;
        let (first, last) = (start / ps, (end - 1) / ps);
        let this = self.clone();
        let plan = Arc::new(plan);
        let pieces = futures::stream::iter(first..=last)
            .map(move |p| {
                let (this, plan) = (this.clone(), plan.clone());
                async move {
                    let chunks = this.fetch_piece(&plan, p).await?;
                    let piece_start = p * plan.piece_size;
                    let a = start.saturating_sub(piece_start);
                    let b = end - piece_start;
                    Ok::<_, Error>(futures::stream::iter(cut(chunks, a, b).map(Ok)))
                }
            })
            .buffered(self.window);
        let stream: ByteStream = Box::pin(pieces.try_flatten());
        Ok(BlobBody {
            len: Some(len),
            stream,
        })
    }

    async fn blob_size(&self, _name: &str, digest: &Digest) -> Result<Option<u64>> {
        match self.locate(digest).await {
            Ok((_, size)) => Ok(Some(size)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        let what = format!("tags of {name}");
        let answers =
            futures::future::join_all(self.ranked(name, 0, None, &self.all()).into_iter().map(
                |i| {
                    let what = what.clone();
                    async move {
                        let result = async {
                            let resp = self
                                .send(
                                    i,
                                    false,
                                    Method::GET,
                                    "ferry/v1/tags",
                                    &[("name", name)],
                                    None,
                                )
                                .await?;
                            if !resp.status().is_success() {
                                return Err(self.status_fault(i, resp, &what).await);
                            }
                            let body = read_capped(resp, MAX_JSON_BYTES).await.map_err(|e| {
                                Fault::Down(format!(
                                    "{what} from peer {}: {e}",
                                    self.peers[i].label
                                ))
                            })?;
                            #[derive(serde::Deserialize)]
                            struct Tags {
                                tags: Vec<String>,
                            }
                            serde_json::from_slice::<Tags>(&body)
                                .map(|t| t.tags)
                                .map_err(|e| {
                                    Fault::Other(format!(
                                        "{what} from peer {}: bad JSON: {e}",
                                        self.peers[i].label
                                    ))
                                })
                        }
                        .await;
                        (i, result)
                    }
                },
            ))
            .await;
        let mut tags: Vec<String> = Vec::new();
        let mut found = false;
        let mut failures = Vec::new();
        for (i, answer) in answers {
            match answer {
                Ok(t) => {
                    found = true;
                    tags.extend(t);
                }
                Err(f) => {
                    self.record(i, None, &f);
                    failures.push(f);
                }
            }
        }
        if !found {
            let missing = failures
                .iter()
                .filter(|f| matches!(f, Fault::Missing))
                .count();
            return Err(self.no_holder(&format!("image {name}"), missing, &failures));
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_takes_a_range_across_chunks_without_gaps() {
        let chunks = || {
            vec![
                Bytes::from_static(b"abc"),
                Bytes::from_static(b""),
                Bytes::from_static(b"defg"),
                Bytes::from_static(b"hi"),
            ]
        };
        let join = |a, b| cut(chunks(), a, b).collect::<Vec<_>>().concat();
        assert_eq!(join(0, 9), b"abcdefghi");
        assert_eq!(join(2, 8), b"cdefgh");
        assert_eq!(join(3, 7), b"defg");
        assert_eq!(join(4, 5), b"e");
        assert!(join(5, 5).is_empty());
        assert_eq!(
            cut(chunks(), 2, 8).count(),
            3,
            "one slice per chunk touched"
        );
    }

    #[test]
    fn relay_owners_share_every_blob_evenly() {
        let labels: Vec<String> = (1..=16)
            .map(|i| format!("http://10.0.0.{i}:7070"))
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        for blob in [b"a".as_slice(), b"b", b"c"] {
            let digest = Digest::sha256(blob);
            let mut load = [0u32; 16];
            for extent in 0..40 {
                load[relay_owner(&labels, &digest, extent)] += 1;
            }
            // 40 extents over 16 relays, dealt round-robin: 2 or 3 each.
            assert!(load.iter().all(|&n| n == 2 || n == 3), "{load:?}");
        }
        let digest = Digest::sha256(b"a");
        let reordered: Vec<&str> = labels.iter().rev().copied().collect();
        assert_eq!(
            labels[relay_owner(&labels, &digest, 7)],
            reordered[relay_owner(&reordered, &digest, 7)],
            "the owner depends on the peers, not on the order they are listed in"
        );
    }
}

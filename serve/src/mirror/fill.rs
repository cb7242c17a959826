//! Blobs a mirror fetches for its clients (MIRROR-5, MIRROR-6).
//!
//! One upstream fetch per blob however many clients ask: the pull engine's
//! [`fetch_blob`] (sources in order, resume, the next source after a corrupt one) writes the
//! store's ingest, and every client is sent the bytes as they land, read back from the
//! ingest file, so a slow client costs no memory. The last byte goes out only after the
//! store verified and committed the blob: when the digest fails, every response is cut
//! short and the client's own check fails too. A client that leaves does not stop the
//! fetch others wait on; the fetch runs as a task of its own.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{Digest, Store};
use ferry_drivers::site::route::Sources;
use ferry_drivers::transfer::progress::{BlobKind, Event, Progress};
use ferry_drivers::transfer::pull::fetch_blob;
use futures::Stream;
use tokio::sync::{watch, Semaphore};

/// Bytes read from the ingest file per chunk of a response.
const CHUNK: u64 = 256 << 10;

/// Where one blob's fetch stands, as its clients see it.
#[derive(Debug, Clone, Default)]
struct FillState {
    /// Ingests opened so far (a new one after a failed commit has a new file).
    opened: u64,
    /// Times the ingest went back to an earlier byte (a source without ranges, a corrupt one).
    restarts: u64,
    /// Bytes in the ingest file.
    done: u64,
    /// `Some` once the fetch ended: committed, or why not.
    outcome: Option<Result<(), String>>,
}

/// Turns the pull engine's progress events of one blob into its [`FillState`].
struct Follow(watch::Sender<FillState>);

impl Progress for Follow {
    fn event(&self, event: &Event) {
        match event {
            Event::BlobStart { resumed_from, .. } => self.0.send_modify(|s| {
                s.opened += 1;
                s.done = *resumed_from;
            }),
            Event::BlobProgress { done, .. } => self.0.send_modify(|s| {
                if *done < s.done {
                    s.restarts += 1;
                }
                s.done = *done;
            }),
            _ => {}
        }
    }
}

/// What a fill fetches: blob `desc` of image `name` from `sources`.
pub(crate) struct FillJob {
    pub store: Arc<Store>,
    pub sources: Sources,
    pub name: String,
    pub desc: Descriptor,
    pub digest: Digest,
}

/// The blobs being fetched, one shared fetch each, at most `max_upstream` at once.
pub(crate) struct Fills {
    active: Mutex<HashMap<Digest, watch::Receiver<FillState>>>,
    upstream: Arc<Semaphore>,
}

impl Fills {
    /// No fetch yet; at most `max_upstream` blobs fetched from upstream at once.
    pub fn new(max_upstream: usize) -> Self {
        Fills {
            active: Mutex::new(HashMap::new()),
            upstream: Arc::new(Semaphore::new(max_upstream.max(1))),
        }
    }

    /// The bytes of `job`'s blob for one client: joins the fetch in flight or starts one.
    ///
    /// The stream ends with an error, before the blob's last byte, when the fetch fails or
    /// restarts after this client was sent bytes.
    pub fn stream(self: &Arc<Self>, job: FillJob) -> impl Stream<Item = io::Result<Bytes>> {
        let reader = Reader {
            store: job.store.clone(),
            digest: job.digest.clone(),
            size: job.desc.size(),
            rx: self.join(job),
            file: None,
            sent: 0,
        };
        futures::stream::unfold(reader, |mut reader| async move {
            match reader.next_chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), reader)),
                Ok(None) => None,
                Err(e) => {
                    // Nothing after an error: the response ends short of its length.
                    reader.sent = reader.size;
                    Some((Err(e), reader))
                }
            }
        })
    }

    /// Joins (or starts) the fetch of `job`'s blob and waits for it to be committed.
    pub async fn wait(self: &Arc<Self>, job: FillJob) -> Result<(), String> {
        if matches!(job.store.blob_size(&job.digest), Ok(Some(_))) {
            return Ok(());
        }
        let mut rx = self.join(job);
        loop {
            if let Some(outcome) = rx.borrow_and_update().outcome.clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return rx
                    .borrow()
                    .outcome
                    .clone()
                    .unwrap_or_else(|| Err("the fetch ended without an outcome".to_string()));
            }
        }
    }

    /// The state of the fetch of `job`'s blob, started if none is in flight.
    fn join(self: &Arc<Self>, job: FillJob) -> watch::Receiver<FillState> {
        let mut active = self.active.lock().expect("fills");
        if let Some(rx) = active.get(&job.digest) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(FillState::default());
        active.insert(job.digest.clone(), rx.clone());
        drop(active);
        let fills = self.clone();
        tokio::spawn(async move {
            let digest = job.digest.clone();
            let follow = Follow(tx);
            let outcome = match fills.upstream.clone().acquire_owned().await {
                Ok(_permit) => fetch_blob(
                    &job.store,
                    &job.sources,
                    &job.name,
                    &job.desc,
                    BlobKind::Layer,
                    &follow,
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
                Err(_) => Err("the mirror is shutting down".to_string()),
            };
            if let Err(e) = &outcome {
                tracing::warn!("mirror: blob {digest} of {}: {e}", job.name);
            }
            fills.active.lock().expect("fills").remove(&digest);
            follow.0.send_modify(|s| s.outcome = Some(outcome));
        });
        rx
    }
}

/// One client's read of a blob being fetched.
struct Reader {
    store: Arc<Store>,
    digest: Digest,
    size: u64,
    rx: watch::Receiver<FillState>,
    /// The file read, with the `(opened, restarts)` of the state it was opened in.
    file: Option<((u64, u64), Arc<std::fs::File>)>,
    sent: u64,
}

impl Reader {
    /// The next bytes for the client, `None` at the end.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.sent >= self.size {
                return Ok(None);
            }
            let state = self.rx.borrow_and_update().clone();
            let committed = match &state.outcome {
                Some(Ok(())) => true,
                Some(Err(e)) => return Err(io::Error::other(e.clone())),
                None => false,
            };
            let epoch = (state.opened, state.restarts);
            let stale = self.file.as_ref().is_some_and(|(at, _)| *at != epoch);
            if stale && self.sent > 0 {
                // The bytes sent came from a fetch that was given up: they may be wrong.
                return Err(io::Error::other(format!(
                    "blob {}: the fetch started over after {} bytes were sent",
                    self.digest, self.sent
                )));
            }
            if self.file.is_none() || stale {
                self.file = self.open(epoch, state.opened > 0, committed).await?;
            }
            // The last byte waits for the verified commit.
            let limit = if committed {
                self.size
            } else {
                state.done.min(self.size - 1)
            };
            if let Some((_, file)) = self.file.clone().filter(|_| limit > self.sent) {
                let len = (limit - self.sent).min(CHUNK) as usize;
                let at = self.sent;
                let bytes = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; len];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)??;
                self.sent += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            if self.rx.changed().await.is_err() && self.rx.borrow().outcome.is_none() {
                return Err(io::Error::other(format!(
                    "blob {}: the fetch ended without an outcome",
                    self.digest
                )));
            }
        }
    }

    /// The file holding the blob's bytes: the committed blob, or the ingest being written;
    /// `None` while neither is there yet.
    async fn open(
        &self,
        epoch: (u64, u64),
        started: bool,
        committed: bool,
    ) -> io::Result<Option<((u64, u64), Arc<std::fs::File>)>> {
        let store = self.store.clone();
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || {
            let file = if committed {
                Some(store.open_blob(&digest).map_err(io::Error::other)?)
            } else if started {
                match store.open_partial(&digest).map_err(io::Error::other)? {
                    Some(file) => Some(file),
                    // Committed between the state and the open: the blob is there.
                    None => store.open_blob(&digest).ok(),
                }
            } else {
                None
            };
            Ok(file.map(|f| (epoch, Arc::new(f))))
        })
        .await
        .map_err(io::Error::other)?
    }
}

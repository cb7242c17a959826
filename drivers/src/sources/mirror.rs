//! The mirror driver: several endpoints of one content, tried in order; an endpoint that
//! fails is skipped for a cool-down, then tried again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::Digest;
use futures::future::BoxFuture;
use futures::StreamExt;

use crate::{
    BlobBody, ByteRange, ByteStream, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result,
};

/// Endpoints serving the same content, with health tracking.
#[derive(Debug)]
pub struct MirrorDriver {
    source_name: String,
    endpoints: Vec<Arc<dyn Driver>>,
    cooldown: Duration,
    health: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl MirrorDriver {
    /// A mirror over `endpoints` (tried in order); a failing one is skipped for `cooldown`.
    pub fn new(source_name: &str, endpoints: Vec<Arc<dyn Driver>>, cooldown: Duration) -> Self {
        let health = Arc::new(Mutex::new(vec![None; endpoints.len()]));
        MirrorDriver {
            source_name: source_name.to_string(),
            endpoints,
            cooldown,
            health,
        }
    }

    /// Endpoint indexes in the order to try them: healthy ones first, cooling ones last.
    fn order(&self) -> Vec<usize> {
        let health = self.health.lock().expect("mirror health");
        let cooling = |i: &usize| health[*i].is_some_and(|t| t.elapsed() < self.cooldown);
        let (mut healthy, cool): (Vec<usize>, Vec<usize>) =
            (0..self.endpoints.len()).partition(|i| !cooling(i));
        healthy.extend(cool);
        healthy
    }

    fn mark(&self, index: usize, ok: bool) {
        self.health.lock().expect("mirror health")[index] =
            if ok { None } else { Some(Instant::now()) };
    }

    /// Runs `op` on each endpoint in order until one succeeds or fails for good.
    async fn first<T: Send>(
        &self,
        op: impl Fn(Arc<dyn Driver>) -> BoxFuture<'static, Result<T>>,
    ) -> Result<(usize, T)> {
        let mut failures = Vec::new();
        for i in self.order() {
            match op(self.endpoints[i].clone()).await {
                Ok(v) => {
                    self.mark(i, true);
                    return Ok((i, v));
                }
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::Unavailable | ErrorKind::NotFound | ErrorKind::Corrupt
                    ) =>
                {
                    if e.kind != ErrorKind::NotFound {
                        self.mark(i, false);
                    }
                    tracing::warn!("{e}; trying the next endpoint of {:?}", self.source_name);
                    failures.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        // Endpoints hold one content: what an endpoint that answered said (corrupt bytes,
        // then "not found") is believed over endpoints that could not be reached.
        let kind = [ErrorKind::Corrupt, ErrorKind::NotFound]
            .into_iter()
            .find(|k| failures.iter().any(|f| f.kind == *k))
            .unwrap_or(ErrorKind::Unavailable);
        let detail: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        Err(Error::new(
            kind,
            &self.source_name,
            format!("every endpoint failed: {}", detail.join("; ")),
        ))
    }
}

#[async_trait]
impl Driver for MirrorDriver {
    fn source_name(&self) -> &str {
        &self.source_name
    }

    fn capabilities(&self) -> Capabilities {
        let all =
            |f: fn(&Capabilities) -> bool| self.endpoints.iter().all(|e| f(&e.capabilities()));
        Capabilities {
            resolve: all(|c| c.resolve),
            list_tags: all(|c| c.list_tags),
            write: false,
            ranges: all(|c| c.ranges),
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        let (name, tag) = (name.to_string(), tag.to_string());
        self.first(|d| {
            let (name, tag) = (name.clone(), tag.clone());
            Box::pin(async move { d.resolve(&name, &tag).await })
        })
        .await
        .map(|(_, v)| v)
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        let (name, digest) = (name.to_string(), digest.clone());
        self.first(|d| {
            let (name, digest) = (name.clone(), digest.clone());
            Box::pin(async move { d.fetch_manifest(&name, &digest).await })
        })
        .await
        .map(|(_, v)| v)
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        let (name, digest) = (name.to_string(), digest.clone());
        let (index, body) = self
            .first(|d| {
                let (name, digest) = (name.clone(), digest.clone());
                Box::pin(async move { d.fetch_blob(&name, &digest, range).await })
            })
            .await?;
        // A body that breaks off marks its endpoint unhealthy, so a resume goes elsewhere.
        let health = self.health.clone();
        let stream: ByteStream = Box::pin(body.stream.inspect(move |chunk| {
            if chunk.is_err() {
                health.lock().expect("mirror health")[index] = Some(Instant::now());
            }
        }));
        Ok(BlobBody {
            len: body.len,
            stream,
        })
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let (name, digest) = (name.to_string(), digest.clone());
        self.first(|d| {
            let (name, digest) = (name.clone(), digest.clone());
            Box::pin(async move {
                match d.blob_size(&name, &digest).await? {
                    Some(size) => Ok(size),
                    None => Err(Error::not_found(
                        d.source_name(),
                        format!("{name}@{digest}"),
                    )),
                }
            })
        })
        .await
        .map(|(_, size)| Some(size))
        .or_else(|e| {
            if e.kind == ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        })
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        let name = name.to_string();
        self.first(|d| {
            let name = name.clone();
            Box::pin(async move { d.list_tags(&name).await })
        })
        .await
        .map(|(_, v)| v)
    }
}

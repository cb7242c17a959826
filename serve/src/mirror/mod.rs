//! The pull-through mirror (`ferry serve --mirror`, `specs/mirror.md`): manifests and blobs
//! the store lacks are fetched through the site config's route for the image's name, with
//! the pull engine, after the trust policy accepted the image, and committed to the store,
//! so docker, containerd and podman pulling through ferry get ferry's routes, policy,
//! sources and verification unchanged.

mod fill;
mod names;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::manifest::descriptor_digest;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{Digest, Manifest, ManifestBlob, Reference, Store};
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::{sources_for, Sources};
use ferry_drivers::transfer::progress::Silent;
use ferry_drivers::transfer::pull::{decide, fetch_manifest, name_image, Accepted};
use ferry_drivers::ErrorKind;
use ferry_signing::Policy;

pub use names::upstream_name;

use self::fill::{FillJob, Fills};
use crate::error::{ApiError, ApiResult};
use crate::names::{parse_digest, validate_tag};
use crate::stored::{send_blob, ManifestBody};
use crate::{App, CONTENT_DIGEST};

/// How long a name's sources are kept before they are built again from the site config.
const ROUTE_TTL: Duration = Duration::from_secs(60);

/// How a mirror fetches and decides (MIRROR-2..8).
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// The routes: which sources serve which names.
    pub config: SiteConfig,
    /// The trust policy every image passes before a client sees its manifest.
    pub policy: Policy,
    /// How long a tag's answer is reused before the resolve sources are asked again.
    pub tag_ttl: Duration,
    /// Serve the digest the store last had for a tag when every resolve source fails.
    pub stale_tags: bool,
    /// Blobs fetched from upstream at once; more wait.
    pub max_upstream: usize,
}

/// The mirror's state: routes, answered tags, and what each name may be served.
pub(crate) struct Mirror {
    options: MirrorOptions,
    store: Arc<Store>,
    /// The sources of each name asked for, and when they were built (drivers keep
    /// connections and tokens; peer fleet names are resolved again when rebuilt, PEER-8).
    routes: Mutex<HashMap<String, (Instant, Sources)>>,
    /// `name:tag` → the accepted answer and when it was given.
    tags: Mutex<HashMap<String, (Instant, Accepted)>>,
    /// Per name, the blobs of accepted images that may be fetched for it, with their
    /// descriptors (MIRROR-3).
    allowed: Mutex<HashMap<String, HashMap<Digest, Descriptor>>>,
    /// Index children whose image completes a tag when a client asks for it.
    children: Mutex<HashMap<(String, Digest), Pending>>,
    /// Images being completed (reference, image manifest digest): one task each, however
    /// many clients ask for them meanwhile.
    completing: Mutex<HashSet<(String, Digest)>>,
    fills: Arc<Fills>,
}

/// An accepted top manifest waiting for its image to be complete to be named.
#[derive(Clone)]
struct Pending {
    reference: Reference,
    accepted: Accepted,
    top: ManifestBlob,
}

impl Mirror {
    /// A mirror over `store`.
    pub(crate) fn new(store: Store, options: MirrorOptions) -> Self {
        Mirror {
            fills: Arc::new(Fills::new(options.max_upstream)),
            options,
            store: Arc::new(store),
            routes: Mutex::new(HashMap::new()),
            tags: Mutex::new(HashMap::new()),
            allowed: Mutex::new(HashMap::new()),
            children: Mutex::new(HashMap::new()),
            completing: Mutex::new(HashSet::new()),
        }
    }

    /// The route's sources for `reference`'s name, built again once [`ROUTE_TTL`] old.
    fn sources(&self, reference: &Reference) -> ApiResult<Sources> {
        let name = reference.name();
        if let Some((at, s)) = self.routes.lock().expect("routes").get(&name) {
            if at.elapsed() < ROUTE_TTL {
                return Ok(s.clone());
            }
        }
        let sources = sources_for(&self.options.config, reference).map_err(upstream_error)?;
        self.routes
            .lock()
            .expect("routes")
            .insert(name, (Instant::now(), sources.clone()));
        Ok(sources)
    }

    /// The policy's answer for `reference`, from the tag cache while it is fresh (MIRROR-4).
    async fn accept(&self, reference: &Reference, sources: &Sources) -> ApiResult<Accepted> {
        let key = reference.to_string();
        let ttl = self.options.tag_ttl;
        if reference.digest().is_none() && !ttl.is_zero() {
            if let Some((at, accepted)) = self.tags.lock().expect("tags").get(&key) {
                if at.elapsed() < ttl {
                    return Ok(accepted.clone());
                }
            }
        }
        match decide(
            &self.store,
            sources,
            reference,
            &self.options.policy,
            &Silent,
        )
        .await
        {
            Ok(accepted) => {
                if reference.digest().is_none() {
                    self.tags
                        .lock()
                        .expect("tags")
                        .insert(key, (Instant::now(), accepted.clone()));
                }
                Ok(accepted)
            }
            Err(e) if e.kind == ErrorKind::Rejected => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!("ferry mirror: {e}"),
            )),
            Err(e) if self.options.stale_tags && e.kind == ErrorKind::Unavailable => {
                self.stale(reference).await.ok_or_else(|| upstream_error(e))
            }
            Err(e) => Err(upstream_error(e)),
        }
    }

    /// The image the store already names `reference`, accepted again by the policy with the
    /// signatures the store keeps (MIRROR-4, opt-in).
    async fn stale(&self, reference: &Reference) -> Option<Accepted> {
        let record = self.store.find_image(reference).ok()?;
        let pinned = Reference::parse(&format!("{}@{}", reference.name(), record.digest)).ok()?;
        let offline = Sources {
            content: Vec::new(),
            resolve: Vec::new(),
        };
        let accepted = decide(
            &self.store,
            &offline,
            &pinned,
            &self.options.policy,
            &Silent,
        )
        .await
        .ok()?;
        tracing::warn!(
            "mirror: every resolve source of {reference} failed; serving the stored {}",
            record.digest
        );
        Some(accepted)
    }

    /// Lets `manifest` itself and its blobs be fetched for `name`: the image's config and
    /// layers, or an index's children.
    fn allow(&self, name: &str, manifest: &ManifestBlob) {
        let mut descriptors: Vec<Descriptor> = match &manifest.manifest {
            Manifest::Image(image) => std::iter::once(image.config().clone())
                .chain(image.layers().iter().cloned())
                .collect(),
            Manifest::Index(index) => index.manifests().clone(),
        };
        descriptors.push(manifest.descriptor());
        let mut allowed = self.allowed.lock().expect("allowed");
        let entry = allowed.entry(name.to_string()).or_default();
        for d in &descriptors {
            if let Ok(digest) = descriptor_digest(d) {
                entry.insert(digest, d.clone());
            }
        }
    }

    fn allowed(&self, name: &str, digest: &Digest) -> Option<Descriptor> {
        self.allowed
            .lock()
            .expect("allowed")
            .get(name)?
            .get(digest)
            .cloned()
    }

    /// Fetches the rest of an accepted image in the background, through the same fills
    /// clients read, and names it in the store once every blob is committed (MIRROR-7).
    fn complete(self: &Arc<Self>, pending: Pending, image: ManifestBlob, sources: Sources) {
        let key = (pending.reference.to_string(), image.digest.clone());
        if !self
            .completing
            .lock()
            .expect("completing")
            .insert(key.clone())
        {
            return;
        }
        let mirror = self.clone();
        tokio::spawn(async move {
            mirror.complete_now(pending, image, sources).await;
            mirror.completing.lock().expect("completing").remove(&key);
        });
    }

    /// The work of [`Mirror::complete`].
    async fn complete_now(&self, pending: Pending, image: ManifestBlob, sources: Sources) {
        let name = pending.reference.name();
        let Manifest::Image(manifest) = &image.manifest else {
            return;
        };
        let Ok(_lease) = self.store.lease() else {
            return;
        };
        let mut size = pending.top.bytes.len() as u64;
        if image.digest != pending.top.digest {
            size += image.bytes.len() as u64;
        }
        let blobs: Vec<Descriptor> = std::iter::once(manifest.config().clone())
            .chain(manifest.layers().iter().cloned())
            .collect();
        size += blobs.iter().map(Descriptor::size).sum::<u64>();
        let waits = blobs.iter().filter_map(|desc| {
            let digest = descriptor_digest(desc).ok()?;
            Some(self.fills.wait(FillJob {
                store: self.store.clone(),
                sources: sources.clone(),
                name: name.clone(),
                desc: desc.clone(),
                digest,
            }))
        });
        if let Err(e) = futures::future::try_join_all(waits).await {
            tracing::warn!("mirror: {} not named: {e}", pending.reference);
            return;
        }
        let Ok(config_digest) = descriptor_digest(manifest.config()) else {
            return;
        };
        let store = self.store.clone();
        let named = tokio::task::spawn_blocking(move || {
            name_image(
                &store,
                &pending.reference,
                &pending.accepted,
                &pending.top,
                &config_digest,
                None,
                size,
            )
        })
        .await;
        match named {
            Ok(Ok((record, _))) => {
                tracing::info!("mirror: {}@{} is in the store", record.name, record.digest)
            }
            Ok(Err(e)) => tracing::warn!("mirror: naming {name}: {e}"),
            Err(e) => tracing::warn!("mirror: naming {name}: {e}"),
        }
    }
}

/// Whether the mirror answers a request for `repo` (MIRROR-1): always when the client names
/// the registry (`?ns=`, or a registry first in the path); for a bare path (dockerd's
/// `library/busybox`), unless the store names images of another registry under that path,
/// which are served from the store as without `--mirror` (SERVE-2).
pub(crate) async fn answers(app: &App, repo: &str, ns: Option<&str>) -> ApiResult<bool> {
    let Ok(name) = upstream_name(repo, ns) else {
        return Ok(true);
    };
    if ns.is_some_and(|ns| !ns.is_empty()) || name == repo {
        return Ok(true);
    }
    let catalog = app.catalog().await?;
    let mut local = catalog.records(repo).peekable();
    Ok(local.peek().is_none() || local.any(|r| r.name == name))
}

/// An upstream failure as the client sees it.
fn upstream_error(e: ferry_drivers::Error) -> ApiError {
    match e.kind {
        ErrorKind::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("ferry mirror: {e}"),
        ),
        ErrorKind::Rejected => ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!("ferry mirror: {e}"),
        ),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("ferry mirror: {e}"),
        ),
    }
}

/// `GET|HEAD /v2/<repo>/manifests/<reference>` through the mirror (MIRROR-2..4).
pub(crate) async fn manifest(
    mirror: &Arc<Mirror>,
    repo: &str,
    reference: &str,
    ns: Option<&str>,
    head: bool,
) -> ApiResult<Response> {
    let name = upstream_name(repo, ns)?;
    let parsed = if reference.contains(':') {
        let digest = parse_digest(reference)?;
        Reference::parse(&format!("{name}@{digest}"))
    } else {
        validate_tag(reference)?;
        Reference::parse(&format!("{name}:{reference}"))
    }
    .map_err(|e| ApiError::name_invalid(repo, &e.to_string()))?;
    let sources = mirror.sources(&parsed)?;
    let (digest, accepted) = match parsed.digest() {
        // A child of an accepted index, or a manifest already allowed for the name.
        Some(d) if mirror.allowed(&name, d).is_some() => (d.clone(), None),
        _ => {
            let accepted = mirror.accept(&parsed, &sources).await?;
            (accepted.digest.clone(), Some(accepted))
        }
    };
    let blob = fetch_manifest(&mirror.store, &sources, &name, &digest, &Silent)
        .await
        .map_err(upstream_error)?;
    mirror.allow(&name, &blob);
    let pending = accepted.map(|accepted| Pending {
        reference: parsed.clone(),
        accepted,
        top: blob.clone(),
    });
    match (pending, &blob.manifest) {
        (Some(pending), Manifest::Image(_)) => {
            mirror.complete(pending, blob.clone(), sources.clone());
        }
        (Some(pending), Manifest::Index(index)) => {
            let mut children = mirror.children.lock().expect("children");
            for child in index.manifests() {
                if let Ok(d) = descriptor_digest(child) {
                    children.insert((name.clone(), d), pending.clone());
                }
            }
        }
        (None, Manifest::Image(_)) => {
            let pending = mirror
                .children
                .lock()
                .expect("children")
                .get(&(name.clone(), digest.clone()))
                .cloned();
            if let Some(pending) = pending {
                mirror.complete(pending, blob.clone(), sources.clone());
            }
        }
        (None, Manifest::Index(_)) => {}
    }
    Ok(ManifestBody {
        bytes: blob.bytes.clone(),
        media_type: blob.media_type.clone(),
        digest,
    }
    .response(head))
}

/// `GET|HEAD /v2/<repo>/blobs/<digest>` through the mirror (MIRROR-5, MIRROR-6).
pub(crate) async fn blob(
    app: &App,
    mirror: &Arc<Mirror>,
    repo: &str,
    digest: &str,
    range: Option<&HeaderValue>,
    ns: Option<&str>,
    head: bool,
) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    if mirror
        .store
        .blob_size(&digest)
        .map_err(ApiError::store)?
        .is_some()
    {
        return send_blob(app, &digest, range, head).await;
    }
    let name = upstream_name(repo, ns)?;
    let Some(desc) = mirror.allowed(&name, &digest) else {
        return Err(ApiError::blob_unknown(format!(
            "{name}@{digest} (the mirror serves the blobs of images whose manifest it served)"
        )));
    };
    let reference =
        Reference::parse(&name).map_err(|e| ApiError::name_invalid(repo, &e.to_string()))?;
    let size = desc.size();
    let mut response = if head {
        Body::empty().into_response()
    } else {
        let stream = mirror.fills.stream(FillJob {
            store: mirror.store.clone(),
            sources: mirror.sources(&reference)?,
            name,
            desc,
            digest: digest.clone(),
        });
        Body::from_stream(stream).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert(CONTENT_DIGEST, v);
    }
    Ok(response)
}

//! `ferry serve`: the OCI distribution API over a ferry store, and the peer API other ferry
//! nodes fetch pieces of blobs from.
//!
//! Behaviour and formats: `specs/serve.md` (SERVE-n) and `specs/peer.md` (PEER-n).
//!
//! - Reads: manifests by tag and digest (exact stored bytes), blobs by digest with ranges,
//!   tag lists, the catalog, signature sets under their tags (synthesized from the
//!   signatures the store keeps) and the OCI 1.1 referrers API.
//! - Pushes (only with [`ServeOptions::allow_push`]): blob uploads (monolithic, chunked,
//!   cross-repository mounts) committed through the store's verified ingest, and manifests.
//! - Only committed blobs are ever served; only repositories the store names are answered.
//! - Every body streams from or to a file: memory per connection is bounded.

#![warn(missing_docs)]

mod auth;
mod content;
mod error;
mod limits;
pub mod mirror;
pub mod names;
mod peer;
mod push;
pub mod range;
mod relay;
mod stored;
mod tls;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use axum_server::accept::NoDelayAcceptor;
use ferry_core::{Digest, Store};

pub use auth::Htpasswd;
pub use error::{ApiError, ApiResult, Error};
pub use limits::{Limits, MAX_HEAD_SIZE};
pub use mirror::MirrorOptions;
pub use peer::{PieceTable, PIECE_SIZE, RELAYED};
pub use relay::RelayOptions;

/// Header naming the API version on every answer.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
/// Header carrying the digest of a manifest or blob.
pub(crate) const CONTENT_DIGEST: &str = "docker-content-digest";
/// How long a snapshot of the store's names is reused.
const CATALOG_TTL: Duration = Duration::from_secs(1);

/// How a server is started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// htpasswd file (bcrypt entries): every request needs Basic credentials of a user in it.
    pub htpasswd: Option<PathBuf>,
    /// TLS certificate chain and private key (PEM files); plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// Accept pushes (blob uploads, manifest PUTs); read-only otherwise.
    pub allow_push: bool,
    /// Relay pieces of blobs this node lacks from its upstream to peers that ask (PEER-7).
    pub relay: Option<RelayOptions>,
    /// Bounds on connections, request heads and bodies, and unfinished uploads.
    pub limits: Limits,
    /// Be a pull-through mirror: fetch what the store lacks through the routes, under the
    /// trust policy (`specs/mirror.md`).
    pub mirror: Option<MirrorOptions>,
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A bound server, ready to run.
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    app: App,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    limits: Limits,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads the auth and TLS files and binds the listen address.
    pub fn bind(store: Store, options: &ServeOptions) -> Result<Server, Error> {
        let auth = options
            .htpasswd
            .as_deref()
            .map(Htpasswd::load)
            .transpose()?;
        let tls = options.tls.as_ref().map(tls::config).transpose()?;
        let listener =
            std::net::TcpListener::bind(options.listen).map_err(|source| Error::Bind {
                addr: options.listen,
                source,
            })?;
        let bind_err = |source| Error::Bind {
            addr: options.listen,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let app = App::new(store, auth, options)?;
        Ok(Server {
            listener,
            addr,
            app,
            tls,
            limits: options.limits,
        })
    }

    /// The address actually bound (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients use: `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `shutdown` completes, then stops accepting and lets requests in flight
    /// finish (for up to 10 s).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let addr = self.addr;
        let handle = axum_server::Handle::new();
        let router = router(self.app.clone());
        let sweeper = tokio::spawn(push::sweep_forever(self.app.clone()));
        let serve_err = |source| Error::Serve { addr, source };
        let cap = self.limits.connection_cap();
        let server = {
            let handle = handle.clone();
            async move {
                let service = router.into_make_service();
                match self.tls {
                    Some(tls) => {
                        let mut server = axum_server::from_tcp_rustls(self.listener, tls)
                            .map(|tls| cap.around(tls.acceptor(NoDelayAcceptor)));
                        self.limits.configure(server.http_builder());
                        server.handle(handle).serve(service).await
                    }
                    None => {
                        let mut server = axum_server::from_tcp(self.listener).acceptor(cap);
                        self.limits.configure(server.http_builder());
                        server.handle(handle).serve(service).await
                    }
                }
            }
        };
        let result = tokio::select! {
            r = server => r.map_err(serve_err),
            () = shutdown => {
                handle.graceful_shutdown(Some(Duration::from_secs(10)));
                Ok(())
            }
        };
        sweeper.abort();
        result
    }
}

/// The HTTP routes of a server over `store` (no listener; `options.listen` and
/// `options.tls` unused): for embedding and tests.
pub fn app(store: Store, auth: Option<Htpasswd>, options: &ServeOptions) -> Result<Router, Error> {
    Ok(router(App::new(store, auth, options)?))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v2", get(content::base))
        .route("/v2/", get(content::base))
        .route("/v2/{*path}", any(content::v2))
        .route("/ferry/v1/node", get(peer::node))
        .route("/ferry/v1/blobs/{digest}", get(peer::blob))
        .route("/ferry/v1/manifests/{digest}", get(peer::manifest))
        .route("/ferry/v1/pieces/{digest}", get(peer::pieces))
        .route("/ferry/v1/resolve", get(peer::resolve))
        .route("/ferry/v1/tags", get(peer::tags))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), gate))
        .with_state(app)
}

/// Authentication (when configured) and the API version header on every answer.
async fn gate(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(auth) = app.0.auth.clone() {
        let value = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ok = tokio::task::spawn_blocking(move || auth.check(value.as_deref()))
            .await
            .unwrap_or(false);
        if !ok {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required: Basic credentials of a user in the server's htpasswd file",
            )
            .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"ferry\"")
            .into_response();
            resp.headers_mut()
                .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
            return resp;
        }
    }
    let mut resp = next.run(request).await;
    resp.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    resp
}

/// Shared state of every request.
#[derive(Clone)]
pub(crate) struct App(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) allow_push: bool,
    auth: Option<Arc<Htpasswd>>,
    catalog: Mutex<Option<(Instant, Arc<names::Catalog>)>>,
    pub(crate) uploads: push::Uploads,
    pub(crate) pieces: peer::PieceTables,
    pub(crate) relay: Option<relay::Relay>,
    /// How long a request body may pause (SERVE-16).
    pub(crate) read_timeout: Duration,
    /// Blobs found corrupt at rest in this store: never served.
    corrupt: Mutex<HashSet<Digest>>,
    /// The pull-through mirror, with `--mirror`.
    pub(crate) mirror: Option<Arc<mirror::Mirror>>,
}

impl App {
    fn new(store: Store, auth: Option<Htpasswd>, options: &ServeOptions) -> Result<App, Error> {
        let limits = options.limits;
        let uploads = push::Uploads::open(store.root(), limits.upload_timeout)?;
        Ok(App(Arc::new(Inner {
            mirror: options
                .mirror
                .clone()
                .map(|m| Arc::new(mirror::Mirror::new(store.clone(), m))),
            store,
            allow_push: options.allow_push,
            auth: auth.map(Arc::new),
            catalog: Mutex::new(None),
            uploads,
            pieces: peer::PieceTables::default(),
            relay: options.relay.clone().map(relay::Relay::new),
            read_timeout: limits.read_timeout,
            corrupt: Mutex::new(HashSet::new()),
        })))
    }

    pub(crate) fn store(&self) -> &Store {
        &self.0.store
    }

    /// Runs blocking store work off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let store = self.0.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
    }

    /// The store's names, at most [`CATALOG_TTL`] old.
    pub(crate) async fn catalog(&self) -> ApiResult<Arc<names::Catalog>> {
        if let Some((at, catalog)) = &*self.0.catalog.lock().expect("catalog cache") {
            if at.elapsed() < CATALOG_TTL {
                return Ok(catalog.clone());
            }
        }
        let images = self
            .blocking(|s| s.images().map_err(ApiError::store))
            .await?;
        let catalog = Arc::new(names::Catalog { images });
        *self.0.catalog.lock().expect("catalog cache") = Some((Instant::now(), catalog.clone()));
        Ok(catalog)
    }

    /// Forgets the cached names (after this server named an image).
    pub(crate) fn names_changed(&self) {
        *self.0.catalog.lock().expect("catalog cache") = None;
    }

    /// Marks a blob as corrupt at rest: it is never served again by this process.
    pub(crate) fn mark_corrupt(&self, digest: &Digest, actual: &Digest) {
        tracing::error!(
            "blob {digest} in store {} is corrupt (its bytes hash to {actual}); no longer serving it",
            self.0.store.root().display()
        );
        self.0
            .corrupt
            .lock()
            .expect("corrupt set")
            .insert(digest.clone());
    }

    pub(crate) fn is_corrupt(&self, digest: &Digest) -> bool {
        self.0.corrupt.lock().expect("corrupt set").contains(digest)
    }
}

//! The HTTP side of the registry driver: one pooled `reqwest::Client`, authentication
//! (Basic, bearer tokens cached per scope), retries with backoff, and redirects followed by
//! hand so `Authorization` never leaves the registry's origin.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{parse_challenges, AuthState, Challenge, Scheme, Scope, Token};
use super::credentials::Login;
use crate::{ByteStream, Error, ErrorKind, Result};

/// Attempts per request on connection errors, 5xx and 429 (the first try included).
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Delay before the first retry; doubled for each further one.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Redirects followed per request.
const MAX_REDIRECTS: u32 = 10;
/// Longest time to set up a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a response (bodies have no total timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes read from an error response to describe it.
const ERROR_BODY_LIMIT: usize = 4096;

/// A request body: replayable, or a stream that can be sent once.
pub(crate) enum Body {
    /// No body.
    Empty,
    /// Bytes that may be sent again on a retry.
    Bytes(Bytes),
    /// A stream of exactly `len` bytes; a failure after it was sent is not retried.
    Stream(Option<ByteStream>, u64),
}

/// One request to the registry.
pub(crate) struct Request {
    /// The method.
    pub method: Method,
    /// Where.
    pub url: Url,
    /// Headers besides `Authorization`.
    pub headers: HeaderMap,
    /// The body.
    pub body: Body,
    /// The access it needs (tokens are fetched for this scope).
    pub scope: Scope,
}

impl Request {
    /// A bodiless request.
    pub fn new(method: Method, url: Url, scope: Scope) -> Self {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: Body::Empty,
            scope,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
}

/// The registry's HTTP client: one per driver.
pub(crate) struct Client {
    /// For http URLs: without TLS roots, so a pull from a plain-http registry (loopback)
    /// does not read the system's hundreds of certificate files at start.
    plain: reqwest::Client,
    /// For https URLs: with the system's roots, built on first use.
    tls: OnceLock<reqwest::Client>,
    /// Source name for errors.
    pub source: String,
    /// The registry's base URL (ends with `/`).
    pub base: Url,
    /// `host[:port]` of the registry, for messages.
    pub host: String,
    insecure: bool,
    credentials: Option<Login>,
    auth: Mutex<AuthState>,
}

/// An HTTP client as the registry client needs it (no automatic redirects, timeouts);
/// `roots`: with the built-in TLS root certificates (the system's and webpki's).
fn http_client(source: &str, insecure: bool, roots: bool) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .danger_accept_invalid_certs(insecure)
        .tls_built_in_root_certs(roots)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Invalid,
                source,
                format!("cannot build HTTP client: {}", chain(&e)),
            )
        })
}

impl Client {
    /// A client for the registry at `base`.
    pub fn new(
        source: &str,
        base: Url,
        insecure: bool,
        credentials: Option<Login>,
    ) -> Result<Self> {
        let plain = http_client(source, insecure, false)?;
        Ok(Client {
            plain,
            tls: OnceLock::new(),
            source: source.to_string(),
            host: host_port(&base),
            base,
            insecure,
            credentials,
            auth: Mutex::new(AuthState::default()),
        })
    }

    /// The HTTP client for `url`: the one with TLS roots only for https.
    fn http(&self, url: &Url) -> Result<&reqwest::Client> {
        if url.scheme() != "https" {
            return Ok(&self.plain);
        }
        if let Some(client) = self.tls.get() {
            return Ok(client);
        }
        let client = http_client(&self.source, self.insecure, true)?;
        Ok(self.tls.get_or_init(|| client))
    }

    /// `base` joined with `path` (relative, e.g. `v2/team/app/tags/list`).
    pub fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| self.error(ErrorKind::Invalid, format!("bad URL path {path:?}: {e}")))
    }

    /// An error at this source.
    pub fn error(&self, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::new(kind, &self.source, message)
    }

    /// The `Unauthorized` error for `what`, with the hint to log in.
    pub fn unauthorized(&self, what: &str) -> Error {
        self.error(
            ErrorKind::Unauthorized,
            format!(
                "unauthorized at {host}: {what}; `ferry login {host}` may help",
                host = self.host
            ),
        )
    }

    /// Sends `req`, authenticating as the registry asks, retrying transient failures and
    /// following redirects of GET and HEAD requests.
    ///
    /// A 401 or 403 that survives authentication is an `Unauthorized` error; every other
    /// status is returned for the caller to judge.
    pub async fn send(&self, mut req: Request) -> Result<Response> {
        let mut attempt = 0;
        let mut redirects = 0;
        let mut reauthenticated = false;
        // Credentials go only to the registry's own origin.
        let mut authorize = req.url.origin() == self.base.origin();
        loop {
            let what = format!("{} {}", req.method, req.url);
            let auth = if authorize {
                self.authorization(&req.scope).await?
            } else {
                None
            };
            let body = match &mut req.body {
                Body::Empty => None,
                Body::Bytes(b) => Some(reqwest::Body::from(b.clone())),
                Body::Stream(s, _) => match s.take() {
                    Some(s) => Some(reqwest::Body::wrap_stream(s)),
                    None => {
                        return Err(self.error(
                            ErrorKind::Unavailable,
                            format!(
                                "{what}: failed after its body was sent; cannot resend a stream"
                            ),
                        ))
                    }
                },
            };
            let mut rb = self
                .http(&req.url)?
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(a) = &auth {
                rb = rb.header(AUTHORIZATION, a);
            }
            // Explicit, so an empty POST still says `Content-Length: 0` (some proxies need it).
            match &req.body {
                Body::Empty => {}
                Body::Bytes(b) => rb = rb.header(reqwest::header::CONTENT_LENGTH, b.len()),
                Body::Stream(_, len) => rb = rb.header(reqwest::header::CONTENT_LENGTH, *len),
            }
            if let Some(b) = body {
                rb = rb.body(b);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    let replayable = !matches!(req.body, Body::Stream(..));
                    if replayable
                        && attempt + 1 < MAX_ATTEMPTS
                        && (e.is_connect() || e.is_timeout() || e.is_request())
                    {
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.transport_error(&req.method, &req.url, &e));
                }
            };
            let status = resp.status();
            if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN) && authorize
            {
                let challenges = challenges(&resp);
                if status == StatusCode::UNAUTHORIZED && !reauthenticated && !challenges.is_empty()
                {
                    reauthenticated = true;
                    let detail = registry_error(resp).await;
                    self.handle_challenge(&challenges, &req.scope, auth.is_some(), &what, &detail)
                        .await?;
                    if matches!(req.body, Body::Stream(None, _)) {
                        return Err(self.unauthorized(&format!("{what}{detail}")));
                    }
                    continue;
                }
                let detail = registry_error(resp).await;
                return Err(self.unauthorized(&format!("{what}: {status}{detail}")));
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let detail = registry_error(resp).await;
                return Err(
                    self.error(ErrorKind::Unauthorized, format!("{what}: {status}{detail}"))
                );
            }
            let transient = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            if transient && attempt + 1 < MAX_ATTEMPTS && !matches!(req.body, Body::Stream(None, _))
            {
                let delay = retry_after(&resp).unwrap_or_else(|| backoff(attempt));
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            let follows = req.method == Method::GET || req.method == Method::HEAD;
            if follows && status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(next) = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| req.url.join(l).ok())
                else {
                    return Err(self.error(
                        ErrorKind::Invalid,
                        format!("{what}: {status} without a usable Location"),
                    ));
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(self.error(
                        ErrorKind::Invalid,
                        format!("{what}: more than {MAX_REDIRECTS} redirects"),
                    ));
                }
                self.check_scheme(&next).map_err(|why| {
                    self.error(
                        ErrorKind::Invalid,
                        format!("{what}: redirect to {next} refused: {why}"),
                    )
                })?;
                if next.origin() != self.base.origin() {
                    authorize = false;
                }
                tracing::debug!(from = %req.url, to = %next, "following redirect");
                req.url = next;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Whether `url`'s scheme is acceptable: https, or http to loopback or when insecure.
    pub fn check_scheme(&self, url: &Url) -> std::result::Result<(), String> {
        match url.scheme() {
            "https" => Ok(()),
            "http"
                if self.insecure
                    || url.host().is_some_and(|h| is_loopback_host(&h.to_string())) =>
            {
                Ok(())
            }
            "http" => Err("plain http to a non-loopback host needs `insecure`".into()),
            other => Err(format!("unsupported URL scheme {other:?}")),
        }
    }

    /// The `Authorization` value to send for `scope` under the scheme learned so far.
    async fn authorization(&self, scope: &Scope) -> Result<Option<String>> {
        let scheme = self.auth.lock().expect("auth state lock").scheme.clone();
        match scheme {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => Ok(self.basic()),
            Scheme::Bearer { realm, service } => {
                let cached = self
                    .auth
                    .lock()
                    .expect("auth state lock")
                    .tokens
                    .get(scope)
                    .filter(|t| t.is_fresh())
                    .map(|t| t.value.clone());
                let token = match cached {
                    Some(t) => t,
                    None => self.fetch_token(&realm, service.as_deref(), scope).await?,
                };
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// The `Basic` value for a username and password (an identity token has none).
    fn basic(&self) -> Option<String> {
        use base64::Engine as _;
        match &self.credentials {
            Some(Login::Password { username, password }) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }

    /// Learns the scheme from a 401's challenges and gets what the retry needs.
    async fn handle_challenge(
        &self,
        challenges: &[Challenge],
        scope: &Scope,
        sent_auth: bool,
        what: &str,
        detail: &str,
    ) -> Result<()> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .param("realm")
                .and_then(|r| Url::parse(r).ok())
                .ok_or_else(|| {
                    self.error(
                        ErrorKind::Invalid,
                        format!("{what}: bearer challenge without a valid realm"),
                    )
                })?;
            self.check_scheme(&realm).map_err(|why| {
                self.error(
                    ErrorKind::Invalid,
                    format!("{what}: token realm {realm} refused: {why}"),
                )
            })?;
            let service = bearer.param("service").map(str::to_string);
            let mut wanted = scope.clone();
            if let Some(s) = bearer.param("scope") {
                for item in s.split(' ').filter(|s| !s.is_empty()) {
                    wanted.add(item.to_string());
                }
            }
            {
                let mut state = self.auth.lock().expect("auth state lock");
                state.scheme = Scheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                };
                // The token we sent (if any) was not good enough: forget it.
                state.tokens.remove(scope);
            }
            let token = self
                .fetch_token(&realm, service.as_deref(), &wanted)
                .await?;
            if &wanted != scope {
                // Requests for `scope` retry with the wider token.
                self.auth
                    .lock()
                    .expect("auth state lock")
                    .tokens
                    .insert(scope.clone(), Token::new(token, Some(60)));
            }
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if self.basic().is_none() {
                return Err(self.unauthorized(&format!("{what}: credentials required{detail}")));
            }
            if sent_auth {
                return Err(self.unauthorized(&format!("{what}: credentials rejected{detail}")));
            }
            self.auth.lock().expect("auth state lock").scheme = Scheme::Basic;
            return Ok(());
        }
        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(self.error(
            ErrorKind::Unsupported,
            format!(
                "{what}: unsupported authentication scheme {}",
                schemes.join(", ")
            ),
        ))
    }

    /// Gets a token for `scope` from `realm` and caches it: with an identity token by the
    /// OAuth2 POST refresh-token grant (CRED-5), else by GET with Basic credentials when
    /// configured.
    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<String> {
        let mut url = realm.clone();
        let refresh = match &self.credentials {
            Some(Login::IdentityToken(token)) => Some(token.as_str()),
            _ => None,
        };
        if refresh.is_none() {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scope.items() {
                q.append_pair("scope", s);
            }
        }
        let what = format!("token from {realm}");
        let mut attempt = 0;
        let resp = loop {
            let rb = match refresh {
                Some(token) => self
                    .http(&url)?
                    .post(url.clone())
                    .form(&super::credentials::refresh_form(token, service, scope)),
                None => match self.basic() {
                    Some(b) => self.http(&url)?.get(url.clone()).header(AUTHORIZATION, b),
                    None => self.http(&url)?.get(url.clone()),
                },
            };
            match rb.send().await {
                Ok(r)
                    if (r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt + 1 < MAX_ATTEMPTS =>
                {
                    tokio::time::sleep(retry_after(&r).unwrap_or_else(|| backoff(attempt))).await;
                }
                Ok(r) => break r,
                Err(e) if attempt + 1 < MAX_ATTEMPTS && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    let method = if refresh.is_some() {
                        Method::POST
                    } else {
                        Method::GET
                    };
                    return Err(self.transport_error(&method, realm, &e));
                }
            }
            attempt += 1;
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let why = if self.credentials.is_some() {
                "credentials rejected"
            } else {
                "credentials required"
            };
            return Err(self.unauthorized(&format!("{what}: {status}: {why}")));
        }
        if !status.is_success() {
            let kind = if status.is_server_error() {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Invalid
            };
            let detail = registry_error(resp).await;
            return Err(self.error(kind, format!("{what}: {status}{detail}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = read_limited(resp, 1 << 20)
            .await
            .map_err(|e| self.error(ErrorKind::Unavailable, format!("{what}: {e}")))?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            self.error(
                ErrorKind::Invalid,
                format!("{what}: bad token response: {e}"),
            )
        })?;
        let value = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.error(ErrorKind::Invalid, format!("{what}: response has no token"))
            })?;
        self.auth
            .lock()
            .expect("auth state lock")
            .tokens
            .insert(scope.clone(), Token::new(value.clone(), parsed.expires_in));
        Ok(value)
    }

    /// A transport failure (no HTTP answer) as an error naming the URL.
    pub fn transport_error(&self, method: &Method, url: &Url, e: &reqwest::Error) -> Error {
        let what = if e.is_connect() {
            format!("cannot connect to {url}")
        } else if e.is_timeout() {
            format!("{method} {url}: timed out")
        } else {
            format!("{method} {url}")
        };
        self.error(ErrorKind::Unavailable, format!("{what}: {}", root_cause(e)))
    }

    /// The error for an unexpected status: NotFound for 404, Unavailable for 5xx/429,
    /// Invalid otherwise, with the registry's own error text.
    pub async fn status_error(&self, resp: Response, what: &str) -> Error {
        let status = resp.status();
        let url = resp.url().clone();
        let detail = registry_error(resp).await;
        let kind = match status {
            StatusCode::NOT_FOUND => {
                return Error::not_found(&self.source, format!("{what}{detail}"))
            }
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::Unavailable,
            s if s.is_server_error() => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        };
        self.error(kind, format!("{what}: {status} from {url}{detail}"))
    }
}

/// The challenges of a response's `WWW-Authenticate` headers.
fn challenges(resp: &Response) -> Vec<Challenge> {
    resp.headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

/// A short one-line description of an error response to append to a message:
/// ` (CODE: message)` from the registry's `errors`, or the start of the body, or nothing.
pub(crate) async fn registry_error(resp: Response) -> String {
    let body = read_limited(resp, ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let text = match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|e| match (&e.code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (None, None) => "error".into(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body).trim().to_string(),
    };
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.chars().count() {
        0 => String::new(),
        n if n > 200 => format!(" ({}…)", one_line.chars().take(200).collect::<String>()),
        _ => format!(" ({one_line})"),
    }
}

/// Reads at most `limit` bytes of a body; more is an error.
pub(crate) async fn read_limited(
    resp: Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| chain(&e))?;
        if out.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The delay before retry number `attempt + 1`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    BACKOFF_START * 2u32.pow(attempt.min(5))
}

/// The `Retry-After` of a response in seconds, capped.
fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// An error and its sources on one line, e.g. `error sending request: connection refused`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// The innermost source of an error (e.g. `Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(s) = cause.source() {
        cause = s;
    }
    cause.to_string().replace('\n', " ")
}

/// `host[:port]` of a URL, as written in image names and `ferry login`.
pub(crate) fn host_port(url: &Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Whether `host` (without port; IPv6 in brackets or bare) is a loopback host.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognized() {
        for h in [
            "localhost",
            "127.0.0.1",
            "127.3.4.5",
            "[::1]",
            "::1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "example.com",
            "10.0.0.1",
            "[::2]",
            "localhost.example.com",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn host_port_keeps_ports_and_brackets() {
        assert_eq!(
            host_port(&Url::parse("http://127.0.0.1:5000/").unwrap()),
            "127.0.0.1:5000"
        );
        assert_eq!(
            host_port(&Url::parse("https://r.example.com/").unwrap()),
            "r.example.com"
        );
        assert_eq!(
            host_port(&Url::parse("http://[::1]:5000/").unwrap()),
            "[::1]:5000"
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert!(backoff(100) <= Duration::from_secs(7));
    }
}

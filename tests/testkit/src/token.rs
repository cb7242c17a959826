//! A tiny bearer-token server (the Docker token protocol) issuing ES256 JWTs that CNCF
//! distribution trusts, and the minimal HTTP/1.1 server it runs on.
//!
//! Synchronous (std threads): usable from plain and async tests alike.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;

/// The issuer name tokens carry (the registry config must name the same).
pub const ISSUER: &str = "ferry-testkit-issuer";
/// The service name tokens are issued for (the registry config must name the same).
pub const SERVICE: &str = "ferry-test-registry";

/// One HTTP request as the stub server saw it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query exactly as sent, e.g. `/token?scope=…`.
    pub target: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (as long as `Content-Length` said).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The decoded query parameters, in order (repeated names kept).
    pub fn query(&self) -> Vec<(String, String)> {
        match self.target.split_once('?') {
            Some((_, q)) => url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// `(username, password)` from a `Basic` Authorization header, if valid.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let (scheme, b64) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
        let (u, p) = raw.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

/// One HTTP response for the stub server to send.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Extra headers (`Connection: close` and, unless close-delimited, `Content-Length`
    /// are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Send no `Content-Length`: the body ends when the connection closes.
    pub close_delimited: bool,
}

impl HttpResponse {
    /// A response with `status`, no extra headers and `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            close_delimited: false,
        }
    }

    /// The same response without `Content-Length` (the body ends at connection close).
    pub fn close_delimited(mut self) -> Self {
        self.close_delimited = true;
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1 (one thread, one request per connection) that
/// answers every request with a handler; stopped on drop.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts serving `handler` on a free port of 127.0.0.1.
    pub fn start<F>(handler: F) -> io::Result<Self>
    where
        F: Fn(&HttpRequest) -> HttpResponse + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    // A broken client must not stop the server.
                    let _ = serve_one(conn, &handler);
                }
            }
        });
        Ok(HttpServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one<F>(conn: TcpStream, handler: &F) -> io::Result<()>
where
    F: Fn(&HttpRequest) -> HttpResponse,
{
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let mut req = HttpRequest {
        method: method.to_string(),
        target: target.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            req.headers
                .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        (&mut reader).take(len).read_to_end(&mut req.body)?;
    }
    let resp = handler(&req);
    let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (n, v) in &resp.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !resp.close_delimited {
        out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut conn = conn;
    conn.write_all(out.as_bytes())?;
    if req.method != "HEAD" {
        conn.write_all(&resp.body)?;
    }
    conn.flush()
}

/// Who may get which actions from the token server.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// The one user that may log in.
    pub username: String,
    /// Its password.
    pub password: String,
    /// Actions the logged-in user is granted (intersected with what is asked).
    pub user_actions: Vec<String>,
    /// Actions granted without credentials (intersected with what is asked).
    pub anonymous_actions: Vec<String>,
    /// A refresh token the OAuth2 POST grant accepts in place of the user's password.
    pub refresh_token: Option<String>,
}

impl TokenPolicy {
    /// `username`/`password` get pull and push; anonymous clients get pull.
    pub fn new(username: &str, password: &str) -> Self {
        TokenPolicy {
            username: username.to_string(),
            password: password.to_string(),
            user_actions: vec!["pull".into(), "push".into()],
            anonymous_actions: vec!["pull".into()],
            refresh_token: None,
        }
    }

    /// The same policy also accepting `token` in the OAuth2 refresh-token grant
    /// (`POST /token`, distribution's token spec) for the user's actions.
    pub fn refresh_token(mut self, token: &str) -> Self {
        self.refresh_token = Some(token.to_string());
        self
    }

    /// The same policy granting the user only `actions` (e.g. `["pull"]` to test denial).
    pub fn user_actions(mut self, actions: &[&str]) -> Self {
        self.user_actions = actions.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The same policy granting anonymous clients only `actions` (`[]`: none).
    pub fn anonymous_actions(mut self, actions: &[&str]) -> Self {
        self.anonymous_actions = actions.iter().map(|a| a.to_string()).collect();
        self
    }
}

/// A running token server: `GET /token?service=…&scope=…` with optional Basic credentials,
/// and `POST /token` with the OAuth2 refresh-token grant when the policy has a refresh token.
pub struct TokenServer {
    server: HttpServer,
    requests: Arc<AtomicUsize>,
    grants: Arc<AtomicUsize>,
}

impl TokenServer {
    /// Starts a token server signing with the key in `key_pem` (PKCS#8) whose certificate
    /// is `cert_pem`; both made by [`make_signing_cert`].
    pub fn start(policy: TokenPolicy, key_pem: &Path, cert_pem: &Path) -> io::Result<Self> {
        let key_text = std::fs::read_to_string(key_pem)?;
        let key = SigningKey::from_pkcs8_pem(&key_text)
            .map_err(|e| io::Error::other(format!("{}: {e}", key_pem.display())))?;
        let cert_der = pem_body(&std::fs::read_to_string(cert_pem)?)?;
        let requests = Arc::new(AtomicUsize::new(0));
        let grants = Arc::new(AtomicUsize::new(0));
        let (counter, granted) = (requests.clone(), grants.clone());
        let server = HttpServer::start(move |req| {
            counter.fetch_add(1, Ordering::SeqCst);
            let resp = issue(req, &policy, &key, &cert_der);
            if req.method == "POST" && resp.status == 200 {
                granted.fetch_add(1, Ordering::SeqCst);
            }
            resp
        })?;
        Ok(TokenServer {
            server,
            requests,
            grants,
        })
    }

    /// The realm URL to put in the registry config.
    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// How many token requests were served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// How many tokens were granted for a refresh token (`POST /token`) so far.
    pub fn refresh_grants(&self) -> usize {
        self.grants.load(Ordering::SeqCst)
    }
}

/// Writes a P-256 key (`key.pem`, PKCS#8) and a self-signed certificate (`cert.pem`) into
/// `dir` with the `openssl` CLI.
pub fn make_signing_cert(dir: &Path) -> io::Result<()> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=ferry-testkit-token-issuer",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn pem_body(pem: &str) -> io::Result<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD
        .decode(b64)
        .map_err(|e| io::Error::other(format!("bad PEM: {e}")))
}

fn issue(
    req: &HttpRequest,
    policy: &TokenPolicy,
    key: &SigningKey,
    cert_der: &[u8],
) -> HttpResponse {
    if req.path() != "/token" {
        return HttpResponse::new(404, "no such endpoint");
    }
    let json = |status: u16, body: &str| {
        HttpResponse::new(status, body.to_string()).header("Content-Type", "application/json")
    };
    // The OAuth2 grant (POST, form body) names its scopes space-separated in one `scope`;
    // the GET flow repeats `scope=` in the query.
    let (allowed, scopes, subject): (&Vec<String>, Vec<String>, String) = if req.method == "POST" {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
            .into_owned()
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if field("grant_type") != Some("refresh_token")
            || field("client_id").is_none_or(str::is_empty)
            || field("service") != Some(SERVICE)
        {
            return json(400, r#"{"error":"invalid_request"}"#);
        }
        match (&policy.refresh_token, field("refresh_token")) {
            (Some(want), Some(got)) if want == got => {}
            _ => return json(401, r#"{"error":"invalid_grant"}"#),
        }
        let scopes = field("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        (&policy.user_actions, scopes, policy.username.clone())
    } else {
        let allowed = match (req.header("authorization"), req.basic_credentials()) {
            (None, _) => &policy.anonymous_actions,
            (Some(_), Some((u, p))) if u == policy.username && p == policy.password => {
                &policy.user_actions
            }
            _ => return json(401, r#"{"details":"invalid credentials"}"#),
        };
        let scopes = req
            .query()
            .into_iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v)
            .collect();
        let subject = req.basic_credentials().map(|(u, _)| u).unwrap_or_default();
        (allowed, scopes, subject)
    };
    let mut access = Vec::new();
    for scope in &scopes {
        // `repository:NAME:a,b` (NAME has no ':' in our tests; a port would not be there).
        let mut parts = scope.rsplitn(2, ':');
        let (Some(actions), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((kind, name)) = rest.split_once(':') else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| allowed.iter().any(|x| x == a))
            .collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    static JTI: AtomicUsize = AtomicUsize::new(0);
    let header =
        serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("ferry-{now}-{}", JTI.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: Signature = key.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    HttpResponse::new(200, body.to_string()).header("Content-Type", "application/json")
}

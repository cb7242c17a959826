//! Registry authentication: `WWW-Authenticate` challenges, token scopes, and the
//! per-driver state (which scheme the registry wants, tokens cached per scope).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use url::Url;

/// One challenge of a `WWW-Authenticate` header: a scheme and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased (`basic`, `bearer`).
    pub scheme: String,
    /// Parameters with lowercased names, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value into its challenges (RFC 7235: several challenges,
/// quoted values with escapes, commas inside quotes).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let bytes = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_sep = |b: u8| b == b' ' || b == b'\t' || b == b',';
    let token_end = |mut j: usize| {
        while j < bytes.len() && !is_sep(bytes[j]) && bytes[j] != b'=' {
            j += 1;
        }
        j
    };
    // Whether the last thing read was a scheme with only blanks after it (so a following
    // non-parameter word is its token68, not a new scheme).
    let mut after_scheme = false;
    loop {
        while i < bytes.len() && is_sep(bytes[i]) {
            after_scheme &= bytes[i] != b',';
            i += 1;
        }
        if i >= bytes.len() {
            return out;
        }
        let end = token_end(i);
        let word = &header[i..end];
        i = end;
        let mut j = i;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let mut equals = 0;
        while j + equals < bytes.len() && bytes[j + equals] == b'=' {
            equals += 1;
        }
        if word.is_empty() || equals > 1 || (equals == 0 && after_scheme) {
            // token68 (`Negotiate abc==`) or stray '=': not used by registries, skipped up
            // to what follows it (a char boundary: blanks and '=' are ASCII).
            i = j + equals;
            after_scheme = false;
            continue;
        }
        if equals == 0 {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: Vec::new(),
            });
            after_scheme = true;
            continue;
        }
        after_scheme = false;
        i = j + 1;
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let value = if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut v = String::new();
            let mut chars = header[i..].char_indices();
            let mut consumed = header.len() - i;
            while let Some((k, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        consumed = k + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            i += consumed;
            v
        } else {
            let end = token_end(i);
            let v = header[i..end].to_string();
            i = end;
            v
        };
        if let Some(last) = out.last_mut() {
            last.params.push((word.to_ascii_lowercase(), value));
        }
    }
}

/// The access a request needs, in token-scope strings like `repository:team/app:pull`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct Scope(Vec<String>);

impl Scope {
    /// No repository access (`/v2/` itself).
    pub fn none() -> Self {
        Scope(Vec::new())
    }

    /// Pull access to `repo`.
    pub fn pull(repo: &str) -> Self {
        Scope(vec![format!("repository:{repo}:pull")])
    }

    /// Push and pull access to `repo`.
    pub fn push(repo: &str) -> Self {
        Scope(vec![format!("repository:{repo}:pull,push")])
    }

    /// This scope plus pull access to `repo` (for cross-repository mounts).
    pub fn and_pull(mut self, repo: &str) -> Self {
        self.add(format!("repository:{repo}:pull"));
        self
    }

    /// This scope plus `scope`, if not already in it.
    pub fn add(&mut self, scope: String) {
        if !self.0.contains(&scope) {
            self.0.push(scope);
        }
    }

    /// The scope strings, for `scope=` query parameters.
    pub fn items(&self) -> &[String] {
        &self.0
    }
}

/// What the registry asked for, as learned from its challenges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Scheme {
    /// Nothing asked yet: send requests bare.
    #[default]
    Unknown,
    /// HTTP Basic with the configured credentials.
    Basic,
    /// Bearer tokens from `realm` for `service`.
    Bearer {
        /// The token endpoint.
        realm: Url,
        /// The `service` parameter, if the registry named one.
        service: Option<String>,
    },
}

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// The token itself.
    pub value: String,
    /// When it is considered stale.
    pub stale_at: Instant,
}

impl Token {
    /// A token valid for `expires_in` seconds (60 when the server did not say), used until
    /// shortly before then.
    pub fn new(value: String, expires_in: Option<u64>) -> Self {
        let secs = expires_in.unwrap_or(60).max(1);
        let margin = (secs / 10).clamp(1, 30);
        Token {
            value,
            stale_at: Instant::now() + Duration::from_secs(secs.saturating_sub(margin).max(1)),
        }
    }

    /// Whether the token may still be sent.
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.stale_at
    }
}

/// Per-driver auth state: the scheme and the token cache, keyed by scope.
#[derive(Debug, Default)]
pub(crate) struct AuthState {
    /// The scheme the registry asked for.
    pub scheme: Scheme,
    /// Tokens by scope.
    pub tokens: HashMap<Scope, Token>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_quoted_commas() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("service"), Some("registry.example.com"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn parses_several_challenges_escapes_and_bare_values() {
        let c = parse_challenges(
            r#"Basic realm="say \"hi\", ok", Bearer realm=https://x/t, error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"say "hi", ok"#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://x/t"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn parses_bare_scheme_and_token68() {
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
        let c = parse_challenges("Negotiate abc==, Basic realm=x");
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "basic"]);
        assert_eq!(c[1].param("realm"), Some("x"));
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn token68_before_non_ascii_text_is_skipped_whole() {
        // Found by the http_headers fuzz target: skipping one byte past a token68 cut a
        // multi-byte character in two, and slicing there panicked.
        let c = parse_challenges("Negotiate abc é realm=x");
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["negotiate", "é"]);
        assert_eq!(c[1].param("realm"), Some("x"));
        let crash = parse_challenges("-   \u{1}\0\0\0\0\0\0)\\  \u{6fe}  z  -");
        let schemes: Vec<&str> = crash.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["-", "\u{6fe}", "-"]);
    }

    #[test]
    fn scopes_merge_without_duplicates() {
        let s = Scope::push("a").and_pull("b").and_pull("b");
        assert_eq!(s.items(), ["repository:a:pull,push", "repository:b:pull"]);
        assert!(Scope::none().items().is_empty());
    }
}

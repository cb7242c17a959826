//! HTTP Basic auth against an htpasswd file of bcrypt entries (`htpasswd -B`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// Most successful logins remembered (so bcrypt runs once per user and password).
const MAX_REMEMBERED: usize = 1024;

/// Users and their bcrypt hashes, from an htpasswd file.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// SHA-256 of `user:password` pairs that verified, so bcrypt is not run per request.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Htpasswd {
    /// Reads `path`: lines `user:$2y$…` (bcrypt only); blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Htpasswd, Error> {
        let bad = |reason: String| Error::File {
            what: "htpasswd file",
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses htpasswd text; the error names the line.
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", i + 1))?;
            if !["$2a$", "$2b$", "$2y$", "$2x$"]
                .iter()
                .any(|p| hash.starts_with(p))
            {
                return Err(format!(
                    "line {}: user {user:?} has no bcrypt hash (create entries with `htpasswd -B`)",
                    i + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether an `Authorization` header value carries Basic credentials of a listed user.
    ///
    /// Blocks for a bcrypt verification the first time a user/password pair is seen.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let Some(hash) = self.users.get(&user) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if self.verified.lock().expect("auth cache").contains(&key) {
            return true;
        }
        if !bcrypt::verify(&password, hash).unwrap_or(false) {
            return false;
        }
        let mut verified = self.verified.lock().expect("auth cache");
        if verified.len() >= MAX_REMEMBERED {
            verified.clear();
        }
        verified.insert(key);
        true
    }
}

/// `(user, password)` of a `Basic` authorization value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn bcrypt_entries_check_basic_credentials() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let file = Htpasswd::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        assert!(file.check(Some(&header("alice", "s3cret"))));
        // Second time from the cache.
        assert!(file.check(Some(&header("alice", "s3cret"))));
        assert!(!file.check(Some(&header("alice", "wrong"))));
        assert!(!file.check(Some(&header("bob", "s3cret"))));
        assert!(!file.check(Some("Bearer abc")));
        assert!(!file.check(None));
    }

    #[test]
    fn non_bcrypt_entries_are_refused_with_their_line() {
        let err = Htpasswd::parse("alice:{SHA}abc\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(Htpasswd::parse("\n# nothing\n").is_err());
        assert!(Htpasswd::parse("no-colon\n")
            .unwrap_err()
            .contains("line 1"));
    }
}

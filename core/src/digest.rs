//! Content digests (`algorithm:hex`) and incremental hashing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha512};

use crate::Error;

/// A hash algorithm ferry accepts in digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, required by the OCI specs and ferry's default.
    Sha256,
    /// SHA-512, accepted when a manifest uses it.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as written in a digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Number of lowercase hex characters of an encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest: `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses and validates a digest string, naming the bad part on error.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidDigest {
            digest: truncate(s),
            reason: why.to_string(),
        };
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between algorithm and hex"))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(bad(&format!("unsupported algorithm {other:?}"))),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(bad(&format!(
                "{} needs {} hex characters, got {}",
                alg,
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("hex part must be lowercase 0-9a-f"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The digest of `data` under `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, data)
    }

    /// The hash algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters, for tables.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = Error;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, Error> {
        Digest::parse(d.as_ref())
    }
}

impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        // A validated ferry digest is always a valid OCI digest.
        d.to_string()
            .parse()
            .expect("validated digest is a valid OCI digest")
    }
}

/// Incremental hasher producing a [`Digest`].
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::sha256(b""));
        assert_eq!(d.short(), "e3b0c44298fc");
    }

    #[test]
    fn accepts_sha512() {
        let d = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert_eq!(d.hex().len(), 128);
    }

    #[test]
    fn rejects_bad_digests_naming_the_problem() {
        for (input, needle) in [
            ("sha256", "missing ':'"),
            ("md5:abcd", "unsupported algorithm"),
            ("sha256:abc", "needs 64 hex"),
            (
                &EMPTY.to_uppercase().replace("SHA256", "sha256"),
                "lowercase",
            ),
            (&format!("{}g", &EMPTY[..EMPTY.len() - 1]), "lowercase"),
        ] {
            let err = Digest::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }
}

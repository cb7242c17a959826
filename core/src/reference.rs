//! Image references in the docker grammar: `[host[:port]/]path[:tag][@digest]`.
//!
//! Short names are normalized the way docker does it: `busybox` is
//! `docker.io/library/busybox:latest`.

use std::fmt;
use std::str::FromStr;

use crate::{Digest, Error};

/// Registry host used for names without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A fully qualified image reference.
///
/// Always has a registry and a repository; has a tag, a digest or both (the
/// digest wins for fetching content, the tag is kept as the name).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes a reference, naming the bad part on error.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let bad = |part: &str, reason: String| Error::InvalidReference {
            reference: input.chars().take(300).collect(),
            part: part.chars().take(140).collect(),
            reason,
        };
        if input.is_empty() {
            return Err(bad("", "empty reference".into()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|e| bad(d, e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| bad(tag, r))?;
        }
        let (registry, path) = split_registry(name);
        if let Some(reg) = registry {
            validate_registry(reg).map_err(|r| bad(reg, r))?;
        }
        if path.is_empty() {
            return Err(bad(name, "missing repository path".into()));
        }
        for component in path.split('/') {
            validate_component(component).map_err(|r| bad(component, r))?;
        }
        let mut registry = registry.unwrap_or(DEFAULT_REGISTRY).to_string();
        if registry == "index.docker.io" {
            registry = DEFAULT_REGISTRY.to_string();
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad(
                name,
                format!("name longer than {MAX_NAME_LEN} characters"),
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// A reference built from parts that were validated elsewhere (a name and a tag or digest).
    pub fn with_name(
        name: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<Self, Error> {
        let mut s = name.to_string();
        if let Some(t) = tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        Reference::parse(&s)
    }

    /// The registry host (with port, if any), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The full name without tag or digest, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// This reference with the digest pinned (the tag is kept).
    pub fn pinned(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag longer than {MAX_TAG_LEN} characters"));
    }
    let mut bytes = tag.bytes();
    let first = bytes.next().unwrap_or(b'.');
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err("tag must start with a letter, digit or '_'".into());
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err("tag may only contain letters, digits, '_', '.' and '-'".into());
    }
    Ok(())
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 address".to_string())?;
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address".to_string())?;
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| "junk after IPv6 address".to_string())?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("empty registry host".into());
        }
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(
                    "registry host must be dot-separated letters, digits and inner '-'".into(),
                );
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("registry port must be a number".into());
        }
        if port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535) {
            return Err("registry port out of range".into());
        }
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty path component".into());
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.iter().any(|x| x.is_ascii_uppercase()) {
        return Err("repository names must be lowercase".into());
    }
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("path components must start and end with a lowercase letter or digit".into());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(format!("invalid separator {sep:?} in path component"));
        }
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_docker_hub_short_names() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("user/app:1"), "docker.io/user/app:1");
        assert_eq!(
            norm("index.docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn keeps_registry_with_port_and_nested_paths() {
        let r = Reference::parse("127.0.0.1:5000/a/b-c/d__e:v1.2").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b-c/d__e");
        assert_eq!(r.tag(), Some("v1.2"));
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
    }

    #[test]
    fn digest_references_have_no_default_tag() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        let both = Reference::parse(&format!("busybox:1@{D}")).unwrap();
        assert_eq!(both.tag(), Some("1"));
        assert!(both.digest().is_some());
        assert_eq!(both.to_string(), format!("docker.io/library/busybox:1@{D}"));
    }

    #[test]
    fn bad_references_name_the_bad_part() {
        for (input, part) in [
            ("Busybox", "Busybox"),
            ("reg.io/Upper/x", "Upper"),
            ("x:-tag", "-tag"),
            ("a//b", ""),
            ("x@sha256:12", "sha256:12"),
            ("reg.io:99999/x", "reg.io:99999"),
            ("a/b_-c", "b_-c"),
            ("-a", "-a"),
            ("", ""),
        ] {
            let err = Reference::parse(input).unwrap_err();
            match &err {
                Error::InvalidReference { part: p, .. } => assert_eq!(p, part, "{input}: {err}"),
                other => panic!("{input}: unexpected {other}"),
            }
        }
        let long = format!("reg.io/{}", "a".repeat(300));
        assert!(Reference::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than"));
        let tag = format!("x:{}", "t".repeat(129));
        assert!(Reference::parse(&tag)
            .unwrap_err()
            .to_string()
            .contains("tag longer"));
    }
}

//! How image names in the store map to repositories of the distribution API (SERVE-2).
//!
//! A repository is an image name without its host: `docker.io/library/busybox` is served as
//! `library/busybox`, `127.0.0.1:5000/team/app` as `team/app`. Several hosts may hold the
//! same path; they are one repository, searched in name order.

use axum::http::StatusCode;
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Reference};

use crate::error::{ApiError, ApiResult};

/// Host of the names that pushes create when the store has no name for the repository.
pub const PUSH_HOST: &str = "localhost";

/// The repository path of a full image name (the name without its host).
pub fn repository_of(name: &str) -> &str {
    name.split_once('/').map_or(name, |(_, path)| path)
}

/// Checks a repository path against the distribution grammar.
pub fn validate_repository(repo: &str) -> Result<(), ApiError> {
    if repo.is_empty() {
        return Err(ApiError::name_invalid(repo, "empty"));
    }
    match Reference::parse(&format!("{PUSH_HOST}/{repo}")) {
        Ok(r) if r.repository() == repo && r.tag() == Some(ferry_core::reference::DEFAULT_TAG) => {
            Ok(())
        }
        Ok(_) => Err(ApiError::name_invalid(repo, "not a plain repository path")),
        Err(e) => Err(ApiError::name_invalid(repo, &e.to_string())),
    }
}

/// A snapshot of the store's image records, with repository lookups.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Every record, sorted by name, tag (digest-only records first), digest.
    pub images: Vec<ImageRecord>,
}

impl Catalog {
    /// Records of every name whose repository is `repo`, in name order.
    pub fn records<'a>(&'a self, repo: &str) -> impl Iterator<Item = &'a ImageRecord> + 'a {
        let repo = repo.to_string();
        self.images
            .iter()
            .filter(move |r| repository_of(&r.name) == repo)
    }

    /// Whether the store names any image in `repo`.
    pub fn has_repository(&self, repo: &str) -> bool {
        self.records(repo).next().is_some()
    }

    /// The record of `repo:tag`: the first name (in order) whose repository is `repo` with
    /// that tag.
    pub fn tagged(&self, repo: &str, tag: &str) -> Option<&ImageRecord> {
        self.records(repo).find(|r| r.tag.as_deref() == Some(tag))
    }

    /// The record of a full name and tag.
    pub fn named(&self, name: &str, tag: &str) -> Option<&ImageRecord> {
        self.images
            .iter()
            .find(|r| r.name == name && r.tag.as_deref() == Some(tag))
    }

    /// The tags of `repo`, sorted and without duplicates.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let mut tags: Vec<String> = self.records(repo).filter_map(|r| r.tag.clone()).collect();
        tags.sort();
        tags.dedup();
        tags
    }

    /// Every repository, sorted and without duplicates.
    pub fn repositories(&self) -> Vec<String> {
        let mut repos: Vec<String> = self
            .images
            .iter()
            .map(|r| repository_of(&r.name).to_string())
            .collect();
        repos.sort();
        repos.dedup();
        repos
    }

    /// The name a push to `repo` writes: the first stored name of that repository (the one
    /// reads find first), else `localhost/<repo>`.
    pub fn push_name(&self, repo: &str) -> String {
        self.records(repo)
            .next()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("{PUSH_HOST}/{repo}"))
    }
}

/// One page of a sorted list: entries after `last`, at most `n` (all when `n` is absent).
///
/// Returns the page and whether more entries follow.
pub fn page(all: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let start = match last {
        Some(last) => all.partition_point(|t| t.as_str() <= last),
        None => 0,
    };
    let rest = &all[start..];
    match n {
        Some(n) if n < rest.len() => (rest[..n].to_vec(), true),
        _ => (rest.to_vec(), false),
    }
}

/// Parses a digest from a URL, as `DIGEST_INVALID`.
pub(crate) fn parse_digest(s: &str) -> ApiResult<Digest> {
    Digest::parse(s).map_err(|e| ApiError::digest_invalid(e.to_string()))
}

/// Checks a tag against the distribution grammar.
pub(crate) fn validate_tag(tag: &str) -> ApiResult<()> {
    match ferry_core::Reference::parse(&format!("localhost/x:{tag}")) {
        Ok(r) if r.tag() == Some(tag) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("invalid tag {tag:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Digest;

    fn record(name: &str, tag: Option<&str>) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            tag: tag.map(Into::into),
            digest: Digest::sha256(format!("{name}:{tag:?}").as_bytes()),
            media_type: ferry_core::media::OCI_MANIFEST.into(),
            size: 1,
            created: None,
            platform: None,
            updated: 0,
        }
    }

    #[test]
    fn repositories_are_names_without_hosts_searched_in_name_order() {
        let catalog = Catalog {
            images: vec![
                record("127.0.0.1:5000/team/app", Some("1")),
                record("docker.io/library/busybox", Some("latest")),
                record("quay.io/team/app", Some("1")),
                record("quay.io/team/app", Some("2")),
            ],
        };
        assert_eq!(catalog.repositories(), ["library/busybox", "team/app"]);
        assert_eq!(
            catalog.tagged("team/app", "1").unwrap().name,
            "127.0.0.1:5000/team/app"
        );
        assert_eq!(
            catalog.tagged("team/app", "2").unwrap().name,
            "quay.io/team/app"
        );
        assert_eq!(catalog.tags("team/app"), ["1", "2"]);
        assert!(!catalog.has_repository("team"));
        assert_eq!(catalog.push_name("team/app"), "127.0.0.1:5000/team/app");
        assert_eq!(catalog.push_name("new/one"), "localhost/new/one");
    }

    #[test]
    fn pages_follow_last_and_n() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            page(all.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            page(all.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(
            page(all.clone(), None, Some("c")),
            (vec!["d".into()], false)
        );
        assert_eq!(page(all, Some(0), None), (vec![], true));
    }

    #[test]
    fn repository_grammar_is_checked() {
        assert!(validate_repository("team/app").is_ok());
        assert!(validate_repository("library/busybox").is_ok());
        for bad in ["", "Team/app", "a//b", "a:b", "../x"] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }
}

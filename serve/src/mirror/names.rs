//! Which image a mirror request means (MIRROR-1): the three ways runtimes name the upstream
//! registry when they pull through a mirror.
//!
//! - containerd (`hosts.toml`) adds `?ns=REGISTRY` to every request: `REGISTRY/REPOSITORY`;
//! - podman and CRI-O (`registries.conf`, `location = "HOST:PORT/REGISTRY"`) put the registry
//!   first in the path: a first component that is a host (has a `.` or a `:`, or is
//!   `localhost`) is the registry;
//! - dockerd (`registry-mirrors`) mirrors docker.io only and sends `library/busybox`: any
//!   other path is a docker.io name.

use ferry_core::reference::DEFAULT_REGISTRY;
use ferry_core::Reference;

use crate::error::ApiError;

/// Spellings of Docker Hub that mean [`DEFAULT_REGISTRY`].
const DOCKER_HUB_ALIASES: [&str; 3] = ["registry-1.docker.io", "index.docker.io", "docker.io"];

/// The full image name of `repository` asked through the mirror, `ns` being containerd's
/// `?ns=` parameter; `NAME_INVALID` when the result is not a valid image name.
pub fn upstream_name(repository: &str, ns: Option<&str>) -> Result<String, ApiError> {
    let (registry, full) = match ns.filter(|ns| !ns.is_empty()) {
        Some(ns) => {
            let registry = if DOCKER_HUB_ALIASES.contains(&ns) {
                DEFAULT_REGISTRY
            } else {
                ns
            };
            (Some(registry), format!("{registry}/{repository}"))
        }
        None if names_registry(repository) => (None, repository.to_string()),
        None => (None, format!("{DEFAULT_REGISTRY}/{repository}")),
    };
    // The reference grammar normalizes docker.io names (`docker.io/busybox` is
    // `docker.io/library/busybox`) and refuses anything that is not a name; `ns` must be
    // the registry of the result, not a path.
    match Reference::parse(&full) {
        Ok(r)
            if r.tag() == Some(ferry_core::reference::DEFAULT_TAG)
                && r.digest().is_none()
                && registry.is_none_or(|registry| r.registry() == registry) =>
        {
            Ok(r.name())
        }
        _ => Err(ApiError::name_invalid(
            repository,
            &format!("{full:?} is not an image name"),
        )),
    }
}

/// Whether the first component of `repository` is a registry host, as podman puts it there.
fn names_registry(repository: &str) -> bool {
    match repository.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MIRROR-1: the names each runtime's requests mean.
    #[test]
    fn requests_of_each_runtime_name_their_upstream_image() {
        let name = |repo: &str, ns: Option<&str>| upstream_name(repo, ns).unwrap();
        // containerd
        assert_eq!(
            name("team/app", Some("registry.example.com")),
            "registry.example.com/team/app"
        );
        assert_eq!(
            name("library/busybox", Some("docker.io")),
            "docker.io/library/busybox"
        );
        assert_eq!(
            name("busybox", Some("registry-1.docker.io")),
            "docker.io/library/busybox"
        );
        assert_eq!(name("app", Some("127.0.0.1:5000")), "127.0.0.1:5000/app");
        // podman / CRI-O
        assert_eq!(
            name("registry.example.com/team/app", None),
            "registry.example.com/team/app"
        );
        assert_eq!(name("localhost/app", None), "localhost/app");
        assert_eq!(name("10.0.0.1:5000/x/y", None), "10.0.0.1:5000/x/y");
        // dockerd
        assert_eq!(name("library/busybox", None), "docker.io/library/busybox");
        assert_eq!(name("team/app", None), "docker.io/team/app");
        assert_eq!(name("busybox", None), "docker.io/library/busybox");
    }

    #[test]
    fn requests_that_name_no_image_are_name_invalid() {
        for (repo, ns) in [
            ("Team/App", None),
            ("a/b", Some("bad host!")),
            ("x", Some("a/b")),
            ("a//b", None),
        ] {
            let err = upstream_name(repo, ns).unwrap_err();
            assert_eq!(err.code, "NAME_INVALID", "{repo} {ns:?}");
        }
    }
}

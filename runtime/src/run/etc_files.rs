//! `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` of a container, written into its
//! directory and bind-mounted over the image's (specs/runtime.md RUN-37).

use std::path::{Path, PathBuf};

use crate::spec::NetMode;
use crate::{Error, Result};

/// The files, in mount order: (container path, name in the container directory).
pub(crate) const ETC_FILES: [(&str, &str); 3] = [
    ("/etc/resolv.conf", "resolv.conf"),
    ("/etc/hosts", "hosts"),
    ("/etc/hostname", "hostname"),
];

/// The host's resolver settings and hosts table, read when `--net host` asks for them.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
const HOST_HOSTS: &str = "/etc/hosts";

/// Writes the three files into `dir` and returns (container path, host file) pairs.
///
/// With the host's network they are the host's `resolv.conf` and `hosts` (a missing one
/// counts as empty); with none, a `hosts` of loopback entries and `hostname`, and a
/// `resolv.conf` that names no server.
pub(crate) fn write(dir: &Path, net: NetMode, hostname: &str) -> Result<Vec<(String, PathBuf)>> {
    let read_host = |path: &str| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::Io {
            op: "read",
            path: PathBuf::from(path),
            source: e,
        }),
    };
    let (resolv, hosts) = match net {
        NetMode::Host => (read_host(HOST_RESOLV_CONF)?, read_host(HOST_HOSTS)?),
        NetMode::None => (
            "# ferry: --net none, no name servers\n".to_string(),
            loopback_hosts(hostname),
        ),
    };
    let contents = [resolv, hosts, format!("{hostname}\n")];
    let mut files = Vec::new();
    for ((container, name), text) in ETC_FILES.iter().zip(contents) {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::Io {
            op: "write",
            path: path.clone(),
            source: e,
        })?;
        files.push((container.to_string(), path));
    }
    Ok(files)
}

/// A hosts table with only loopback addresses: `localhost`, the IPv6 names, and `hostname`.
fn loopback_hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_network_gets_loopback_names_and_no_resolver() {
        // RUN-37
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), NetMode::None, "box1").unwrap();
        let paths: Vec<&str> = files.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(paths, ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"]);
        let read = |name| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(!read("resolv.conf").contains("nameserver"));
        let hosts = read("hosts");
        assert!(hosts
            .lines()
            .all(|l| l.starts_with("127.") || l.starts_with("::1")));
        assert!(hosts.contains("\tbox1\n"));
        assert_eq!(read("hostname"), "box1\n");
    }

    #[test]
    fn host_network_gets_the_hosts_files() {
        // RUN-37
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), NetMode::Host, "h").unwrap();
        let host = std::fs::read_to_string(HOST_HOSTS).unwrap_or_default();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hosts")).unwrap(),
            host
        );
    }
}

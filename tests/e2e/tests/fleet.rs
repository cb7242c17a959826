//! A fleet of `ferry serve` nodes named by one DNS name (PEER-8): a puller whose peer
//! source is `http://NAME:PORT` gets pieces from every address the name resolves to.
//! Needs root (CI is root): the puller runs in a mount namespace of its own whose
//! /etc/hosts gives the name two loopback addresses.

use std::path::Path;
use std::process::Command;

use ferry_testkit::fixtures::{Fixtures, BIG};
use ferry_testkit::proxy::Proxy;
use ferry_testkit::registry::{Registry, RegistryOptions};
use ferry_testkit::serve::ServeNode;
use ferry_testkit::{ferry, ferry_bin, free_port, is_root, output, run_ok};

const NAME: &str = "registry.example.com/team/app";

/// Bytes process `pid` has written so far (files and sockets), from /proc/PID/io.
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn config(path: &Path, peers: &str, origin: &str) {
    std::fs::write(
        path,
        format!(
            "[[route]]\nprefix = \"registry.example.com/team\"\nsources = [\"peers\", \"origin\"]\n\n\
             [source.peers]\ndriver = \"peer\"\npeers = [\"{peers}\"]\n\n\
             [source.origin]\ndriver = \"registry\"\nurl = \"{origin}\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn one_dns_name_names_every_node_of_the_fleet() {
    if !is_root() {
        eprintln!("needs root (a mount namespace for /etc/hosts): skipping");
        return;
    }
    let fx = Fixtures::get();
    let registry = Registry::start(RegistryOptions::open()).unwrap();
    let digest = fx.push(BIG, &registry.host(), "team/app:1", false, None);
    let dir = tempfile::tempdir().unwrap();
    // Two nodes holding the image, on two loopback addresses with one port.
    let direct = dir.path().join("direct.toml");
    config(&direct, "http://127.0.0.1:1", &registry.url());
    let port = free_port();
    let nodes: Vec<ServeNode> = ["127.0.0.1", "127.0.0.2"]
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let root = dir.path().join(format!("node{i}"));
            run_ok(
                ferry(&root)
                    .arg("--config")
                    .arg(&direct)
                    .args(["pull", &format!("{NAME}:1")]),
            );
            ServeNode::start_at(&root, &format!("{ip}:{port}"), &[]).unwrap()
        })
        .collect();
    let before: Vec<u64> = nodes.iter().map(|n| written(n.pid())).collect();

    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 fleet.test\n127.0.0.2 fleet.test\n",
    )
    .unwrap();
    let origin = Proxy::start(&registry.host(), None);
    let fleet = dir.path().join("fleet.toml");
    config(
        &fleet,
        &format!("http://fleet.test:{port}"),
        &format!("http://{}", origin.host()),
    );
    let root = dir.path().join("puller");
    let script = format!(
        "mount --bind {hosts} /etc/hosts && exec {ferry} --root {root} --config {fleet} pull {NAME}:1",
        hosts = hosts.display(),
        ferry = ferry_bin().display(),
        root = root.display(),
        fleet = fleet.display(),
    );
    let out = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest));
    // Blobs came from the fleet, not the origin (which answers the tag only).
    assert!(
        origin.served_bytes() < 64 << 10,
        "origin sent {} bytes",
        origin.served_bytes()
    );
    // Both addresses of the name served pieces of the 16 MiB layer.
    for (node, was) in nodes.iter().zip(before) {
        let sent = written(node.pid()) - was;
        assert!(sent > 1 << 20, "node {} sent only {sent} bytes", node.url());
    }
}

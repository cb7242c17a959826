//! The peer driver against real `ferry serve` nodes: pieces spread over holders, wrong
//! pieces refetched, silent peers cost one timeout. Spec: specs/peer.md (PEER-n).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::Digest;
use ferry_drivers::sources::peer::{rank, PeerConfig, PeerDriver};
use ferry_drivers::{Driver, ErrorKind};
use ferry_testkit::conformance::{verified_read, Seed, BIG, EXAMPLE_HOST, REPOSITORY};
use ferry_testkit::proxy::Proxy;
use ferry_testkit::serve::{seed_store, tamper_blob, ServeNode};

fn name() -> String {
    format!("{EXAMPLE_HOST}/{REPOSITORY}")
}

/// `n` store roots holding the seed, each served by a node.
fn nodes(n: usize) -> (tempfile::TempDir, Vec<PathBuf>, Vec<ServeNode>) {
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<PathBuf> = (0..n)
        .map(|i| dir.path().join(format!("node{i}")))
        .collect();
    let nodes = roots
        .iter()
        .map(|root| {
            seed_store(root, Seed::get(), &name());
            ServeNode::start(root, &[]).unwrap()
        })
        .collect();
    (dir, roots, nodes)
}

fn driver(urls: &[String], tweak: impl FnOnce(&mut PeerConfig)) -> Arc<dyn Driver> {
    let mut config = PeerConfig::new("peers", urls.iter().map(|u| u.parse().unwrap()).collect());
    tweak(&mut config);
    Arc::new(PeerDriver::new(config).unwrap())
}

fn big_layer() -> (Digest, u64) {
    let layer = &Seed::get().image(BIG).layers[0];
    (layer.digest.clone(), layer.size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_pieces_spread_over_every_holder() {
    // PEER-4: rendezvous ranking gives each holder a share of the pieces.
    let (_dir, _roots, nodes) = nodes(2);
    let proxies: Vec<Proxy> = nodes
        .iter()
        .map(|n| Proxy::start(&n.host(), None))
        .collect();
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("http://{}", p.host()))
        .collect();
    let driver = driver(&urls, |_| {});
    let (digest, size) = big_layer();
    let read = verified_read(driver.as_ref(), &name(), &digest)
        .await
        .unwrap();
    assert_eq!(read, size);
    let served: Vec<u64> = proxies.iter().map(Proxy::served_bytes).collect();
    // 16 pieces of 4 MiB: each holder serves some (all on one: probability 2^-15).
    for s in &served {
        assert!(
            *s >= 4 << 20 && *s < size,
            "one holder served everything of {size} bytes: {served:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_piece_is_refetched_from_another_holder() {
    // PEER-3, PEER-4: the holder asked first for piece 2 announced the right table, then its
    // bytes changed; the piece comes from the other holder and the blob verifies.
    let (_dir, roots, nodes) = nodes(2);
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_string()).collect();
    let labels: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (digest, _) = big_layer();
    let bad = rank(&labels, &digest, 2)[0];
    let warm = driver(&urls[bad..=bad], |_| {});
    // Warm the bad node's piece table with a one-byte read (a ranged read uses the table).
    let body = warm
        .fetch_blob(
            &name(),
            &digest,
            ferry_drivers::ByteRange {
                offset: 0,
                len: Some(1),
            },
        )
        .await
        .unwrap();
    drop(body);
    let mut bytes = Seed::get().read_blob(&digest);
    bytes[2 * (4 << 20) + 17] ^= 0x01;
    tamper_blob(&roots[bad], &digest, &bytes);

    let driver = driver(&urls, |_| {});
    let read = verified_read(driver.as_ref(), &name(), &digest)
        .await
        .unwrap();
    assert_eq!(read, bytes.len() as u64);

    // Alone, the bad node cannot serve the blob: the piece is refused as corrupt.
    let alone = driver_alone(&urls[bad]);
    let err = verified_read(alone.as_ref(), &name(), &digest)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");
    assert!(err.message.contains("digest mismatch"), "{err}");
}

fn driver_alone(url: &str) -> Arc<dyn Driver> {
    driver(&[url.to_string()], |_| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_costs_one_timeout_per_pull() {
    // PEER-5: a peer that accepts connections and never answers is skipped after its first
    // timeout; every later blob goes straight to the live peer.
    let (_dir, _roots, nodes) = nodes(1);
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let urls = vec![silent_url, nodes[0].url().to_string()];
    let driver = driver(&urls, |c| {
        c.stall_timeout = Duration::from_secs(1);
        c.connect_timeout = Duration::from_secs(1);
    });
    let seed = Seed::get();
    let started = Instant::now();
    for image in seed.images() {
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let read = verified_read(driver.as_ref(), &name(), &blob.digest)
                .await
                .unwrap();
            assert_eq!(read, blob.size);
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "{elapsed:?}: the silent peer cost more than one timeout"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_do_not_resolve_tags_in_routes_unless_the_name_is_signed() {
    // PEER-6: the route's resolvers leave peer sources out.
    let config = ferry_drivers::site::config::SiteConfig::parse(
        "[[route]]\nprefix = \"registry.example.com\"\nsources = [\"peers\", \"origin\"]\n\
         [source.peers]\ndriver = \"peer\"\npeers = [\"http://127.0.0.1:1\"]\n\
         [source.origin]\ndriver = \"registry\"\nurl = \"http://127.0.0.1:2\"\n",
        "sites.toml",
    )
    .unwrap();
    let reference = ferry_core::Reference::parse("registry.example.com/team/app:1").unwrap();
    let sources = ferry_drivers::site::route::sources_for(&config, &reference).unwrap();
    let content: Vec<&str> = sources.content.iter().map(|d| d.source_name()).collect();
    let resolve: Vec<&str> = sources.resolve.iter().map(|d| d.source_name()).collect();
    assert_eq!(content, ["peers", "origin"]);
    assert_eq!(resolve, ["origin"]);
    // The peer driver itself can resolve (signed names use that, POL-9).
    assert!(sources.content[0].capabilities().resolve);
}

//! Every driver runs the same conformance suite (`ferry_testkit::conformance`) against a real
//! source: an OCI layout written by skopeo, moto buckets (ferry layout seeded object by
//! object; distribution layout written by a real `docker-registry`), and a real registry.

use std::sync::Arc;
use std::time::Duration;

use ferry_drivers::sources::mirror::MirrorDriver;
use ferry_drivers::sources::peer::{PeerConfig, PeerDriver};
use ferry_drivers::sources::registry::{Credentials, RegistryConfig, RegistryDriver};
use ferry_testkit::conformance::{
    self, OciLayoutHarness, RegistryHarness, S3DistributionHarness, S3FerryHarness,
};
use ferry_testkit::serve::PeerHarness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_driver_conforms() {
    conformance::run(&OciLayoutHarness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ferry_layout_driver_conforms() {
    conformance::run(&S3FerryHarness::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_distribution_layout_driver_conforms() {
    conformance::run(&S3DistributionHarness::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_driver_conforms() {
    let harness = RegistryHarness::start(|registry| {
        let config = RegistryConfig {
            source_name: "registry".into(),
            base_url: registry.url().parse().expect("registry URL"),
            insecure: false,
            credentials: Credentials::Anonymous,
            repository: None,
        };
        Arc::new(RegistryDriver::new(config).expect("registry driver"))
    });
    conformance::run(&harness).await;
}

/// The mirror driver over a dead endpoint (closed port) and the real registry: the suite
/// passes through the second endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_driver_conforms() {
    let harness = RegistryHarness::start(|registry| {
        let endpoint = |url: String, name: &str| -> Arc<dyn ferry_drivers::Driver> {
            Arc::new(
                RegistryDriver::new(RegistryConfig {
                    source_name: name.into(),
                    base_url: url.parse().expect("endpoint URL"),
                    insecure: false,
                    credentials: Credentials::Anonymous,
                    repository: None,
                })
                .expect("registry driver"),
            )
        };
        let dead = format!(
            "http://127.0.0.1:{}",
            ferry_testkit::registry::closed_port().expect("port")
        );
        Arc::new(MirrorDriver::new(
            "mirror",
            vec![
                endpoint(dead, "mirror (dead)"),
                endpoint(registry.url(), "mirror (live)"),
            ],
            Duration::from_secs(30),
        ))
    });
    conformance::run(&harness).await;
}

/// The peer driver over a dead peer (closed port) and a live `ferry serve` node whose store
/// holds the seed: the suite passes through the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_driver_conforms() {
    let harness = PeerHarness::start(|node| {
        let dead = format!("http://127.0.0.1:{}", ferry_testkit::free_port());
        let peers = vec![dead.parse().expect("URL"), node.url().parse().expect("URL")];
        Arc::new(PeerDriver::new(PeerConfig::new("peers", peers)).expect("peer driver"))
    });
    conformance::run(&harness).await;
}

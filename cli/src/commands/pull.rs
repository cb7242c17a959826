//! `ferry pull REF [--platform P] [--unpack]`: resolve, check against the trust policy,
//! transfer, name; with `--unpack`, snapshots made from the layers as they arrive.

use anyhow::{Context, Result};
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::{Platform, Store};
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::sources_for;
use ferry_drivers::transfer::pull::{pull, PullOptions, Pulled};
use ferry_drivers::transfer::sink::{Bytes, LayerResult, LayerSink, LayerSinks, LayerTarget};
use ferry_drivers::{Error as DriverError, ErrorKind};
use ferry_runtime::image::Image;
use ferry_runtime::one_pass::{ExtractedLayer, LayerExtraction, StreamedSnapshots};
use ferry_runtime::snapshot::prepare;
use ferry_runtime::unpack::Limits;
use ferry_signing::{Acceptance, Policy, TrustedImage};
use std::process::ExitCode;
use std::sync::Arc;

use crate::commands::unpack::{explain_limit, LimitArgs};
use crate::commands::{open_store, parse_reference};
use crate::output::ProgressPrinter;
use crate::Cli;

/// Arguments of `ferry pull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference, e.g. `registry.example.com/team/app:1.2` or `name@sha256:…`.
    reference: String,
    /// Platform to pick from a multi-platform image, `os/arch[/variant]` (default: this host's).
    #[arg(long)]
    platform: Option<String>,
    /// How many blobs to transfer at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Also prepare the image's snapshots for `ferry run`, extracting each layer as it
    /// arrives (as containerd's pull unpacks).
    #[arg(long)]
    unpack: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Pulls the image and prints `NAME@DIGEST` (or a `done` JSON event).
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let options = PullOptions {
        platform: match &args.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        },
        concurrency: args.concurrency,
        layers: None,
    };
    let pulled = if args.unpack {
        let limits = args.limits.limits(cli)?;
        let options = PullOptions {
            layers: Some(snapshots_in_one_pass(&store, limits)),
            ..options
        };
        let pulled = pull_into(cli, &store, &reference, &options).await?;
        let image = Image::load(&store, &pulled.trusted)?;
        tokio::task::spawn_blocking(move || prepare(&store, &image, limits))
            .await
            .context("the snapshot task failed")?
            .map_err(explain_limit)
            .with_context(|| format!("preparing the snapshots of {reference}"))?;
        pulled
    } else {
        pull_into(cli, &store, &reference, &options).await?
    };
    if !cli.json {
        println!("{}@{}", pulled.record.name, pulled.record.digest);
    }
    Ok(ExitCode::SUCCESS)
}

/// Pulls `reference` into `store` through the site config's route, if the trust policy
/// accepts it, showing progress.
pub async fn pull_into(
    cli: &Cli,
    store: &Arc<ferry_core::Store>,
    reference: &ferry_core::Reference,
    options: &PullOptions,
) -> Result<Pulled> {
    let policy = Policy::load_default(cli.policy.as_deref())?;
    let config = SiteConfig::load(cli.config.as_deref())?;
    let sources = sources_for(&config, reference)?;
    let printer = ProgressPrinter::new(cli.json);
    let pulled = pull(store, &sources, reference, &policy, options, &printer).await;
    printer.finish();
    let pulled = pulled?;
    if let (Acceptance::SignedBy(keys), false) = (pulled.trusted.how(), cli.json) {
        let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
        eprintln!(
            "verified {}: signed by {}",
            pulled.trusted.reference(),
            keys.join(", ")
        );
    }
    Ok(pulled)
}

/// Where a pull sends layers to become snapshots as they arrive (one pass, RUN-20): the
/// runtime's extraction behind the drivers' layer sinks. `limits` bound what is extracted.
pub fn snapshots_in_one_pass(store: &Arc<Store>, limits: Limits) -> Arc<dyn LayerTarget> {
    Arc::new(SnapshotTarget {
        store: store.clone(),
        limits,
    })
}

#[derive(Debug)]
struct SnapshotTarget {
    store: Arc<Store>,
    limits: Limits,
}

impl LayerTarget for SnapshotTarget {
    fn begin(
        &self,
        trusted: &TrustedImage,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
    ) -> ferry_drivers::Result<Box<dyn LayerSinks>> {
        let snapshots = StreamedSnapshots::new(&self.store, trusted, manifest, config, self.limits)
            .map_err(sink_error)?;
        Ok(Box::new(Snapshots(snapshots)))
    }
}

struct Snapshots(StreamedSnapshots);

impl LayerSinks for Snapshots {
    fn open(&self, index: usize) -> ferry_drivers::Result<Option<Box<dyn LayerSink>>> {
        let extraction = self.0.layer(index).map_err(sink_error)?;
        Ok(extraction.map(|e| Box::new(Extraction(e)) as Box<dyn LayerSink>))
    }
}

struct Extraction(LayerExtraction);

impl LayerSink for Extraction {
    fn write(&mut self, chunk: Bytes) -> ferry_drivers::Result<()> {
        if self.0.write(chunk) {
            Ok(())
        } else {
            Err(DriverError::new(
                ErrorKind::Invalid,
                "",
                "the layer's extraction stopped",
            ))
        }
    }

    fn finish(self: Box<Self>) -> ferry_drivers::Result<Box<dyn LayerResult>> {
        let extracted = self.0.finish().map_err(sink_error)?;
        Ok(Box::new(Extracted(extracted)))
    }
}

struct Extracted(ExtractedLayer);

impl LayerResult for Extracted {
    fn publish(self: Box<Self>) -> ferry_drivers::Result<()> {
        self.0.publish().map_err(sink_error)
    }
}

/// A runtime failure as the pull sees it: a diff_id mismatch means the bytes are not the
/// layer the image describes (corrupt); a limit says how to raise it.
fn sink_error(e: ferry_runtime::Error) -> DriverError {
    let kind = match e {
        ferry_runtime::Error::DiffIdMismatch { .. } => ErrorKind::Corrupt,
        _ => ErrorKind::Invalid,
    };
    DriverError::new(kind, "", explain_limit(e).to_string())
}

//! `ferry pull REF [--platform P] [--unpack]`: resolve, check against the trust policy,
//! transfer, name; with `--unpack`, snapshots made from the layers as they arrive.

use anyhow::{Context, Result};
use ferry_core::Platform;
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::sources_for;
use ferry_drivers::transfer::pull::{pull, PullOptions, Pulled};
use ferry_runtime::image::Image;
use ferry_runtime::one_pass::snapshots_in_one_pass;
use ferry_runtime::snapshot::prepare;
use ferry_signing::{Acceptance, Policy};
use std::process::ExitCode;
use std::sync::Arc;

use crate::commands::unpack::LimitArgs;
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
        let scope = if pulled.trusted.proves_tag() {
            ""
        } else {
            " (for the repository: the signatures do not name the tag, POL-11)"
        };
        eprintln!(
            "verified {}: signed by {}{scope}",
            pulled.trusted.reference(),
            keys.join(", ")
        );
    }
    Ok(pulled)
}

//! `ferry pull REF [--platform P]`: resolve, check against the trust policy, transfer, name.

use anyhow::Result;
use ferry_core::Platform;
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::sources_for;
use ferry_drivers::transfer::pull::{pull, PullOptions, Pulled};
use ferry_signing::{Acceptance, Policy};
use std::process::ExitCode;
use std::sync::Arc;

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
    };
    let pulled = pull_into(cli, &store, &reference, &options).await?;
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

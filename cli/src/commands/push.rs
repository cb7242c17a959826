//! `ferry push REF [--to SOURCE]`: copy an image of the store, with its signatures, to a
//! writable source.

use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_core::Reference;
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::sources::local::LocalDriver;
use ferry_drivers::transfer::copy::{copy_image, CopyOptions};
use ferry_drivers::transfer::signatures::signatures_in_store;

use crate::commands::copy::{destination, report, CopyPrinter};
use crate::commands::{open_store, parse_reference};
use crate::Cli;

/// Arguments of `ferry push`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image in the store: `NAME:TAG` or `NAME@DIGEST`.
    reference: String,
    /// Source of the site config to push to (default: the route's first writable source,
    /// else the name's registry).
    #[arg(long, value_name = "SOURCE")]
    to: Option<String>,
    /// How many blobs to send at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Do not push the signatures the store keeps for the image.
    #[arg(long)]
    no_signatures: bool,
}

/// Pushes the image under its own name and prints `NAME:TAG@DIGEST`.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let record = store
        .find_image(&reference)
        .with_context(|| format!("{reference} is not in the store; pull or load it first"))?;
    let from_ref = Reference::with_name(&record.name, record.tag.as_deref(), Some(&record.digest))?;
    let to_ref = match &record.tag {
        Some(t) => Reference::with_name(&record.name, Some(t), None)?,
        None => from_ref.clone(),
    };
    let config = SiteConfig::load(cli.config.as_deref())?;
    let to = destination(&config, &to_ref, args.to.as_deref())?;
    let options = CopyOptions {
        concurrency: args.concurrency,
        // The store's signatures travel; the local driver holds no signature tags itself.
        signatures: false,
        extra_signatures: if args.no_signatures {
            Vec::new()
        } else {
            signatures_in_store(&store, &record.digest)?
        },
    };
    let local = LocalDriver::new(store.clone());
    let printer = CopyPrinter::new(cli.json);
    let copied = copy_image(&local, &from_ref, to.as_ref(), &to_ref, &options, &printer)
        .await
        .with_context(|| format!("pushing {to_ref} to source {:?}", to.source_name()))?;
    report(cli, &copied, to.source_name());
    Ok(ExitCode::SUCCESS)
}

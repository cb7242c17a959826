//! `ferry unpack REF DIR`: a flattened root filesystem, for inspection and comparison; an
//! image the store lacks is applied as it is pulled.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_drivers::site::config::{parse_size, SiteConfig};
use ferry_drivers::transfer::pull::PullOptions;
use ferry_runtime::one_pass::FlattenInOnePass;
use ferry_runtime::snapshot::flatten;
use ferry_runtime::unpack::Limits;

use crate::commands::pull::pull_into;
use crate::commands::trust::checked_image;
use crate::commands::{open_store, parse_reference};
use crate::output::human_size;
use crate::Cli;

/// Arguments of `ferry unpack`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference (pulled first if the store lacks it).
    reference: String,
    /// Directory to write the root filesystem into (created if missing).
    dir: PathBuf,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The per-image unpack limits a user sets on the command line (UNPACK-53).
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Most uncompressed bytes of all layers together: bytes, or with a unit (512MiB, 8GiB,
    /// 10GB). Default: `[unpack] max-bytes` of the site config, else 64GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Most tar entries of all layers together. Default: `[unpack] max-entries` of the site
    /// config, else 10000000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_entries: Option<u64>,
}

impl LimitArgs {
    /// The limits to unpack with: these flags, else the site config's `[unpack]`, else
    /// ferry's defaults.
    pub fn limits(&self, cli: &Cli) -> Result<Limits> {
        let config = SiteConfig::load(cli.config.as_deref())?.unpack;
        let default = Limits::default();
        Ok(Limits {
            max_bytes: self
                .max_bytes
                .or(config.max_bytes)
                .unwrap_or(default.max_bytes),
            max_entries: self
                .max_entries
                .or(config.max_entries)
                .unwrap_or(default.max_entries),
        })
    }
}

/// Applies every layer, in order and verified, into DIR.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let limits = args.limits.limits(cli)?;
    let unpacking = || format!("unpacking {reference} into {}", args.dir.display());
    let summaries = if store.find_image(&reference).is_err() {
        // One pass: each layer is applied as the pull brings it (RUN-24).
        let one_pass = FlattenInOnePass::new(&store, &args.dir, limits);
        let options = PullOptions {
            layers: Some(one_pass.target()),
            ..PullOptions::default()
        };
        pull_into(cli, &store, &reference, &options)
            .await
            .with_context(unpacking)?;
        let summaries = tokio::task::spawn_blocking(move || one_pass.finish())
            .await
            .context("the unpack task failed")?
            .with_context(unpacking)?;
        // The policy as for every unpack (the pull checked it already).
        checked_image(cli, &store, &reference).await?;
        summaries
    } else {
        let image = checked_image(cli, &store, &reference).await?;
        flatten(&store, &image, &args.dir, limits).with_context(unpacking)?
    };
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "reference": reference.to_string(),
                "dir": args.dir,
                "layers": summaries.iter().map(|s| serde_json::json!({
                    "diff_id": s.diff_id, "entries": s.entries, "bytes": s.bytes,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        let bytes: u64 = summaries.iter().map(|s| s.bytes).sum();
        let entries: u64 = summaries.iter().map(|s| s.entries).sum();
        println!(
            "unpacked {reference} into {} ({} layers, {entries} entries, {})",
            args.dir.display(),
            summaries.len(),
            human_size(bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

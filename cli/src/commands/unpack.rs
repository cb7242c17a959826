//! `ferry unpack REF DIR`: a flattened root filesystem, for inspection and comparison.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_runtime::snapshot::flatten;
use ferry_runtime::unpack::Limits;

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
}

/// Applies every layer, in order and verified, into DIR.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let image = checked_image(cli, &store, &reference).await?;
    let summaries = flatten(&store, &image, &args.dir, Limits::default())
        .with_context(|| format!("unpacking {reference} into {}", args.dir.display()))?;
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

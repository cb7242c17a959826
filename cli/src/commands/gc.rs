//! `ferry gc`.

use std::process::ExitCode;

use anyhow::Result;

use crate::commands::open_store;
use crate::output::human_size;
use crate::Cli;

/// Arguments of `ferry gc`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Fail at once instead of waiting when a pull holds the store.
    #[arg(long)]
    no_wait: bool,
}

/// Removes unreferenced snapshots, signatures, blobs and stale ingests, and prints what it freed.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
    // Signatures of manifests no name references any more are collected too (SIG-17).
    ferry_drivers::transfer::signatures::prune_signatures(&store)?;
    // Snapshots no named image or container uses go first (RUN-10); they hold no blobs.
    let snapshots = ferry_runtime::snapshot::gc(&store)?;
    let report = if args.no_wait {
        store.try_gc()?
    } else {
        store.gc()?
    };
    if cli.json {
        let mut value = serde_json::to_value(&report)?;
        value["removed_snapshots"] = snapshots.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for d in &report.removed_blobs {
            println!("removed {d}");
        }
        println!(
            "freed {} ({} blobs, {} partial downloads, {snapshots} snapshots)",
            human_size(report.freed_bytes),
            report.removed_blobs.len(),
            report.removed_ingests
        );
    }
    Ok(ExitCode::SUCCESS)
}

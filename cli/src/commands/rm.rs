//! `ferry rm REF…`.

use std::process::ExitCode;

use anyhow::Result;

use crate::commands::{open_store, parse_reference};
use crate::Cli;

/// Arguments of `ferry rm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image references to remove.
    #[arg(required = true)]
    references: Vec<String>,
}

/// Removes each name and prints `removed NAME@DIGEST`.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
    for r in &args.references {
        let reference = parse_reference(r)?;
        let record = store.remove_image(&reference)?;
        if cli.json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            println!("removed {reference} ({})", record.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

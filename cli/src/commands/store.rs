//! `ferry store …`: looking into the store itself.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::commands::open_store;
use crate::Cli;

/// Arguments of `ferry store`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand, Debug)]
enum StoreCommand {
    /// Print the digest of every blob the store has, one a line (for `ferry save
    /// --exclude-digests` on the other side of an air gap).
    Digests,
}

/// Runs `ferry store SUBCOMMAND`.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    match args.command {
        StoreCommand::Digests => {
            let store = open_store(cli)?;
            let digests = store.digests()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&digests)?);
            } else {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for d in digests {
                    writeln!(out, "{d}")?;
                }
                out.flush()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

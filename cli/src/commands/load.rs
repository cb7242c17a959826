//! `ferry load -i FILE|- [--name NAME]`: an archive (ferry, oci-archive or docker-archive,
//! compressed or not) into the store, every blob verified, names set only when all of it
//! checked out and the trust policy accepts it (specs/archive.md).

use std::io::{BufReader, IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_drivers::transfer::archive::{self, LoadOptions, LoadReport, StreamCompression};
use ferry_drivers::transfer::progress::{Event, Progress, Silent};
use ferry_signing::Policy;

use crate::commands::open_store;
use crate::output::{human_size, ProgressPrinter};
use crate::Cli;

/// Read buffer for the archive stream.
const BUFFER: usize = 1 << 20;

/// Arguments of `ferry load`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive file, or `-` for standard input.
    #[arg(short, long, value_name = "FILE")]
    input: String,
    /// Image name for entries named by a plain tag (`oci-archive:FILE:TAG` as skopeo writes).
    #[arg(long)]
    name: Option<String>,
}

/// Loads the archive with bars on a terminal and prints `NAME:TAG@DIGEST`
/// for each image it names; with `--json`, newline-delimited events on stdout ending with
/// `loaded`.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
    let policy = Policy::load_default(cli.policy.as_deref())?;
    let from_stdin = args.input == "-";
    if from_stdin && std::io::stdin().is_terminal() {
        bail!(
            "refusing to read an archive from a terminal: use -i FILE or redirect standard input"
        );
    }
    let input: Box<dyn Read + Send> = if from_stdin {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input))?,
        )
    };
    let options = LoadOptions {
        name: args.name.clone(),
        source_label: format!("archive:{}", args.input),
    };
    let printer = std::sync::Arc::new(ProgressPrinter::new(cli.json));
    // Piped, only the summary line goes to stderr (errors stay alone on it).
    let quiet = printer.is_plain();
    let started = std::time::Instant::now();
    let shown = printer.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<LoadReport> {
        let progress: &dyn Progress = if quiet { &Silent } else { shown.as_ref() };
        Ok(archive::load_with_progress(
            &store,
            BufReader::with_capacity(BUFFER, input),
            &policy,
            &options,
            progress,
        )?)
    })
    .await?;
    printer.finish();
    let report = report.with_context(|| {
        if from_stdin {
            "loading the archive from standard input".to_string()
        } else {
            format!("loading {}", args.input)
        }
    })?;
    let names: Vec<String> = report
        .images
        .iter()
        .map(|image| match image.reference.split_once('@') {
            Some(_) => image.reference.clone(),
            None => format!("{}@{}", image.reference, image.digest),
        })
        .collect();
    if cli.json {
        printer.event(&Event::Loaded {
            images: names,
            blobs_added: report.blobs_added,
            bytes_added: report.bytes_added,
            blobs_present: report.blobs_present,
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
        return Ok(ExitCode::SUCCESS);
    }
    for name in &names {
        println!("{name}");
    }
    let unchanged = report.images.iter().filter(|i| !i.changed).count();
    let compression = match report.compression {
        StreamCompression::None => "",
        StreamCompression::Gzip => ", gzip",
        StreamCompression::Zstd => ", zstd",
    };
    let mut line = format!(
        "loaded {} images ({}{compression}): {} blobs added ({}), {} already present",
        report.images.len(),
        crate::commands::save::kind_of(report.format),
        report.blobs_added,
        human_size(report.bytes_added),
        report.blobs_present
    );
    if unchanged > 0 {
        line.push_str(&format!("; {unchanged} names were already set so"));
    }
    eprintln!("{line}");
    Ok(ExitCode::SUCCESS)
}

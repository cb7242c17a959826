//! `ferry save REF… -o FILE|- [--format F] [--zstd] [--exclude-digests FILE]`: images of the
//! store into one archive, streamed (specs/archive.md).

use std::io::{BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_core::Reference;
use ferry_drivers::transfer::archive::{self, Format, SaveOptions, SaveReport, StreamCompression};
use ferry_drivers::transfer::progress::{Event, Progress, Silent};

use crate::commands::{open_store, parse_reference};
use crate::output::{human_size, ProgressPrinter};
use crate::Cli;

/// Write buffer for the archive stream.
const BUFFER: usize = 1 << 20;

/// Arguments of `ferry save`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images in the store: `NAME:TAG` or `NAME@DIGEST`.
    #[arg(required = true)]
    references: Vec<String>,
    /// The archive file, or `-` for standard output.
    #[arg(short, long, value_name = "FILE")]
    output: String,
    /// `ferry` (OCI layout + table of contents + signatures), `oci-archive` (skopeo's
    /// oci-archive:) or `docker-archive` (docker save / docker load).
    #[arg(long, default_value = "ferry")]
    format: Format,
    /// Compress the whole archive with zstd.
    #[arg(long)]
    zstd: bool,
    /// Leave out the blobs listed in FILE, one digest a line (what `ferry store digests`
    /// prints on the loading side); ferry format only.
    #[arg(long, value_name = "FILE")]
    exclude_digests: Option<PathBuf>,
}

/// Writes the archive with bars on a terminal and a summary line on stderr; with
/// `--json` and a file, newline-delimited events on stdout ending with `saved`.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let references = args
        .references
        .iter()
        .map(|r| parse_reference(r))
        .collect::<Result<Vec<Reference>>>()?;
    let exclude = match &args.exclude_digests {
        Some(path) => archive::read_digest_list(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("reading {}", path.display()))?,
        None => Default::default(),
    };
    let options = SaveOptions {
        format: args.format,
        compression: if args.zstd {
            StreamCompression::Zstd
        } else {
            StreamCompression::None
        },
        exclude,
    };
    let store = open_store(cli)?;
    let to_stdout = args.output == "-";
    if to_stdout && std::io::stdout().is_terminal() {
        bail!(
            "refusing to write an archive to a terminal: use -o FILE or redirect standard output"
        );
    }
    let output = PathBuf::from(&args.output);
    // JSON events go to stdout, so not when the archive does.
    let json = cli.json && !to_stdout;
    let printer = std::sync::Arc::new(ProgressPrinter::new(json));
    // Piped, only the summary line goes to stderr (errors stay alone on it).
    let quiet = (cli.json && to_stdout) || printer.is_plain();
    let started = std::time::Instant::now();
    let shown = printer.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<SaveReport> {
        let progress: &dyn Progress = if quiet { &Silent } else { shown.as_ref() };
        if to_stdout {
            let out = BufWriter::with_capacity(BUFFER, std::io::stdout().lock());
            return Ok(archive::save_with_progress(
                &store,
                &references,
                &options,
                out,
                progress,
            )?);
        }
        // Written beside the target and renamed into place: a failed save leaves no file.
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".ferry-save-")
            .tempfile_in(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let out = BufWriter::with_capacity(BUFFER, tmp.as_file());
        let report = archive::save_with_progress(&store, &references, &options, out, progress)?;
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", output.display()))?;
        tmp.persist(&output)
            .with_context(|| format!("writing {}", output.display()))?;
        Ok(report)
    })
    .await?;
    printer.finish();
    let report = report?;
    let to = if to_stdout {
        "standard output".to_string()
    } else {
        args.output.clone()
    };
    if json {
        printer.event(&Event::Saved {
            images: report.images.clone(),
            blobs: report.blobs,
            bytes: report.blob_bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
    } else {
        let mut line = format!(
            "saved {} ({}{}, {} blobs, {}",
            report.images.join(", "),
            kind_of(report.format),
            if args.zstd { ", zstd" } else { "" },
            report.blobs,
            human_size(report.blob_bytes)
        );
        if report.excluded > 0 {
            line.push_str(&format!(", {} left out", report.excluded));
        }
        if report.signatures > 0 {
            line.push_str(&format!(", {} signatures", report.signatures));
        }
        eprintln!("{line}) to {to}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferry archive`, `oci-archive`, `docker-archive`.
pub fn kind_of(format: archive::Format) -> String {
    match format {
        archive::Format::Ferry => "ferry archive".into(),
        other => other.as_str().into(),
    }
}

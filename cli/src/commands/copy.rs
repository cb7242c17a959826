//! `ferry copy SRC_REF DEST_REF [--from SOURCE] [--to SOURCE]`: copy an image between any
//! two sources of the site config, verified on the way, without going through the store.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ferry_core::Reference;
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::{build_source, sources_for};
use ferry_drivers::transfer::copy::{copy_image, Copied, CopyOptions, RouteSource};
use ferry_drivers::transfer::progress::{BlobKind, Event, Progress};
use ferry_drivers::Driver;

use crate::commands::parse_reference;
use crate::output::human_size;
use crate::Cli;

/// Arguments of `ferry copy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to copy, e.g. `registry.example.com/team/app:1`.
    source: String,
    /// Where it goes, e.g. `registry.example.com/team/app:1` (same name, another source) or
    /// another name.
    destination: String,
    /// Read from this source of the site config (default: the source reference's route,
    /// tags resolved by its resolvers, content from its sources in order).
    #[arg(long, value_name = "SOURCE")]
    from: Option<String>,
    /// Write to this source of the site config (default: the destination's route's first
    /// writable source, else the destination name's registry).
    #[arg(long, value_name = "SOURCE")]
    to: Option<String>,
    /// How many blobs to copy at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Do not copy the image's signatures.
    #[arg(long)]
    no_signatures: bool,
}

/// Copies the image and prints `NAME:TAG@DIGEST` of the destination.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let from_ref = parse_reference(&args.source)?;
    let to_ref = parse_reference(&args.destination)?;
    let config = SiteConfig::load(cli.config.as_deref())?;
    let from: Arc<dyn Driver> = match &args.from {
        Some(name) => named_source(&config, name)?,
        None => Arc::new(RouteSource::new(sources_for(&config, &from_ref)?)),
    };
    let to = destination(&config, &to_ref, args.to.as_deref())?;
    let options = CopyOptions {
        concurrency: args.concurrency,
        signatures: !args.no_signatures,
        extra_signatures: Vec::new(),
    };
    let printer = CopyPrinter::new(cli.json);
    let copied = copy_image(
        from.as_ref(),
        &from_ref,
        to.as_ref(),
        &to_ref,
        &options,
        &printer,
    )
    .await
    .with_context(|| {
        format!(
            "copying {from_ref} from {:?} to {to_ref} at {:?}",
            from.source_name(),
            to.source_name()
        )
    })?;
    report(cli, &copied, to.source_name());
    Ok(ExitCode::SUCCESS)
}

/// The source named `name` in the site config, built.
pub fn named_source(config: &SiteConfig, name: &str) -> Result<Arc<dyn Driver>> {
    let source = config.sources.get(name).ok_or_else(|| {
        let file = config.path.as_ref().map_or_else(
            || "no site config file".to_string(),
            |p| p.display().to_string(),
        );
        let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
        anyhow!(
            "no source named {name:?} in the site config ({file}; sources: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    })?;
    Ok(build_source(source)?)
}

/// Where an image named `reference` is written: source `to`, else the first writable source
/// of its route, else its name's registry (no route matches).
pub fn destination(
    config: &SiteConfig,
    reference: &Reference,
    to: Option<&str>,
) -> Result<Arc<dyn Driver>> {
    let driver = match to {
        Some(name) => named_source(config, name)?,
        None => {
            let sources = sources_for(config, reference)?;
            sources
                .content
                .iter()
                .chain(&sources.resolve)
                .find(|s| s.capabilities().write)
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "no source of the route for {} can be written to; name one with --to SOURCE",
                        reference.name()
                    )
                })?
        }
    };
    if !driver.capabilities().write {
        bail!(
            "source {:?} cannot be written to (its driver is read-only)",
            driver.source_name()
        );
    }
    Ok(driver)
}

/// Prints what a copy or push did: `NAME:TAG@DIGEST` on stdout and a summary on stderr, or
/// the whole result as JSON.
pub fn report(cli: &Cli, copied: &Copied, to: &str) {
    if cli.json {
        let mut value = serde_json::to_value(copied).unwrap_or_default();
        value["event"] = "copied".into();
        value["destination"] = to.into();
        println!("{value}");
        return;
    }
    let reference = match copied.reference.split_once('@') {
        Some(_) => copied.reference.clone(),
        None => format!("{}@{}", copied.reference, copied.digest),
    };
    println!("{reference}");
    let mut summary = format!(
        "to source {to:?}: {} blobs sent ({}), {} already there",
        copied.blobs_copied,
        human_size(copied.transferred),
        copied.blobs_present
    );
    if copied.signatures > 0 {
        summary.push_str(&format!(", {} signatures", copied.signatures));
    }
    if !copied.missing_children.is_empty() {
        summary.push_str(&format!(
            "; {} platform manifests of the index were not at the source and were not copied",
            copied.missing_children.len()
        ));
    }
    eprintln!("{summary}");
}

/// Plain progress lines on stderr (or JSON events on stdout) for copies and pushes.
pub struct CopyPrinter {
    json: bool,
    started: Mutex<Vec<(String, Instant)>>,
}

impl CopyPrinter {
    /// JSON events with `json`, else lines on stderr.
    pub fn new(json: bool) -> Self {
        CopyPrinter {
            json,
            started: Mutex::new(Vec::new()),
        }
    }
}

fn kind(k: BlobKind) -> &'static str {
    match k {
        BlobKind::Manifest => "manifest",
        BlobKind::Config => "config",
        BlobKind::Layer => "layer",
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

impl Progress for CopyPrinter {
    fn event(&self, event: &Event) {
        if self.json {
            if !matches!(event, Event::BlobProgress { .. }) {
                if let Ok(line) = serde_json::to_string(event) {
                    println!("{line}");
                }
            }
            return;
        }
        match event {
            Event::Resolved {
                reference, digest, ..
            } => eprintln!("{reference} is {digest}"),
            Event::BlobStart {
                digest,
                kind: k,
                size,
                ..
            } => {
                self.started
                    .lock()
                    .expect("printer state")
                    .push((digest.clone(), Instant::now()));
                eprintln!(
                    "{:<9} {} copying ({})",
                    kind(*k),
                    short(digest),
                    human_size(*size)
                );
            }
            Event::BlobDone {
                digest,
                kind: k,
                size,
                present,
                ..
            } => {
                if *present {
                    eprintln!("{:<9} {} already there", kind(*k), short(digest));
                } else if *k == BlobKind::Manifest {
                    eprintln!("{:<9} {} written", kind(*k), short(digest));
                } else {
                    let mut started = self.started.lock().expect("printer state");
                    let took = started
                        .iter()
                        .position(|(d, _)| d == digest)
                        .map(|i| started.remove(i).1.elapsed().as_secs_f64());
                    eprintln!(
                        "{:<9} {} done ({}{})",
                        kind(*k),
                        short(digest),
                        human_size(*size),
                        took.map(|t| format!(" in {t:.1}s")).unwrap_or_default()
                    );
                }
            }
            Event::Done {
                size,
                transferred,
                elapsed_ms,
                ..
            } => eprintln!(
                "elapsed: {:.1}s  total: {}  sent: {}",
                *elapsed_ms as f64 / 1000.0,
                human_size(*size),
                human_size(*transferred)
            ),
            Event::Resolving { .. }
            | Event::BlobProgress { .. }
            | Event::Saved { .. }
            | Event::Loaded { .. } => {}
        }
    }
}

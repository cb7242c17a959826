//! `ferry store …`: looking into the store itself: its digests, and `check [--repair]`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_core::store::check::{self, BlobFault, BlobProblem, ImageCheck};
use ferry_core::{Digest, Platform, Reference, Store};
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::sources_for;
use ferry_drivers::transfer::progress::Silent;
use ferry_drivers::transfer::pull::{pull, PullOptions};
use ferry_runtime::snapshot_check::{self, SnapshotFault, SnapshotProblem};
use ferry_signing::Policy;

use crate::commands::open_store;
use crate::output::human_size;
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
    /// Re-hash every blob, check every named image is complete and its snapshots intact;
    /// exit 1 when anything is wrong (specs/store.md STORE-15..19).
    Check(CheckArgs),
}

/// Arguments of `ferry store check`.
#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Move corrupt blobs to ROOT/quarantine/, drop broken snapshots, and fetch what is
    /// missing again through the site config's routes.
    #[arg(long)]
    repair: bool,
    /// Blobs hashed at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
}

/// Runs `ferry store SUBCOMMAND`.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    match &args.command {
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
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Check(args) => check_store(cli, args).await,
    }
}

/// One problem as printed: a blob or a snapshot, what is wrong, what it breaks, and what
/// `--repair` did about it.
#[derive(Debug, serde::Serialize)]
struct Finding {
    /// `blob` or `snapshot`.
    object: &'static str,
    /// The blob digest, or the snapshot's chain ID.
    digest: Digest,
    /// For a snapshot: the layer blob it comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<Digest>,
    fault: Fault,
    images: Vec<String>,
    /// Set by `--repair`.
    #[serde(skip_serializing_if = "Option::is_none")]
    repair: Option<Repair>,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Fault {
    Blob(BlobFault),
    Snapshot(SnapshotFault),
}

#[derive(Debug, serde::Serialize)]
struct Repair {
    repaired: bool,
    /// What was done, or why it could not be.
    detail: String,
}

/// The whole report, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Summary {
    ok: bool,
    blobs: usize,
    bytes: u64,
    images: usize,
    snapshots: usize,
    snapshots_skipped: usize,
    /// Time spent hashing blobs and walking images.
    blobs_ms: u128,
    /// Time spent comparing snapshots with their layers.
    snapshots_ms: u128,
    problems: Vec<Finding>,
}

async fn check_store(cli: &Cli, args: &CheckArgs) -> Result<ExitCode> {
    let store = open_store(cli)?;
    let threads = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let (blobs, blobs_time, snapshots, snapshots_time) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let started = Instant::now();
            let blobs = check::check(&store, threads)?;
            let blobs_time = started.elapsed();
            let bad: HashSet<Digest> = blobs.problems.iter().map(|p| p.digest.clone()).collect();
            let started = Instant::now();
            let snapshots = snapshot_check::check(&store, &blobs.images, &bad)?;
            Ok((blobs, blobs_time, snapshots, started.elapsed()))
        })
        .await??
    };
    let mut findings: Vec<Finding> = blobs
        .problems
        .iter()
        .cloned()
        .map(Finding::blob)
        .chain(snapshots.problems.iter().cloned().map(Finding::snapshot))
        .collect();
    if args.repair && !findings.is_empty() {
        repair(cli, &store, &blobs.images, &mut findings).await?;
    }
    let ok = findings
        .iter()
        .all(|f| f.repair.as_ref().is_some_and(|r| r.repaired));
    let summary = Summary {
        ok,
        blobs: blobs.blobs,
        bytes: blobs.bytes,
        images: blobs.images.len(),
        snapshots: snapshots.checked,
        snapshots_skipped: snapshots.skipped,
        blobs_ms: blobs_time.as_millis(),
        snapshots_ms: snapshots_time.as_millis(),
        problems: findings,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_human(&summary, blobs_time, snapshots_time)?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl Finding {
    fn blob(p: BlobProblem) -> Finding {
        Finding {
            object: "blob",
            digest: p.digest,
            layer: None,
            fault: Fault::Blob(p.fault),
            images: p.images,
            repair: None,
        }
    }

    fn snapshot(p: SnapshotProblem) -> Finding {
        Finding {
            object: "snapshot",
            digest: p.chain_id,
            layer: Some(p.layer),
            fault: Fault::Snapshot(p.fault),
            images: p.images,
            repair: None,
        }
    }

    /// One line: what is wrong with which object, and the images it breaks.
    fn line(&self) -> String {
        let (word, detail) = match &self.fault {
            Fault::Blob(BlobFault::Corrupt { actual }) => (
                "corrupt",
                format!(": expected {}, got {actual}", self.digest),
            ),
            Fault::Blob(BlobFault::Unreadable { error }) => ("unreadable", format!(": {error}")),
            Fault::Blob(BlobFault::Invalid { error }) => ("invalid", format!(": {error}")),
            Fault::Blob(BlobFault::Missing) | Fault::Snapshot(SnapshotFault::Missing) => {
                ("missing", String::new())
            }
            Fault::Snapshot(SnapshotFault::Tampered { difference }) => {
                ("tampered", format!(": {difference}"))
            }
            Fault::Snapshot(SnapshotFault::Unverifiable { error }) => {
                ("unverifiable", format!(": {error}"))
            }
        };
        let layer = self
            .layer
            .as_ref()
            .map_or(String::new(), |l| format!(" (layer {l})"));
        let images = if self.images.is_empty() {
            "no image needs it".to_string()
        } else {
            format!("breaks {}", self.images.join(", "))
        };
        format!(
            "{word} {} {}{layer}{detail}; {images}",
            self.object, self.digest
        )
    }

    fn repaired(&mut self, repaired: bool, detail: impl Into<String>) {
        self.repair = Some(Repair {
            repaired,
            detail: detail.into(),
        });
    }
}

/// Quarantines bad blobs, drops broken snapshots, then pulls every image that lacks a blob
/// again by its pinned digest through the site config's routes (STORE-17, STORE-19).
async fn repair(
    cli: &Cli,
    store: &Arc<Store>,
    images: &[ImageCheck],
    findings: &mut [Finding],
) -> Result<()> {
    // 1. Bad bytes out of blobs/, broken snapshots away.
    let mut quarantined: BTreeMap<Digest, String> = BTreeMap::new();
    for f in findings.iter_mut() {
        match &f.fault {
            Fault::Blob(fault) if fault.is_bad_file() => {
                match check::quarantine(store, &f.digest) {
                    Ok(Some(path)) => {
                        quarantined.insert(f.digest.clone(), format!("moved to {}", path.display()));
                    }
                    Ok(None) => {
                        quarantined.insert(f.digest.clone(), "intact again".into());
                    }
                    Err(e) => f.repaired(false, format!("could not move it aside: {e}")),
                }
            }
            Fault::Blob(BlobFault::Invalid { .. }) => f.repaired(
                false,
                "its bytes are what its digest names: fetching it again cannot help; the image itself is broken",
            ),
            Fault::Snapshot(SnapshotFault::Missing | SnapshotFault::Tampered { .. }) => {
                match snapshot_check::drop_snapshot(store, &f.digest) {
                    Ok(()) => f.repaired(true, "dropped; it is extracted again on next use"),
                    Err(e) => f.repaired(false, format!("could not drop it: {e}")),
                }
            }
            Fault::Snapshot(SnapshotFault::Unverifiable { .. }) => {
                f.repaired(false, "left as it is: it could not be compared with its layer")
            }
            Fault::Blob(_) => {}
        }
    }

    // 2. Fetch again what images lack.
    let wanted: Vec<&ImageCheck> = images
        .iter()
        .filter(|image| {
            findings.iter().any(|f| {
                f.repair.is_none() && f.object == "blob" && f.images.contains(&image.reference)
            })
        })
        .collect();
    let mut fetched: BTreeMap<&str, Result<(), String>> = BTreeMap::new();
    if !wanted.is_empty() {
        let policy = Policy::load_default(cli.policy.as_deref())?;
        let config = SiteConfig::load(cli.config.as_deref())?;
        for image in wanted {
            let outcome = refetch(store, &policy, &config, image).await;
            fetched.insert(&image.reference, outcome.map_err(|e| format!("{e:#}")));
        }
    }

    // 3. A blob is repaired when it is in blobs/ again (verified, as every commit is).
    for f in findings.iter_mut().filter(|f| f.repair.is_none()) {
        let moved = quarantined.get(&f.digest);
        let present = store.blob_size(&f.digest)?.is_some();
        let failures: Vec<String> = f
            .images
            .iter()
            .filter_map(|i| match fetched.get(i.as_str()) {
                Some(Err(e)) => Some(format!("fetching {i}: {e}")),
                _ => None,
            })
            .collect();
        let mut detail: Vec<String> = moved.cloned().into_iter().collect();
        let repaired = if f.images.is_empty() {
            // Nothing needs it: out of blobs/ is all there is to do.
            detail.push("no image needs it".into());
            moved.is_some()
        } else if present {
            detail.push("fetched again".into());
            true
        } else {
            detail.extend(failures);
            false
        };
        f.repaired(repaired, detail.join("; "));
    }
    Ok(())
}

/// Pulls `image` again as `name[:tag]@digest` for its recorded platform: only what the
/// store lacks is transferred, verified, and the name is set to the same digest.
async fn refetch(
    store: &Arc<Store>,
    policy: &Policy,
    config: &SiteConfig,
    image: &ImageCheck,
) -> Result<()> {
    let record = &image.record;
    let reference =
        Reference::with_name(&record.name, record.tag.as_deref(), Some(&record.digest))?;
    let options = PullOptions {
        platform: match &record.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        },
        ..PullOptions::default()
    };
    let sources = sources_for(config, &reference)?;
    pull(store, &sources, &reference, policy, &options, &Silent)
        .await
        .with_context(|| format!("pulling {reference}"))?;
    Ok(())
}

fn print_human(summary: &Summary, blobs_time: Duration, snapshots_time: Duration) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for f in &summary.problems {
        writeln!(out, "{}", f.line())?;
    }
    let mut repaired = 0;
    for f in &summary.problems {
        if let Some(r) = &f.repair {
            let verdict = if r.repaired {
                repaired += 1;
                "repaired"
            } else {
                "not repaired"
            };
            writeln!(out, "{verdict}: {} {}: {}", f.object, f.digest, r.detail)?;
        }
    }
    let secs = blobs_time.as_secs_f64();
    let rate = if secs > 0.0 {
        format!(", {}/s", human_size((summary.bytes as f64 / secs) as u64))
    } else {
        String::new()
    };
    let skipped = if summary.snapshots_skipped > 0 {
        format!(
            ", {} not compared: layer blob bad",
            summary.snapshots_skipped
        )
    } else {
        String::new()
    };
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let verdict = match (
        summary.problems.len(),
        summary.problems.iter().any(|f| f.repair.is_some()),
    ) {
        (0, _) => "no problems".to_string(),
        (n, false) => format!("{n} problem{}", plural(n)),
        (n, true) => format!("{n} problem{}, {repaired} repaired", plural(n)),
    };
    writeln!(
        out,
        "checked {} blob{} ({}) in {secs:.2}s{rate}, {} image{}, {} snapshot{} ({:.2}s{skipped}): {verdict}",
        summary.blobs,
        plural(summary.blobs),
        human_size(summary.bytes),
        summary.images,
        plural(summary.images),
        summary.snapshots,
        plural(summary.snapshots),
        snapshots_time.as_secs_f64(),
    )?;
    out.flush()?;
    Ok(())
}

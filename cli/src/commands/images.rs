//! `ferry images`: the table of named images, with the trust policy's verdict on each.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use ferry_drivers::site::config::prefix_matches;
use ferry_drivers::transfer::signatures::verdict_in_store;
use ferry_signing::{Acceptance, Policy, Verdict};

use crate::commands::open_store;
use crate::output::{human_size, time_ago};
use crate::Cli;

/// Arguments of `ferry images`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only names under this prefix (whole path components: `docker.io/library`).
    prefix: Option<String>,
    /// Print only NAME:TAG (or NAME@DIGEST), one a line.
    #[arg(short, long)]
    quiet: bool,
    /// Show full digests.
    #[arg(long)]
    digests: bool,
}

/// Prints NAME, TAG, DIGEST, SIZE, CREATED (how long ago), PLATFORM, VERIFIED (or the full
/// records with `--json`, each with `verified` and `signed_by`; CREATED as recorded).
///
/// VERIFIED is the current policy's verdict from the signatures in the store:
/// `signed:KEYID[,KEYID]`, `unsigned` (accepted without signatures) or `rejected`.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
    let mut images = store.images()?;
    if let Some(prefix) = &args.prefix {
        images.retain(|i| prefix_matches(prefix.trim_end_matches('/'), &i.name));
    }
    if args.quiet {
        let mut out = std::io::stdout().lock();
        for i in &images {
            match &i.tag {
                Some(tag) => writeln!(out, "{}:{tag}", i.name)?,
                None => writeln!(out, "{}@{}", i.name, i.digest)?,
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let policy = Policy::load_default(cli.policy.as_deref())?;
    let mut verified = Vec::with_capacity(images.len());
    for image in &images {
        verified.push(verified_column(&verdict_in_store(&store, &policy, image)?));
    }
    if cli.json {
        let mut rows = Vec::with_capacity(images.len());
        for (image, (column, keys)) in images.iter().zip(&verified) {
            let mut row = serde_json::to_value(image)?;
            row["verified"] = column.clone().into();
            row["signed_by"] = keys.clone().into();
            rows.push(row);
        }
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 7]> = images
        .iter()
        .zip(verified)
        .map(|(i, (column, _))| {
            [
                i.name.clone(),
                i.tag.clone().unwrap_or_else(|| "<none>".into()),
                if args.digests {
                    i.digest.to_string()
                } else {
                    i.digest.short().to_string()
                },
                human_size(i.size),
                time_ago(i.created.as_deref(), now),
                i.platform.clone().unwrap_or_default(),
                column,
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "TAG", "DIGEST", "SIZE", "CREATED", "PLATFORM", "VERIFIED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// The VERIFIED cell of a verdict and the ids of the keys that signed.
fn verified_column(verdict: &Verdict) -> (String, Vec<String>) {
    match verdict {
        Verdict::Accepted {
            how: Acceptance::SignedBy(keys),
        } => {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            (format!("signed:{}", keys.join(",")), keys)
        }
        Verdict::Accepted {
            how: Acceptance::Unsigned,
        } => ("unsigned".into(), Vec::new()),
        Verdict::Rejected { .. } => ("rejected".into(), Vec::new()),
    }
}

/// Prints rows under a header, columns padded to their widest cell.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

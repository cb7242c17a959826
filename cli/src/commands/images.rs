//! `ferry images`: the table of named images, with the trust policy's verdict on each.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use ferry_drivers::site::config::prefix_matches;
use ferry_drivers::transfer::signatures::verify_record;
use ferry_drivers::ErrorKind;
use ferry_signing::{Acceptance, Policy};

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
/// records with `--json`, each with `verified`, `signed_by` and `proves_tag`; CREATED as
/// recorded; `proves_tag` is null for a rejected image).
///
/// VERIFIED is the current policy's verdict from the signatures in the store:
/// `signed:KEYID[,KEYID]`, `unsigned` (accepted without signatures) or `rejected`. Signatures
/// that name the repository without the tag (POL-11) prove the digest and the repository,
/// not the tag: the table says `signed:KEYID (repository only)`, `--json` `"proves_tag": false`.
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
        verified.push(match verify_record(&store, &policy, image) {
            Ok(trusted) => Verified::of(trusted.how(), trusted.proves_tag()),
            Err(e) if e.kind == ErrorKind::Rejected => Verified::rejected(),
            Err(e) => return Err(e.into()),
        });
    }
    if cli.json {
        let mut rows = Vec::with_capacity(images.len());
        for (image, v) in images.iter().zip(&verified) {
            let mut row = serde_json::to_value(image)?;
            row["verified"] = v.column.clone().into();
            row["signed_by"] = v.keys.clone().into();
            row["proves_tag"] = v.proves_tag.into();
            rows.push(row);
        }
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 7]> = images
        .iter()
        .zip(verified)
        .map(|(i, v)| {
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
                match v.proves_tag {
                    Some(false) => format!("{} (repository only)", v.column),
                    _ => v.column,
                },
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

/// The policy's verdict on one image, as `ferry images` shows it.
struct Verified {
    /// `signed:KEYID[,KEYID]`, `unsigned` or `rejected`.
    column: String,
    /// The ids of the keys that signed.
    keys: Vec<String>,
    /// For an accepted image, false when the signatures prove the digest and the repository,
    /// not the tag (POL-11); `None` for a rejected one.
    proves_tag: Option<bool>,
}

impl Verified {
    fn of(how: &Acceptance, proves_tag: bool) -> Verified {
        let (column, keys) = match how {
            Acceptance::SignedBy(keys) => {
                let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
                (format!("signed:{}", keys.join(",")), keys)
            }
            Acceptance::Unsigned => ("unsigned".into(), Vec::new()),
        };
        Verified {
            column,
            keys,
            proves_tag: Some(proves_tag),
        }
    }

    fn rejected() -> Verified {
        Verified {
            column: "rejected".into(),
            keys: Vec::new(),
            proves_tag: None,
        }
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

//! `ferry images`: the table of named images.

use std::process::ExitCode;

use anyhow::Result;

use crate::commands::open_store;
use crate::output::human_size;
use crate::Cli;

/// Arguments of `ferry images`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Prints NAME, TAG, DIGEST, SIZE, CREATED, PLATFORM (or the full records with `--json`).
pub fn run(cli: &Cli, _args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
    let images = store.images()?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = images
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.tag.clone().unwrap_or_else(|| "<none>".into()),
                i.digest.short().to_string(),
                human_size(i.size),
                i.created.clone().unwrap_or_default(),
                i.platform.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "TAG", "DIGEST", "SIZE", "CREATED", "PLATFORM"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
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

//! `ferry login HOST -u USER` (password from stdin, never argv): checked at the registry,
//! then stored through the docker config's credential helper for HOST, or in the file.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_drivers::sources::registry::{check_login, DockerConfig};

/// Arguments of `ferry login`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry host, e.g. `registry.example.com` or `127.0.0.1:5000`.
    host: String,
    /// User name.
    #[arg(short, long)]
    username: String,
}

/// Reads the password from stdin, checks it against the registry, and saves it.
pub async fn run(args: &Args) -> Result<ExitCode> {
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!(
            "no password on stdin (pipe it: echo \"$PW\" | ferry login {} -u {})",
            args.host,
            args.username
        );
    }
    check_login(&args.host, &args.username, password).await?;
    let place = DockerConfig::store_auth(&args.host, &args.username, password)?;
    println!(
        "login succeeded: credentials for {} saved in {place}",
        args.host
    );
    Ok(ExitCode::SUCCESS)
}

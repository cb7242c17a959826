//! `ferry logout HOST`: erase the credentials `ferry login` stored for HOST.

use std::process::ExitCode;

use anyhow::Result;
use ferry_drivers::sources::registry::DockerConfig;

/// Arguments of `ferry logout`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry host, e.g. `registry.example.com` or `127.0.0.1:5000`.
    host: String,
}

/// Erases HOST's credentials from the docker config's credential helper and from the file.
pub fn run(cli: &crate::Cli, args: &Args) -> Result<ExitCode> {
    let erased = DockerConfig::erase_auth(&args.host)?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"host": args.host, "erased_from": erased})
        );
    } else if erased.is_empty() {
        println!("not logged in to {}", args.host);
    } else {
        println!(
            "removed the credentials for {} from {}",
            args.host,
            erased.join(" and ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

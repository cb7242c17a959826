//! `ferry key generate NAME [--dir DIR]`: Ed25519 key pairs for signing images.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_signing::generate_key;

use crate::Cli;

/// Arguments of `ferry key`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Generate a key pair: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub (public).
    Generate {
        /// The key's name: 1-128 of A-Z a-z 0-9 . _ -, not starting with . or -.
        name: String,
        /// Directory for the two files (default: $XDG_CONFIG_HOME/ferry/keys, created 0700).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs `ferry key …`.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    match &args.command {
        Sub::Generate { name, dir } => {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => default_key_dir()?,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating key directory {}", dir.display()))?;
            let files = generate_key(&dir, name)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "key_id": files.id.to_string(),
                        "private_key": files.private_key,
                        "public_key": files.public_key,
                    })
                );
            } else {
                println!("generated key {}", files.id);
                println!("  private key: {}", files.private_key.display());
                println!("  public key:  {}", files.public_key.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `$XDG_CONFIG_HOME/ferry/keys`, else `$HOME/.config/ferry/keys`.
fn default_key_dir() -> Result<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let config = var("XDG_CONFIG_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set; give the key directory with --dir")?;
    Ok(config.join("ferry").join("keys"))
}

//! `ferry key generate|import|export`: key pairs for signing images, and cosign's encrypted
//! private key files in and out (SIG-19), so one key signs with ferry and cosign.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_signing::{generate_key, import_cosign_key, KeyFiles, PrivateKey};

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
    /// Import a cosign private key (`cosign.key`, encrypted) as DIR/NAME.key and DIR/NAME.pub.
    Import {
        /// The cosign key file (`ENCRYPTED SIGSTORE PRIVATE KEY` PEM).
        file: PathBuf,
        /// The key's name: 1-128 of A-Z a-z 0-9 . _ -, not starting with . or -.
        name: String,
        /// Directory for the two files (default: $XDG_CONFIG_HOME/ferry/keys, created 0700).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Read the passphrase from this file (its first line) instead of standard input.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Write a private key as a cosign encrypted key file to standard output.
    Export {
        /// The private key file (`NAME.key`).
        key: PathBuf,
        /// Output format; `cosign` is the one there is.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Read the passphrase to seal it with from this file (its first line) instead of
        /// standard input.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

/// Formats `ferry key export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ExportFormat {
    /// cosign's encrypted private key file (scrypt + NaCl secretbox).
    Cosign,
}

/// Runs `ferry key …`.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    match &args.command {
        Sub::Generate { name, dir } => {
            let dir = key_dir(dir.as_deref())?;
            let files = generate_key(&dir, name)?;
            print_files(cli, "generated", &files);
        }
        Sub::Import {
            file,
            name,
            dir,
            passphrase_file,
        } => {
            let dir = key_dir(dir.as_deref())?;
            let mut text = String::new();
            std::fs::File::open(file)
                // One byte past the 16 KiB limit, so that import names an oversized file.
                .and_then(|f| f.take(16 * 1024 + 1).read_to_string(&mut text))
                .with_context(|| format!("reading cosign key {}", file.display()))?;
            let passphrase = passphrase(passphrase_file.as_deref())?;
            let files = import_cosign_key(&dir, name, &text, passphrase.as_bytes())
                .with_context(|| format!("importing {}", file.display()))?;
            print_files(cli, "imported", &files);
        }
        Sub::Export {
            key,
            format: ExportFormat::Cosign,
            passphrase_file,
        } => {
            let key = PrivateKey::load(key)?;
            let passphrase = passphrase(passphrase_file.as_deref())?;
            let pem = key.to_cosign_pem(passphrase.as_bytes())?;
            std::io::stdout()
                .write_all(pem.as_bytes())
                .context("writing the key to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dir`, or the default key directory, created with mode 0700 if missing.
fn key_dir(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => default_key_dir()?,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating key directory {}", dir.display()))?;
    Ok(dir)
}

/// The passphrase: the first line of `file`, or of standard input (cosign's
/// `COSIGN_PASSWORD` is not read: a passphrase in the environment leaks to children).
fn passphrase(file: Option<&Path>) -> Result<String> {
    let mut text = String::new();
    match file {
        Some(file) => {
            std::fs::File::open(file)
                .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
                .with_context(|| format!("reading passphrase file {}", file.display()))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("give the passphrase on standard input (not a terminal) or with --passphrase-file");
            }
            stdin
                .lock()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .context("reading the passphrase from standard input")?;
        }
    }
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Prints where a key pair went.
fn print_files(cli: &Cli, what: &str, files: &KeyFiles) {
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
        println!("{what} key {}", files.id);
        println!("  private key: {}", files.private_key.display());
        println!("  public key:  {}", files.public_key.display());
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

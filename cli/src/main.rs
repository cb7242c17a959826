//! `ferry`: a content-addressed store for container images with pluggable transports.
//!
//! This binary parses arguments and prints; all behaviour lives in the library crates.

mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ferry: images are names plus digests; transports are configuration.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    /// Store root directory (default: /var/lib/ferry as root, else $XDG_DATA_HOME/ferry).
    #[arg(long, global = true, env = "FERRY_ROOT")]
    root: Option<PathBuf>,
    /// Site config file (default: $FERRY_CONFIG, $XDG_CONFIG_HOME/ferry/sites.toml, /etc/ferry/sites.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Trust policy file (default: $FERRY_POLICY, $XDG_CONFIG_HOME/ferry/policy.toml, /etc/ferry/policy.toml).
    #[arg(long, global = true)]
    policy: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables and progress bars.
    #[arg(long, global = true)]
    json: bool,
    /// Log details to stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pull an image into the store and print NAME@DIGEST.
    Pull(commands::pull::Args),
    /// List the images in the store.
    Images(commands::images::Args),
    /// Show an image's manifest and config.
    Inspect(commands::inspect::Args),
    /// Remove an image's name from the store (its blobs go at the next gc).
    Rm(commands::rm::Args),
    /// Remove blobs and snapshots no named image needs.
    Gc(commands::gc::Args),
    /// Write an image's root filesystem into a directory (layers applied, verified).
    Unpack(commands::unpack::Args),
    /// Run an image in a container, in the foreground (an ordinary user's in a user namespace).
    Run(Box<commands::run::Args>),
    /// Check the site config, or explain how a name travels.
    Config(commands::config::Args),
    /// Check registry credentials and store them (docker config's helper or file; password from stdin).
    Login(commands::login::Args),
    /// Remove stored registry credentials for a host.
    Logout(commands::logout::Args),
    /// Generate signing keys.
    Key(commands::key::Args),
    /// Sign a stored image's NAME:TAG as naming its digest; --push puts the signature next to it.
    Sign(commands::sign::Args),
    /// Show an image's signatures and the trust policy's verdict (exit 1 when rejected).
    Verify(commands::verify::Args),
    /// Serve the store over the OCI distribution API (and to ferry peers).
    Serve(commands::serve::Args),
    /// Copy an image of the store, with its signatures, to a writable source.
    Push(commands::push::Args),
    /// Copy an image between any two sources, verified on the way.
    Copy(commands::copy::Args),
    /// Write images of the store into one archive (ferry, oci-archive or docker-archive).
    Save(commands::save::Args),
    /// Read an archive into the store: every blob verified, names set last.
    Load(commands::load::Args),
    /// Look into the store itself (e.g. list its blob digests).
    Store(commands::store::Args),
    /// Print the shell completion script (bash, zsh, fish, …).
    Completions(commands::completions::Args),
    /// Write the man pages (ferry.1, ferry-COMMAND.1) into a directory (for packaging).
    #[command(hide = true)]
    Manpages(commands::completions::ManArgs),
}

fn main() -> ExitCode {
    set_sigpipe(libc::SIG_DFL);
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_usage(e));
    if matches!(cli.command, Command::Serve(_)) {
        // A client that goes away must not end the server: its writes fail instead.
        set_sigpipe(libc::SIG_IGN);
    }
    init_logging(cli.verbose);
    if let Some(code) = enter_user_namespace(&cli) {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(&cli)) {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints `e` on one line: the whole context chain, outermost first.
pub(crate) fn report_error(e: &anyhow::Error) {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    eprintln!("ferry: {}", dedup_chain(&chain).join(": "));
}

/// Exits for a command line clap refused: help and version as clap does, usage errors with
/// 2, or with 125 for `ferry run` as `docker run` does (specs/runtime.md RUN-38).
fn exit_usage(e: clap::Error) -> ! {
    if e.use_stderr() && invoked_subcommand().as_deref() == Some("run") {
        let _ = e.print();
        std::process::exit(125);
    }
    e.exit()
}

/// The subcommand named on the command line: the first argument that is not a global flag
/// or a global flag's value.
fn invoked_subcommand() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--root" | "--config" | "--policy" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            a => return Some(a.to_string()),
        }
    }
    None
}

/// For an ordinary user's `ferry unpack` and `ferry run`, and `gc` and `store` which read and
/// remove snapshots with its subordinate owners: re-executes ferry as root of a user
/// namespace (specs/runtime.md RUN-44), with the store root chosen out here. Returns the exit
/// code to end with in the parent; `None` where this process goes on.
fn enter_user_namespace(cli: &Cli) -> Option<ExitCode> {
    use ferry_runtime::userns::{enter, Entered};
    let failure = match cli.command {
        Command::Run(_) => ExitCode::from(125),
        Command::Unpack(_) | Command::Gc(_) | Command::Store(_) => ExitCode::FAILURE,
        _ => return None,
    };
    // Inside, ferry is root: the store stays the user's ($XDG_DATA_HOME/ferry).
    let root = cli
        .root
        .clone()
        .unwrap_or_else(ferry_core::Store::default_root);
    match enter(&[("FERRY_ROOT", root.into_os_string())]) {
        Ok(Entered::Continue) => None,
        Ok(Entered::Exited(code)) => Some(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(e) => {
            eprintln!("ferry: {e}");
            Some(failure)
        }
    }
}

/// Sets the disposition of SIGPIPE. With the default one, writing to a closed pipe
/// (`ferry images | head -1`) ends ferry quietly, as it ends coreutils, instead of failing
/// every `println!` with "Broken pipe".
fn set_sigpipe(handler: libc::sighandler_t) {
    // SAFETY: signal(2) with SIG_DFL or SIG_IGN installs no handler code; nothing else
    // runs yet (no threads are started before this).
    unsafe {
        libc::signal(libc::SIGPIPE, handler);
    }
}

/// Drops chain entries already contained in the previous one (thiserror messages often embed their source).
fn dedup_chain(chain: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in chain {
        if out.last().is_some_and(|prev| prev.contains(c.as_str())) {
            continue;
        }
        out.push(c.clone());
    }
    out
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,ferry=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

//! One module per subcommand; each has an `Args` struct and a `run` function.

pub mod completions;
pub mod config;
pub mod copy;
pub mod gc;
pub mod images;
pub mod inspect;
pub mod key;
pub mod load;
pub mod login;
pub mod logout;
pub mod pull;
pub mod push;
pub mod rm;
pub mod run;
pub mod save;
pub mod serve;
pub mod sign;
pub mod store;
mod trust;
pub mod unpack;
pub mod verify;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_core::Store;

use crate::{Cli, Command};

/// Runs the chosen subcommand.
pub async fn dispatch(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Pull(args) => pull::run(cli, args).await,
        Command::Images(args) => images::run(cli, args),
        Command::Inspect(args) => inspect::run(cli, args),
        Command::Rm(args) => rm::run(cli, args),
        Command::Gc(args) => gc::run(cli, args),
        Command::Unpack(args) => unpack::run(cli, args).await,
        Command::Run(args) => run::run_command(cli, args).await,
        Command::Config(args) => config::run(cli, args),
        Command::Login(args) => login::run(args).await,
        Command::Logout(args) => logout::run(cli, args),
        Command::Key(args) => key::run(cli, args),
        Command::Sign(args) => sign::run(cli, args).await,
        Command::Verify(args) => verify::run(cli, args),
        Command::Serve(args) => serve::run(cli, args).await,
        Command::Push(args) => push::run(cli, args).await,
        Command::Copy(args) => copy::run(cli, args).await,
        Command::Save(args) => save::run(cli, args).await,
        Command::Load(args) => load::run(cli, args).await,
        Command::Store(args) => store::run(cli, args).await,
        Command::Completions(args) => completions::run(args),
        Command::Manpages(args) => completions::manpages(args),
    }
}

/// Opens the store at `--root`, `FERRY_ROOT` or the default root.
pub fn open_store(cli: &Cli) -> Result<Arc<Store>> {
    let root = cli.root.clone().unwrap_or_else(Store::default_root);
    let store = Store::open(&root).with_context(|| format!("opening store {}", root.display()))?;
    Ok(Arc::new(store))
}

/// Parses a reference given on the command line.
pub fn parse_reference(s: &str) -> Result<ferry_core::Reference> {
    Ok(ferry_core::Reference::parse(s)?)
}

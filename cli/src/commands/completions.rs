//! `ferry completions SHELL` and the hidden `ferry manpages DIR`: what a package installs
//! beside the binary, generated from the same clap definition as the parser.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory as _;

use crate::Cli;

/// Arguments of `ferry completions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Prints the completion script for the shell to stdout.
pub fn run(args: &Args) -> Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "ferry", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `ferry manpages`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write `ferry.1` and one `ferry-COMMAND.1` per command into.
    dir: PathBuf,
}

/// Writes a man page for ferry and for every (sub)command, and prints their paths.
pub fn manpages(args: &ManArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut command = Cli::command();
    command.build();
    write_pages(&command, "ferry", &args.dir)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `NAME.1` for `command` and recurses into its visible subcommands.
fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let page = command.clone().display_name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

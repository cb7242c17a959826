//! `ferry run [--rm] [-e K=V]… [-w DIR] [-u USER] [--net host|none] [--runtime builtin|runc] REF [CMD ARG…]`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_runtime::run::{run, Bundle, RuntimeKind};
use ferry_runtime::snapshot::prepare;
use ferry_runtime::spec::{NetMode, RunOptions};

use crate::commands::trust::checked_image;
use crate::commands::unpack::{explain_limit, LimitArgs};
use crate::commands::{open_store, parse_reference};
use crate::Cli;

/// Arguments of `ferry run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove the container's directory (its writable layer) when it exits.
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User to run as: name, uid, `uid:gid` or `user:group`.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Network: `none` (only loopback) or `host`.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    net: String,
    /// Which runtime starts the container.
    #[arg(long, default_value = "builtin", value_parser = ["builtin", "runc"])]
    runtime: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Image reference (pulled first if the store lacks it).
    reference: String,
    /// Command and arguments replacing the image's Cmd.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs the image in the foreground; ferry exits with the container's exit code.
pub async fn run_command(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let mut env = Vec::new();
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => bail!("bad -e {kv:?}: expected KEY=VALUE"),
        }
    }
    let options = RunOptions {
        args_override: args.command.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        net: if args.net == "host" {
            NetMode::Host
        } else {
            NetMode::None
        },
        hostname: None,
        terminal: false,
    };
    let kind = if args.runtime == "runc" {
        RuntimeKind::Runc
    } else {
        RuntimeKind::Builtin
    };
    let limits = args.limits.limits(cli)?;
    let store = open_store(cli)?;
    let image = checked_image(cli, &store, &reference).await?;
    let store_for_run = store.clone();
    let rm = args.rm;
    let code = tokio::task::spawn_blocking(move || -> Result<i32> {
        let lowers = prepare(&store_for_run, &image, limits)
            .map_err(explain_limit)
            .with_context(|| format!("preparing the snapshots of {reference}"))?;
        let bundle = Bundle::create(&store_for_run, &lowers, image.config(), &options)?;
        let code = run(&bundle, kind);
        if rm {
            bundle.remove().context("removing the container")?;
        }
        Ok(code?)
    })
    .await
    .context("the container task failed")??;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

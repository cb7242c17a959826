//! `ferry run [--rm] [-e K=V]… [-w DIR] [-u USER] [--net host|none] [--runtime builtin|runc] REF [CMD ARG…]`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_drivers::transfer::pull::PullOptions;
use ferry_runtime::run::cgroup::Resources;
use ferry_runtime::run::{run, Bundle, RuntimeKind};
use ferry_runtime::snapshot::prepare;
use ferry_runtime::spec::{NetMode, RunOptions};

use crate::commands::pull::{pull_into, snapshots_in_one_pass};
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
    #[command(flatten)]
    resources: ResourceArgs,
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
        resources: args.resources.resources(),
    };
    let kind = if args.runtime == "runc" {
        RuntimeKind::Runc
    } else {
        RuntimeKind::Builtin
    };
    let limits = args.limits.limits(cli)?;
    let store = open_store(cli)?;
    if store.find_image(&reference).is_err() {
        // Snapshots made as the layers arrive (RUN-20); `prepare` below finds them.
        let options = PullOptions {
            layers: Some(snapshots_in_one_pass(&store, limits)),
            ..PullOptions::default()
        };
        pull_into(cli, &store, &reference, &options).await?;
    }
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

/// The container's resource limits, with `docker run`'s flags and meaning (RUN-40).
#[derive(clap::Args, Debug)]
pub struct ResourceArgs {
    /// Memory limit: bytes, or a number with a unit b, k, m or g (powers of 1024, as docker);
    /// no swap is allowed beyond it. A container the limit kills exits with 137.
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// How many CPUs' worth of time the container may use, e.g. 0.5 or 2.
    #[arg(long, value_name = "FLOAT", value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Most processes (and threads) at once; 0 or less means no limit.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
}

impl ResourceArgs {
    /// The limits to put in the container's spec.
    fn resources(&self) -> Resources {
        Resources {
            memory: self.memory,
            cpus: self.cpus,
            pids: self.pids_limit.filter(|&n| n > 0).map(|n| n as u64),
        }
    }
}

/// docker's memory sizes: `1024`, `512k`, `64m`, `2g` (also `kb`, `mb`, `gb`, any case).
fn parse_memory(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &lower[digits.len()..] {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        "t" | "tb" => 40,
        unit => return Err(format!("unknown unit {unit:?}: use b, k, m or g")),
    };
    let number: f64 = digits
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("{text:?} is not a positive size such as 512m or 2g"))?;
    let bytes = (number * (1u64 << shift) as f64) as u64;
    // The kernel refuses limits too small to start a process.
    if bytes < 6 << 20 {
        return Err(format!("{text:?} is below the minimum of 6m"));
    }
    Ok(bytes)
}

/// A positive number of CPUs, at least 0.01 (docker's smallest).
fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && cpus >= 0.01 => Ok(cpus),
        _ => Err(format!("{text:?} is not a number of CPUs of at least 0.01")),
    }
}

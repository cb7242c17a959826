//! `ferry run [--rm] [-e K=V]… [-w DIR] [-u USER] [--net host|none] [--runtime builtin|runc]
//! [-i] [-t] [-v HOST:CTR[:ro]]… [--tmpfs CTR[:OPTS]]… [--entrypoint CMD] [--hostname NAME]
//! [--read-only] [--cap-add CAP]… [--cap-drop CAP]… [--init] [--security-opt seccomp=…]
//! REF [CMD ARG…]`.
//!
//! Exit codes as docker's (specs/runtime.md RUN-38): 125 when ferry fails, 126 when the
//! command cannot be executed, 127 when it is not found, else the container's.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_drivers::transfer::pull::PullOptions;
use ferry_runtime::one_pass::snapshots_in_one_pass;
use ferry_runtime::run::cgroup::Resources;
use ferry_runtime::run::mounts::{Tmpfs, Volume};
use ferry_runtime::run::seccomp::{Profile, Seccomp};
use ferry_runtime::run::{run_with_stdio, Bundle, RuntimeKind, Stdio};
use ferry_runtime::snapshot::prepare;
use ferry_runtime::spec::{NetMode, RunOptions};

use crate::commands::pull::pull_into;
use crate::commands::trust::checked_image;
use crate::commands::unpack::LimitArgs;
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
    #[command(flatten)]
    container: ContainerArgs,
    /// Image reference (pulled first if the store lacks it).
    reference: String,
    /// Command and arguments replacing the image's Cmd.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Runs the image in the foreground; ferry exits with the container's exit code, or with
/// 125, 126 or 127 when it fails (RUN-38).
pub async fn run_command(cli: &Cli, args: &Args) -> Result<ExitCode> {
    match run_container(cli, args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            crate::report_error(&e);
            Ok(ExitCode::from(failure_code(&e)))
        }
    }
}

/// docker's exit code for a run that failed: 127 when the command does not exist, 126 when
/// it cannot be executed, 125 for everything else (ferry's own failure).
fn failure_code(e: &anyhow::Error) -> u8 {
    let exec = e
        .chain()
        .find_map(|c| match c.downcast_ref::<ferry_runtime::Error>() {
            Some(ferry_runtime::Error::Exec { source, .. }) => Some(source.raw_os_error()),
            _ => None,
        });
    match exec {
        Some(Some(libc::ENOENT | libc::ENOTDIR)) => 127,
        Some(_) => 126,
        None => 125,
    }
}

async fn run_container(cli: &Cli, args: &Args) -> Result<ExitCode> {
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
        hostname: args.container.hostname.clone(),
        terminal: args.container.tty,
        resources: args.resources.resources(),
        ..args.container.options()?
    };
    let stdio = args.container.stdio()?;
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
            .with_context(|| format!("preparing the snapshots of {reference}"))?;
        let bundle = Bundle::create(&store_for_run, &lowers, image.config(), &options)?;
        let code = run_with_stdio(&bundle, kind, stdio);
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

/// `docker run`'s options for daily use: terminal, mounts, entrypoint, hostname, read-only
/// root, capabilities, init and seccomp (RUN-30…RUN-36).
#[derive(clap::Args, Debug)]
pub struct ContainerArgs {
    /// Keep standard input open and forward it (without it the container reads /dev/null).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a pseudo-terminal (raw mode on ours while it runs).
    #[arg(short = 't', long)]
    tty: bool,
    /// Bind-mount a host path: HOST:CONTAINER[:ro|rw] (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    volumes: Vec<String>,
    /// Mount an empty tmpfs: CONTAINER[:size=…,mode=…] (repeatable).
    #[arg(long, value_name = "CTR[:OPTS]")]
    tmpfs: Vec<String>,
    /// Replace the image's Entrypoint (and drop its Cmd); "" clears it.
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// The container's hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Add a capability to docker's default set (`ALL` for every one; repeatable).
    #[arg(long, value_name = "CAP")]
    cap_add: Vec<String>,
    /// Remove a capability (`ALL` for every one not added; repeatable).
    #[arg(long, value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Run an init as PID 1 that forwards signals and reaps zombies.
    #[arg(long)]
    init: bool,
    /// `seccomp=unconfined` or `seccomp=PROFILE.json` (docker's profile format).
    #[arg(long, value_name = "OPT")]
    security_opt: Vec<String>,
    /// Log details to stderr (repeat for more); in `run`, `-v` is `--volume`.
    #[arg(id = "verbose", long = "verbose", action = clap::ArgAction::Count)]
    _verbose: u8,
}

impl ContainerArgs {
    /// The run options these flags set.
    fn options(&self) -> Result<RunOptions> {
        let mut seccomp = Seccomp::Default;
        for opt in &self.security_opt {
            seccomp = match opt.split_once(['=', ':']) {
                Some(("seccomp", "unconfined")) => Seccomp::Unconfined,
                Some(("seccomp", file)) => Seccomp::Profile(Profile::load(file.as_ref())?),
                _ => bail!(
                    "--security-opt {opt}: only seccomp=unconfined and seccomp=FILE are supported"
                ),
            };
        }
        Ok(RunOptions {
            entrypoint: self.entrypoint.clone(),
            volumes: self
                .volumes
                .iter()
                .map(|v| Volume::parse(v))
                .collect::<Result<_, _>>()?,
            tmpfs: self
                .tmpfs
                .iter()
                .map(|t| Tmpfs::parse(t))
                .collect::<Result<_, _>>()?,
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            init: self.init,
            seccomp,
            ..RunOptions::default()
        })
    }

    /// The container's standard streams: ours, except standard input without `-i`.
    fn stdio(&self) -> Result<Stdio> {
        let mut stdio = Stdio::default();
        if self.interactive {
            if self.tty && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                bail!("-it: the input device is not a TTY");
            }
        } else {
            let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
            stdio.stdin = Some(null.into());
        }
        Ok(stdio)
    }
}

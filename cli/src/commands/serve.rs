//! `ferry serve --listen ADDR [--htpasswd FILE] [--tls-cert F --tls-key F] [--allow-push]
//! [--read-timeout SECS] [--upload-timeout SECS] [--max-connections N] [--mirror …]`:
//! the OCI distribution API, the peer API and the pull-through mirror over the store
//! (`specs/serve.md`, `specs/mirror.md`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_drivers::site::config::SiteConfig;
use ferry_serve::{Limits, MirrorOptions, RelayOptions, ServeOptions, Server, TlsFiles};
use ferry_signing::Policy;

use crate::commands::open_store;
use crate::Cli;

/// Arguments of `ferry serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on, e.g. `127.0.0.1:7070` or `0.0.0.0:7070` (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// htpasswd file with bcrypt entries (`htpasswd -B`): every request needs Basic credentials.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Accept pushes (blob uploads and manifests); without it the server is read-only.
    #[arg(long)]
    allow_push: bool,
    /// Relay: give peers pieces of blobs this store lacks, fetched once from the image's
    /// route in the site config (peer sources left out).
    #[arg(long)]
    relay: bool,
    /// Memory for relayed pieces kept for other peers, in MiB.
    #[arg(long, default_value_t = 512, requires = "relay")]
    relay_cache_mib: u64,
    /// Seconds a client has to send a whole request head, and that a request body may pause.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Limits::default().read_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    read_timeout: u64,
    /// Seconds an upload may go without a request before it is dropped with its bytes.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Limits::default().upload_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    upload_timeout: u64,
    /// Connections served at once; further ones are closed as soon as they are accepted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = Limits::default().max_connections as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_connections: u64,
    /// Be a pull-through mirror for docker, containerd and podman: fetch what the store
    /// lacks through the site config's routes, under the trust policy (specs/mirror.md).
    #[arg(long)]
    mirror: bool,
    /// Seconds a tag's answer is reused before the resolve sources are asked again.
    #[arg(long, value_name = "SECS", default_value_t = 0, requires = "mirror")]
    mirror_tag_ttl: u64,
    /// When every resolve source of a tag fails, answer with the digest the store names.
    #[arg(long, requires = "mirror")]
    mirror_stale_tags: bool,
    /// Blobs fetched from upstream at once; more wait.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "mirror", value_parser = clap::value_parser!(u64).range(1..))]
    mirror_max_upstream: u64,
    /// Serve as a mirror on a non-loopback address without client authentication even
    /// though the routes read with credentials (anyone who reaches it reads what they can).
    #[arg(long, requires = "mirror")]
    mirror_without_auth: bool,
}

/// Serves until SIGINT or SIGTERM; prints `listening on URL` first.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
    let mirror = if args.mirror {
        let config = SiteConfig::load(cli.config.as_deref())?;
        if !args.listen.ip().is_loopback() && args.htpasswd.is_none() && !args.mirror_without_auth {
            if let Some(why) = config.credentials_in_use() {
                anyhow::bail!(
                    "ferry serve --mirror on {}: {why}, and whoever reaches this address could read with them; \
                     give --htpasswd, listen on a loopback address, or say --mirror-without-auth",
                    args.listen
                );
            }
        }
        Some(MirrorOptions {
            config,
            policy: Policy::load_default(cli.policy.as_deref())?,
            tag_ttl: Duration::from_secs(args.mirror_tag_ttl),
            stale_tags: args.mirror_stale_tags,
            max_upstream: usize::try_from(args.mirror_max_upstream).unwrap_or(usize::MAX),
        })
    } else {
        None
    };
    let options = ServeOptions {
        listen: args.listen,
        htpasswd: args.htpasswd.clone(),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        allow_push: args.allow_push,
        relay: if args.relay {
            Some(RelayOptions {
                config: SiteConfig::load(cli.config.as_deref())?,
                cache_bytes: args.relay_cache_mib << 20,
            })
        } else {
            None
        },
        limits: Limits {
            read_timeout: Duration::from_secs(args.read_timeout),
            upload_timeout: Duration::from_secs(args.upload_timeout),
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        },
        mirror,
    };
    let server = Server::bind((*store).clone(), &options)?;
    let url = server.url();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "url": url, "allow_push": args.allow_push, "relay": args.relay, "mirror": args.mirror})
        );
    } else {
        println!(
            "listening on {url} ({}{}{}, store {})",
            if args.allow_push {
                "pushes allowed"
            } else {
                "read-only"
            },
            if args.relay { ", relaying" } else { "" },
            if args.mirror { ", mirroring" } else { "" },
            store.root().display()
        );
    }
    std::io::stdout().flush().ok();
    server
        .run_until(shutdown_signal())
        .await
        .with_context(|| format!("ferry serve on {url}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

//! `ferry serve --listen ADDR [--htpasswd FILE] [--tls-cert F --tls-key F] [--allow-push]`:
//! the OCI distribution API and the peer API over the store (`specs/serve.md`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_serve::{ServeOptions, Server, TlsFiles};

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
}

/// Serves until SIGINT or SIGTERM; prints `listening on URL` first.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let store = open_store(cli)?;
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
    };
    let server = Server::bind((*store).clone(), &options)?;
    let url = server.url();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({"event": "listening", "url": url, "allow_push": args.allow_push})
        );
    } else {
        println!(
            "listening on {url} ({}, store {})",
            if args.allow_push {
                "pushes allowed"
            } else {
                "read-only"
            },
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

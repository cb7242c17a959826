//! `ferry config check|explain|import`: validate the site config, show how a name travels,
//! and write ferry's files from podman's and containerd's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::import::import_path;
use ferry_drivers::sources::registry::default_url;

use crate::commands::parse_reference;
use crate::Cli;

/// Arguments of `ferry config`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Validate the site config (errors name file and line).
    Check,
    /// Show the route for NAME, each source's location, role and credentials source.
    Explain {
        /// An image name or reference.
        name: String,
    },
    /// Write the sites.toml (and policy.toml) equivalent to podman's registries.conf and
    /// policy.json, or containerd's certs.d hosts.toml files; list what cannot be carried.
    Import {
        /// registries.conf, policy.json, hosts.toml, a certs.d directory, or a directory
        /// holding registries.conf and policy.json (e.g. /etc/containers).
        path: PathBuf,
        /// Write the result here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write the trust policy here when PATH also gives one (blocked registries,
        /// policy.json beside registries.conf).
        #[arg(long, value_name = "FILE")]
        policy_out: Option<PathBuf>,
    },
}

/// Runs `ferry config …`.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    if let Sub::Import {
        path,
        output,
        policy_out,
    } = &args.command
    {
        return import(path, output.as_deref(), policy_out.as_deref());
    }
    let config = SiteConfig::load(cli.config.as_deref())?;
    let file = config.path.as_ref().map_or_else(
        || "no site config file".to_string(),
        |p| p.display().to_string(),
    );
    match &args.command {
        Sub::Check => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"file": config.path, "routes": config.routes.len(), "sources": config.sources.len()})
                );
            } else {
                println!(
                    "{file}: ok ({} routes, {} sources)",
                    config.routes.len(),
                    config.sources.len()
                );
            }
        }
        Sub::Import { .. } => unreachable!("handled above: it needs no site config"),
        Sub::Explain { name } => {
            let reference = parse_reference(name)?;
            let name = reference.name();
            let Some(route) = config.route_for(&name) else {
                // The URL ferry really contacts (Docker Hub's API host for docker.io,
                // plain http for loopback hosts).
                let base = default_url(reference.registry())?;
                let direct = format!(
                    "{}/v2/{}",
                    base.as_str().trim_end_matches('/'),
                    reference.repository()
                );
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"name": name, "route": null, "direct": direct})
                    );
                } else {
                    println!("{name}: no route in {file}; straight to its registry {direct}");
                }
                return Ok(ExitCode::SUCCESS);
            };
            let mut rows = Vec::new();
            let mut names: Vec<&String> = route.sources.iter().collect();
            names.extend(route.resolve.iter().filter(|r| !route.sources.contains(r)));
            for source_name in names {
                let source = config.sources.get(source_name).with_context(|| {
                    format!(
                        "route {:?} names unknown source {source_name:?}",
                        route.prefix
                    )
                })?;
                let mut roles = Vec::new();
                let is_peer = source.driver_name() == "peer";
                if route.resolve.contains(source_name) && !is_peer {
                    roles.push("resolve");
                }
                if is_peer {
                    // PEER-6: peers answer tags of signed-by names only.
                    roles.push("resolve signed names");
                }
                if route.sources.contains(source_name) {
                    roles.push("content");
                }
                rows.push(serde_json::json!({
                    "source": source_name,
                    "driver": source.driver_name(),
                    "roles": roles,
                    "location": source.location(&name),
                    "credentials": source.credentials(),
                }));
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "file": config.path, "route": route.prefix, "sources": rows})
                );
            } else {
                println!("{name}: route {:?} in {file}", route.prefix);
                for (i, r) in rows.iter().enumerate() {
                    println!(
                        "  {}. {} ({}) [{}]\n     at {}\n     credentials: {}",
                        i + 1,
                        r["source"].as_str().unwrap_or_default(),
                        r["driver"].as_str().unwrap_or_default(),
                        r["roles"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default(),
                        r["location"].as_str().unwrap_or_default(),
                        r["credentials"].as_str().unwrap_or_default(),
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferry config import`: writes what `path` converts to; every note goes to stderr (and
/// is a comment in the output); exit 1 when a note is an error (SITE-9, POL-12).
fn import(path: &Path, output: Option<&Path>, policy_out: Option<&Path>) -> Result<ExitCode> {
    let imported = import_path(path, output, policy_out)?;
    let (first, second) = match (imported.site, imported.policy) {
        (Some(site), Some(policy)) => {
            let Some(policy_out) = policy_out else {
                bail!(
                    "{} also gives a trust policy (blocked registries or policy.json): name its file with --policy-out FILE",
                    path.display()
                );
            };
            ((site, output), Some((policy, policy_out)))
        }
        (Some(text), None) | (None, Some(text)) => ((text, output), None),
        (None, None) => bail!("{}: nothing to import", path.display()),
    };
    for key in &imported.keys {
        std::fs::write(&key.path, &key.pem)
            .with_context(|| format!("writing {}", key.path.display()))?;
    }
    for (text, to) in [Some((first.0, first.1)), second.map(|(t, p)| (t, Some(p)))]
        .into_iter()
        .flatten()
    {
        match to {
            Some(file) => {
                std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?
            }
            None => print!("{text}"),
        }
    }
    for note in &imported.notes {
        let kind = if note.error {
            "error"
        } else {
            "not carried over"
        };
        eprintln!("ferry: {kind}: {note}");
    }
    Ok(if imported.notes.iter().any(|n| n.error) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

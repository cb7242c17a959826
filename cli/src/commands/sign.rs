//! `ferry sign REF --key KEY [--push]`: sign a stored image's name and tag as naming its top
//! manifest, keep the signature in the store, and optionally push it next to the image.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::{ManifestBlob, Reference};
use ferry_drivers::site::config::SiteConfig;
use ferry_drivers::site::route::sources_for;
use ferry_drivers::transfer::signatures::{push_signature, store_signature};
use ferry_signing::{sign, PrivateKey};

use crate::commands::{open_store, parse_reference};
use crate::Cli;

/// Arguments of `ferry sign`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference as stored (`NAME:TAG`); the signature binds NAME:TAG to its digest.
    reference: String,
    /// The private key file, Ed25519 or ECDSA P-256 PKCS#8 (`NAME.key` from `ferry key
    /// generate` or `ferry key import`).
    #[arg(long)]
    key: PathBuf,
    /// Also write the signature next to the image: to the route's first writable source,
    /// or the name's registry when no route matches.
    #[arg(long)]
    push: bool,
}

/// Signs, stores the signature, pushes it with `--push`, and prints what it did.
pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let Some(tag) = reference.tag() else {
        bail!("{reference} has no tag; a signature binds NAME:TAG to a digest");
    };
    let store = open_store(cli)?;
    let record = store
        .find_image(&reference)
        .with_context(|| format!("{reference} is not in the store; pull it first"))?;
    if record.tag.as_deref() != Some(tag) {
        bail!(
            "{}:{tag} is not in the store (found {}@{} under another tag); pull it by that tag first",
            record.name,
            record.name,
            record.digest
        );
    }
    let named = Reference::with_name(&record.name, Some(tag), None)?;
    let key = PrivateKey::load(&args.key)?;
    let envelope = sign(&key, &named, &record.digest, Some(SystemTime::now()))?;
    store_signature(&store, &record.digest, &envelope)?;
    let signature = envelope.payload_digest();

    let mut pushed = None;
    if args.push {
        let config = SiteConfig::load(cli.config.as_deref())?;
        let sources = sources_for(&config, &named)?;
        let target = sources
            .content
            .iter()
            .chain(&sources.resolve)
            .find(|s| s.capabilities().write)
            .ok_or_else(|| {
                anyhow!(
                    "no source of the route for {} can be written to; the signature is kept in the store only",
                    record.name
                )
            })?;
        let top = store.read_blob(&record.digest, MAX_MANIFEST_SIZE)?;
        let subject =
            ManifestBlob::parse(top, Some(&record.media_type), Some(&record.digest))?.descriptor();
        let result = push_signature(target.as_ref(), &record.name, &subject, &envelope)
            .await
            .with_context(|| format!("pushing the signature of {named}"))?;
        pushed = Some((target.source_name().to_string(), result));
    }

    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "image": named.to_string(),
                "digest": record.digest,
                "key_id": key.id().to_string(),
                "key_algorithm": key.public_key().algorithm(),
                "signature": signature,
                "pushed": pushed.as_ref().map(|(source, p)| serde_json::json!({
                    "source": source,
                    "tag": p.tag,
                    "set_digest": p.set_digest,
                    "payload_digest": p.payload_digest,
                    "added": p.added,
                })),
            })
        );
    } else {
        println!(
            "signed {named}@{} with {} key {} (signature {signature})",
            record.digest,
            key.public_key().algorithm(),
            key.id()
        );
        if let Some((source, p)) = &pushed {
            let what = if p.added { "pushed" } else { "already present" };
            println!(
                "{what}: {}:{} at source {source:?} ({})",
                record.name, p.tag, p.set_digest
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

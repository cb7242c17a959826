//! `ferry inspect REF [--raw]`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ferry_core::manifest::{descriptor_digest, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use ferry_core::{Manifest, ManifestBlob, Platform};

use crate::commands::{open_store, parse_reference};
use crate::Cli;

/// Arguments of `ferry inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference (as pulled).
    reference: String,
    /// Print the top manifest's exact bytes instead.
    #[arg(long)]
    raw: bool,
    /// Platform to show from a multi-platform image (default: the one pulled, else this host's).
    #[arg(long)]
    platform: Option<String>,
}

/// Prints `{name, digest, manifest, config, blobs: [{digest, source}]}` as JSON.
pub fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let reference = parse_reference(&args.reference)?;
    let store = open_store(cli)?;
    let record = store.find_image(&reference)?;
    let top_bytes = store.read_blob(&record.digest, MAX_MANIFEST_SIZE)?;
    if args.raw {
        std::io::stdout().write_all(&top_bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let top = ManifestBlob::parse(top_bytes, Some(&record.media_type), Some(&record.digest))?;
    let mut shown = vec![serde_json::json!({
        "digest": top.digest, "mediaType": top.media_type,
        "source": store.blob_record(&top.digest)?.and_then(|b| b.source),
    })];
    let image = match &top.manifest {
        Manifest::Index(index) => {
            let platform = match (&args.platform, &record.platform) {
                (Some(p), _) | (None, Some(p)) => Platform::parse(p)?,
                (None, None) => Platform::host(),
            };
            let child = descriptor_digest(platform.select(index)?)?;
            let bytes = store
                .read_blob(&child, MAX_MANIFEST_SIZE)
                .with_context(|| format!("manifest for {platform} was not pulled"))?;
            ManifestBlob::parse(bytes, None, Some(&child))?
        }
        Manifest::Image(_) => top.clone(),
    };
    let Manifest::Image(manifest) = &image.manifest else {
        anyhow::bail!(
            "{}: an index inside an index is not supported",
            image.digest
        );
    };
    if image.digest != top.digest {
        shown.push(serde_json::json!({
            "digest": image.digest, "mediaType": image.media_type,
            "source": store.blob_record(&image.digest)?.and_then(|b| b.source),
        }));
    }
    let config_digest = descriptor_digest(manifest.config())?;
    let config: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&config_digest, MAX_CONFIG_SIZE)?)?;
    for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = descriptor_digest(desc)?;
        shown.push(serde_json::json!({
            "digest": digest, "mediaType": desc.media_type().to_string(), "size": desc.size(),
            "source": store.blob_record(&digest)?.and_then(|b| b.source),
        }));
    }
    let out = serde_json::json!({
        "name": record.name,
        "tag": record.tag,
        "digest": record.digest,
        "mediaType": record.media_type,
        "platform": record.platform,
        "manifest": serde_json::from_slice::<serde_json::Value>(&image.bytes)?,
        "config": config,
        "blobs": shown,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

//! The `docker save` format (ARC-8, ARC-11): `manifest.json`, `repositories`, config JSON
//! and one *uncompressed* layer tar per layer, whose sha256 is the layer's diff ID.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use ferry_core::manifest::{descriptor_digest, MAX_CONFIG_SIZE};
use ferry_core::media::{self, Compression};
use ferry_core::{Digest, Hasher, Manifest, Platform, Store};
use serde::{Deserialize, Serialize};

use super::plan::Planned;
use super::tar_out::TarOut;
use super::{corrupt, invalid, local, HashingReader, TocBlob};
use crate::transfer::progress::{BlobKind, Event, Progress};
use crate::Result;

/// One image of `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerImage {
    /// Path of the config JSON in the archive.
    pub config: String,
    /// `name:tag` names of the image.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    /// Paths of the layer tars, lowest first.
    pub layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Parses `manifest.json`.
pub(super) fn parse_manifest_json(bytes: &[u8]) -> Result<Vec<DockerImage>> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("manifest.json: {e}")))
}

/// The diff IDs a config lists (`rootfs.diff_ids`).
pub(super) fn diff_ids(config: &[u8], what: &str) -> Result<Vec<Digest>> {
    let value: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| invalid(format!("{what}: config is not JSON: {e}")))?;
    value
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or_else(|| invalid(format!("{what}: config has no rootfs.diff_ids")))?
        .iter()
        .map(|d| {
            d.as_str()
                .and_then(|s| Digest::parse(s).ok())
                .ok_or_else(|| invalid(format!("{what}: bad diff ID {d}")))
        })
        .collect()
}

/// The OCI manifest a docker-archive image is stored under: the config as it is, the layers
/// as uncompressed tars named by their diff IDs (ARC-11). Fields in the order Go's
/// `encoding/json` writes them, as skopeo does when it converts the image.
pub(super) fn oci_manifest(config: &Digest, config_size: u64, layers: &[(Digest, u64)]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, size)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{d}","size":{size}}}"#,
                media::OCI_LAYER_TAR
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{config}","size":{config_size}}},"layers":[{}]}}"#,
        media::OCI_MANIFEST,
        media::OCI_CONFIG,
        layers.join(",")
    )
    .into_bytes()
}

/// A decompressing reader for `compression`.
pub(super) fn decoder<'a>(
    compression: Compression,
    r: impl Read + 'a,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::Decoder::new(r)?),
    })
}

/// One image to write: its config and layers with their diff IDs.
struct Entry {
    config: Digest,
    config_bytes: Vec<u8>,
    layers: Vec<(TocBlob, Digest)>,
    tags: Vec<(String, String)>,
}

/// Writes `planned` as a docker archive (ARC-8): `manifest.json` and `repositories` first
/// (so a streaming reader knows every layer's diff ID before it arrives), then configs, then
/// each distinct layer once as `<diff ID hex>/layer.tar`. Returns (entries, bytes).
pub(super) fn save<W: Write>(
    store: &Store,
    planned: &[Planned],
    tar: &mut TarOut<W>,
    progress: &dyn Progress,
) -> Result<(usize, u64)> {
    let mut images: Vec<Entry> = Vec::new();
    for p in planned {
        let reference = p.reference();
        let image = pick_image(p)?;
        let config_desc = image.config();
        let config = descriptor_digest(config_desc).map_err(local)?;
        let config_bytes = store.read_blob(&config, MAX_CONFIG_SIZE).map_err(local)?;
        let ids = diff_ids(&config_bytes, &reference)?;
        if ids.len() != image.layers().len() {
            return Err(invalid(format!(
                "{reference}: the config lists {} diff IDs for {} layers",
                ids.len(),
                image.layers().len()
            )));
        }
        let layers = image
            .layers()
            .iter()
            .zip(ids)
            .map(|(l, id)| {
                Ok((
                    TocBlob {
                        digest: descriptor_digest(l).map_err(local)?,
                        size: l.size(),
                        media_type: l.media_type().to_string(),
                    },
                    id,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let tag = p.record.tag.clone().map(|t| (p.record.name.clone(), t));
        match images.iter_mut().find(|e| e.config == config) {
            Some(e) => e.tags.extend(tag),
            None => images.push(Entry {
                config,
                config_bytes,
                layers,
                tags: tag.into_iter().collect(),
            }),
        }
    }
    let manifest: Vec<DockerImage> = images
        .iter()
        .map(|e| DockerImage {
            config: format!("{}.json", e.config.hex()),
            repo_tags: e.tags.iter().map(|(n, t)| format!("{n}:{t}")).collect(),
            layers: e
                .layers
                .iter()
                .map(|(_, id)| format!("{}/layer.tar", id.hex()))
                .collect(),
        })
        .collect();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for e in &images {
        if let Some((_, top)) = e.layers.last() {
            for (name, tag) in &e.tags {
                repositories
                    .entry(name.clone())
                    .or_default()
                    .insert(tag.clone(), top.hex().to_string());
            }
        }
    }
    tar.file("manifest.json", &to_json(&manifest)?)?;
    tar.file("repositories", &to_json(&repositories)?)?;
    let mut count = 2;
    let mut bytes = 0;
    for e in &images {
        let size = e.config_bytes.len() as u64;
        report(progress, &e.config, BlobKind::Config, size, || {
            tar.file(&format!("{}.json", e.config.hex()), &e.config_bytes)
        })?;
        count += 1;
        bytes += size;
    }
    let mut written: Vec<&Digest> = Vec::new();
    for e in &images {
        for (layer, id) in &e.layers {
            if written.contains(&id) {
                continue;
            }
            let dir = id.hex();
            tar.dir(dir)?;
            bytes += report(progress, id, BlobKind::Layer, layer.size, || {
                write_layer(store, tar, layer, id, &format!("{dir}/layer.tar"))
            })?;
            written.push(id);
            count += 1;
        }
    }
    Ok((count, bytes))
}

/// Runs `write` between the start and done events of blob `digest` (a layer is reported by
/// its diff ID: the archive holds it uncompressed).
fn report<T>(
    progress: &dyn Progress,
    digest: &Digest,
    kind: BlobKind,
    size: u64,
    write: impl FnOnce() -> Result<T>,
) -> Result<T> {
    progress.event(&Event::BlobStart {
        digest: digest.to_string(),
        kind,
        size,
        resumed_from: 0,
    });
    let out = write()?;
    progress.event(&Event::BlobDone {
        digest: digest.to_string(),
        kind,
        size,
        present: false,
        source: None,
    });
    Ok(out)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| invalid(format!("archive JSON: {e}")))
}

/// The image manifest of `p`: the top one, or the index child of the record's platform.
fn pick_image(p: &Planned) -> Result<&ferry_core::oci_spec::image::ImageManifest> {
    let reference = p.reference();
    let images = || {
        p.manifests.iter().filter_map(|m| match &m.manifest {
            Manifest::Image(i) => Some((m, i.as_ref())),
            Manifest::Index(_) => None,
        })
    };
    if let Manifest::Index(index) = &p.manifests[0].manifest {
        let platform = match &p.record.platform {
            Some(s) => Platform::parse(s).map_err(local)?,
            None => Platform::host(),
        };
        if let Ok(desc) = platform.select(index) {
            let d = descriptor_digest(desc).map_err(local)?;
            if let Some((_, i)) = images().find(|(m, _)| m.digest == d) {
                return Ok(i);
            }
        }
    }
    images()
        .next()
        .map(|(_, i)| i)
        .ok_or_else(|| invalid(format!("{reference}: no image manifest in the store")))
}

/// Writes one layer as an uncompressed tar: stored uncompressed it is copied, else it is
/// decompressed twice: once to learn its size (and check it against its diff ID before a
/// byte is written), once into the archive. Returns the bytes written.
fn write_layer<W: Write>(
    store: &Store,
    tar: &mut TarOut<W>,
    layer: &TocBlob,
    diff_id: &Digest,
    path: &str,
) -> Result<u64> {
    let compression = Compression::of_layer(&layer.media_type).map_err(local)?;
    let open = || store.open_blob(&layer.digest).map_err(local);
    if compression == Compression::None {
        if &layer.digest != diff_id {
            return Err(corrupt(format!(
                "layer {} is an uncompressed tar, but the config's diff ID for it is {diff_id}",
                layer.digest
            )));
        }
        let what = format!("layer {} in the store", layer.digest);
        tar.stream(
            path,
            layer.size,
            HashingReader::new(open()?, &layer.digest, Some(layer.size), what),
        )?;
        return Ok(layer.size);
    }
    let read_error = |e: io::Error| {
        corrupt(format!(
            "layer {} in the store does not decompress: {e}",
            layer.digest
        ))
    };
    // Pass 1: size and diff ID.
    let mut raw = HashingReader::new(
        open()?,
        &layer.digest,
        Some(layer.size),
        format!("layer {} in the store", layer.digest),
    );
    let mut hasher = Hasher::new(diff_id.algorithm());
    let mut size = 0u64;
    {
        let mut d = decoder(compression, &mut raw).map_err(read_error)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = d.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    }
    let actual = hasher.finish();
    if &actual != diff_id {
        return Err(corrupt(format!(
            "layer {} decompresses to {actual}, but the config's diff ID for it is {diff_id}",
            layer.digest
        )));
    }
    // Pass 2: into the archive, checked again on the way.
    let d = decoder(compression, open()?).map_err(read_error)?;
    let what = format!("layer {} decompressed", layer.digest);
    tar.stream(path, size, HashingReader::new(d, diff_id, Some(size), what))?;
    Ok(size)
}

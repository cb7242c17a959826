//! `ferry save`: images of the store into one tar stream (ARC-2 to ARC-8).

use std::collections::HashSet;
use std::io::Write;

use ferry_core::oci_spec::image::Descriptor;
use ferry_core::oci_spec::image::ANNOTATION_REF_NAME;
use ferry_core::{media, Digest, Reference, Store};
use ferry_signing::PAYLOAD_MEDIA_TYPE;
use serde::Serialize;

use super::plan::{plan, Planned};
use super::tar_out::{write_error, TarOut};
use super::{
    blob_path, docker, invalid, local, Format, HashingReader, StreamCompression, Toc, TocBlob,
    TocImage, ANNOTATION_CONTAINERD_NAME, TOC_FILE, TOC_VERSION,
};
use crate::transfer::progress::{BlobKind, Event, Progress, ProgressReader, Silent};
use crate::transfer::signatures::{
    signature_set_manifest, signature_tag, SIGNATURE_CONFIG, SIGNATURE_CONFIG_MEDIA_TYPE,
};
use crate::{Error, Result};

/// Content of the `oci-layout` file.
const LAYOUT_VERSION: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// zstd level of `--zstd` archives.
const ZSTD_LEVEL: i32 = 3;

/// Options of [`save`].
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// The archive format.
    pub format: Format,
    /// How the whole stream is compressed ([`StreamCompression::Gzip`] is not written).
    pub compression: StreamCompression,
    /// Blobs to leave out because the loading side has them (ferry format only, ARC-6).
    pub exclude: HashSet<Digest>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            format: Format::Ferry,
            compression: StreamCompression::None,
            exclude: HashSet::new(),
        }
    }
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SaveReport {
    /// The format written.
    pub format: Format,
    /// The images, as `NAME:TAG` (or `NAME@DIGEST`).
    pub images: Vec<String>,
    /// Blob entries written (docker-archive: configs and layer tars).
    pub blobs: usize,
    /// Bytes of those entries.
    pub blob_bytes: u64,
    /// Blobs left out (`--exclude-digests`).
    pub excluded: usize,
    /// Signature envelopes carried.
    pub signatures: usize,
}

/// Writes the images `references` name in `store` to `out` as one archive (ARC-1 to ARC-8).
///
/// Bytes are streamed from the store, verified as they are read; memory holds manifests,
/// configs and signatures only. On failure the stream is left unfinished (no end-of-archive
/// blocks, no final compression frame), so a reader never takes it for complete.
pub fn save<W: Write>(
    store: &Store,
    references: &[Reference],
    options: &SaveOptions,
    out: W,
) -> Result<SaveReport> {
    save_with_progress(store, references, options, out, &Silent)
}

/// [`save`], reporting each blob written to `progress` (start, bytes, done).
pub fn save_with_progress<W: Write>(
    store: &Store,
    references: &[Reference],
    options: &SaveOptions,
    out: W,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    if !options.exclude.is_empty() && options.format != Format::Ferry {
        return Err(invalid(format!(
            "blobs can only be left out of a ferry archive, not of an {} (whose readers need every blob)",
            options.format.as_str()
        )));
    }
    if references.is_empty() {
        return Err(invalid("no image to save"));
    }
    // Blobs of the images stay while they are read, even if a name goes meanwhile.
    let _lease = store.lease().map_err(local)?;
    let mut planned: Vec<Planned> = Vec::new();
    for reference in references {
        let record = store.find_image(reference).map_err(local)?;
        if planned.iter().any(|p| p.record == record) {
            continue;
        }
        planned.push(plan(store, record, &options.exclude)?);
    }
    match options.compression {
        StreamCompression::None => {
            let (report, mut out) = write_archive(store, &planned, options, out, progress)?;
            out.flush().map_err(write_error)?;
            Ok(report)
        }
        StreamCompression::Zstd => {
            let encoder = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(write_error)?;
            let (report, encoder) = write_archive(store, &planned, options, encoder, progress)?;
            encoder
                .finish()
                .and_then(|mut out| out.flush())
                .map_err(write_error)?;
            Ok(report)
        }
        StreamCompression::Gzip => Err(invalid(
            "gzip archives are read, not written: use zstd or no compression",
        )),
    }
}

/// Where an entry's bytes come from.
enum Body {
    /// A blob of the store, streamed and verified.
    Store,
    /// Bytes in memory (manifests, signature sets).
    Memory(Vec<u8>),
}

/// The blob entries of a ferry or OCI archive in order, and the excluded ones (ARC-2, ARC-6).
struct Layout {
    entries: Vec<(TocBlob, Body)>,
    excluded: Vec<TocBlob>,
    index: Vec<u8>,
    toc_images: Vec<TocImage>,
    signatures: usize,
}

fn layout(planned: &[Planned], exclude: &HashSet<Digest>) -> Result<Layout> {
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut entries: Vec<(TocBlob, Body)> = Vec::new();
    let mut excluded: Vec<TocBlob> = Vec::new();
    let mut add = |blob: TocBlob, body: Body| {
        if !seen.insert(blob.digest.clone()) {
            return;
        }
        if exclude.contains(&blob.digest) {
            excluded.push(blob);
        } else {
            entries.push((blob, body));
        }
    };
    let mut index_entries = Vec::new();
    let mut toc_images = Vec::new();
    let mut signatures = 0;
    for p in planned {
        for m in &p.manifests {
            add(
                TocBlob {
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    media_type: m.media_type.clone(),
                },
                Body::Memory(m.bytes.clone()),
            );
        }
        for b in &p.blobs {
            add(b.clone(), Body::Store);
        }
        let top = &p.manifests[0];
        let mut entry = serde_json::to_value(top.descriptor()).map_err(json_error)?;
        entry["annotations"] = match &p.record.tag {
            Some(t) => {
                let name = format!("{}:{t}", p.record.name);
                serde_json::json!({ ANNOTATION_REF_NAME: name, ANNOTATION_CONTAINERD_NAME: name })
            }
            // A ref name cannot hold a digest: only containerd's annotation names it (ARC-4).
            None => serde_json::json!({
                ANNOTATION_CONTAINERD_NAME: format!("{}@{}", p.record.name, p.record.digest)
            }),
        };
        index_entries.push(entry);
        toc_images.push(TocImage {
            name: p.record.name.clone(),
            tag: p.record.tag.clone(),
            digest: p.record.digest.clone(),
            media_type: p.record.media_type.clone(),
            signatures: p.signatures.iter().map(|(d, _)| d.clone()).collect(),
        });
    }
    // Signature sets after the images, as the tag scheme keeps them (ARC-5, SIG-12, SIG-13).
    for p in planned.iter().filter(|p| !p.signatures.is_empty()) {
        let config = Digest::sha256(SIGNATURE_CONFIG);
        add(
            TocBlob {
                digest: config.clone(),
                size: SIGNATURE_CONFIG.len() as u64,
                media_type: SIGNATURE_CONFIG_MEDIA_TYPE.into(),
            },
            Body::Memory(SIGNATURE_CONFIG.to_vec()),
        );
        for (d, envelope) in &p.signatures {
            add(
                TocBlob {
                    digest: d.clone(),
                    size: envelope.payload().len() as u64,
                    media_type: PAYLOAD_MEDIA_TYPE.into(),
                },
                Body::Memory(envelope.payload().to_vec()),
            );
            signatures += 1;
        }
        let top = &p.manifests[0];
        let subject = Descriptor::new(
            top.media_type.as_str().into(),
            top.bytes.len() as u64,
            ferry_core::oci_spec::image::Digest::from(&top.digest),
        );
        let envelopes: Vec<_> = p.signatures.iter().map(|(_, e)| e.clone()).collect();
        let set = signature_set_manifest(&subject, &envelopes);
        let set_digest = Digest::sha256(&set);
        index_entries.push(serde_json::json!({
            "mediaType": media::OCI_MANIFEST,
            "digest": set_digest.to_string(),
            "size": set.len(),
            "annotations": {
                ANNOTATION_REF_NAME: format!("{}:{}", p.record.name, signature_tag(&top.digest)),
            },
        }));
        add(
            TocBlob {
                digest: set_digest,
                size: set.len() as u64,
                media_type: media::OCI_MANIFEST.into(),
            },
            Body::Memory(set),
        );
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": index_entries,
    }))
    .map_err(json_error)?;
    Ok(Layout {
        entries,
        excluded,
        index,
        toc_images,
        signatures,
    })
}

fn json_error(e: serde_json::Error) -> Error {
    invalid(format!("archive JSON: {e}"))
}

/// Writes the archive and hands the writer back (to be flushed or finished) on success.
fn write_archive<W: Write>(
    store: &Store,
    planned: &[Planned],
    options: &SaveOptions,
    out: W,
    progress: &dyn Progress,
) -> Result<(SaveReport, W)> {
    let mut tar = TarOut::new(out);
    let result = match options.format {
        Format::Ferry | Format::OciArchive => {
            write_layout(store, planned, options, &mut tar, progress)
        }
        Format::DockerArchive => {
            docker::save(store, planned, &mut tar, progress).map(|(blobs, blob_bytes)| SaveReport {
                format: Format::DockerArchive,
                images: planned.iter().map(Planned::reference).collect(),
                blobs,
                blob_bytes,
                excluded: 0,
                signatures: 0,
            })
        }
    };
    match result {
        Ok(report) => Ok((report, tar.finish().map_err(write_error)?)),
        Err(e) => {
            tar.abandon();
            Err(e)
        }
    }
}

fn write_layout<W: Write>(
    store: &Store,
    planned: &[Planned],
    options: &SaveOptions,
    tar: &mut TarOut<W>,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    let layout = layout(planned, &options.exclude)?;
    if options.format == Format::Ferry {
        let toc = Toc {
            ferry_archive: TOC_VERSION,
            images: layout.toc_images.clone(),
            blobs: layout.entries.iter().map(|(b, _)| b.clone()).collect(),
            excluded: layout.excluded.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&toc).map_err(json_error)?;
        tar.file(TOC_FILE, &bytes)?;
    }
    tar.file("oci-layout", LAYOUT_VERSION)?;
    tar.file("index.json", &layout.index)?;
    tar.dir("blobs")?;
    let mut algorithms: Vec<&str> = layout
        .entries
        .iter()
        .map(|(b, _)| b.digest.algorithm().as_str())
        .collect();
    algorithms.sort();
    algorithms.dedup();
    for alg in algorithms {
        tar.dir(&format!("blobs/{alg}"))?;
    }
    let mut blob_bytes = 0;
    for (blob, body) in &layout.entries {
        let path = blob_path(&blob.digest);
        let kind = BlobKind::of_media_type(&blob.media_type);
        progress.event(&Event::BlobStart {
            digest: blob.digest.to_string(),
            kind,
            size: blob.size,
            resumed_from: 0,
        });
        match body {
            Body::Memory(bytes) => tar.file(&path, bytes)?,
            Body::Store => {
                let file = store.open_blob(&blob.digest).map_err(local)?;
                let what = format!("blob {} in the store", blob.digest);
                let verified = HashingReader::new(file, &blob.digest, Some(blob.size), what);
                tar.stream(
                    &path,
                    blob.size,
                    ProgressReader::new(verified, &blob.digest, blob.size, progress),
                )?;
            }
        }
        progress.event(&Event::BlobDone {
            digest: blob.digest.to_string(),
            kind,
            size: blob.size,
            present: false,
            source: None,
        });
        blob_bytes += blob.size;
    }
    Ok(SaveReport {
        format: options.format,
        images: planned.iter().map(Planned::reference).collect(),
        blobs: layout.entries.len(),
        blob_bytes,
        excluded: layout.excluded.len(),
        signatures: layout.signatures,
    })
}

//! `ferry save`: images of the store into one tar stream (ARC-2 to ARC-8).

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::rc::Rc;

use ferry_core::manifest::{descriptor_digest, MAX_MANIFEST_SIZE};
use ferry_core::oci_spec::image::{Descriptor, ANNOTATION_REF_NAME};
use ferry_core::store::ImageRecord;
use ferry_core::{media, Digest, Manifest, ManifestBlob, Reference, Store};
use ferry_signing::{SignatureEnvelope, SIGNATURE_MEDIA_TYPE};
use serde::Serialize;

use super::{
    blob_path, docker, invalid, local, Format, HashingReader, StreamCompression, Toc, TocBlob,
    TocImage, ANNOTATION_CONTAINERD_NAME, TOC_FILE, TOC_VERSION,
};
use crate::signatures::{
    signature_tag, signatures_in_store, SIGNATURE_CONFIG, SIGNATURE_CONFIG_MEDIA_TYPE,
};
use crate::{Error, ErrorKind, Result};

/// Content of the `oci-layout` file.
const LAYOUT_VERSION: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// How deep indexes may nest.
const MAX_DEPTH: usize = 4;
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

/// An image of the store, read and checked for saving.
pub(super) struct Planned {
    pub record: ImageRecord,
    /// The top manifest, then the index children the store has (parents before children).
    pub manifests: Vec<ManifestBlob>,
    /// Configs and layers of every image manifest, deduplicated.
    pub blobs: Vec<TocBlob>,
    /// Envelopes the store keeps for the top manifest, sorted by digest.
    pub signatures: Vec<(Digest, SignatureEnvelope)>,
}

impl Planned {
    /// `NAME:TAG`, or `NAME@DIGEST` for a record without tag.
    pub fn reference(&self) -> String {
        match &self.record.tag {
            Some(t) => format!("{}:{t}", self.record.name),
            None => format!("{}@{}", self.record.name, self.record.digest),
        }
    }
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
            let (report, mut out) = write_archive(store, &planned, options, out)?;
            out.flush().map_err(write_error)?;
            Ok(report)
        }
        StreamCompression::Zstd => {
            let encoder = zstd::Encoder::new(out, ZSTD_LEVEL).map_err(write_error)?;
            let (report, encoder) = write_archive(store, &planned, options, encoder)?;
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

fn write_error(e: io::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "",
        format!("writing the archive: {e}"),
    )
}

/// Reads an image's manifests from the store and lists its blobs (ARC-2).
fn plan(store: &Store, record: ImageRecord, exclude: &HashSet<Digest>) -> Result<Planned> {
    let reference = match &record.tag {
        Some(t) => format!("{}:{t}", record.name),
        None => format!("{}@{}", record.name, record.digest),
    };
    let top = ManifestBlob::parse(
        store
            .read_blob(&record.digest, MAX_MANIFEST_SIZE)
            .map_err(local)?,
        Some(&record.media_type),
        Some(&record.digest),
    )
    .map_err(local)?;
    let mut manifests = Vec::new();
    let mut blobs: Vec<TocBlob> = Vec::new();
    let mut pending = vec![(top, 0usize)];
    while let Some((m, depth)) = pending.pop() {
        match &m.manifest {
            Manifest::Index(index) => {
                if depth >= MAX_DEPTH {
                    return Err(invalid(format!(
                        "{reference}: indexes nest deeper than {MAX_DEPTH}"
                    )));
                }
                for child in index.manifests().iter().rev() {
                    let d = descriptor_digest(child).map_err(local)?;
                    // A pull keeps only the platform it chose: the others stay out (ARC-2).
                    if store.blob_size(&d).map_err(local)?.is_none() {
                        continue;
                    }
                    let bytes = store.read_blob(&d, MAX_MANIFEST_SIZE).map_err(local)?;
                    let blob =
                        ManifestBlob::parse(bytes, Some(child.media_type().as_ref()), Some(&d))
                            .map_err(local)?;
                    if blob.bytes.len() as u64 != child.size() {
                        return Err(invalid(format!(
                            "{reference}: manifest {d} has {} bytes, its index says {}",
                            blob.bytes.len(),
                            child.size()
                        )));
                    }
                    pending.push((blob, depth + 1));
                }
            }
            Manifest::Image(image) => {
                for desc in std::iter::once(image.config()).chain(image.layers()) {
                    let blob = toc_blob(desc)?;
                    if blobs.iter().any(|b| b.digest == blob.digest) {
                        continue;
                    }
                    match store.blob_size(&blob.digest).map_err(local)? {
                        Some(have) if have == blob.size => {}
                        Some(have) => {
                            return Err(invalid(format!(
                                "{reference}: blob {} has {have} bytes in the store, its manifest says {}",
                                blob.digest, blob.size
                            )))
                        }
                        None if exclude.contains(&blob.digest) => {}
                        None => {
                            return Err(Error::new(
                                ErrorKind::NotFound,
                                "",
                                format!(
                                    "{reference}: blob {} is not in the store (was the image pulled completely?)",
                                    blob.digest
                                ),
                            ))
                        }
                    }
                    blobs.push(blob);
                }
            }
        }
        manifests.push(m);
    }
    let mut signatures: Vec<(Digest, SignatureEnvelope)> =
        signatures_in_store(store, &record.digest)?
            .into_iter()
            .map(|e| (Digest::sha256(&e.to_bytes()), e))
            .collect();
    signatures.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Planned {
        record,
        manifests,
        blobs,
        signatures,
    })
}

fn toc_blob(desc: &Descriptor) -> Result<TocBlob> {
    Ok(TocBlob {
        digest: descriptor_digest(desc).map_err(local)?,
        size: desc.size(),
        media_type: desc.media_type().to_string(),
    })
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
        let mut layers = Vec::new();
        for (d, envelope) in &p.signatures {
            let bytes = envelope.to_bytes();
            layers.push(serde_json::json!({
                "mediaType": SIGNATURE_MEDIA_TYPE, "digest": d.to_string(), "size": bytes.len(),
            }));
            add(
                TocBlob {
                    digest: d.clone(),
                    size: bytes.len() as u64,
                    media_type: SIGNATURE_MEDIA_TYPE.into(),
                },
                Body::Memory(bytes),
            );
            signatures += 1;
        }
        let top = &p.manifests[0];
        let set = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": SIGNATURE_CONFIG_MEDIA_TYPE,
            "config": {
                "mediaType": SIGNATURE_CONFIG_MEDIA_TYPE,
                "digest": config.to_string(),
                "size": SIGNATURE_CONFIG.len(),
            },
            "layers": layers,
            "subject": {
                "mediaType": top.media_type,
                "digest": top.digest.to_string(),
                "size": top.bytes.len(),
            },
        }))
        .map_err(json_error)?;
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
) -> Result<(SaveReport, W)> {
    let mut tar = TarOut::new(out);
    let result = match options.format {
        Format::Ferry | Format::OciArchive => write_layout(store, planned, options, &mut tar),
        Format::DockerArchive => {
            docker::save(store, planned, &mut tar).map(|(blobs, blob_bytes)| SaveReport {
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
        match body {
            Body::Memory(bytes) => tar.file(&path, bytes)?,
            Body::Store => {
                let file = store.open_blob(&blob.digest).map_err(local)?;
                let what = format!("blob {} in the store", blob.digest);
                tar.stream(
                    &path,
                    blob.size,
                    HashingReader::new(file, &blob.digest, Some(blob.size), what),
                )?;
            }
        }
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

/// A tar being written with fixed metadata (mode 0644/0755, owner 0, mtime 0), so the same
/// images always give the same bytes (ARC-2). A failed archive is left unfinished.
pub(super) struct TarOut<W: Write> {
    builder: Option<tar::Builder<Guard<W>>>,
    poisoned: Rc<Cell<bool>>,
}

/// Refuses every write once poisoned, so that dropping a failed tar builder cannot append
/// the end-of-archive blocks.
struct Guard<W: Write> {
    inner: W,
    poisoned: Rc<Cell<bool>>,
}

impl<W: Write> Write for Guard<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned.get() {
            return Err(io::Error::other("archive abandoned"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned.get() {
            return Ok(());
        }
        self.inner.flush()
    }
}

impl<W: Write> TarOut<W> {
    fn new(out: W) -> Self {
        let poisoned = Rc::new(Cell::new(false));
        let mut builder = tar::Builder::new(Guard {
            inner: out,
            poisoned: poisoned.clone(),
        });
        builder.mode(tar::HeaderMode::Deterministic);
        TarOut {
            builder: Some(builder),
            poisoned,
        }
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// Appends a file whose bytes are in memory.
    pub(super) fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.stream(path, bytes.len() as u64, bytes)
    }

    /// Appends a file of `size` bytes read from `data`; fails if `data` has another length.
    pub(super) fn stream(&mut self, path: &str, size: u64, data: impl Read) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, size);
        let builder = self.builder.as_mut().expect("tar open");
        let mut counted = Exact {
            inner: data,
            left: size,
        };
        builder
            .append_data(&mut header, path, &mut counted)
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                    Error::new(ErrorKind::Corrupt, "", format!("{path}: {e}"))
                }
                _ => write_error(e),
            })?;
        // The tar takes exactly `size` bytes; the reader must end there too (it verifies
        // its digest at its end).
        let mut probe = [0u8; 1];
        match counted.inner.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::new(
                ErrorKind::Corrupt,
                "",
                format!("{path}: more than the {size} bytes expected"),
            )),
            Err(e) => Err(Error::new(ErrorKind::Corrupt, "", format!("{path}: {e}"))),
        }
    }

    /// Appends a directory entry.
    pub(super) fn dir(&mut self, path: &str) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, 0);
        self.builder
            .as_mut()
            .expect("tar open")
            .append_data(&mut header, format!("{path}/"), io::empty())
            .map_err(write_error)
    }

    /// Writes the end-of-archive blocks and returns the writer.
    fn finish(mut self) -> io::Result<W> {
        let builder = self.builder.take().expect("tar open");
        Ok(builder.into_inner()?.inner)
    }

    /// Leaves the archive unfinished.
    fn abandon(mut self) {
        self.poisoned.set(true);
        drop(self.builder.take());
    }
}

/// A reader cut at `left` bytes that fails when its source ends before.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("ended {} bytes early", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

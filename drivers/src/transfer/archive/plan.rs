//! What an archive holds: the images of the store, read and checked, with their blobs and
//! signatures (ARC-2).

use std::collections::HashSet;

use ferry_core::manifest::{descriptor_digest, MAX_MANIFEST_SIZE};
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::store::ImageRecord;
use ferry_core::{Digest, Manifest, ManifestBlob, Store};
use ferry_signing::SignatureEnvelope;

use super::{invalid, local, TocBlob};
use crate::transfer::signatures::signatures_in_store;
use crate::{Error, ErrorKind, Result};

/// How deep indexes may nest.
const MAX_DEPTH: usize = 4;

/// An image of the store, read and checked for saving.
pub(super) struct Planned {
    pub record: ImageRecord,
    /// The top manifest, then the index children the store has (parents before children).
    pub manifests: Vec<ManifestBlob>,
    /// Configs and layers of every image manifest, deduplicated.
    pub blobs: Vec<TocBlob>,
    /// Signatures the store keeps for the top manifest, with their payload (layer) digests,
    /// sorted by digest.
    pub signatures: Vec<(Digest, SignatureEnvelope)>,
}

impl Planned {
    /// `NAME:TAG`, or `NAME@DIGEST` for a record without tag.
    pub fn reference(&self) -> String {
        reference_of(&self.record)
    }
}

/// `NAME:TAG`, or `NAME@DIGEST` for a record without tag.
fn reference_of(record: &ImageRecord) -> String {
    match &record.tag {
        Some(t) => format!("{}:{t}", record.name),
        None => format!("{}@{}", record.name, record.digest),
    }
}

/// Reads an image's manifests from the store and lists its blobs (ARC-2).
pub(super) fn plan(
    store: &Store,
    record: ImageRecord,
    exclude: &HashSet<Digest>,
) -> Result<Planned> {
    let reference = reference_of(&record);
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
            .map(|e| (e.payload_digest(), e))
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

//! The `local` driver: the store itself as a read-only [`Driver`], so that pushing an image
//! is a copy from the store to any writable source (`crate::transfer::copy`).
//!
//! Names and tags come from the store's image records ([`Store::images`]); blobs are read
//! from `blobs/` by digest. Like an OCI layout, the store is one content store: any name may
//! read any blob it holds.

use std::io::{Seek as _, SeekFrom};
use std::sync::Arc;

use async_trait::async_trait;
use ferry_core::manifest::MAX_MANIFEST_SIZE;
use ferry_core::oci_spec::image::Descriptor;
use ferry_core::{Digest, Reference, Store};
use futures::StreamExt as _;
use tokio::io::AsyncReadExt as _;
use tokio_util::io::ReaderStream;

use crate::{BlobBody, ByteRange, Capabilities, Driver, Error, ErrorKind, ManifestBytes, Result};

/// Bytes per chunk when streaming a blob from the store.
const READ_CHUNK: usize = 256 * 1024;

/// The local store as a read-only source of images.
#[derive(Debug, Clone)]
pub struct LocalDriver {
    source_name: String,
    store: Arc<Store>,
}

impl LocalDriver {
    /// A driver named `local` over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self::named("local", store)
    }

    /// A driver over `store` that calls itself `source_name` in messages.
    pub fn named(source_name: impl Into<String>, store: Arc<Store>) -> Self {
        LocalDriver {
            source_name: source_name.into(),
            store,
        }
    }

    /// The store this driver reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn core(&self, e: ferry_core::Error) -> Error {
        Error::from_core(&self.source_name, e)
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalDriver) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Invalid,
                    &self.source_name,
                    format!("store task failed: {e}"),
                )
            })?
    }
}

/// Parses a full name (and tag), refusing names that are not normalized.
fn reference(source: &str, name: &str, tag: &str) -> Result<Reference> {
    crate::sources::oci_layout::check_name_tag(source, name, Some(tag))
}

#[async_trait]
impl Driver for LocalDriver {
    fn source_name(&self) -> &str {
        &self.source_name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resolve: true,
            list_tags: true,
            write: false,
            ranges: true,
        }
    }

    async fn resolve(&self, name: &str, tag: &str) -> Result<Descriptor> {
        let reference = reference(&self.source_name, name, tag)?;
        self.blocking(move |this| {
            let record = this
                .store
                .find_image(&reference)
                .map_err(|e| this.core(e))?;
            let size = this
                .store
                .blob_size(&record.digest)
                .map_err(|e| this.core(e))?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Invalid,
                        &this.source_name,
                        format!(
                            "{reference} names {} but the store lacks that manifest",
                            record.digest
                        ),
                    )
                })?;
            Ok(Descriptor::new(
                record.media_type.as_str().into(),
                size,
                ferry_core::oci_spec::image::Digest::from(&record.digest),
            ))
        })
        .await
    }

    async fn fetch_manifest(&self, name: &str, digest: &Digest) -> Result<ManifestBytes> {
        reference(&self.source_name, name, "latest")?;
        let digest = digest.clone();
        self.blocking(move |this| {
            let bytes = this
                .store
                .read_blob(&digest, MAX_MANIFEST_SIZE)
                .map_err(|e| this.core(e))?;
            let actual = Digest::of(digest.algorithm(), &bytes);
            if actual != digest {
                return Err(Error::corrupt(
                    &this.source_name,
                    format!(
                        "manifest {digest}: digest mismatch: the stored bytes hash to {actual}"
                    ),
                ));
            }
            let content_type = this
                .store
                .blob_record(&digest)
                .map_err(|e| this.core(e))?
                .map(|r| r.media_type)
                .filter(|t| ferry_core::media::is_manifest(t));
            Ok(ManifestBytes {
                bytes,
                content_type,
            })
        })
        .await
    }

    async fn fetch_blob(&self, name: &str, digest: &Digest, range: ByteRange) -> Result<BlobBody> {
        reference(&self.source_name, name, "latest")?;
        let wanted = digest.clone();
        let (file, size) = self
            .blocking(move |this| {
                let mut file = this.store.open_blob(&wanted).map_err(|e| this.core(e))?;
                let size = file
                    .metadata()
                    .map_err(|e| {
                        this.core(ferry_core::Error::io(
                            "stat blob",
                            this.store.blob_path(&wanted),
                            e,
                        ))
                    })?
                    .len();
                if range.offset > size {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        &this.source_name,
                        format!(
                            "blob {wanted}: range starts at byte {} beyond its end ({size} bytes)",
                            range.offset
                        ),
                    ));
                }
                file.seek(SeekFrom::Start(range.offset)).map_err(|e| {
                    this.core(ferry_core::Error::io(
                        "seek blob",
                        this.store.blob_path(&wanted),
                        e,
                    ))
                })?;
                Ok((file, size))
            })
            .await?;
        let len = range
            .len
            .map_or(size - range.offset, |l| l.min(size - range.offset));
        let source = self.source_name.clone();
        let what = digest.to_string();
        let file = tokio::fs::File::from_std(file).take(len);
        let stream = ReaderStream::with_capacity(file, READ_CHUNK).map(move |chunk| {
            chunk.map_err(|e| Error::unavailable(&source, format!("read blob {what}: {e}")))
        });
        Ok(BlobBody {
            len: Some(len),
            stream: Box::pin(stream),
        })
    }

    async fn blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        reference(&self.source_name, name, "latest")?;
        let digest = digest.clone();
        self.blocking(move |this| this.store.blob_size(&digest).map_err(|e| this.core(e)))
            .await
    }

    async fn list_tags(&self, name: &str) -> Result<Vec<String>> {
        reference(&self.source_name, name, "latest")?;
        let name = name.to_string();
        self.blocking(move |this| {
            let mut tags: Vec<String> = this
                .store
                .images()
                .map_err(|e| this.core(e))?
                .into_iter()
                .filter(|r| r.name == name)
                .filter_map(|r| r.tag)
                .collect();
            if tags.is_empty() {
                return Err(Error::not_found(
                    &this.source_name,
                    format!("image {name} (no tag of it in the store)"),
                ));
            }
            tags.sort();
            tags.dedup();
            Ok(tags)
        })
        .await
    }
}

//! An image from the store that passed the trust policy, loaded for unpacking and running.
//!
//! [`Image::load`] takes a [`TrustedImage`], which only the signing crate's policy check can
//! make; snapshots, flattening and containers take an [`Image`]. So unpacking or running an
//! image that was never checked does not compile.

use ferry_core::manifest::{descriptor_digest, parse_config, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use ferry_core::oci_spec::image::{ImageConfiguration, ImageManifest};
use ferry_core::store::ImageRecord;
use ferry_core::{Manifest, ManifestBlob, Platform, Store};
use ferry_signing::TrustedImage;

use crate::{Error, Result};

/// A checked image of the store: its record, platform manifest and config.
#[derive(Debug, Clone)]
pub struct Image {
    record: ImageRecord,
    manifest: ImageManifest,
    config: ImageConfiguration,
}

impl Image {
    /// Loads the image `trusted` names from `store`; fails if its name now points elsewhere.
    pub fn load(store: &Store, trusted: &TrustedImage) -> Result<Image> {
        let record = store.find_image(trusted.reference())?;
        if &record.digest != trusted.digest() {
            return Err(Error::Spec(format!(
                "{}: the name now points at {}, not the verified {}",
                trusted.reference(),
                record.digest,
                trusted.digest()
            )));
        }
        let top = ManifestBlob::parse(
            store.read_blob(&record.digest, MAX_MANIFEST_SIZE)?,
            Some(&record.media_type),
            Some(&record.digest),
        )?;
        let image = match &top.manifest {
            Manifest::Image(_) => top,
            Manifest::Index(index) => {
                let platform = match &record.platform {
                    Some(p) => Platform::parse(p)?,
                    None => Platform::host(),
                };
                let child = descriptor_digest(platform.select(index)?)?;
                ManifestBlob::parse(
                    store.read_blob(&child, MAX_MANIFEST_SIZE)?,
                    None,
                    Some(&child),
                )?
            }
        };
        let Manifest::Image(manifest) = image.manifest else {
            return Err(Error::Spec(format!(
                "{}: an index inside an index",
                image.digest
            )));
        };
        let config_digest = descriptor_digest(manifest.config())?;
        let config = parse_config(
            &store.read_blob(&config_digest, MAX_CONFIG_SIZE)?,
            &config_digest,
        )?;
        Ok(Image {
            record,
            manifest: *manifest,
            config,
        })
    }

    /// What the store records under the image's name.
    pub fn record(&self) -> &ImageRecord {
        &self.record
    }

    /// The platform image manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The image config.
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }
}

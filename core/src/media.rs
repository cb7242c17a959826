//! Media types ferry understands, and what they say about a blob.

use crate::Error;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip-compressed tar.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd-compressed tar.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker layer, gzip-compressed tar.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker layer that must not be redistributed (still a gzip tar).
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker schema 1 manifest (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1 signed manifest (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest media type ferry accepts, for HTTP `Accept` headers.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Whether `media_type` names an image manifest or an index.
pub fn is_manifest(media_type: &str) -> bool {
    MANIFEST_TYPES.contains(&media_type)
}

/// Whether `media_type` names an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares.
    pub fn of_layer(media_type: &str) -> Result<Compression, Error> {
        match media_type {
            OCI_LAYER_TAR | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Ok(Compression::None)
            }
            OCI_LAYER_GZIP
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Ok(Compression::Gzip)
            }
            OCI_LAYER_ZSTD
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            other => Err(Error::UnsupportedMediaType {
                media_type: other.chars().take(200).collect(),
                context: "layer".into(),
            }),
        }
    }

    /// The compression the first bytes of a stream show (gzip and zstd magic), else `None`.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
            || (head.len() >= 4
                && (0x184D2A50..=0x184D2A5F)
                    .contains(&u32::from_le_bytes([head[0], head[1], head[2], head[3]])))
        {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types_map_to_compression() {
        assert_eq!(
            Compression::of_layer(OCI_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::of_layer(DOCKER_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::of_layer(OCI_LAYER_ZSTD).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::of_layer(OCI_LAYER_TAR).unwrap(),
            Compression::None
        );
        let err = Compression::of_layer("text/plain").unwrap_err().to_string();
        assert!(err.contains("text/plain"), "{err}");
    }

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(
            Compression::sniff(&[0x50, 0x2a, 0x4d, 0x18]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"bin/"), Compression::None);
    }
}

//! Manifests and indexes (OCI and Docker schema 2), parsed from their exact bytes.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::media;
use crate::{Digest, Error};

/// Largest manifest or index ferry reads (4 MiB, as CNCF distribution).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// Largest image config ferry reads.
pub const MAX_CONFIG_SIZE: u64 = 8 * 1024 * 1024;

/// A parsed manifest: an image manifest or an index of manifests.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An image: one config and its layers.
    Image(Box<ImageManifest>),
    /// An index (OCI) or manifest list (Docker) of per-platform manifests.
    Index(Box<ImageIndex>),
}

/// Manifest bytes exactly as stored, with their digest and media type.
#[derive(Debug, Clone)]
pub struct ManifestBlob {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The media type, as the manifest itself (or its transport) declares.
    pub media_type: String,
    /// The exact bytes the digest covers.
    pub bytes: Vec<u8>,
    /// The parsed form.
    pub manifest: Manifest,
}

impl ManifestBlob {
    /// Parses `bytes` as a manifest, checking them against `expected` when given.
    ///
    /// `content_type` is the transport's media type (HTTP `Content-Type`); the
    /// manifest's own `mediaType` field wins when present.
    pub fn parse(
        bytes: Vec<u8>,
        content_type: Option<&str>,
        expected: Option<&Digest>,
    ) -> Result<Self, Error> {
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge {
                what: "manifest".into(),
                size: bytes.len() as u64,
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let algorithm = expected.map_or(crate::Algorithm::Sha256, |d| d.algorithm());
        let digest = Digest::of(algorithm, &bytes);
        if let Some(expected) = expected {
            if &digest != expected {
                return Err(Error::DigestMismatch {
                    what: "manifest".into(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
                digest: digest.clone(),
                reason: format!("not JSON: {e}"),
            })?;
        let invalid = |reason: String| Error::InvalidManifest {
            digest: digest.clone(),
            reason,
        };
        if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            return Err(Error::Schema1);
        }
        let declared = value.get("mediaType").and_then(|v| v.as_str());
        let media_type = match (declared, content_type) {
            (Some(t), _) => t.to_string(),
            (None, Some(t)) if media::is_manifest(t) => t.to_string(),
            (None, Some(t)) if t == media::DOCKER_SCHEMA1 || t == media::DOCKER_SCHEMA1_SIGNED => {
                return Err(Error::Schema1)
            }
            // OCI allows omitting mediaType; tell manifest from index by shape.
            (None, _) if value.get("manifests").is_some() => media::OCI_INDEX.to_string(),
            (None, _) if value.get("layers").is_some() => media::OCI_MANIFEST.to_string(),
            (None, other) => {
                return Err(invalid(format!(
                    "no mediaType and an unknown Content-Type {:?}",
                    other.unwrap_or("")
                )))
            }
        };
        if media_type == media::DOCKER_SCHEMA1 || media_type == media::DOCKER_SCHEMA1_SIGNED {
            return Err(Error::Schema1);
        }
        let manifest = if media::is_index(&media_type) {
            Manifest::Index(Box::new(
                serde_json::from_value(value).map_err(|e| invalid(format!("bad index: {e}")))?,
            ))
        } else if media::is_manifest(&media_type) {
            let m: ImageManifest = serde_json::from_value(value)
                .map_err(|e| invalid(format!("bad image manifest: {e}")))?;
            for d in std::iter::once(m.config()).chain(m.layers()) {
                Digest::try_from(d.digest()).map_err(|e| invalid(e.to_string()))?;
            }
            Manifest::Image(Box::new(m))
        } else {
            return Err(Error::UnsupportedMediaType {
                media_type: media_type.chars().take(200).collect(),
                context: format!("manifest {digest}"),
            });
        };
        Ok(ManifestBlob {
            digest,
            media_type,
            bytes,
            manifest,
        })
    }

    /// The descriptor that names this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.as_str().into(),
            self.bytes.len() as u64,
            oci_spec::image::Digest::from(&self.digest),
        )
    }
}

/// Parses an image config blob (OCI or Docker) whose `rootfs.type` is `layers`, the only
/// type the image spec defines.
pub fn parse_config(bytes: &[u8], digest: &Digest) -> Result<ImageConfiguration, Error> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| Error::InvalidManifest {
            digest: digest.clone(),
            reason: format!("bad image config: {e}"),
        })?;
    let rootfs_type = config.rootfs().typ();
    if rootfs_type != "layers" {
        return Err(Error::InvalidManifest {
            digest: digest.clone(),
            reason: format!(
                "bad image config: rootfs.type is {:?}, not \"layers\"",
                rootfs_type.chars().take(64).collect::<String>()
            ),
        });
    }
    Ok(config)
}

/// The digest of a descriptor, validated.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest, Error> {
    Digest::try_from(d.digest())
}

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in GOARCH terms, e.g. `amd64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(Error::InvalidPlatform(s.chars().take(100).collect())),
        }
    }

    /// The platform this process runs on.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.architecture
            && match (&self.variant, p.variant()) {
                (Some(want), Some(have)) => want == have,
                // arm64 images often omit the default variant.
                (Some(want), None) => self.architecture == "arm64" && want == "v8",
                (None, _) => true,
            }
    }

    /// Picks the manifest for this platform from an index.
    pub fn select<'a>(&self, index: &'a ImageIndex) -> Result<&'a Descriptor, Error> {
        index
            .manifests()
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| self.matches(p)))
            .ok_or_else(|| Error::NoMatchingPlatform {
                platform: self.to_string(),
                available: index
                    .manifests()
                    .iter()
                    .filter_map(|d| d.platform().as_ref())
                    .map(|p| {
                        let mut s = format!("{}/{}", p.os(), p.architecture());
                        if let Some(v) = p.variant() {
                            s.push('/');
                            s.push_str(v);
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl Platform {
    /// The platform an image config says it is for (`os`, `architecture`, `variant`).
    pub fn of_config(config: &ImageConfiguration) -> Platform {
        Platform {
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            variant: config.variant().clone(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const CONFIG: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image_json(media_type: &str) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{CONFIG}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":3,"digest":"{LAYER}"}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        for t in [media::OCI_MANIFEST, media::DOCKER_MANIFEST] {
            let m = ManifestBlob::parse(image_json(t), None, None).unwrap();
            assert_eq!(m.media_type, t);
            assert!(matches!(m.manifest, Manifest::Image(_)));
        }
    }

    #[test]
    fn checks_expected_digest() {
        let bytes = image_json(media::OCI_MANIFEST);
        let good = Digest::sha256(&bytes);
        assert!(ManifestBlob::parse(bytes.clone(), None, Some(&good)).is_ok());
        let other = Digest::sha256(b"x");
        assert!(matches!(
            ManifestBlob::parse(bytes, None, Some(&other)),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn refuses_schema1_huge_and_unknown() {
        let s1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_vec();
        assert!(ManifestBlob::parse(s1, None, None)
            .unwrap_err()
            .to_string()
            .contains("schema 1"));
        let huge = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        assert!(matches!(
            ManifestBlob::parse(huge, None, None),
            Err(Error::TooLarge { .. })
        ));
        let unknown =
            br#"{"schemaVersion":2,"mediaType":"application/x-weird","layers":[]}"#.to_vec();
        assert!(ManifestBlob::parse(unknown, None, None)
            .unwrap_err()
            .to_string()
            .contains("application/x-weird"));
        let bad_digest = String::from_utf8(image_json(media::OCI_MANIFEST))
            .unwrap()
            .replace(LAYER, "sha256:zz");
        assert!(ManifestBlob::parse(bad_digest.into_bytes(), None, None).is_err());
    }

    #[test]
    fn configs_must_have_layers_rootfs() {
        let config = |typ: &str| {
            format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"{typ}","diff_ids":["{LAYER}"]}}}}"#
            )
            .into_bytes()
        };
        let d = Digest::sha256(b"c");
        assert!(parse_config(&config("layers"), &d).is_ok());
        for typ in ["", "Layers", "squashfs"] {
            let err = parse_config(&config(typ), &d).unwrap_err().to_string();
            assert!(
                err.contains("rootfs.type") && err.contains(&d.to_string()),
                "{typ}: {err}"
            );
        }
    }

    #[test]
    fn selects_platform_from_index() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
            {{"mediaType":"{m}","size":1,"digest":"{LAYER}","platform":{{"os":"linux","architecture":"arm64"}}}},
            {{"mediaType":"{m}","size":1,"digest":"{CONFIG}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_INDEX,
            m = media::OCI_MANIFEST
        );
        let blob = ManifestBlob::parse(index.into_bytes(), None, None).unwrap();
        let Manifest::Index(idx) = &blob.manifest else {
            panic!()
        };
        let amd = Platform::parse("linux/amd64").unwrap().select(idx).unwrap();
        assert_eq!(amd.digest().to_string(), CONFIG);
        let arm = Platform::parse("linux/arm64/v8")
            .unwrap()
            .select(idx)
            .unwrap();
        assert_eq!(arm.digest().to_string(), LAYER);
        let err = Platform::parse("linux/s390x")
            .unwrap()
            .select(idx)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/arm64") && err.contains("linux/s390x"),
            "{err}"
        );
        assert!(Platform::parse("linux").is_err());
    }
}

//! Manifests, indexes and image configs as the pull path reads them: `ManifestBlob::parse`
//! (with each transport `Content-Type`), then the checks pull makes before it transfers
//! anything (descriptor digests, platform selection, config and layer media types), and
//! `parse_config` with the fields pull records.
//!
//! Input: one byte choosing the `Content-Type`, then the document.
#![no_main]

use ferry_core::manifest::{descriptor_digest, parse_config};
use ferry_core::media::{self, Compression};
use ferry_core::{Digest, Manifest, ManifestBlob, Platform};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_MANIFEST_LIST),
    Some(media::DOCKER_SCHEMA1_SIGNED),
    Some("application/json"),
    Some(""),
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(choice) % CONTENT_TYPES.len()];
    let digest = Digest::sha256(bytes);

    if let Ok(blob) = ManifestBlob::parse(bytes.to_vec(), content_type, None) {
        assert_eq!(blob.digest, digest);
        assert_eq!(blob.bytes, bytes);
        assert!(media::is_manifest(&blob.media_type), "{}", blob.media_type);
        let again = ManifestBlob::parse(bytes.to_vec(), content_type, Some(&digest))
            .expect("parses again when its digest is expected");
        assert_eq!(again.media_type, blob.media_type);
        let descriptor = blob.descriptor();
        assert_eq!(descriptor.size(), bytes.len() as u64);
        assert_eq!(descriptor_digest(&descriptor).expect("own digest"), digest);

        match &blob.manifest {
            Manifest::Index(index) => {
                assert!(media::is_index(&blob.media_type));
                for platform in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
                    if let Ok(child) = Platform::parse(platform).expect("valid").select(index) {
                        let _ = descriptor_digest(child);
                    }
                }
            }
            Manifest::Image(image) => {
                assert!(!media::is_index(&blob.media_type));
                // ManifestBlob::parse promises valid config and layer digests.
                descriptor_digest(image.config()).expect("config digest was validated");
                for layer in image.layers() {
                    descriptor_digest(layer).expect("layer digest was validated");
                    let _ = Compression::of_layer(layer.media_type().as_ref());
                }
            }
        }
    } else if let Err(e) = ManifestBlob::parse(bytes.to_vec(), content_type, None) {
        let message = e.to_string();
        assert!(!message.contains('\n'), "one-line error: {message:?}");
    }

    if let Ok(config) = parse_config(bytes, &digest) {
        // What pull records about the image.
        let _ = format!("{}/{}", config.os(), config.architecture());
        let _ = (config.variant(), config.created());
        let json = serde_json::to_vec(&config).expect("a parsed config serializes");
        let again = parse_config(&json, &Digest::sha256(&json)).expect("serialized config parses");
        assert_eq!(again, config, "config round trip");
    }
});

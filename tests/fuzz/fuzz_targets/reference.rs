//! Image references and digests (`Reference::parse`, `Digest::parse`, `Platform::parse`):
//! no panic, and whatever parses prints back to a string that parses to the same value.
#![no_main]

use ferry_core::oci_spec::image::Digest as OciDigest;
use ferry_core::{Digest, Platform, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(
            digest.to_string(),
            text,
            "a digest prints exactly as parsed"
        );
        assert_eq!(digest.hex().len(), digest.algorithm().hex_len());
        assert!(digest.hex().starts_with(digest.short()));
        let oci = OciDigest::from(&digest);
        assert_eq!(Digest::try_from(&oci).expect("OCI form parses"), digest);
    }

    if let Ok(platform) = Platform::parse(text) {
        let printed = platform.to_string();
        assert_eq!(
            Platform::parse(&printed).expect("printed platform parses"),
            platform
        );
    }

    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} prints as {printed:?}, which fails: {e}"));
        assert_eq!(again, reference, "{text:?} -> {printed:?}");
        assert_eq!(again.to_string(), printed, "printing is stable");
        assert!(reference.tag().is_some() || reference.digest().is_some());
        assert_eq!(
            reference.name(),
            format!("{}/{}", reference.registry(), reference.repository())
        );
        let rebuilt = Reference::with_name(&reference.name(), reference.tag(), reference.digest())
            .unwrap_or_else(|e| panic!("{printed:?} rebuilt from its parts fails: {e}"));
        assert_eq!(rebuilt, reference);
    } else if let Err(e) = Reference::parse(text) {
        let message = e.to_string();
        assert!(!message.contains('\n'), "one-line error: {message:?}");
    }
});

//! HTTP headers ferry reads from the other side: `WWW-Authenticate` challenges
//! (`parse_challenges`, read by the registry client) and `Range` / `Content-Range`
//! (`span`, `content_range_start`, read by `ferry serve`); and the image a mirror request
//! names (`upstream_name` of the repository path and containerd's `?ns=`, MIRROR-1).
//!
//! Input: 8 bytes of blob size (little endian), then the header text.
#![no_main]

use ferry_core::Reference;
use ferry_drivers::sources::registry::{parse_challenges, Challenge};
use ferry_serve::mirror::upstream_name;
use ferry_serve::range::{content_range_start, span, Span};
use libfuzzer_sys::fuzz_target;

/// Writes challenges back as a header, every value quoted and escaped.
fn render(challenges: &[Challenge]) -> String {
    challenges
        .iter()
        .map(|c| {
            let params: Vec<String> = c
                .params
                .iter()
                .map(|(k, v)| {
                    let v = v.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            if params.is_empty() {
                c.scheme.clone()
            } else {
                format!("{} {}", c.scheme, params.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let Ok(text) = std::str::from_utf8(&data[8..]) else {
        return;
    };

    let challenges = parse_challenges(text);
    for c in &challenges {
        assert!(!c.scheme.is_empty(), "{text:?}: empty scheme");
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        for (name, _) in &c.params {
            assert!(!name.is_empty(), "{text:?}: empty parameter name");
            assert_eq!(*name, name.to_ascii_lowercase());
        }
    }
    let rendered = render(&challenges);
    assert_eq!(
        parse_challenges(&rendered),
        challenges,
        "{text:?} re-rendered as {rendered:?}"
    );

    match span(Some(text), size) {
        Span::Part(first, last) => {
            assert!(first <= last, "{text:?} size {size}: {first} > {last}");
            assert!(last < size, "{text:?} size {size}: {last} past the end");
        }
        Span::Unsatisfiable => assert!(text.contains("bytes="), "{text:?}"),
        Span::Whole => {}
    }
    assert_eq!(span(None, size), Span::Whole);

    if let Some(start) = content_range_start(text) {
        assert!(
            text.bytes().any(|b| b.is_ascii_digit()),
            "{text:?}: start {start} from no digit"
        );
    }
    // Both spellings a client sends give back the number they carry.
    let end = size.saturating_add(9);
    assert_eq!(content_range_start(&format!("{size}-{end}")), Some(size));
    assert_eq!(
        content_range_start(&format!("bytes {size}-{end}/*")),
        Some(size)
    );

    // A mirror request: the text up to the first `?` is the repository path, the rest `ns`.
    let (repo, ns) = match text.split_once('?') {
        Some((repo, ns)) => (repo, Some(ns)),
        None => (text, None),
    };
    match upstream_name(repo, ns) {
        Ok(name) => {
            let parsed = Reference::parse(&name).expect("an upstream name is a reference");
            assert_eq!(parsed.name(), name, "{text:?}: not normalized");
            assert_eq!(
                name.rsplit('/').next(),
                repo.rsplit('/').next(),
                "{text:?}: names another image"
            );
        }
        Err(e) => assert!(!e.message.contains('\n'), "one-line error: {:?}", e.message),
    }
});

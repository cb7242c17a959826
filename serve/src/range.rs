//! Byte ranges in request headers: `Range` of a blob GET (RFC 9110, one range) and
//! `Content-Range` of an upload PATCH. Both read client bytes, so both are fuzzed.

/// A byte range asked for with `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// No usable range: send the whole blob (200).
    Whole,
    /// Bytes `first..=last` (206).
    Part(u64, u64),
    /// The range starts past the end (416).
    Unsatisfiable,
}

/// Interprets a `Range` header for a blob of `size` bytes: one range (`a-b`, `a-`, `-n`);
/// anything else is ignored and the whole blob is sent.
pub fn span(range: Option<&str>, size: u64) -> Span {
    let Some(spec) = range.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Span::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => {
            if start >= size {
                Span::Unsatisfiable
            } else {
                Span::Part(start, end.min(size - 1))
            }
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= size {
                Span::Unsatisfiable
            } else {
                Span::Part(start, size - 1)
            }
        }
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                Span::Unsatisfiable
            } else {
                Span::Part(size - n.min(size), size - 1)
            }
        }
        _ => Span::Whole,
    }
}

/// The first byte of a `Content-Range` of a PATCH (`a-b`, or `bytes a-b/…`).
pub fn content_range_start(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("bytes").map_or(v, str::trim_start);
    let v = v.strip_prefix('=').unwrap_or(v).trim();
    v.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110_single_ranges() {
        assert_eq!(span(None, 10), Span::Whole);
        assert_eq!(span(Some("bytes=0-3"), 10), Span::Part(0, 3));
        assert_eq!(span(Some("bytes=4-"), 10), Span::Part(4, 9));
        assert_eq!(span(Some("bytes=8-100"), 10), Span::Part(8, 9));
        assert_eq!(span(Some("bytes=-3"), 10), Span::Part(7, 9));
        assert_eq!(span(Some("bytes=-30"), 10), Span::Part(0, 9));
        assert_eq!(span(Some("bytes=10-"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=-0"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=0-1,4-5"), 10), Span::Whole);
        assert_eq!(span(Some("items=0-1"), 10), Span::Whole);
        assert_eq!(span(Some("bytes=5-2"), 10), Span::Whole);
    }

    #[test]
    fn content_ranges_of_patches_parse_in_both_spellings() {
        assert_eq!(content_range_start("0-99"), Some(0));
        assert_eq!(content_range_start("100-199"), Some(100));
        assert_eq!(content_range_start("bytes 100-199/*"), Some(100));
        assert_eq!(content_range_start("bytes=5-9"), Some(5));
        assert_eq!(content_range_start("x"), None);
    }
}

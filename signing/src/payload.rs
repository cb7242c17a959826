//! The signed payload (SIG-6) and its canonical bytes (SIG-7).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Error, KeyId, Result};

/// The `critical.type` of the one payload version ferry understands (SIG-6).
pub const PAYLOAD_TYPE: &str = "ferry signature v1";

/// What a payload vouches for, read from its critical section.
#[derive(Debug)]
pub(crate) struct Claims {
    /// `critical.image.name`.
    pub name: String,
    /// `critical.image.tag`.
    pub tag: String,
    /// `critical.manifest.digest`, unparsed (compared exactly with the expected digest).
    pub digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    critical: Critical,
    /// Informational; its members are ignored (SIG-6), but it must be an object.
    #[serde(rename = "optional", default)]
    _optional: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    #[serde(rename = "type")]
    _type: String,
    image: Image,
    manifest: Manifest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    name: String,
    tag: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    digest: String,
}

/// The canonical payload bytes binding `name:tag` to `digest` (SIG-6, SIG-7).
pub(crate) fn build(
    name: &str,
    tag: &str,
    digest: &str,
    created: Option<SystemTime>,
    key_id: &KeyId,
) -> Result<Vec<u8>> {
    let mut optional = serde_json::Map::new();
    if let Some(created) = created {
        optional.insert("created".into(), Value::String(rfc3339_utc(created)?));
    }
    optional.insert("key_id".into(), Value::String(key_id.to_string()));
    let doc = json!({
        "critical": {
            "type": PAYLOAD_TYPE,
            "image": {"name": name, "tag": tag},
            "manifest": {"digest": digest},
        },
        "optional": optional,
    });
    canonical(&doc).map_err(|reason| Error::InvalidPayload {
        key: key_id.clone(),
        reason,
    })
}

/// Parses payload bytes whose signature was already verified by `key` (SIG-10 step 4).
pub(crate) fn parse(bytes: &[u8], key: &KeyId) -> Result<Claims> {
    let bad = |reason: String| Error::InvalidPayload {
        key: key.clone(),
        reason,
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if canonical(&value).map_err(bad)? != bytes {
        return Err(bad(
            "not in canonical form (sorted keys, no whitespace, no duplicate keys, minimal escapes)".into(),
        ));
    }
    // The type decides how the rest is read, so check it before anything else.
    match value.pointer("/critical/type") {
        Some(Value::String(t)) if t == PAYLOAD_TYPE => {}
        Some(Value::String(t)) => {
            return Err(bad(format!(
                "type {t:?} is not {PAYLOAD_TYPE:?}; this version of ferry cannot verify it"
            )))
        }
        _ => return Err(bad("critical.type is missing or not a string".into())),
    }
    let doc: Document =
        serde_json::from_value(value).map_err(|e| bad(format!("critical section: {e}")))?;
    Ok(Claims {
        name: doc.critical.image.name,
        tag: doc.critical.image.tag,
        digest: doc.critical.manifest.digest,
    })
}

/// The canonical JSON bytes of `value` (SIG-7), or why it has none.
fn canonical(value: &Value) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => out.extend_from_slice(i.to_string().as_bytes()),
            (None, Some(u)) => out.extend_from_slice(u.to_string().as_bytes()),
            (None, None) => return Err(format!("number {n} is not an integer")),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort here rather than trusting the map's order: serde_json keeps insertion
            // order when any crate in the build enables its `preserve_order` feature.
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `t` as RFC 3339 UTC with whole seconds, e.g. `2025-01-02T03:04:05Z`.
fn rfc3339_utc(t: SystemTime) -> Result<String> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::InvalidCreated)?
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key() -> KeyId {
        "e744c0791320c328".parse().unwrap()
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn built_payload_is_the_example_of_sig_6() {
        let created = UNIX_EPOCH + Duration::from_secs(1_735_787_045);
        let bytes = build(
            "registry.example.com/team/app",
            "1",
            D,
            Some(created),
            &key(),
        )
        .unwrap();
        let spec = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../specs/signature.md"
        ))
        .unwrap();
        let example = String::from_utf8(bytes).unwrap();
        assert!(
            spec.contains(&format!("\n{example}\n")),
            "SIG-6 example differs: {example}"
        );
    }

    #[test]
    fn built_payload_parses_back() {
        let bytes = build("docker.io/library/busybox", "latest", D, None, &key()).unwrap();
        let claims = parse(&bytes, &key()).unwrap();
        assert_eq!(claims.name, "docker.io/library/busybox");
        assert_eq!(claims.tag, "latest");
        assert_eq!(claims.digest, D);
        assert!(!String::from_utf8(bytes).unwrap().contains("created"));
    }

    #[test]
    fn formats_rfc3339_utc() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_735_787_045, "2025-01-02T03:04:05Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(
                rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs)).unwrap(),
                want
            );
        }
        assert!(rfc3339_utc(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }

    fn reason(bytes: &[u8]) -> String {
        match parse(bytes, &key()) {
            Err(Error::InvalidPayload { reason, .. }) => reason,
            other => panic!(
                "{}: expected InvalidPayload, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    fn good() -> String {
        format!(
            r#"{{"critical":{{"image":{{"name":"r.io/a","tag":"1"}},"manifest":{{"digest":"{D}"}},"type":"ferry signature v1"}}}}"#
        )
    }

    fn with_optional(critical_only: &str, members: &str) -> String {
        format!(
            r#"{},"optional":{{{members}}}}}"#,
            &critical_only[..critical_only.len() - 1]
        )
    }

    #[test]
    fn non_canonical_payloads_are_rejected_sig_7() {
        assert!(parse(good().as_bytes(), &key()).is_ok());
        let g = good();
        for bytes in [
            format!("{g}\n"),                                 // trailing newline
            format!(" {g}"),                                  // leading space
            g.replacen("\"critical\":", "\"critical\" :", 1), // inner whitespace
            g.replacen(
                r#""name":"r.io/a","tag":"1""#,
                r#""tag":"1","name":"r.io/a""#,
                1,
            ), // unsorted
            g.replacen("r.io/a", r"r.io\/a", 1),              // needless escape
            g.replacen("ferry", r"\u0066erry", 1),            // needless \u escape
            g.replacen(r#""tag":"1""#, r#""tag":"1","tag":"2""#, 1), // duplicate key
            format!("\u{feff}{g}"),                           // byte order mark
        ] {
            let r = reason(bytes.as_bytes());
            assert!(
                r.contains("canonical") || r.contains("not JSON"),
                "{bytes}: {r}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_rejected_even_when_sorted_sig_7() {
        // Both copies sort equal; the parser keeps one, so the bytes cannot be canonical.
        let dup = good().replacen(r#""tag":"1""#, r#""tag":"1","tag":"1""#, 1);
        assert!(reason(dup.as_bytes()).contains("canonical"));
    }

    #[test]
    fn canonical_strings_and_numbers_sig_7() {
        let v = json!({"b": "q\"\\\u{8}\t\n\u{c}\r\u{1}\u{7f}é/", "a": [1, -2, 18446744073709551615u64, null, true]});
        let bytes = canonical(&v).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"a\":[1,-2,18446744073709551615,null,true],\"b\":\"q\\\"\\\\\\b\\t\\n\\f\\r\\u0001\u{7f}é/\"}"
        );
        assert!(canonical(&json!({"x": 1.5})).is_err());
        let g = good();
        assert!(parse(with_optional(&g, r#""n":-12"#).as_bytes(), &key()).is_ok());
        for n in ["1.0", "1e2", "-0", "01", "18446744073709551616"] {
            let bytes = with_optional(&g, &format!(r#""n":{n}"#));
            let r = reason(bytes.as_bytes());
            assert!(
                r.contains("canonical") || r.contains("integer") || r.contains("not JSON"),
                "{n}: {r}"
            );
        }
    }

    #[test]
    fn unknown_critical_fields_are_rejected_unknown_optional_ones_ignored_sig_6() {
        let g = good();
        for bytes in [
            g.replacen(r#""type":"#, r#""ttl":"1","type":"#, 1),
            g.replacen(r#""tag":"1""#, r#""tag":"1","zone":"x""#, 1),
            g.replacen(r#""digest":"#, r#""annotations":{},"digest":"#, 1),
        ] {
            let r = reason(bytes.as_bytes());
            assert!(r.contains("unknown field"), "{bytes}: {r}");
        }
        let top = g.replacen(r#"{"critical""#, r#"{"aaa":1,"critical""#, 1);
        assert!(reason(top.as_bytes()).contains("unknown field"));
        let opt = with_optional(&g, r#""created":"x","future":[1,{"a":null}]"#);
        assert!(parse(opt.as_bytes(), &key()).is_ok(), "{opt}");
        let opt_not_object = format!(r#"{},"optional":"x"}}"#, &g[..g.len() - 1]);
        assert!(
            reason(opt_not_object.as_bytes()).contains("map"),
            "{opt_not_object}"
        );
    }

    #[test]
    fn wrong_type_or_version_is_rejected_first_sig_10() {
        let g = good();
        let v2 = g.replacen("ferry signature v1", "ferry signature v2", 1);
        assert!(reason(v2.as_bytes()).contains("\"ferry signature v2\" is not"));
        let other = g.replacen(
            r#""type":"ferry signature v1""#,
            r#""type":"atomic container signature""#,
            1,
        );
        assert!(reason(other.as_bytes()).contains("is not"));
        let missing = g.replacen(r#","type":"ferry signature v1""#, "", 1);
        assert!(reason(missing.as_bytes()).contains("critical.type is missing"));
        let not_string = g.replacen(r#""ferry signature v1""#, "1", 1);
        assert!(reason(not_string.as_bytes()).contains("critical.type"));
        // A future version with new critical fields is reported as a version problem.
        let future = v2.replacen(r#""type":"#, r#""policy":"x","type":"#, 1);
        assert!(reason(future.as_bytes()).contains("v2"));
    }

    #[test]
    fn missing_critical_fields_are_rejected() {
        let g = good();
        let no_tag = g.replacen(r#","tag":"1""#, "", 1);
        assert!(reason(no_tag.as_bytes()).contains("missing field `tag`"));
        let no_manifest = g.replacen(&format!(r#""manifest":{{"digest":"{D}"}},"#), "", 1);
        assert!(reason(no_manifest.as_bytes()).contains("missing field `manifest`"));
    }
}

//! The signed payload: cosign's simple signing form (SIG-6), built (SIG-7) and parsed
//! strictly (SIG-10 step 4).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Error, Result};

/// The `critical.type` of a cosign container image signature, the one payload type ferry
/// writes and verifies (SIG-6).
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// What a payload vouches for, read from its critical section.
#[derive(Debug)]
pub(crate) struct Claims {
    /// `critical.identity.docker-reference`, unparsed.
    pub docker_reference: String,
    /// `critical.image.docker-manifest-digest`, unparsed (compared exactly with the expected
    /// digest).
    pub digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    critical: Critical,
    /// Informational; its members are ignored (SIG-6), but it must be an object or null.
    #[serde(rename = "optional", default)]
    _optional: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    _type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The payload bytes ferry signs: `docker_reference` (`NAME:TAG`) bound to `digest`, with
/// `creator` and, when given, `timestamp` in `optional` (SIG-6, SIG-7).
pub(crate) fn build(
    docker_reference: &str,
    digest: &str,
    created: Option<SystemTime>,
) -> Result<Vec<u8>> {
    let mut optional = serde_json::Map::new();
    optional.insert(
        "creator".into(),
        Value::String(format!("ferry {}", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(created) = created {
        let secs = created
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::InvalidCreated)?
            .as_secs();
        optional.insert("timestamp".into(), Value::from(secs));
    }
    let doc = json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": optional,
    });
    let mut out = Vec::new();
    write_sorted(&doc, &mut out);
    Ok(out)
}

/// Parses payload bytes (SIG-10 step 4): JSON with no duplicate keys at any depth,
/// `critical.type` checked first, then exactly the members of SIG-6 in `critical`; the
/// reason when they are not a payload.
pub(crate) fn parse(bytes: &[u8]) -> std::result::Result<Claims, String> {
    let value = serde_json::from_slice::<Strict>(bytes)
        .map_err(|e| format!("not JSON without duplicate keys: {e}"))?
        .0;
    // The type decides how the rest is read, so check it before anything else.
    match value.pointer("/critical/type") {
        Some(Value::String(t)) if t == PAYLOAD_TYPE => {}
        Some(Value::String(t)) => {
            return Err(format!(
                "type {t:?} is not {PAYLOAD_TYPE:?}; ferry cannot verify it"
            ))
        }
        _ => return Err("critical.type is missing or not a string".into()),
    }
    let doc: Document =
        serde_json::from_value(value).map_err(|e| format!("critical section: {e}"))?;
    Ok(Claims {
        docker_reference: doc.critical.identity.docker_reference,
        digest: doc.critical.image.docker_manifest_digest,
    })
}

/// A JSON value parsed with every object's keys unique: a duplicate key is an error, where
/// `serde_json::Value` would silently keep the last one.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut members = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(item) = map.next_value()?;
            if members.insert(key.clone(), item).is_some() {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(members.into_iter().collect()))
    }
}

/// Compact JSON with object members sorted by key (the order cosign writes), so the bytes
/// ferry signs do not depend on the map order of the JSON library.
fn write_sorted(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(
                    serde_json::to_string(key)
                        .expect("a string serializes")
                        .as_bytes(),
                );
                out.push(b':');
                write_sorted(item, out);
            }
            out.push(b'}');
        }
        other => out.extend_from_slice(
            serde_json::to_string(other)
                .expect("a JSON value serializes")
                .as_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn built_payload_is_the_example_of_sig_6() {
        let created = UNIX_EPOCH + Duration::from_secs(1_735_787_045);
        let bytes = build("registry.example.com/team/app:1", D, Some(created)).unwrap();
        let spec = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../specs/signature.md"
        ))
        .unwrap();
        let example = String::from_utf8(bytes)
            .unwrap()
            .replace(env!("CARGO_PKG_VERSION"), "0.1.0");
        assert!(
            spec.contains(&format!("\n{example}\n")),
            "SIG-6 example differs: {example}"
        );
    }

    #[test]
    fn built_payload_parses_back() {
        let bytes = build("docker.io/library/busybox:latest", D, None).unwrap();
        let claims = parse(&bytes).unwrap();
        assert_eq!(claims.docker_reference, "docker.io/library/busybox:latest");
        assert_eq!(claims.digest, D);
        assert!(!String::from_utf8(bytes).unwrap().contains("timestamp"));
    }

    fn reason(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(reason) => reason,
            Ok(claims) => panic!(
                "{}: expected a rejection, got {claims:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    /// The payload cosign (Go) writes for `cosign sign --key`: repository only, `optional` null.
    fn cosign() -> String {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
    }

    #[test]
    fn other_signers_forms_are_accepted_sig_6() {
        let c = cosign();
        assert_eq!(parse(c.as_bytes()).unwrap().docker_reference, "r.io/a");
        // Whitespace, member order, escapes and a missing or populated `optional` are the
        // signer's choice: the signature covers the exact bytes.
        for bytes in [
            format!("{c}\n"),
            format!(" {c}"),
            c.replacen("\"critical\":", "\"critical\" : ", 1),
            c.replacen(r#","optional":null"#, "", 1),
            c.replacen(
                r#""optional":null"#,
                r#""optional":{"creator":"x","timestamp":1,"a":[1.5,{"b":null}]}"#,
                1,
            ),
            c.replacen("r.io/a", r"r.io\/a", 1),
            format!(
                r#"{{"optional":null,"critical":{{"type":"cosign container image signature","image":{{"docker-manifest-digest":"{D}"}},"identity":{{"docker-reference":"r.io/a"}}}}}}"#
            ),
        ] {
            let claims = parse(bytes.as_bytes()).unwrap_or_else(|e| panic!("{bytes}: {e}"));
            assert_eq!(claims.docker_reference, "r.io/a", "{bytes}");
            assert_eq!(claims.digest, D);
        }
    }

    #[test]
    fn duplicate_keys_are_rejected_at_any_depth_sig_6() {
        let c = cosign();
        for bytes in [
            c.replacen(
                r#"{"docker-reference":"r.io/a"}"#,
                r#"{"docker-reference":"r.io/a","docker-reference":"r.io/b"}"#,
                1,
            ),
            c.replacen(
                r#""type":"#,
                r#""type":"cosign container image signature","type":"#,
                1,
            ),
            c.replacen(r#""optional":null"#, r#""optional":{"a":1,"a":1}"#, 1),
            c.replacen(
                r#""optional":null"#,
                r#""optional":{"a":[{"b":{"c":1,"\u0063":2}}]}"#,
                1,
            ),
            c.replacen(
                r#""optional":null"#,
                r#""optional":null,"optional":null"#,
                1,
            ),
        ] {
            assert!(
                reason(bytes.as_bytes()).contains("duplicate key"),
                "{bytes}"
            );
        }
    }

    #[test]
    fn unknown_critical_fields_are_rejected_sig_6() {
        let c = cosign();
        for bytes in [
            c.replacen(r#""type":"#, r#""ttl":"1","type":"#, 1),
            c.replacen(
                r#""docker-reference":"r.io/a""#,
                r#""docker-reference":"r.io/a","zone":"x""#,
                1,
            ),
            c.replacen(
                r#""docker-manifest-digest":"#,
                r#""annotations":{},"docker-manifest-digest":"#,
                1,
            ),
            c.replacen(r#"{"critical""#, r#"{"aaa":1,"critical""#, 1),
        ] {
            assert!(
                reason(bytes.as_bytes()).contains("unknown field"),
                "{bytes}"
            );
        }
        let not_object = c.replacen(r#""optional":null"#, r#""optional":"x""#, 1);
        assert!(
            reason(not_object.as_bytes()).contains("map"),
            "{not_object}"
        );
    }

    #[test]
    fn wrong_type_is_rejected_first_sig_10() {
        let c = cosign();
        let atomic = c.replacen(
            "cosign container image signature",
            "atomic container signature",
            1,
        );
        assert!(reason(atomic.as_bytes()).contains("\"atomic container signature\" is not"));
        // Another type with fields ferry does not know is reported as a type problem.
        let future = atomic.replacen(r#""type":"#, r#""policy":"x","type":"#, 1);
        assert!(reason(future.as_bytes()).contains("is not"));
        let missing = c.replacen(r#","type":"cosign container image signature""#, "", 1);
        assert!(reason(missing.as_bytes()).contains("critical.type is missing"));
        let not_string = c.replacen(r#""cosign container image signature""#, "1", 1);
        assert!(reason(not_string.as_bytes()).contains("critical.type"));
    }

    #[test]
    fn missing_critical_fields_are_rejected() {
        let c = cosign();
        let no_identity = c.replacen(r#""identity":{"docker-reference":"r.io/a"},"#, "", 1);
        assert!(reason(no_identity.as_bytes()).contains("missing field `identity`"));
        let no_digest = c.replacen(&format!(r#""docker-manifest-digest":"{D}""#), "", 1);
        assert!(reason(no_digest.as_bytes()).contains("missing field `docker-manifest-digest`"));
        assert!(reason(b"not json").contains("not JSON"));
    }
}

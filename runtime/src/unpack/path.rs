//! Entry names → root-relative paths, and whiteout names (specs/unpack.md UNPACK-10…14).

/// What an entry name means once normalized.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target<'a> {
    /// An ordinary path `parent/name`; `name` is `.` for the root itself.
    Path { parent: &'a [u8], name: &'a [u8] },
    /// `.wh.NAME`: hide `parent/NAME` of lower layers.
    Whiteout { parent: &'a [u8], name: &'a [u8] },
    /// `.wh..wh..opq`: hide everything lower layers put into `parent`.
    Opaque { parent: &'a [u8] },
    /// A path below aufs' hard-link store `/.wh..wh.plnk/`: kept only while the layer is
    /// applied, as the target of hard links into it (UNPACK-13).
    LinkStore { parent: &'a [u8], name: &'a [u8] },
    /// Other `.wh..wh.*` names, and everything below them: aufs bookkeeping, ignored.
    AufsMeta,
}

const WHITEOUT: &[u8] = b".wh.";
const META: &[u8] = b".wh..wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// aufs' hard-link store, at the root of a layer.
pub(super) const LINK_STORE: &[u8] = b".wh..wh.plnk";

/// Whether normalized `path` lies below aufs' hard-link store at the root.
pub(super) fn in_link_store(path: &[u8]) -> bool {
    path.strip_prefix(LINK_STORE)
        .is_some_and(|rest| rest.len() > 1 && rest[0] == b'/')
}

/// Normalizes a tar name into a root-relative path with single `/` separators.
///
/// Leading `/`, empty and `.` components are dropped (UNPACK-10); `..` anywhere is
/// rejected (UNPACK-11), as is a NUL byte. The root itself is the empty path.
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte".into());
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("name contains a '..' component".into()),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a normalized path into parent and final component.
pub(super) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None if path.is_empty() => (b"", b"."),
        None => (b"", path),
    }
}

/// Classifies a normalized path: plain path, whiteout, opaque marker, aufs hard-link store
/// or other aufs metadata.
pub(super) fn classify(path: &[u8]) -> Result<Target<'_>, String> {
    let (parent, name) = split(path);
    if parent.split(|&b| b == b'/').any(|c| c.starts_with(META)) {
        return Ok(if in_link_store(path) {
            Target::LinkStore { parent, name }
        } else {
            Target::AufsMeta
        });
    }
    if name == OPAQUE {
        Ok(Target::Opaque { parent })
    } else if name.starts_with(META) {
        Ok(Target::AufsMeta)
    } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        match hidden {
            b"" | b"." | b".." => Err(format!(
                "whiteout {:?} names no file",
                String::from_utf8_lossy(name)
            )),
            _ => Ok(Target::Whiteout {
                parent,
                name: hidden,
            }),
        }
    } else {
        Ok(Target::Path { parent, name })
    }
}

/// Joins `base` and a relative `rest`, both normalized.
pub(super) fn join(base: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(base.len() + 1 + rest.len());
    out.extend_from_slice(base);
    if !base.is_empty() && !rest.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    out
}

/// Resolves a symlink target lexically against the directory `base`, clamping `..` at
/// the root; used only to pre-create directories behind a dangling symlink, whose
/// result is then opened with `RESOLVE_IN_ROOT` like every other path.
pub(super) fn lexical_target(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    if !target.starts_with(b"/") {
        parts.extend(base.split(|&b| b == b'/').filter(|c| !c.is_empty()));
    }
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names_into_the_root() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"a/..").is_err());
        assert!(normalize(b"a\0b").is_err());
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(
            classify(b"a/.wh.b").unwrap(),
            Target::Whiteout {
                parent: b"a",
                name: b"b"
            }
        );
        assert_eq!(
            classify(b"a/.wh..wh..opq").unwrap(),
            Target::Opaque { parent: b"a" }
        );
        assert_eq!(classify(b".wh..wh.plnk").unwrap(), Target::AufsMeta);
        assert_eq!(classify(b"a/.wh..wh.aufs").unwrap(), Target::AufsMeta);
        assert_eq!(
            classify(b".wh..wh.plnk/260.12").unwrap(),
            Target::LinkStore {
                parent: b".wh..wh.plnk",
                name: b"260.12"
            }
        );
        // Below other metadata, or a store that is not at the root: ignored.
        assert_eq!(classify(b".wh..wh.orph/x").unwrap(), Target::AufsMeta);
        assert_eq!(classify(b"a/.wh..wh.plnk/x").unwrap(), Target::AufsMeta);
        assert_eq!(classify(b".wh..wh..opq/x").unwrap(), Target::AufsMeta);
        assert_eq!(
            classify(b".wh..wh.plnk/d/.wh.x").unwrap(),
            Target::LinkStore {
                parent: b".wh..wh.plnk/d",
                name: b".wh.x"
            }
        );
        assert!(classify(b"a/.wh.").is_err());
        assert!(classify(b"a/.wh..").is_err());
        assert!(classify(b"a/.wh...").is_err());
        assert_eq!(
            classify(b"").unwrap(),
            Target::Path {
                parent: b"",
                name: b"."
            }
        );
    }

    #[test]
    fn resolves_dangling_targets_lexically_inside() {
        assert_eq!(lexical_target(b"a/b", b"../../../c"), b"c");
        assert_eq!(lexical_target(b"a", b"/usr/bin"), b"usr/bin");
        assert_eq!(lexical_target(b"", b"usr/./bin/"), b"usr/bin");
    }
}

//! Ed25519 key files, key ids, and the key types (SIG-1 to SIG-5).

use std::fmt;
use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Largest key file ferry reads.
const MAX_KEY_FILE: u64 = 16 * 1024;
/// PEM line endings ferry writes.
const LF: ed25519_dalek::pkcs8::spki::der::pem::LineEnding =
    ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;

/// The id of a public key: the first 16 lowercase hex characters of the SHA-256 of its raw
/// 32 bytes (SIG-3). A label and a hint, never a trust anchor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    fn of_raw(raw: &[u8; 32]) -> KeyId {
        let hash = Sha256::digest(raw);
        KeyId(hex::encode(&hash[..8]))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<KeyId> {
        if s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(KeyId(s.to_string()))
        } else {
            Err(Error::InvalidKeyId(s.chars().take(80).collect()))
        }
    }
}

/// An Ed25519 public key that signatures can be verified with (SIG-5).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    /// Loads an SPKI PEM public key file, naming the file and the problem on error.
    pub fn load(path: &Path) -> Result<PublicKey> {
        const WHAT: &str = "public key";
        let (_, pem) = read_key_file(path, WHAT)?;
        let key = VerifyingKey::from_public_key_pem(pem.trim_start()).map_err(|e| {
            invalid(
                WHAT,
                path,
                format!("not an Ed25519 SPKI PEM public key ({e})"),
            )
        })?;
        if key.is_weak() {
            return Err(invalid(WHAT, path, "weak (small-order) Ed25519 key".into()));
        }
        Ok(PublicKey::from_verifying(key))
    }

    fn from_verifying(key: VerifyingKey) -> PublicKey {
        let id = KeyId::of_raw(key.as_bytes());
        PublicKey { key, id }
    }

    /// The key id (SIG-3).
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key as SPKI PEM, the content of a `.pub` file.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LF)
            .expect("an Ed25519 public key always encodes as SPKI")
    }

    /// Whether `signature` is a strictly valid signature of `message` by this key (SIG-10).
    pub(crate) fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// An Ed25519 private key loaded from its file; its secret never leaves it (SIG-4).
///
/// There is no way to get the secret bytes out, `Debug` prints only the key id and path,
/// and the secret is zeroed when the value is dropped.
pub struct PrivateKey {
    key: SigningKey,
    public: PublicKey,
    path: PathBuf,
}

impl PrivateKey {
    /// Loads a PKCS#8 PEM private key file that only its owner can access.
    pub fn load(path: &Path) -> Result<PrivateKey> {
        const WHAT: &str = "private key";
        let (mode, pem) = read_key_file(path, WHAT)?;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        // The parse error of a secret must not echo the secret; name only the kind of error.
        let key = SigningKey::from_pkcs8_pem(pem.trim_start()).map_err(|e| {
            invalid(
                WHAT,
                path,
                format!("not an Ed25519 PKCS#8 PEM private key ({e})"),
            )
        })?;
        Ok(PrivateKey::from_signing(key, path))
    }

    fn from_signing(key: SigningKey, path: &Path) -> PrivateKey {
        PrivateKey {
            public: PublicKey::from_verifying(key.verifying_key()),
            key,
            path: path.to_path_buf(),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key id of the matching public key (SIG-3).
    pub fn id(&self) -> &KeyId {
        self.public.id()
    }

    /// The Ed25519 signature of `message`.
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("id", &self.public.id)
            .field("path", &self.path)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

/// The two files of a newly generated key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `NAME.key`: the private key, mode 0600.
    pub private_key: PathBuf,
    /// `NAME.pub`: the public key.
    pub public_key: PathBuf,
    /// The key id of the pair (SIG-3).
    pub id: KeyId,
}

/// Generates an Ed25519 key pair as `DIR/NAME.key` (0600) and `DIR/NAME.pub`, never
/// overwriting either (SIG-1, SIG-2).
pub fn generate_key(dir: &Path, name: &str) -> Result<KeyFiles> {
    validate_key_name(name)?;
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&private_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(Error::KeyExists { path: path.clone() });
        }
    }

    let key = PrivateKey::from_signing(SigningKey::generate(&mut rand::rngs::OsRng), &private_path);
    // PKCS#8 version 1 (RFC 8410: the private key alone), the form `openssl genpkey`
    // writes and OpenSSL 3.0 and Python's cryptography read; version 2 (with the public
    // key inside) is read too.
    let private_pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LF)
    .expect("an Ed25519 private key always encodes as PKCS#8");
    write_new(
        dir,
        &private_path,
        private_pem.as_bytes(),
        0o600,
        "private key",
    )?;
    if let Err(e) = write_new(
        dir,
        &public_path,
        key.public.to_pem().as_bytes(),
        0o644,
        "public key",
    ) {
        // Leave no half pair behind; the private key file is the one we just created.
        let _ = std::fs::remove_file(&private_path);
        return Err(e);
    }
    if let Ok(d) = File::open(dir) {
        // Make the new names durable; failing to is not worth failing generation.
        let _ = d.sync_all();
    }
    tracing::info!(id = %key.id(), path = %public_path.display(), "generated key pair");
    Ok(KeyFiles {
        private_key: private_path,
        public_key: public_path,
        id: key.public.id,
    })
}

fn validate_key_name(name: &str) -> Result<()> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKeyName {
            name: name.chars().take(140).collect(),
        })
    }
}

/// Writes `data` to a temporary file created with `mode` in `dir`, then renames it to `path`
/// without replacing anything that is there (SIG-2).
fn write_new(dir: &Path, path: &Path, data: &[u8], mode: u32, what: &'static str) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".ferry-key-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(data).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::KeyExists {
                path: path.to_path_buf(),
            }
        } else {
            io(path)(e.error)
        }
    })?;
    Ok(())
}

/// Reads a key file (a regular file of at most 16 KiB), returning its mode and content.
fn read_key_file(path: &Path, what: &'static str) -> Result<(u32, Zeroizing<String>)> {
    let io = |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(invalid(what, path, "not a regular file".into()));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(invalid(
            what,
            path,
            format!("larger than {MAX_KEY_FILE} bytes"),
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(invalid(
            what,
            path,
            format!("larger than {MAX_KEY_FILE} bytes"),
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid(what, path, "not a UTF-8 PEM file".into()))?;
    Ok((meta.mode(), Zeroizing::new(text.to_string())))
}

fn invalid(what: &'static str, path: &Path, reason: String) -> Error {
    Error::InvalidKey {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_sha256_prefix_of_raw_key_sig_3() {
        // The example of SIG-3: RFC 8410 §10.1's public key.
        let raw = hex::decode("19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
            .unwrap();
        assert_eq!(
            KeyId::of_raw(&raw.try_into().unwrap()).to_string(),
            "e744c0791320c328"
        );
    }

    #[test]
    fn key_id_parsing_accepts_only_16_lowercase_hex() {
        assert!("e744c0791320c328".parse::<KeyId>().is_ok());
        for bad in [
            "",
            "66687aadf862bd7",
            "66687aadf862bd77a",
            "66687AADF862BD77",
            "66687aadf862bd7g",
        ] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn key_names_are_plain_file_names_sig_1() {
        for good in ["a", "team", "release-2025.key_1", &"k".repeat(128)] {
            assert!(validate_key_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "../up",
            "a b",
            "é",
            &"k".repeat(129),
        ] {
            assert!(validate_key_name(bad).is_err(), "{bad}");
        }
    }
}

//! Key files (Ed25519 and ECDSA P-256), key ids, and the key types (SIG-1 to SIG-5).

use std::fmt;
use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{cosign_key, Error, Result};

/// Largest key file ferry reads, cosign's encrypted ones included.
pub(crate) const MAX_KEY_FILE: u64 = 16 * 1024;
/// PEM line endings ferry writes.
const LF: ed25519_dalek::pkcs8::spki::der::pem::LineEnding =
    ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;

/// The id of a public key: the first 16 lowercase hex characters of the SHA-256 of its raw
/// bytes, Ed25519's 32 or P-256's 65-byte uncompressed point (SIG-3). A label and a hint,
/// never a trust anchor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    fn of_raw(raw: &[u8]) -> KeyId {
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

/// The public half of a key, by algorithm.
#[derive(Clone, PartialEq, Eq)]
enum Verifying {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// A public key that signatures can be verified with: Ed25519 or ECDSA P-256 (SIG-5).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: Verifying,
    id: KeyId,
}

impl PublicKey {
    /// Loads an SPKI PEM public key file (Ed25519 or ECDSA P-256), naming the file and the
    /// problem on error.
    pub fn load(path: &Path) -> Result<PublicKey> {
        const WHAT: &str = "public key";
        let (_, pem) = read_key_file(path, WHAT)?;
        let pem = pem.trim_start();
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            if key.is_weak() {
                return Err(invalid(WHAT, path, "weak (small-order) Ed25519 key".into()));
            }
            return Ok(PublicKey::from_verifying(Verifying::Ed25519(key)));
        }
        let key = p256::PublicKey::from_public_key_pem(pem).map_err(|e| {
            invalid(
                WHAT,
                path,
                format!("not an Ed25519 or ECDSA P-256 SPKI PEM public key ({e})"),
            )
        })?;
        Ok(PublicKey::from_verifying(Verifying::P256(key.into())))
    }

    fn from_verifying(key: Verifying) -> PublicKey {
        let id = match &key {
            Verifying::Ed25519(k) => KeyId::of_raw(k.as_bytes()),
            Verifying::P256(k) => KeyId::of_raw(k.to_encoded_point(false).as_bytes()),
        };
        PublicKey { key, id }
    }

    /// The key id (SIG-3).
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key's algorithm as ferry names it: `ed25519` or `ecdsa-p256`.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Verifying::Ed25519(_) => "ed25519",
            Verifying::P256(_) => "ecdsa-p256",
        }
    }

    /// The key as SPKI PEM, the content of a `.pub` file.
    pub fn to_pem(&self) -> String {
        match &self.key {
            Verifying::Ed25519(k) => k.to_public_key_pem(LF),
            Verifying::P256(k) => p256::PublicKey::from(k).to_public_key_pem(LF),
        }
        .expect("a public key always encodes as SPKI")
    }

    /// Whether `signature` is a valid signature of `message` by this key: strict Ed25519
    /// (64 bytes), or ECDSA P-256 with SHA-256, ASN.1 DER encoded (SIG-10).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            Verifying::Ed25519(k) => <[u8; 64]>::try_from(signature).is_ok_and(|s| {
                k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&s))
                    .is_ok()
            }),
            Verifying::P256(k) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.id)
    }
}

/// The secret half of a key, by algorithm; both zero their secret when dropped.
enum Signing {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl Signing {
    /// Parses a PKCS#8 DER private key of either algorithm; the error never echoes the secret.
    fn from_pkcs8_der(der: &[u8]) -> std::result::Result<Signing, String> {
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
            return Ok(Signing::Ed25519(k));
        }
        p256::SecretKey::from_pkcs8_der(der)
            .map(|k| Signing::P256(k.into()))
            .map_err(|e| format!("not an Ed25519 or ECDSA P-256 PKCS#8 private key ({e})"))
    }

    /// The key as PKCS#8 DER: version 1 for Ed25519 (RFC 8410, what `openssl genpkey`
    /// writes), RFC 5915 inside PKCS#8 for P-256.
    fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let doc = match self {
            Signing::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_der(),
            Signing::P256(k) => p256::SecretKey::from(k).to_pkcs8_der(),
        }
        .expect("a private key always encodes as PKCS#8");
        Zeroizing::new(doc.as_bytes().to_vec())
    }

    fn verifying(&self) -> Verifying {
        match self {
            Signing::Ed25519(k) => Verifying::Ed25519(k.verifying_key()),
            Signing::P256(k) => Verifying::P256(*k.verifying_key()),
        }
    }
}

/// A private key (Ed25519 or ECDSA P-256) loaded from its file; its secret never leaves it
/// except encrypted for cosign (SIG-4, SIG-19).
///
/// There is no way to get the plain secret bytes out, `Debug` prints only the key id and
/// path, and the secret is zeroed when the value is dropped.
pub struct PrivateKey {
    key: Signing,
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
        let (label, der) =
            ed25519_dalek::pkcs8::spki::der::pem::decode_vec(pem.trim_start().as_bytes())
                .map_err(|e| invalid(WHAT, path, format!("not a PEM file ({e})")))?;
        let der = Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(invalid(
                WHAT,
                path,
                format!("PEM label {label:?}, not \"PRIVATE KEY\" (PKCS#8)"),
            ));
        }
        let key = Signing::from_pkcs8_der(&der).map_err(|reason| invalid(WHAT, path, reason))?;
        Ok(PrivateKey::from_signing(key, path))
    }

    fn from_signing(key: Signing, path: &Path) -> PrivateKey {
        PrivateKey {
            public: PublicKey::from_verifying(key.verifying()),
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

    /// The key as cosign's encrypted private key file, `ENCRYPTED SIGSTORE PRIVATE KEY` PEM
    /// sealed with `passphrase` (SIG-19).
    pub fn to_cosign_pem(&self, passphrase: &[u8]) -> Result<Zeroizing<String>> {
        cosign_key::encrypt(&self.key.to_pkcs8_der(), passphrase)
    }

    /// The signature of `message`: Ed25519 (64 bytes), or ECDSA P-256 over SHA-256 of the
    /// message, ASN.1 DER encoded (SIG-11).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        match &self.key {
            Signing::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            Signing::P256(k) => {
                let signature: p256::ecdsa::Signature = k.sign(message);
                signature.to_der().as_bytes().to_vec()
            }
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("id", &self.public.id)
            .field("algorithm", &self.public.algorithm())
            .field("path", &self.path)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

/// The two files of a newly generated or imported key pair.
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
    let key = Signing::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng));
    write_pair(dir, name, key, "generated key pair")
}

/// Decrypts a cosign private key file's content with `passphrase` and writes the key as
/// `DIR/NAME.key` (PKCS#8, 0600) and `DIR/NAME.pub`, never overwriting either (SIG-2, SIG-19).
pub fn import_cosign_key(
    dir: &Path,
    name: &str,
    cosign_pem: &str,
    passphrase: &[u8],
) -> Result<KeyFiles> {
    // A bad name fails before scrypt spends its time and memory.
    validate_key_name(name)?;
    let der = cosign_key::decrypt(cosign_pem, passphrase)?;
    let key = Signing::from_pkcs8_der(&der).map_err(Error::CosignKey)?;
    write_pair(dir, name, key, "imported cosign key")
}

/// Writes `key` as `DIR/NAME.key` (PKCS#8 PEM, 0600) and `DIR/NAME.pub` (SPKI PEM), never
/// overwriting either, leaving no half pair behind (SIG-1, SIG-2).
fn write_pair(dir: &Path, name: &str, key: Signing, what: &'static str) -> Result<KeyFiles> {
    validate_key_name(name)?;
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&private_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(Error::KeyExists { path: path.clone() });
        }
    }
    let key = PrivateKey::from_signing(key, &private_path);
    let private_pem = Zeroizing::new(
        ed25519_dalek::pkcs8::spki::der::pem::encode_string(
            "PRIVATE KEY",
            LF,
            &key.key.to_pkcs8_der(),
        )
        .expect("PKCS#8 DER always encodes as PEM"),
    );
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
    tracing::info!(id = %key.id(), algorithm = key.public.algorithm(), path = %public_path.display(), "{what}");
    Ok(KeyFiles {
        private_key: private_path,
        public_key: public_path,
        id: key.public.id.clone(),
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
    // Non-blocking, so a FIFO without a writer is refused below instead of hanging the open.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
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
        assert_eq!(KeyId::of_raw(&raw).to_string(), "e744c0791320c328");
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

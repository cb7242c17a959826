//! cosign's encrypted private key file (SIG-19): PEM `ENCRYPTED SIGSTORE PRIVATE KEY`
//! holding JSON, the PKCS#8 DER key sealed with NaCl secretbox under a scrypt key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use ed25519_dalek::pkcs8::spki::der::pem;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::key::MAX_KEY_FILE;
use crate::{Error, Result};

/// The PEM label cosign writes; [`LEGACY_LABEL`] is read too.
pub(crate) const LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The PEM label of older cosign releases.
const LEGACY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt's cost `N` ferry writes; [`N_HIGH`] is read too. Other costs are refused, so a key
/// file cannot make ferry spend unbounded memory or time.
const N_LOW: u32 = 32_768;
/// The higher scrypt cost cosign may write.
const N_HIGH: u32 = 65_536;
/// scrypt's block size `r`.
const R: u32 = 8;
/// scrypt's parallelism `p`.
const P: u32 = 1;
const KDF_NAME: &str = "scrypt";
const CIPHER_NAME: &str = "nacl/secretbox";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    name: String,
    params: Params,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(rename = "N")]
    n: u32,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cipher {
    name: String,
    nonce: String,
}

/// The 32-byte secretbox key scrypt derives from `passphrase`.
fn derive(passphrase: &[u8], salt: &[u8], n: u32) -> Zeroizing<[u8; 32]> {
    let params = scrypt::Params::new(n.ilog2() as u8, R, P, 32)
        .expect("the scrypt costs ferry accepts are valid");
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, key.as_mut())
        .expect("a 32-byte output is a valid scrypt length");
    key
}

/// `der` (a PKCS#8 private key) sealed under `passphrase` as a cosign key file.
pub(crate) fn encrypt(der: &[u8], passphrase: &[u8]) -> Result<Zeroizing<String>> {
    let mut salt = [0u8; 32];
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let key = derive(passphrase, &salt, N_LOW);
    let ciphertext = XSalsa20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt(Nonce::from_slice(&nonce), der)
        .map_err(|_| Error::CosignKey("sealing the key failed".into()))?;
    let sealed = Sealed {
        kdf: Kdf {
            name: KDF_NAME.into(),
            params: Params {
                n: N_LOW,
                r: R,
                p: P,
            },
            salt: STANDARD.encode(salt),
        },
        cipher: Cipher {
            name: CIPHER_NAME.into(),
            nonce: STANDARD.encode(nonce),
        },
        ciphertext: STANDARD.encode(ciphertext),
    };
    let json = serde_json::to_vec(&sealed).expect("a key file of strings serializes");
    Ok(Zeroizing::new(
        pem::encode_string(LABEL, pem::LineEnding::LF, &json).expect("JSON always encodes as PEM"),
    ))
}

/// The PKCS#8 DER private key sealed in a cosign key file of at most 16 KiB, opened with
/// `passphrase`.
pub(crate) fn decrypt(text: &str, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let bad = |reason: String| Error::CosignKey(reason);
    // Bounds the work before scrypt: the salt and ciphertext come from the file.
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(bad(format!(
            "{} bytes, larger than {MAX_KEY_FILE} bytes",
            text.len()
        )));
    }
    let (label, json) = pem::decode_vec(text.trim().as_bytes())
        .map_err(|e| bad(format!("not a PEM file ({e})")))?;
    if label != LABEL && label != LEGACY_LABEL {
        return Err(bad(format!(
            "PEM label {label:?}, not {LABEL:?} or {LEGACY_LABEL:?}"
        )));
    }
    let sealed: Sealed =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not cosign's key JSON: {e}")))?;
    if sealed.kdf.name != KDF_NAME || sealed.cipher.name != CIPHER_NAME {
        return Err(bad(format!(
            "kdf {:?} and cipher {:?}, not {KDF_NAME:?} and {CIPHER_NAME:?}",
            sealed.kdf.name, sealed.cipher.name
        )));
    }
    let Params { n, r, p } = sealed.kdf.params;
    if !(n == N_LOW || n == N_HIGH) || r != R || p != P {
        return Err(bad(format!(
            "scrypt parameters N={n} r={r} p={p}; cosign writes N={N_LOW} or {N_HIGH}, r={R}, p={P}"
        )));
    }
    let decode = |what: &str, s: &str| {
        STANDARD
            .decode(s)
            .map_err(|e| bad(format!("{what} is not base64: {e}")))
    };
    let salt = decode("salt", &sealed.kdf.salt)?;
    let nonce = decode("nonce", &sealed.cipher.nonce)?;
    if nonce.len() != 24 {
        return Err(bad(format!("nonce of {} bytes, not 24", nonce.len())));
    }
    let ciphertext = decode("ciphertext", &sealed.ciphertext)?;
    let key = derive(passphrase, &salt, n);
    XSalsa20Poly1305::new(Key::from_slice(key.as_ref()))
        .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| bad("wrong passphrase, or the key file is damaged".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_passphrase_sig_19() {
        let secret = b"a PKCS#8 key";
        let pem = encrypt(secret, b"pass").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        assert_eq!(decrypt(&pem, b"pass").unwrap().as_slice(), secret);
        let e = decrypt(&pem, b"other").unwrap_err().to_string();
        assert!(e.contains("wrong passphrase"), "{e}");
    }

    #[test]
    fn costly_or_foreign_key_files_are_refused_sig_19() {
        let json = |n: u32, kdf: &str| {
            format!(
                r#"{{"kdf":{{"name":"{kdf}","params":{{"N":{n},"r":8,"p":1}},"salt":"AA=="}},"cipher":{{"name":"nacl/secretbox","nonce":"{}"}},"ciphertext":"AA=="}}"#,
                STANDARD.encode([0u8; 24])
            )
        };
        let pem_of = |label: &str, body: &str| {
            pem::encode_string(label, pem::LineEnding::LF, body.as_bytes()).unwrap()
        };
        for (text, needle) in [
            (pem_of(LABEL, &json(1 << 20, "scrypt")), "scrypt parameters"),
            (pem_of(LABEL, &json(N_LOW, "argon2")), "kdf \"argon2\""),
            (pem_of("PRIVATE KEY", &json(N_LOW, "scrypt")), "PEM label"),
            (pem_of(LABEL, "{}"), "not cosign's key JSON"),
            ("garbage".to_string(), "not a PEM file"),
            (
                pem_of(
                    LABEL,
                    &json(N_LOW, "scrypt").replace("AA==", &"A".repeat(1 << 20)),
                ),
                "larger than 16384 bytes",
            ),
        ] {
            let e = decrypt(&text, b"").unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}

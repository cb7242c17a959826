//! TLS from PEM files (rustls with the ring provider).

use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
use crate::TlsFiles;

/// A rustls server config from a certificate chain and a key file (HTTP/2 and HTTP/1.1).
pub fn config(files: &TlsFiles) -> Result<RustlsConfig, Error> {
    let bad = |what: &'static str, path: &std::path::Path, reason: String| Error::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| bad("TLS certificate", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "TLS certificate",
            &files.cert,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("TLS key", &files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS certificate", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS key", &files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

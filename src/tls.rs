//! TLS with rustls: the gateway's own HTTPS listener (optionally requiring client
//! certificates from a configured CA), and the material for mutual TLS to providers.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{path::Path, sync::Arc};

/// A problem with TLS files, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {file}: {message}")]
pub struct TlsError {
    pub file: String,
    pub message: String,
}

fn err(file: &Path, message: impl Into<String>) -> TlsError {
    TlsError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

/// Every certificate in a PEM file.
pub fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| err(file, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(file, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(file, "holds no certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(file)
        .map_err(|e| err(file, format!("no usable private key ({e})")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The listener's TLS configuration; with `client_ca`, clients must present a
/// certificate that CA issued (mutual TLS).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates(cert_file)?;
    let key = private_key(key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert_file, e.to_string()))?;
    let builder = match client_ca {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca_file)? {
                roots.add(cert).map_err(|e| err(ca_file, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| err(ca_file, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| err(key_file, e.to_string()))
}

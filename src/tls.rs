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

/// An outbound HTTP(S) client with `timeout_ms` per request (connecting within at
/// most 5 s), trusting only `tls.ca_file` when set and presenting `tls`'s client
/// certificate for mutual TLS. An error names the file at fault, never its content.
pub fn outbound_client(
    timeout_ms: u64,
    tls: Option<&crate::config::ProviderTlsSettings>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(timeout_ms))
        .connect_timeout(std::time::Duration::from_millis(timeout_ms.min(5_000)));
    if let Some(tls) = tls {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        if let Some(ca) = &tls.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
                .map_err(|_| format!("{} holds no PEM certificate", ca.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                format!(
                    "{} and {} are not a PEM certificate and private key",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

//! The TLS client configuration of a broker session: the broker's certificate checked
//! against a configured CA file or the system's roots, its name checked (the host, or a
//! configured `server_name`), an optional client certificate. rustls with the `ring`
//! provider, chosen here rather than installed process-wide.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::Tls;

/// Why a TLS configuration could not be made (read when the broker's session starts).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{file}: {why}")]
    File {
        /// The file.
        file: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The configured server name is not a DNS name or address.
    #[error("server_name {0:?} is not a host name or address")]
    ServerName(String),
}

fn file_err(path: &std::path::Path, why: impl ToString) -> TlsSetupError {
    TlsSetupError::File {
        file: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The rustls client configuration for `tls`.
pub fn client_config(tls: &Tls) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            for c in certs(ca)? {
                roots.add(c)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // One unusable system certificate must not refuse the others.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(TlsSetupError::File {
                    file: "the system's certificate store".into(),
                    why: "no usable root certificate; set tls.ca_file".into(),
                });
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|_| TlsSetupError::ServerName(name.clone()))?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
        }
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let pem = std::fs::read(key).map_err(|e| file_err(key, e))?;
            let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| file_err(key, e))?
                .ok_or_else(|| file_err(key, "no PEM private key in it"))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The standard WebPKI check, against a configured name instead of the host connected
/// to (a broker reached by address whose certificate names it otherwise). Nothing is
/// skipped: chain, validity and name are all checked.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

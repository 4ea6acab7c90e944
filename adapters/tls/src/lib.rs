//! TLS client settings of fieldgate, shared by whatever connects out over TLS: the
//! component link to the XMPP server and an adapter's sessions (MQTT brokers). It knows
//! neither XMPP nor any bus: it turns the four settings an operator writes (a CA file, a
//! client certificate and its key, the name the server's certificate must carry) into a
//! rustls client configuration, and a refused handshake into a sentence.
//!
//! rustls with the `ring` provider, chosen per configuration rather than installed
//! process-wide, so that no two users of TLS in one process can disagree about it.
//! Nothing here ever weakens the check: the chain, the validity period and the name are
//! always verified; `server_name` only changes which name is expected.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

pub use rustls;

/// The TLS settings of one connection: `tls = { ... }`. An empty table means TLS with
/// the system's roots and the host's own name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PEM file of the certificates that may sign the server's; the system's roots if
    /// not given.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it differs from the host
    /// connected to.
    pub server_name: Option<String>,
}

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{file}: {why}")]
    File {
        /// The setting that names it (`ca_file`, `cert_file`, `key_file`).
        key: &'static str,
        /// The file.
        file: String,
        /// What is wrong with it.
        why: String,
    },
    /// The system's certificate store holds no usable root.
    #[error("the system's certificate store holds no usable root certificate; set ca_file")]
    NoSystemRoots,
    /// Only one of `cert_file` and `key_file` is given.
    #[error("a client certificate needs both cert_file and key_file")]
    HalfClientCert,
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The server name is not a DNS name or an address.
    #[error("server_name {0:?} is not a host name or address")]
    ServerName(String),
}

impl SetupError {
    /// The setting at fault, for an error that points at it; `None` for the settings as
    /// a whole.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            SetupError::File { key, .. } => Some(key),
            SetupError::NoSystemRoots => Some("ca_file"),
            SetupError::HalfClientCert => Some("cert_file"),
            SetupError::Rustls(_) => None,
            SetupError::ServerName(_) => Some("server_name"),
        }
    }
}

fn file_err(key: &'static str, path: &Path, why: impl ToString) -> SetupError {
    SetupError::File {
        key,
        file: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let pem = std::fs::read(path).map_err(|e| file_err(key, path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The roots a server's certificate is checked against: those of `ca_file`, or the
/// system's.
fn roots(settings: &Settings) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    match &settings.ca_file {
        Some(ca) => {
            for c in certs("ca_file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_err("ca_file", ca, format!("unusable certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // One unusable system certificate must not refuse the others.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(SetupError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// The rustls client configuration for `settings`, its files read now (a renewed
/// certificate is picked up by the next configuration made).
pub fn client_config(settings: &Settings) -> Result<Arc<ClientConfig>, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(settings)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &settings.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            // A client that passes the host connected to as the name (rumqttc does)
            // still gets the configured name checked.
            let name = server_name(name)?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| SetupError::Rustls(rustls::Error::General(e.to_string())))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
        }
    };
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs("cert_file", cert)?;
            let pem = std::fs::read(key).map_err(|e| file_err("key_file", key, e))?;
            let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| file_err("key_file", key, e))?
                .ok_or_else(|| file_err("key_file", key, "no PEM private key in it"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_err("key_file", key, format!("unusable with cert_file: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(SetupError::HalfClientCert),
    };
    Ok(Arc::new(config))
}

/// `name` as a rustls server name: a DNS name, or an IP address (checked against the
/// certificate's IP address entries).
pub fn server_name(name: &str) -> Result<ServerName<'static>, SetupError> {
    ServerName::try_from(name.to_owned()).map_err(|_| SetupError::ServerName(name.to_owned()))
}

/// The host part of a `host:port` address (`[::1]:5347` gives `::1`).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A failed TLS handshake (as the I/O error tokio-rustls returns) as an operator wants
/// to read it: what was wrong, and what to check. `expected` is the name the server's
/// certificate had to carry.
pub fn explain(e: &std::io::Error, expected: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection during the \
                 TLS handshake (does it speak TLS on this port? does it want a client \
                 certificate?)"
                .into(),
            _ => format!("TLS handshake failed: {e}"),
        };
    };
    match tls {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is not signed by a trusted CA \
                 (not by ca_file, or not by the system's roots if none is set)"
                .into(),
            C::NotValidForNameContext { presented, .. } => format!(
                "the server's certificate is not valid for the name {expected:?}: it carries \
                 only {}; set server_name to the name it carries if the server is reached by \
                 another",
                if presented.is_empty() {
                    "no name".to_owned()
                } else {
                    presented.join(", ")
                }
            ),
            C::NotValidForName => format!(
                "the server's certificate is not valid for the name {expected:?}; set \
                 server_name to the name it carries if the server is reached by another"
            ),
            C::ExpiredContext { time, not_after } => format!(
                "the server's certificate has expired: it was valid until {}, and this \
                 machine's clock says {}",
                date(not_after),
                date(time)
            ),
            C::Expired => "the server's certificate has expired".into(),
            C::NotValidYetContext { time, not_before } => format!(
                "the server's certificate is not valid yet: it is valid from {}, and this \
                 machine's clock says {} (is the clock right?)",
                date(not_before),
                date(time)
            ),
            C::NotValidYet => {
                "the server's certificate is not valid yet (is this machine's clock right?)".into()
            }
            C::Revoked => "the server's certificate is revoked".into(),
            other => format!("the server's certificate is refused: {other}"),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("the server does not speak TLS on this port (a plaintext listener?): {tls}")
        }
        E::AlertReceived(A::CertificateRequired) => "the server wants a client certificate \
             (alert CertificateRequired): set cert_file and key_file"
            .into(),
        E::AlertReceived(
            alert @ (A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied),
        ) => format!(
            "the server refused this gateway's client certificate (alert {alert:?}; \
             check cert_file and key_file, and the CA the server trusts)"
        ),
        // Prosody's direct-TLS port aborts the handshake for a name that is none of its
        // hosts (strict SNI).
        E::AlertReceived(A::UnrecognisedName) => format!(
            "the server does not serve the name {expected:?} sent in the handshake (alert \
             UnrecognisedName): set server_name to a name it serves"
        ),
        E::AlertReceived(alert) => {
            format!("the server refused the TLS handshake (alert {alert:?})")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A certificate time as an RFC 3339 date, as operators compare it with `openssl x509`.
fn date(t: &UnixTime) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The standard WebPKI check, against a configured name instead of the host connected
/// to (a server reached by address whose certificate names it otherwise). Nothing is
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fieldgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn an_unrecognised_name_asks_for_server_name() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName),
        );
        let why = explain(&e, "xmpp.example.org");
        assert!(
            why.contains("\"xmpp.example.org\"") && why.contains("set server_name"),
            "{why}"
        );
    }

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("xmpp.example.org:5347"), "xmpp.example.org");
        assert_eq!(host_of("127.0.0.1:5347"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5347"), "::1");
        assert_eq!(host_of("noport"), "noport");
    }

    #[test]
    fn file_errors_name_the_setting_and_the_file() {
        let missing = Settings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Settings::default()
        };
        let e = client_config(&missing).unwrap_err();
        assert_eq!(e.key(), Some("ca_file"));
        assert!(e.to_string().starts_with("/nonexistent/ca.pem: "), "{e}");

        let not_pem = temp("not.pem", "hello\n");
        let e = client_config(&Settings {
            ca_file: Some(not_pem.clone()),
            ..Settings::default()
        })
        .unwrap_err();
        assert_eq!(e.key(), Some("ca_file"));
        assert!(e.to_string().contains("no PEM certificate"), "{e}");

        let half = Settings {
            cert_file: Some(not_pem),
            ..Settings::default()
        };
        assert_eq!(client_config(&half).unwrap_err().key(), Some("cert_file"));
    }

    #[test]
    fn a_server_name_must_be_a_name_or_an_address() {
        assert!(server_name("gw.example.org").is_ok());
        assert!(server_name("192.0.2.1").is_ok());
        let e = server_name("not a name").unwrap_err();
        assert_eq!(e.key(), Some("server_name"));
    }

    #[test]
    fn unknown_settings_are_refused() {
        let e = toml_like("ca = \"x\"");
        assert!(e.contains("unknown field"), "{e}");
        fn toml_like(body: &str) -> String {
            // serde's own value deserializer: no TOML needed to see the refusal.
            use serde::de::value::{Error, MapDeserializer};
            let (k, v) = body.split_once(" = ").unwrap();
            let map = MapDeserializer::<_, Error>::new(std::iter::once((k, v.trim_matches('"'))));
            Settings::deserialize(map).unwrap_err().to_string()
        }
    }
}

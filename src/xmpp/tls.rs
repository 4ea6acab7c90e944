//! TLS on the component link: TLS from the first byte (as ejabberd offers it on an
//! `ejabberd_service` listener with `tls: true`), not STARTTLS, which XEP-0114 does not
//! have. The server's certificate is checked against a CA file or the system's roots and
//! for the configured name; a client certificate is presented when configured. What is
//! refused is said in words, and never retried in plaintext.

use std::io;

use fieldgate_tls::Settings;
use tokio::net::TcpStream;

/// The TLS stream the link runs its XML stream over.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Runs the TLS handshake over `tcp`, the server's certificate checked for `name`. The
/// client configuration is made afresh, its files read now: a renewed certificate or CA
/// file is used from the next connection on. The error is the reason, for the link's
/// state and log line.
pub async fn handshake(
    tcp: TcpStream,
    settings: &Settings,
    name: &str,
) -> Result<TlsStream, String> {
    let config =
        fieldgate_tls::client_config(settings).map_err(|e| format!("TLS set-up failed: {e}"))?;
    let server_name = fieldgate_tls::server_name(name).map_err(|e| format!("TLS: {e}"))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS: {}", fieldgate_tls::explain(&e, name)))
}

/// `e` explained, if it is TLS's verdict rather than a plain I/O error: a TLS 1.3 server
/// judges a client certificate only after the client's side of the handshake is done,
/// so a refusal arrives on the first read of the stream.
pub fn verdict(e: &io::Error, name: &str) -> Option<String> {
    let is_tls = e
        .get_ref()
        .is_some_and(|inner| inner.is::<fieldgate_tls::rustls::Error>());
    is_tls.then(|| format!("TLS: {}", fieldgate_tls::explain(e, name)))
}

#[cfg(test)]
mod tests {
    //! The link against an in-process server: a tokio-rustls acceptor (or none, for a
    //! plaintext listener) and the accept side of XEP-0114, with certificates made here.

    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{RootCertStore, ServerConfig};
    use tokio_rustls::TlsAcceptor;
    use tokio_util::sync::CancellationToken;
    use xmpp_parsers::component::Handshake;

    use crate::config;
    use crate::xmpp::link::{self, LinkState};

    const SECRET: &str = "s3cret";
    const STREAM_ID: &str = "tls-test-stream";

    /// A CA that signs certificates.
    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        fn pem(&self) -> String {
            self.0.pem()
        }

        fn der(&self) -> CertificateDer<'static> {
            self.0.der().clone()
        }

        /// A leaf for `names` (an address becomes an IP entry); expired long ago if
        /// `expired`.
        fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2019, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.0).unwrap();
            Leaf {
                der: cert.der().clone(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
                key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            }
        }
    }

    struct Leaf {
        der: CertificateDer<'static>,
        pem: String,
        key_pem: String,
        key: PrivateKeyDer<'static>,
    }

    /// What the server saw of one connection.
    #[derive(Debug, PartialEq)]
    enum Seen {
        /// The TLS handshake failed on the server's side.
        TlsFailed,
        /// The component authenticated; with the client certificate it presented.
        Authenticated(Option<CertificateDer<'static>>),
        /// Bytes that are not a stream header arrived (a TLS ClientHello on a plaintext
        /// listener): answered with a stream error, as a real server does.
        NotXml,
    }

    /// A component listener on a free loopback port: TLS with `leaf` (and a client
    /// certificate required if `client_ca`), or plaintext if `leaf` is `None`.
    async fn server(
        leaf: Option<&Leaf>,
        client_ca: Option<&Ca>,
    ) -> (u16, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = leaf.map(|leaf| {
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match client_ca {
                Some(ca) => {
                    let mut roots = RootCertStore::empty();
                    roots.add(ca.der()).unwrap();
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                            .build()
                            .unwrap();
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let config = builder
                .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
                .unwrap();
            TlsAcceptor::from(Arc::new(config))
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => {
                                let cert = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first().cloned());
                                accept_component(tls, cert, &tx).await;
                            }
                            Err(_) => {
                                let _ = tx.send(Seen::TlsFailed);
                            }
                        },
                        None => accept_component(tcp, None, &tx).await,
                    }
                });
            }
        });
        (port, rx)
    }

    /// The accept side of XEP-0114: a stream header with an id, the component's SHA-1
    /// handshake checked, `<handshake/>`; then the stream is held open.
    async fn accept_component<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        cert: Option<CertificateDer<'static>>,
        seen: &mpsc::UnboundedSender<Seen>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            text.find("<stream:stream")
                .and_then(|i| text[i..].find('>'))
                .is_some()
        };
        while !header_end(&buf) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.first().is_some_and(|b| *b != b'<') {
                let _ = seen.send(Seen::NotXml);
                let _ = s
                    .write_all(
                        b"<?xml version='1.0'?><stream:stream \
                          xmlns:stream='http://etherx.jabber.org/streams' \
                          xmlns='jabber:component:accept'><stream:error><not-well-formed \
                          xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
                          </stream:stream>",
                    )
                    .await;
                return;
            }
        }
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns='jabber:component:accept' id='{STREAM_ID}' from='gw.example.org'>"
        );
        if s.write_all(header.as_bytes()).await.is_err() {
            return;
        }
        buf.clear();
        while !String::from_utf8_lossy(&buf).contains("</handshake>") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let start = text.find("<handshake").unwrap();
        let open_end = start + text[start..].find('>').unwrap() + 1;
        let got = &text[open_end..text.find("</handshake>").unwrap()];
        let want: String = Handshake::from_stream_id_and_password(STREAM_ID.into(), SECRET)
            .data
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got.to_ascii_lowercase(), want, "the component's handshake");
        if s.write_all(b"<handshake/>").await.is_err() {
            return;
        }
        let _ = seen.send(Seen::Authenticated(cert));
        // Held open, answering nothing: the test ends before any keep-alive is due.
        while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
    }

    /// A directory with `files` written into it.
    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    /// The link's configuration: the server on `port` (`host` as written in `server`),
    /// `tls` the body of `[xmpp.tls]`, its relative paths read from `dir`.
    fn link_config(dir: &Path, host: &str, port: u16, tls: &str) -> config::XmppConfig {
        let text = format!(
            "[xmpp]\nserver = \"{host}:{port}\"\ndomain = \"gw.example.org\"\n\
             secret = \"{SECRET}\"\nreconnect_min = \"50ms\"\nreconnect_max = \"100ms\"\n\
             [xmpp.tls]\n{tls}\n"
        );
        let path: PathBuf = dir.join("gw.toml");
        config::parse(&path, &text).expect("test config").xmpp
    }

    /// The first state other than "not connected yet", within 10 s; the link is stopped
    /// afterwards.
    async fn first_state(config: config::XmppConfig) -> LinkState {
        let stop = CancellationToken::new();
        let (mut channels, task) = link::spawn(config, stop.clone());
        let state = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                channels.state.changed().await.unwrap();
                let s = channels.state.borrow_and_update().clone();
                if s != LinkState::Down("not connected yet".into()) {
                    return s;
                }
            }
        })
        .await
        .expect("a link state within 10 s");
        stop.cancel();
        let _ = task.await;
        state
    }

    fn down_reason(state: LinkState) -> String {
        match state {
            LinkState::Down(why) => why,
            LinkState::Up(_) => panic!("the link came up"),
        }
    }

    #[tokio::test]
    async fn connects_and_authenticates_over_tls() {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["127.0.0.1"], false);
        let (port, mut seen) = server(Some(&leaf), None).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let state = first_state(link_config(
            d.path(),
            "127.0.0.1",
            port,
            "ca_file = \"ca.pem\"",
        ))
        .await;
        assert_eq!(state, LinkState::Up(1));
        assert_eq!(seen.recv().await, Some(Seen::Authenticated(None)));
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused() {
        let ca = Ca::new("test CA");
        let other = Ca::new("another CA");
        let leaf = other.leaf(&["127.0.0.1"], false);
        let (port, mut seen) = server(Some(&leaf), None).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let why = down_reason(
            first_state(link_config(
                d.path(),
                "127.0.0.1",
                port,
                "ca_file = \"ca.pem\"",
            ))
            .await,
        );
        assert!(why.contains("not signed by a trusted CA"), "{why}");
        assert_eq!(seen.recv().await, Some(Seen::TlsFailed));
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_refused() {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["xmpp.example.test"], false);
        let (port, mut seen) = server(Some(&leaf), None).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let why = down_reason(
            first_state(link_config(
                d.path(),
                "127.0.0.1",
                port,
                "ca_file = \"ca.pem\"",
            ))
            .await,
        );
        assert!(
            why.contains("not valid for the name \"127.0.0.1\"") && why.contains("server_name"),
            "{why}"
        );
        assert_eq!(seen.recv().await, Some(Seen::TlsFailed));
    }

    #[tokio::test]
    async fn server_name_names_the_certificate_of_a_server_reached_by_address() {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["xmpp.example.test"], false);
        let (port, mut seen) = server(Some(&leaf), None).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let tls = "ca_file = \"ca.pem\"\nserver_name = \"xmpp.example.test\"";
        let state = first_state(link_config(d.path(), "127.0.0.1", port, tls)).await;
        assert_eq!(state, LinkState::Up(1));
        assert_eq!(seen.recv().await, Some(Seen::Authenticated(None)));
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused() {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["127.0.0.1"], true);
        let (port, _seen) = server(Some(&leaf), None).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let why = down_reason(
            first_state(link_config(
                d.path(),
                "127.0.0.1",
                port,
                "ca_file = \"ca.pem\"",
            ))
            .await,
        );
        assert!(
            why.contains("has expired") && why.contains("2020-01-01"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn the_client_certificate_is_presented_when_the_server_asks() {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["127.0.0.1"], false);
        let client_ca = Ca::new("client CA");
        let client = client_ca.leaf(&["gw.example.org"], false);
        let (port, mut seen) = server(Some(&leaf), Some(&client_ca)).await;
        let d = dir(&[
            ("ca.pem", &ca.pem()),
            ("gw.pem", &client.pem),
            ("gw.key", &client.key_pem),
        ]);
        let tls = "ca_file = \"ca.pem\"\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"";
        let state = first_state(link_config(d.path(), "127.0.0.1", port, tls)).await;
        assert_eq!(state, LinkState::Up(1));
        assert_eq!(
            seen.recv().await,
            Some(Seen::Authenticated(Some(client.der.clone())))
        );
    }

    #[tokio::test]
    async fn without_the_client_certificate_the_server_asks_for_the_link_is_refused() {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["127.0.0.1"], false);
        let client_ca = Ca::new("client CA");
        let (port, mut seen) = server(Some(&leaf), Some(&client_ca)).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let why = down_reason(
            first_state(link_config(
                d.path(),
                "127.0.0.1",
                port,
                "ca_file = \"ca.pem\"",
            ))
            .await,
        );
        assert!(why.contains("wants a client certificate"), "{why}");
        assert_eq!(seen.recv().await, Some(Seen::TlsFailed));
    }

    #[tokio::test]
    async fn a_plaintext_listener_is_refused_and_never_spoken_to_in_plaintext() {
        let ca = Ca::new("test CA");
        let (port, mut seen) = server(None, None).await;
        let d = dir(&[("ca.pem", &ca.pem())]);
        let config = link_config(d.path(), "127.0.0.1", port, "ca_file = \"ca.pem\"");
        let stop = CancellationToken::new();
        let (mut channels, task) = link::spawn(config, stop.clone());
        // Several attempts, each refused for the same reason, none of them in plaintext.
        let mut reasons = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while reasons.len() < 3 {
                channels.state.changed().await.unwrap();
                match channels.state.borrow_and_update().clone() {
                    LinkState::Up(_) => panic!("the link came up in plaintext"),
                    LinkState::Down(why) if why != "not connected yet" => reasons.push(why),
                    LinkState::Down(_) => {}
                }
            }
        })
        .await
        .expect("three attempts within 10 s");
        stop.cancel();
        let _ = task.await;
        for why in &reasons {
            assert!(why.contains("does not speak TLS"), "{why}");
        }
        let mut saw = Vec::new();
        while let Ok(s) = seen.try_recv() {
            saw.push(s);
        }
        assert!(
            saw.len() >= 3 && saw.iter().all(|s| *s == Seen::NotXml),
            "{saw:?}"
        );
    }
}

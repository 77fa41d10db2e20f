//! The server side: a rustls `ServerConfig` from the configured PEM files, and the [`Acceptor`]
//! an accept loop passes each TCP connection through (a timed handshake, or nothing).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::{pem, HandshakeError, TlsError};

/// ALPN protocols the servers offer: HTTP/1.1 only, since both serve connections with hyper's
/// HTTP/1 builder (a client offering `h2` as well gets HTTP/1.1).
pub const SERVER_ALPN: &[&[u8]] = &[b"http/1.1"];

/// A server config presenting the chain in `cert_file` with the key in `key_file`; TLS 1.2 and
/// 1.3, no client certificates.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pem::certificates("tls_cert_file", cert_file, "the server's certificate chain")?;
    let key = pem::private_key(key_file)?;
    let mismatch = |err: rustls::Error| TlsError::KeyMismatch {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        reason: err.to_string(),
    };
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server config the two settings ask for: `None` when neither is set (plain HTTP), an
/// error when only one is.
pub fn server_config_from(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (cert_file, key_file) {
        (None, None) => Ok(None),
        (Some(cert), None) => Err(TlsError::CertWithoutKey {
            cert: cert.to_path_buf(),
        }),
        (None, Some(key)) => Err(TlsError::KeyWithoutCert {
            key: key.to_path_buf(),
        }),
        (Some(cert), Some(key)) => server_config(cert, key).map(Some),
    }
}

/// What an accept loop wraps each accepted connection with; cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Acceptor {
    /// TLS with `config` when given, else plain; a handshake must finish within
    /// `handshake_timeout` (the servers pass their request-head timeout: a client that
    /// trickles its handshake is a slowloris like one that trickles its head).
    pub fn new(config: Option<Arc<ServerConfig>>, handshake_timeout: Duration) -> Self {
        Self {
            tls: config.map(TlsAcceptor::from),
            handshake_timeout,
        }
    }

    /// Whether connections get TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `https` or `http`: the scheme of this server's base URL.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// The connection as hyper should serve it: after a TLS handshake bounded by the timeout,
    /// or as it is.
    pub async fn accept(&self, stream: TcpStream) -> Result<ServerStream, HandshakeError> {
        self.accept_within(stream, self.handshake_timeout).await
    }

    /// [`Acceptor::accept`] with another time bound (a refused connection's shorter one).
    pub async fn accept_within(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<ServerStream, HandshakeError> {
        let Some(tls) = &self.tls else {
            return Ok(ServerStream::Plain(stream));
        };
        match tokio::time::timeout(timeout, tls.accept(stream)).await {
            Ok(Ok(stream)) => Ok(ServerStream::Tls(Box::new(stream))),
            Ok(Err(err)) => Err(HandshakeError::Failed(err)),
            Err(_) => Err(HandshakeError::Timeout(timeout)),
        }
    }
}

/// An accepted connection, plain or TLS, as one type for hyper.
#[derive(Debug)]
pub enum ServerStream {
    /// No TLS configured.
    Plain(TcpStream),
    /// After a completed handshake (boxed: the TLS state is a few KiB).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, as PEM files.
    pub(crate) struct Pki {
        pub dir: tempfile::TempDir,
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    pub(crate) fn pki() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fleetmap test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params")
                .signed_by(&key, &ca, &ca_key)
                .expect("cert");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let ca = write("ca.pem", ca.pem());
        let cert = write("cert.pem", cert.pem());
        let key = write("key.pem", key.serialize_pem());
        Pki { dir, ca, cert, key }
    }

    #[test]
    fn a_matching_chain_and_key_make_an_http1_server() {
        let pki = pki();
        let config = server_config(&pki.cert, &pki.key).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn one_setting_without_the_other_or_a_foreign_key_is_refused() {
        let pki = pki();
        assert!(server_config_from(None, None).expect("plain").is_none());
        let err = server_config_from(Some(&pki.cert), None).expect_err("refused");
        assert!(
            err.to_string().contains("tls_key_file is not") && err.to_string().contains("set both"),
            "{err}"
        );
        let err = server_config_from(None, Some(&pki.key)).expect_err("refused");
        assert!(matches!(err, TlsError::KeyWithoutCert { .. }), "{err}");

        let other = pki.dir.path().join("other.pem");
        std::fs::write(
            &other,
            rcgen::KeyPair::generate().expect("key").serialize_pem(),
        )
        .expect("write");
        let err = server_config(&pki.cert, &other).expect_err("refused");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        // A key file given as the certificate holds no certificate.
        let err = server_config(&pki.key, &pki.key).expect_err("refused");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_plain_acceptor_passes_the_stream_and_a_silent_client_times_out() {
        let pki = pki();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let plain = Acceptor::new(None, Duration::from_millis(50));
        assert_eq!(plain.scheme(), "http");
        assert!(matches!(
            plain.accept(stream).await,
            Ok(ServerStream::Plain(_))
        ));

        let _silent = TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let tls = Acceptor::new(
            Some(server_config(&pki.cert, &pki.key).expect("config")),
            Duration::from_millis(50),
        );
        assert_eq!(tls.scheme(), "https");
        let err = tls.accept(stream).await.expect_err("times out");
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
    }
}

//! The client side: a verifying rustls `ClientConfig` that trusts the `tls_ca_file` CA, or the
//! system's roots, and the hyper connector the services' HTTP clients are built on.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};
use tracing::{debug, warn};

use crate::{pem, TlsError};

/// A connector speaking `https://` (verified) and `http://` alike.
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client config that verifies servers against the CA certificates in `ca_file`, or against
/// the system's roots when it is `None` (read once per process). With no system roots found
/// every `https://` server is refused, and one warning says so.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in pem::certificates(
                "tls_ca_file",
                path,
                "the CA certificate that signed the server's certificate",
            )? {
                roots.add(cert).map_err(|err| TlsError::BadCa {
                    path: path.to_path_buf(),
                    reason: err.to_string(),
                })?;
            }
            Ok(Arc::new(with_roots(roots)))
        }
        None => Ok(system_client_config()),
    }
}

/// A client config that verifies servers against the system's roots (read once per process;
/// none found: one warning, and every `https://` server is refused).
pub fn system_client_config() -> Arc<ClientConfig> {
    static SYSTEM: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| Arc::new(with_roots(system_roots())))
        .clone()
}

/// A connector over `http` (whose settings — nodelay, timeouts — it keeps) that verifies TLS
/// with `tls`; offers HTTP/2 and HTTP/1.1 by ALPN, as the plain client speaks both.
pub fn https_connector(mut http: HttpConnector, tls: &ClientConfig) -> HttpsConnector {
    // The TLS layer hands it `https://` URLs too.
    http.enforce_http(false);
    HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

fn with_roots(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        debug!(cause = %err, "a system CA certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        warn!(
            ignored,
            "no system CA certificates found: https:// servers will be refused unless tls_ca_file names their CA"
        );
    }
    roots
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;
    use crate::server::tests::pki;
    use crate::{server_config, Acceptor};

    /// Serves `ok` on every request over TLS; the URL's port.
    async fn tls_server(acceptor: Acceptor) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(|_request| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        port
    }

    fn client(tls: &ClientConfig) -> Client<HttpsConnector, Empty<Bytes>> {
        Client::builder(TokioExecutor::new()).build(https_connector(HttpConnector::new(), tls))
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_gets_through_and_others_are_refused() {
        let pki = pki();
        let acceptor = Acceptor::new(
            Some(server_config(&pki.cert, &pki.key).expect("server")),
            Duration::from_secs(5),
        );
        let port = tls_server(acceptor).await;

        let trusting = client_config(Some(&pki.ca)).expect("client");
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("https://{host}:{port}/");
            let response = client(&trusting)
                .get(url.parse().expect("uri"))
                .await
                .expect("verified");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(&body[..], b"ok");
        }

        let system = client_config(None).expect("system roots");
        let refused = client(&system)
            .get(format!("https://127.0.0.1:{port}/").parse().expect("uri"))
            .await
            .expect_err("an unknown CA is refused");
        let chain = crate::error_chain(&refused);
        assert!(
            chain.contains("certificate") || chain.contains("UnknownIssuer"),
            "{chain}"
        );

        // Plain HTTP to the TLS port gets no HTTP answer.
        let plain = client(&trusting)
            .get(format!("http://127.0.0.1:{port}/").parse().expect("uri"))
            .await;
        assert!(plain.is_err(), "{plain:?}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let pki = pki();
        let err = client_config(Some(&pki.key)).expect_err("refused");
        assert!(
            err.to_string().starts_with("tls_ca_file ")
                && err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}

//! Optional TLS for fleetmap's services, on rustls with the `ring` provider.
//!
//! - [`server_config`] / [`server_config_from`]: a PEM certificate chain and private key (the
//!   `tls_cert_file` and `tls_key_file` settings) as a rustls `ServerConfig`;
//! - [`Acceptor`]: what an accept loop wraps each TCP connection with: a timed TLS handshake when
//!   TLS is configured, the plain stream otherwise, as one [`ServerStream`] type for hyper;
//! - [`serve_refusal`]: a connection beyond a service's limit gets its handshake and a canned
//!   answer within a short time;
//! - [`client_config`] and [`https_connector`]: a verifying client that trusts a CA file (the
//!   `tls_ca_file` setting) or else the system's roots, speaking `https://` and `http://` alike.
//!
//! - [`TlsArgs`]: the three flags both services take, loaded with [`TlsArgs::load`].
//!
//! No client certificates (mTLS): the cluster token and API keys authenticate, TLS encrypts and
//! proves the server's name. Every error is one sentence naming the setting and what to change.

mod args;
mod client;
mod error;
mod pem;
mod refusal;
mod server;

pub use args::TlsArgs;
pub use client::{client_config, https_connector, system_client_config, HttpsConnector};
pub use error::{HandshakeError, TlsError};
pub use refusal::serve_refusal;
pub use server::{server_config, server_config_from, Acceptor, ServerStream, SERVER_ALPN};

/// The crypto provider every config here is built on: `ring`, so no C toolchain beyond a C
/// compiler (no cmake, no aws-lc) is needed to build the services. rustls 0.23.48 deprecates it
/// for lacking post-quantum key exchange; that is the price of the simpler build, taken knowingly.
#[allow(deprecated)]
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls config types, so the services need no direct rustls dependency.
pub use rustls::{ClientConfig, ServerConfig};

/// A service's TLS settings loaded: what it serves with (`None`: plain HTTP) and what it
/// trusts of the `https://` peers it calls.
#[derive(Debug, Clone)]
pub struct Settings {
    /// From `tls_cert_file` and `tls_key_file`, both or neither.
    pub server: Option<std::sync::Arc<ServerConfig>>,
    /// From `tls_ca_file`, else the system's roots.
    pub client: std::sync::Arc<ClientConfig>,
}

/// Loads the `tls_cert_file`, `tls_key_file` and `tls_ca_file` settings of a service.
pub fn load(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    ca: Option<&std::path::Path>,
) -> Result<Settings, TlsError> {
    Ok(Settings {
        server: server_config_from(cert, key)?,
        client: client_config(ca)?,
    })
}

/// An error and its causes in one line: hyper's top-level message alone ("client error
/// (Connect)") hides the refused certificate or the refused connection underneath.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

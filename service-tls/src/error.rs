//! What can be wrong with the TLS settings, and with one connection's handshake: each message a
//! sentence naming the setting and its file and saying what to change.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// A refused TLS setting (at start: the service does not serve with it).
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate was given without its key.
    #[error("tls_cert_file {cert} is set but tls_key_file is not: set both to serve HTTPS, or neither to serve plain HTTP")]
    CertWithoutKey {
        /// The certificate file.
        cert: PathBuf,
    },
    /// A key was given without its certificate.
    #[error("tls_key_file {key} is set but tls_cert_file is not: set both to serve HTTPS, or neither to serve plain HTTP")]
    KeyWithoutCert {
        /// The key file.
        key: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {setting} {path}: {source}; fix the path or its permissions")]
    Unreadable {
        /// `tls_cert_file`, `tls_key_file` or `tls_ca_file`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file has a broken PEM section.
    #[error("{setting} {path} is not valid PEM ({reason}): point it at {wanted}")]
    BadPem {
        /// The setting.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM parser's account.
        reason: String,
        /// What the file should hold.
        wanted: &'static str,
    },
    /// A certificate file holds no certificate.
    #[error("{setting} {path} holds no PEM certificate: point it at {wanted}")]
    NoCertificate {
        /// The setting.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file should hold.
        wanted: &'static str,
    },
    /// The key file holds no private key.
    #[error("tls_key_file {path} holds no PEM private key: point it at the server's private key (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is unusable, or is not the key of the certificate.
    #[error("tls_key_file {key} does not go with tls_cert_file {cert} ({reason}): give the private key of the chain's first certificate")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's account.
        reason: String,
    },
    /// A CA certificate rustls will not trust.
    #[error("tls_ca_file {path} holds a certificate that cannot be a trust anchor ({reason}): point it at the CA certificate that signed the server's certificate")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// rustls's account.
        reason: String,
    },
}

/// Why one connection's TLS handshake failed (only that connection is dropped).
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The client sent no complete handshake in time.
    #[error("the TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The client spoke something else (plain HTTP, say) or refused the certificate.
    #[error("the TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
}

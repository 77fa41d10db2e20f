//! Reading certificates and keys from PEM files, telling an unreadable file, a broken one and
//! one that holds nothing of the wanted kind apart.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// The file's bytes, or `Unreadable` naming `setting`.
fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        setting,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file (at least one), in file order.
pub(crate) fn certificates(
    setting: &'static str,
    path: &Path,
    wanted: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|err| TlsError::BadPem {
            setting,
            path: path.to_path_buf(),
            reason: err.to_string(),
            wanted,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_path_buf(),
            wanted,
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const SETTING: &str = "tls_key_file";
    let bytes = read(SETTING, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(err) => Err(TlsError::BadPem {
            setting: SETTING,
            path: path.to_path_buf(),
            reason: err.to_string(),
            wanted: "the server's private key",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_truncated_and_missing_files_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate at all\n").expect("write");
        let err = certificates("tls_cert_file", &garbage, "the server's certificate chain")
            .expect_err("refused");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "tls_cert_file {} holds no PEM certificate: point it at the server's certificate chain",
                garbage.display()
            )
        );

        let truncated = dir.path().join("truncated.pem");
        std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nMIIB\n").expect("write");
        let err = certificates("tls_ca_file", &truncated, "the CA").expect_err("refused");
        assert!(matches!(err, TlsError::BadPem { .. }), "{err}");
        assert!(err.to_string().starts_with("tls_ca_file "), "{err}");

        let missing = dir.path().join("missing.pem");
        let err = private_key(&missing).expect_err("refused");
        assert!(matches!(err, TlsError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = private_key(&garbage).expect_err("refused");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
    }

    #[test]
    fn a_chain_and_a_key_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let chain = dir.path().join("chain.pem");
        std::fs::write(&chain, format!("{}{}", cert.pem(), cert.pem())).expect("write");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        assert_eq!(
            certificates("tls_cert_file", &chain, "chain")
                .expect("read")
                .len(),
            2
        );
        assert!(matches!(
            private_key(&key_file).expect("read"),
            PrivateKeyDer::Pkcs8(_)
        ));
    }
}

//! The TLS flags both services take. Flattened into each service's clap arguments, they are
//! layered like every other flag (TOML key `tls_cert_file`, variable `<PREFIX>TLS_CERT_FILE`).

use std::path::PathBuf;

use crate::{load, Settings, TlsError};

/// `--tls-cert-file`, `--tls-key-file` and `--tls-ca-file`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain to serve HTTPS with (needs --tls-key-file); without both, plain
    /// HTTP. A node's default --advertise URL is then `https://`.
    #[arg(long, value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file's first certificate.
    #[arg(long, value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) the `https://` services this one calls are verified against (a
    /// coordinator's nodes, a node's coordinator); default: the system's roots.
    #[arg(long, value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,
}

impl TlsArgs {
    /// Loads the files; a refusal is a setting's error (services exit with code 2).
    pub fn load(&self) -> Result<Settings, TlsError> {
        load(
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
            self.tls_ca_file.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Service {
        #[command(flatten)]
        tls: TlsArgs,
    }

    #[test]
    fn the_flags_parse_and_nothing_given_is_plain_http_with_system_roots() {
        let parsed = Service::parse_from(["svc", "--tls-ca-file", "/x/ca.pem"]);
        assert_eq!(parsed.tls.tls_ca_file, Some(PathBuf::from("/x/ca.pem")));
        assert_eq!(parsed.tls.tls_cert_file, None);
        let none = Service::parse_from(["svc"]).tls.load().expect("no files");
        assert!(none.server.is_none());
        let missing = Service::parse_from(["svc", "--tls-ca-file", "/nonexistent/ca.pem"])
            .tls
            .load()
            .expect_err("missing file");
        assert!(
            missing
                .to_string()
                .starts_with("cannot read tls_ca_file /nonexistent/ca.pem"),
            "{missing}"
        );
    }
}

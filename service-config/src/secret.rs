//! Secrets (tokens, keys) read from a file named by a flag, else from an environment variable,
//! so they never have to appear on a command line.

use std::path::Path;

use crate::ConfigError;

/// The secret in `file` if one is given, else the value of `env_var`, else `None`; surrounding
/// whitespace (the file's trailing newline) is trimmed.
pub fn secret(file: Option<&Path>, env_var: &str) -> Result<Option<String>, ConfigError> {
    let text = match file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|source| ConfigError::SecretUnreadable {
                path: path.to_path_buf(),
                source,
            })?
        }
        None => match std::env::var(env_var) {
            Ok(text) => text,
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(text.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_wins_and_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token-value\n").expect("write");
        let got = secret(Some(&path), "FLEETMAP_SECRET_TEST_UNSET_VARIABLE").expect("reads");
        assert_eq!(got.as_deref(), Some("s3cret-token-value"));
    }

    #[test]
    fn no_file_and_no_variable_is_none_and_a_missing_file_names_itself() {
        assert_eq!(
            secret(None, "FLEETMAP_SECRET_TEST_UNSET_VARIABLE").expect("ok"),
            None
        );
        let err = secret(Some(Path::new("/nonexistent/token")), "X").expect_err("refused");
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }
}

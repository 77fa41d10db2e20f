//! What can be wrong with a service's settings, one variant per kind of problem, each message a
//! sentence that names the file, key or variable and says what to change.

use std::path::PathBuf;

use thiserror::Error;

/// A refused configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The settings file could not be read.
    #[error("cannot read the settings file {path}: {source}; fix the path given by --config")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The settings file is not valid TOML.
    #[error("the settings file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's account, with line and column.
        message: String,
    },
    /// A key the service does not know.
    #[error(
        "the settings file {path} has an unknown key `{key}`{hint}; remove it or fix its name"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// ` (did you mean `x`?)` or empty.
        hint: String,
    },
    /// A value of a type the key cannot take (a table, a date, a list for a single value).
    #[error("the settings file {path} gives `{key}` a {found}; it takes {expected}")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the file holds.
        found: &'static str,
        /// What the key takes.
        expected: &'static str,
    },
    /// A value the flag's parser refuses.
    #[error("`{key}` = {value:?} in {origin} is invalid: {reason}")]
    InvalidValue {
        /// The file path or `the environment`.
        origin: String,
        /// The key or variable.
        key: String,
        /// The value as given.
        value: String,
        /// The parser's reason.
        reason: String,
    },
    /// A secret's file (cluster token, key) could not be read.
    #[error("cannot read the secret file {path}: {source}; fix the path or its permissions")]
    SecretUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The command line itself (or `--help` / `--version`, which clap reports this way).
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error (or help / version text) and exits: 0 for help and version, 2 for any
    /// refused setting.
    pub fn exit(&self) -> ! {
        match self {
            Self::Cli(err) => err.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(i32::from(crate::EXIT_CONFIG))
            }
        }
    }
}

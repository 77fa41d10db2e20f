//! Settings for fleetmap's services from three layers — a TOML file, environment variables and
//! command-line flags, each overriding the one before — with the flags' own clap definitions as
//! the single schema.
//!
//! Every long flag `--some-flag` of a service is also the TOML key `some_flag` and the
//! environment variable `<PREFIX>SOME_FLAG`; the file is named by `--config PATH` or
//! `<PREFIX>CONFIG`. A flag added to a service's `Args` is thereby settable in all three places
//! with no further code. Values from the file and the environment go through the flag's own
//! value parser before anything runs, so a bad one is reported with where it came from.

mod error;
mod layers;
mod secret;
mod toml_value;

pub use error::ConfigError;
pub use layers::{parse, try_parse_from, CONFIG_FLAG};
pub use secret::secret;

/// Exit code of a service refused at start for its configuration (clap's usage-error code).
pub const EXIT_CONFIG: u8 = 2;

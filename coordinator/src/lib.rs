//! fleetmap coordinator: knows the nodes, splits each job over them by free capacity, keeps every
//! in-flight input until it is answered so that a dead node's inputs are re-dispatched, merges the
//! nodes' result streams (each input index exactly once) and keeps job records in SQLite.
//!
//! Laid out like tokio's mini-redis: [`run`] takes a [`Config`], a bound listener and a shutdown
//! future, so black-box tests start a coordinator on `127.0.0.1:0`; `main.rs` only parses the
//! command line, sets up logging and calls it. The wire contract is `docs/protocol.md` and the
//! checked-in `agent-proto/openapi/coordinator.json`.

pub mod api;
pub mod config;
pub mod conn;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod node_client;
pub mod registry;
mod server;
pub mod state;
pub mod store;

pub use config::Config;
pub use error::Error;
pub use server::run;

//! The fleetmap base image recipe: a Debian root filesystem made with debootstrap (Python 3 and
//! cloudpickle), imported into the local Docker engine under a tag and a content-hash label.
//!
//! No image registry may be reachable, so the image every fleetmap container starts from is
//! built on the node itself. [`ensure`] is idempotent: when the tag already carries the label of
//! the current [`Recipe`], it does nothing.

pub mod channel;
pub mod command;
pub mod customize;
pub mod debootstrap;
pub mod engine;
pub mod ensure;
pub mod error;
pub mod host;
pub mod image_ref;
pub mod mounts;
pub mod recipe;
pub mod rootfs;
pub mod slim;
pub mod tarball;
pub mod workdir;

pub use engine::{Engine, ImageState};
pub use ensure::{ensure, status, EnsureOptions, EnsureReport, StatusReport};
pub use error::Error;
pub use image_ref::ImageRef;
pub use recipe::{ImageFacts, Recipe};

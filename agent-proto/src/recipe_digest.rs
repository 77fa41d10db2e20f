//! A node-independent digest of what a job asks its environment to be, so nodes can report the
//! environments they hold and the coordinator can send a job to the nodes that hold its own.
//!
//! A node's environment *key* (fleetmapd's cache) also covers the node's base image, Python and
//! worker code, which the coordinator does not know; this digest covers only the request:
//! kind, sorted requirements, the Dockerfile's bytes and its context files.

use sha2::{Digest, Sha256};

use crate::job::EnvSpec;

/// Version of the digest's layout; bump it when the fields hashed change.
const LAYOUT: &str = "fleetmap-recipe/1";

impl EnvSpec {
    /// Hex sha256 of the request, equal for requests that build the same environment on a
    /// given node; `None` for the node's default environment (nothing to build).
    pub fn recipe_digest(&self) -> Option<String> {
        let mut h = Sha256::new();
        // Every field is length-prefixed, so no two different requests hash the same stream.
        let mut field = |label: &str, bytes: &[u8]| {
            h.update(label.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("layout", LAYOUT.as_bytes());
        field("kind", self.kind_name().as_bytes());
        match self {
            Self::NodeDefault => return None,
            Self::Packages { packages: list }
            | Self::Clone {
                distributions: list,
            } => {
                for requirement in normalized(list) {
                    field("requirement", requirement.as_bytes());
                }
            }
            Self::Dockerfile { content, context } => {
                field("dockerfile", content.as_bytes());
                for file in context {
                    field("path", file.path.as_bytes());
                    field("mode", &file.mode.unwrap_or(0o644).to_le_bytes());
                    field("data", file.data_b64.as_bytes());
                }
            }
        }
        Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Requirements as a node installs them: trimmed, sorted, without duplicates.
fn normalized(list: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = list.iter().map(|r| r.trim()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use crate::job::{ContextFile, EnvSpec};

    fn packages(list: &[&str]) -> EnvSpec {
        EnvSpec::Packages {
            packages: list.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn dockerfile(content: &str, data_b64: &str) -> EnvSpec {
        EnvSpec::Dockerfile {
            content: content.to_string(),
            context: vec![ContextFile {
                path: "app.py".into(),
                data_b64: data_b64.into(),
                mode: None,
            }],
        }
    }

    #[test]
    fn the_node_default_has_no_digest() {
        assert_eq!(EnvSpec::NodeDefault.recipe_digest(), None);
    }

    #[test]
    fn package_order_spacing_and_repeats_do_not_matter() {
        let a = packages(&["six==1.16.0", "idna"]).recipe_digest();
        let b = packages(&[" idna", "six==1.16.0", "idna "]).recipe_digest();
        assert_eq!(a, b);
        assert_eq!(a.as_deref().map(str::len), Some(64));
        assert_ne!(a, packages(&["six==1.16.0"]).recipe_digest());
        assert!(
            packages(&[]).recipe_digest().is_some(),
            "an empty list is a real recipe (no packages), not the node default"
        );
    }

    #[test]
    fn kinds_with_the_same_list_differ() {
        let clone = EnvSpec::Clone {
            distributions: vec!["six==1.16.0".into()],
        };
        assert_ne!(
            clone.recipe_digest(),
            packages(&["six==1.16.0"]).recipe_digest()
        );
    }

    #[test]
    fn one_byte_of_the_dockerfile_or_its_context_changes_the_digest() {
        let base = dockerfile("FROM fleetmap/base:1\n", "cHJpbnQoMSkK").recipe_digest();
        assert_eq!(
            base,
            dockerfile("FROM fleetmap/base:1\n", "cHJpbnQoMSkK").recipe_digest()
        );
        assert_ne!(
            base,
            dockerfile("FROM fleetmap/base:1 \n", "cHJpbnQoMSkK").recipe_digest()
        );
        assert_ne!(
            base,
            dockerfile("FROM fleetmap/base:1\n", "cHJpbnQoMikK").recipe_digest()
        );
    }
}

//! The environment key: a sha256 over everything that decides an environment, so equal keys
//! mean interchangeable environments and any change (one byte of a Dockerfile or a context
//! file, a package, the base image, the Python version, the worker code) means a new one.

use sha2::{Digest, Sha256};

use super::recipe::Recipe;

/// Version of the key's layout; bump it when the way environments are built changes.
const LAYOUT: &str = "fleetmap-env-key/1";

/// What besides the recipe decides an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBase {
    /// `process` or `docker`.
    pub runtime: String,
    /// The base: the base image's id (docker) or the worker interpreter's path (process).
    pub base: String,
    /// Full Python version of the base.
    pub python: String,
    /// sha256 of the worker module.
    pub worker: String,
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of `recipe` on `base` (64 hex characters).
pub fn env_key(base: &KeyBase, recipe: &Recipe) -> String {
    let mut h = Sha256::new();
    // Every field is length-prefixed, so no two different inputs hash the same stream.
    let mut field = |label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("layout", LAYOUT.as_bytes());
    field("runtime", base.runtime.as_bytes());
    field("base", base.base.as_bytes());
    field("python", base.python.as_bytes());
    field("worker", base.worker.as_bytes());
    field("kind", recipe.kind_name().as_bytes());
    match recipe {
        Recipe::NodeDefault => {}
        Recipe::Requirements { requirements, .. } => {
            for requirement in requirements {
                field("requirement", requirement.as_bytes());
            }
        }
        Recipe::Dockerfile { content, context } => {
            field("dockerfile", content.as_bytes());
            for file in context {
                field("path", file.path.as_bytes());
                field("mode", &file.mode.to_le_bytes());
                field("data", &file.data);
            }
        }
    }
    hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::recipe::ContextEntry;

    fn base() -> KeyBase {
        KeyBase {
            runtime: "docker".into(),
            base: "sha256:1".into(),
            python: "3.11.2".into(),
            worker: "w".into(),
        }
    }

    fn dockerfile(content: &str, data: &[u8]) -> Recipe {
        Recipe::Dockerfile {
            content: content.into(),
            context: vec![ContextEntry {
                path: "a".into(),
                data: data.to_vec(),
                mode: 0o644,
            }],
        }
    }

    #[test]
    fn one_byte_anywhere_changes_the_key() {
        let k = env_key(&base(), &dockerfile("FROM x\n", b"1"));
        assert_eq!(k.len(), 64);
        assert_eq!(k, env_key(&base(), &dockerfile("FROM x\n", b"1")));
        assert_ne!(k, env_key(&base(), &dockerfile("FROM y\n", b"1")));
        assert_ne!(k, env_key(&base(), &dockerfile("FROM x\n", b"2")));
        let mut other = base();
        other.base = "sha256:2".into();
        assert_ne!(k, env_key(&other, &dockerfile("FROM x\n", b"1")));
        let mut other = base();
        other.worker = "w2".into();
        assert_ne!(k, env_key(&other, &dockerfile("FROM x\n", b"1")));
    }

    #[test]
    fn packages_and_clones_of_the_same_list_differ() {
        let reqs = vec!["six".to_string()];
        let packages = Recipe::Requirements {
            requirements: reqs.clone(),
            clone: false,
        };
        let clone = Recipe::Requirements {
            requirements: reqs,
            clone: true,
        };
        assert_ne!(env_key(&base(), &packages), env_key(&base(), &clone));
        let split = Recipe::Requirements {
            requirements: vec!["si".into(), "x".into()],
            clone: false,
        };
        assert_ne!(env_key(&base(), &packages), env_key(&base(), &split));
    }
}

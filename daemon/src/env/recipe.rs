//! What to build for a job's environment spec on this node's runtime: the spec checked and
//! turned into a [`Recipe`] (and, for images, the Dockerfile the engine gets).

use std::collections::BTreeMap;

use agent_proto::EnvSpec;
use base64::Engine as _;

use super::EnvError;
use crate::config::RuntimeKind;

/// Most context files a Dockerfile may bring.
pub const MAX_CONTEXT_FILES: usize = 4096;
/// Most requirements a spec may list.
pub const MAX_REQUIREMENTS: usize = 2048;
/// Where a configured extra CA bundle lies in a build context and in built images.
pub const CA_IN_CONTEXT: &str = ".fleetmap-build-ca.crt";
/// Where the CA bundle is copied inside images.
pub const CA_IN_IMAGE: &str = "/etc/fleetmap/build-ca.crt";
/// The name the Dockerfile gets in the build context (a context file may be `Dockerfile`).
pub const DOCKERFILE_IN_CONTEXT: &str = ".fleetmap.Dockerfile";

/// A context file: path relative to the context root, bytes, permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// `/`-separated relative path.
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// What an environment is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// The runtime's own environment: nothing to build.
    NodeDefault,
    /// pip requirements on top of the base (an image `FROM` the base image, or a venv of the
    /// worker Python). `clone`: requirements that cannot be installed are dropped with a
    /// warning instead of failing the build.
    Requirements {
        /// Sorted, deduplicated requirement strings.
        requirements: Vec<String>,
        /// Whether this replicates a client's environment.
        clone: bool,
    },
    /// A user's Dockerfile and the context files it uses (docker runtime only).
    Dockerfile {
        /// The Dockerfile's text.
        content: String,
        /// Context files, sorted by path.
        context: Vec<ContextEntry>,
    },
}

impl Recipe {
    /// Short name for logs and the index (`packages`, `clone`, `dockerfile`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::NodeDefault => "node_default",
            Self::Requirements { clone: false, .. } => "packages",
            Self::Requirements { clone: true, .. } => "clone",
            Self::Dockerfile { .. } => "dockerfile",
        }
    }
}

/// Checks a spec and turns it into a recipe for `runtime`. The clone is returned as
/// requirements; whether the node's interpreter already satisfies it is decided by the cache.
pub fn from_spec(spec: &EnvSpec, runtime: RuntimeKind) -> Result<Recipe, EnvError> {
    match spec {
        EnvSpec::NodeDefault => Ok(Recipe::NodeDefault),
        EnvSpec::Packages { packages } => {
            let requirements = requirements(packages, "packages")?;
            // The docker runtime's base image is the bare base environment already.
            if requirements.is_empty() && runtime == RuntimeKind::Docker {
                return Ok(Recipe::NodeDefault);
            }
            Ok(Recipe::Requirements {
                requirements,
                clone: false,
            })
        }
        EnvSpec::Clone { distributions } => Ok(Recipe::Requirements {
            requirements: requirements(distributions, "the cloned environment")?,
            clone: true,
        }),
        EnvSpec::Dockerfile { content, context } => {
            if runtime != RuntimeKind::Docker {
                return Err(EnvError::Unsupported(
                    "dockerfile= needs a node running the docker runtime (fleetmapd --runtime docker) but this node runs processes; use packages= here or add a docker node".to_string(),
                ));
            }
            if content.trim().is_empty() {
                return Err(EnvError::Invalid(
                    "the Dockerfile is empty; give dockerfile= the path of a Dockerfile with a FROM line".to_string(),
                ));
            }
            if context.len() > MAX_CONTEXT_FILES {
                return Err(EnvError::Invalid(format!(
                    "the Dockerfile's context has {} files, more than {MAX_CONTEXT_FILES}; COPY fewer files (a directory of wheels, not a tree)",
                    context.len()
                )));
            }
            let mut files = BTreeMap::new();
            for file in context {
                let path = context_path(&file.path)?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(file.data_b64.as_bytes())
                    .map_err(|e| {
                        EnvError::Invalid(format!(
                            "context file {path:?} is not valid base64 ({e}); send its bytes base64-encoded"
                        ))
                    })?;
                files.insert(
                    path.clone(),
                    ContextEntry {
                        path,
                        data,
                        mode: file.mode.unwrap_or(0o644) & 0o7777,
                    },
                );
            }
            Ok(Recipe::Dockerfile {
                content: content.clone(),
                context: files.into_values().collect(),
            })
        }
    }
}

/// Checks requirement strings; returns them sorted and deduplicated.
fn requirements(list: &[String], what: &str) -> Result<Vec<String>, EnvError> {
    if list.len() > MAX_REQUIREMENTS {
        return Err(EnvError::Invalid(format!(
            "{what} lists {} requirements, more than {MAX_REQUIREMENTS}; list fewer packages",
            list.len()
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for requirement in list {
        let requirement = requirement.trim();
        if requirement.is_empty()
            || requirement.starts_with('-')
            || requirement.contains(['\n', '\r', '\0'])
        {
            return Err(EnvError::Invalid(format!(
                "{what} holds {requirement:?}, which is not a pip requirement; list package requirements such as \"six==1.16.0\" (no pip options)"
            )));
        }
        out.push(requirement.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A context path made safe: relative, `/`-separated, no `.`/`..`/empty components.
fn context_path(path: &str) -> Result<String, EnvError> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let bad = path.starts_with('/')
        || parts.is_empty()
        || parts.iter().any(|p| *p == ".." || p.contains('\0'))
        || path.contains('\\');
    if bad {
        return Err(EnvError::Invalid(format!(
            "context file path {path:?} is not a relative path inside the Dockerfile's directory; COPY only files below it"
        )));
    }
    let joined = parts.join("/");
    if joined == DOCKERFILE_IN_CONTEXT || joined == CA_IN_CONTEXT {
        return Err(EnvError::Invalid(format!(
            "context file {joined:?} has a name fleetmap reserves; rename it"
        )));
    }
    Ok(joined)
}

/// The Dockerfile of a requirements image: `FROM` the base image, pip-installing exactly the
/// requirements (exec form, so no shell quoting is involved).
pub fn requirements_dockerfile(base_image: &str, requirements: &[String], ca: bool) -> String {
    let mut text = format!("FROM {base_image}\n");
    if ca {
        text.push_str(&ca_lines());
    }
    if !requirements.is_empty() {
        let mut args = vec![
            "python3",
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ];
        args.extend(requirements.iter().map(String::as_str));
        let json = serde_json::to_string(&args).unwrap_or_default();
        text.push_str(&format!("RUN {json}\n"));
    }
    text
}

/// A user's Dockerfile with the CA bundle copied in and trusted by pip after every `FROM`.
pub fn with_ca(content: &str) -> String {
    let mut out = String::with_capacity(content.len() + 256);
    let mut continued = false;
    for line in content.lines() {
        out.push_str(line);
        out.push('\n');
        let trimmed = line.trim_start();
        let is_from = !continued
            && trimmed.len() > 5
            && trimmed[..5].eq_ignore_ascii_case("FROM ")
            && !trimmed.trim_end().ends_with('\\');
        continued = line.trim_end().ends_with('\\');
        if is_from {
            out.push_str(&ca_lines());
        }
    }
    out
}

fn ca_lines() -> String {
    format!(
        "COPY {CA_IN_CONTEXT} {CA_IN_IMAGE}\nENV PIP_CERT={CA_IN_IMAGE} REQUESTS_CA_BUNDLE={CA_IN_IMAGE}\n"
    )
}

#[cfg(test)]
mod tests {
    use agent_proto::ContextFile;

    use super::*;

    #[test]
    fn packages_are_sorted_and_options_refused() {
        let spec = EnvSpec::Packages {
            packages: vec!["six".into(), " attrs==23.1.0 ".into(), "six".into()],
        };
        assert_eq!(
            from_spec(&spec, RuntimeKind::Process).expect("valid"),
            Recipe::Requirements {
                requirements: vec!["attrs==23.1.0".into(), "six".into()],
                clone: false
            }
        );
        let bad = EnvSpec::Packages {
            packages: vec!["--index-url=http://evil".into()],
        };
        let err = from_spec(&bad, RuntimeKind::Process).expect_err("option");
        assert!(err.to_string().contains("no pip options"), "{err}");
    }

    #[test]
    fn empty_packages_on_docker_is_the_base_image() {
        let spec = EnvSpec::Packages { packages: vec![] };
        assert_eq!(
            from_spec(&spec, RuntimeKind::Docker).expect("valid"),
            Recipe::NodeDefault
        );
        assert!(matches!(
            from_spec(&spec, RuntimeKind::Process).expect("valid"),
            Recipe::Requirements { .. }
        ));
    }

    #[test]
    fn dockerfiles_need_docker_and_safe_context_paths() {
        let spec = |path: &str| EnvSpec::Dockerfile {
            content: "FROM x\n".into(),
            context: vec![ContextFile {
                path: path.into(),
                data_b64: "aGk=".into(),
                mode: None,
            }],
        };
        let err = from_spec(&spec("a.txt"), RuntimeKind::Process).expect_err("process");
        assert!(err.to_string().contains("--runtime docker"), "{err}");
        let recipe = from_spec(&spec("./dir//a.txt"), RuntimeKind::Docker).expect("valid");
        let Recipe::Dockerfile { context, .. } = recipe else {
            panic!("not a dockerfile recipe");
        };
        assert_eq!(context[0].path, "dir/a.txt");
        assert_eq!(context[0].data, b"hi");
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(
                from_spec(&spec(bad), RuntimeKind::Docker).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn the_ca_goes_after_every_from() {
        let text = with_ca("# syntax\nFROM a AS b\nRUN x \\\n  FROM y\nfrom c\n");
        let copies = format!("COPY {CA_IN_CONTEXT} {CA_IN_IMAGE}");
        assert_eq!(text.matches(&copies).count(), 2, "not inside a RUN: {text}");
        assert!(text.starts_with("# syntax\nFROM a AS b\nCOPY "), "{text}");
        let generated = requirements_dockerfile("sha256:abc", &["six".into()], false);
        assert_eq!(
            generated,
            "FROM sha256:abc\nRUN [\"python3\",\"-m\",\"pip\",\"install\",\"--no-cache-dir\",\"--disable-pip-version-check\",\"--no-input\",\"--progress-bar\",\"off\",\"six\"]\n"
        );
    }
}

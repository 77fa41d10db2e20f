//! What the base image is made of, its content hash, and the labels and image config that the
//! import applies.
//!
//! The hash covers every input that decides what ends up in the image: the recipe version, the
//! Debian release and variant, the Debian packages, the pip packages and the image config. Any
//! change to the build steps themselves (what `customize` and `slim` do) must bump
//! [`RECIPE_VERSION`], which is part of the hash and of the default tag.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Bumped whenever the build steps change in a way the other inputs do not capture.
pub const RECIPE_VERSION: &str = "1";

/// The repository part of the default tag: `fleetmap/base:<recipe version>`.
pub const REPOSITORY: &str = "fleetmap/base";

/// The Debian release. It decides the Python version inside: bookworm ships Python 3.11, the
/// version the fleetmap client runs, and cloudpickle needs the same minor version on both ends.
pub const RELEASE: &str = "bookworm";

/// The debootstrap variant: `minbase` is essential packages and apt only.
pub const VARIANT: &str = "minbase";

/// Debian packages added to the minimal base.
pub const PACKAGES: &[&str] = &["ca-certificates", "python3", "python3-pip", "python3-venv"];

/// Packages pip installs into the image's system Python (pinned, so the hash means something).
pub const PIP_PACKAGES: &[&str] = &["cloudpickle==3.1.3"];

/// The Debian mirror used when none is given (plain HTTP; apt verifies signatures itself).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Label holding [`Recipe::content_hash`]; `ensure` compares it to decide whether to build.
pub const LABEL_RECIPE_HASH: &str = "org.fleetmap.base.recipe-hash";
/// Label holding [`RECIPE_VERSION`].
pub const LABEL_RECIPE_VERSION: &str = "org.fleetmap.base.recipe-version";
/// Label holding the Debian release.
pub const LABEL_RELEASE: &str = "org.fleetmap.base.debian-release";
/// Label holding the Python version measured inside the built root filesystem (`3.11.2`).
pub const LABEL_PYTHON_VERSION: &str = "org.fleetmap.base.python-version";
/// Label holding the cloudpickle version measured inside the built root filesystem.
pub const LABEL_CLOUDPICKLE_VERSION: &str = "org.fleetmap.base.cloudpickle-version";

/// `PATH` inside the image (an imported image has no config, so it is set explicitly).
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The inputs of one base image build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// See [`RECIPE_VERSION`].
    pub version: String,
    /// See [`RELEASE`].
    pub release: String,
    /// See [`VARIANT`].
    pub variant: String,
    /// Debian packages passed to debootstrap's `--include`, kept sorted.
    pub packages: Vec<String>,
    /// pip requirement specifiers installed into the system Python, in install order.
    pub pip_packages: Vec<String>,
    /// Dockerfile instructions applied to the imported image besides the labels.
    pub config: Vec<String>,
}

/// What was measured inside a finished root filesystem; recorded as labels, not hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// `sys.version` up to the first space, e.g. `3.11.2`.
    pub python_version: String,
    /// `cloudpickle.__version__`.
    pub cloudpickle_version: String,
}

impl Default for Recipe {
    fn default() -> Self {
        Self::standard()
    }
}

impl Recipe {
    /// The recipe this version of fleetmap builds.
    pub fn standard() -> Self {
        let mut packages: Vec<String> = PACKAGES.iter().map(|p| (*p).to_owned()).collect();
        packages.sort();
        Self {
            version: RECIPE_VERSION.to_owned(),
            release: RELEASE.to_owned(),
            variant: VARIANT.to_owned(),
            packages,
            pip_packages: PIP_PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
            config: vec![
                format!("ENV PATH={IMAGE_PATH}"),
                "ENV LANG=C.UTF-8".to_owned(),
                r#"CMD ["python3"]"#.to_owned(),
            ],
        }
    }

    /// The text the content hash is taken over: one `key=length:value` line per input, so no
    /// two different recipes can produce the same text.
    pub fn canonical_text(&self) -> String {
        let mut lines = vec![
            ("recipe-version", self.version.as_str()),
            ("release", self.release.as_str()),
            ("variant", self.variant.as_str()),
        ];
        lines.extend(self.packages.iter().map(|p| ("package", p.as_str())));
        lines.extend(self.pip_packages.iter().map(|p| ("pip", p.as_str())));
        lines.extend(self.config.iter().map(|c| ("config", c.as_str())));
        let mut text = String::from("fleetmap-base-image\n");
        for (key, value) in lines {
            text.push_str(&format!("{key}={}:{value}\n", value.len()));
        }
        text
    }

    /// sha256 of [`Recipe::canonical_text`], lower-case hex.
    pub fn content_hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_text().as_bytes());
        format!("{digest:x}")
    }

    /// `fleetmap/base:<recipe version>`.
    pub fn default_tag(&self) -> String {
        format!("{REPOSITORY}:{}", self.version)
    }

    /// The labels the imported image carries.
    pub fn labels(&self, facts: &ImageFacts) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_RECIPE_HASH.to_owned(), self.content_hash()),
            (LABEL_RECIPE_VERSION.to_owned(), self.version.clone()),
            (LABEL_RELEASE.to_owned(), self.release.clone()),
            (
                LABEL_PYTHON_VERSION.to_owned(),
                facts.python_version.clone(),
            ),
            (
                LABEL_CLOUDPICKLE_VERSION.to_owned(),
                facts.cloudpickle_version.clone(),
            ),
        ])
    }

    /// The Dockerfile instructions passed to the import (`changes`): the image config and one
    /// `LABEL` per label, values quoted.
    pub fn import_changes(&self, facts: &ImageFacts) -> Vec<String> {
        let mut changes = self.config.clone();
        changes.extend(
            self.labels(facts)
                .into_iter()
                .map(|(key, value)| format!("LABEL {key}={}", quote(&value))),
        );
        changes
    }
}

/// Double-quotes a label value for a Dockerfile instruction.
fn quote(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ImageFacts {
        ImageFacts {
            python_version: "3.11.2".into(),
            cloudpickle_version: "3.1.3".into(),
        }
    }

    #[test]
    fn hash_is_stable_hex_and_deterministic() {
        let a = Recipe::standard().content_hash();
        let b = Recipe::standard().content_hash();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn every_input_changes_the_hash() {
        let base = Recipe::standard();
        let h = base.content_hash();
        let mut changed = Vec::new();
        let mut r = base.clone();
        r.version = "2".into();
        changed.push(r);
        let mut r = base.clone();
        r.release = "trixie".into();
        changed.push(r);
        let mut r = base.clone();
        r.variant = "buildd".into();
        changed.push(r);
        let mut r = base.clone();
        r.packages.push("curl".into());
        changed.push(r);
        let mut r = base.clone();
        r.pip_packages = vec!["cloudpickle==3.1.2".into()];
        changed.push(r);
        let mut r = base.clone();
        r.config.push("WORKDIR /srv".into());
        changed.push(r);
        for r in changed {
            assert_ne!(r.content_hash(), h, "{r:?} hashed like the standard recipe");
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = Recipe::standard();
        a.packages = vec!["ab".into(), "c".into()];
        let mut b = Recipe::standard();
        b.packages = vec!["a".into(), "bc".into()];
        assert_ne!(a.content_hash(), b.content_hash());
        let mut c = Recipe::standard();
        c.packages = vec!["a\npackage=1:b".into()];
        let mut d = Recipe::standard();
        d.packages = vec!["a".into(), "b".into()];
        assert_ne!(c.content_hash(), d.content_hash());
    }

    #[test]
    fn standard_recipe_is_what_the_docs_say() {
        let r = Recipe::standard();
        assert_eq!(r.default_tag(), format!("fleetmap/base:{RECIPE_VERSION}"));
        assert_eq!(r.release, "bookworm");
        assert_eq!(r.variant, "minbase");
        assert_eq!(
            r.packages,
            vec!["ca-certificates", "python3", "python3-pip", "python3-venv"]
        );
        assert!(r
            .pip_packages
            .iter()
            .any(|p| p.starts_with("cloudpickle==")));
    }

    #[test]
    fn labels_carry_hash_version_and_facts() {
        let r = Recipe::standard();
        let labels = r.labels(&facts());
        assert_eq!(labels[LABEL_RECIPE_HASH], r.content_hash());
        assert_eq!(labels[LABEL_RECIPE_VERSION], RECIPE_VERSION);
        assert_eq!(labels[LABEL_RELEASE], "bookworm");
        assert_eq!(labels[LABEL_PYTHON_VERSION], "3.11.2");
        assert_eq!(labels[LABEL_CLOUDPICKLE_VERSION], "3.1.3");
    }

    #[test]
    fn import_changes_hold_config_and_quoted_labels() {
        let r = Recipe::standard();
        let changes = r.import_changes(&facts());
        assert!(changes.contains(&format!("ENV PATH={IMAGE_PATH}")));
        assert!(changes.contains(&r#"CMD ["python3"]"#.to_owned()));
        assert!(changes.contains(&format!(
            "LABEL {LABEL_RECIPE_HASH}=\"{}\"",
            r.content_hash()
        )));
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}

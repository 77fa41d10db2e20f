//! An image reference split into repository and tag, as the import call wants them.

use std::fmt;

use crate::error::Error;

/// `repository:tag`, e.g. `fleetmap/base:1` or `registry.local:5000/fleetmap/base:dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Everything before the tag.
    pub repository: String,
    /// The tag (`latest` when the reference names none).
    pub tag: String,
}

impl ImageRef {
    /// Parses a reference; a digest (`@sha256:...`) is refused since an import cannot make one.
    pub fn parse(reference: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadReference {
            reference: reference.to_owned(),
            reason,
        };
        if reference.contains('@') {
            return Err(bad(
                "a digest cannot be given to an imported image; use a tag",
            ));
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, "latest"),
        };
        if repository.is_empty() || repository.ends_with('/') || repository.starts_with('/') {
            return Err(bad("the repository name is empty"));
        }
        let path = repository.rsplit_once('/').map_or(repository, |(_, p)| p);
        if !repository
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c))
            || path.is_empty()
        {
            return Err(bad(
                "a repository is lower-case letters, digits, '.', '_', '-' and '/'",
            ));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            return Err(bad(
                "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ));
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_repository_and_tag() {
        let r = ImageRef::parse("fleetmap/base:1").expect("valid");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_str()),
            ("fleetmap/base", "1")
        );
        assert_eq!(r.to_string(), "fleetmap/base:1");
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let r = ImageRef::parse("registry.local:5000/fleetmap/base").expect("valid");
        assert_eq!(r.repository, "registry.local:5000/fleetmap/base");
        assert_eq!(r.tag, "latest");
        let r = ImageRef::parse("registry.local:5000/fleetmap/base:dev-2").expect("valid");
        assert_eq!(r.repository, "registry.local:5000/fleetmap/base");
        assert_eq!(r.tag, "dev-2");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            ":1",
            "Fleetmap/base:1",
            "fleetmap/base:",
            "a/b@sha256:00",
            "x:-y",
            "/x:1",
        ] {
            assert!(
                matches!(ImageRef::parse(bad), Err(Error::BadReference { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}

//! Cloning a client's environment: which distributions the node's interpreter already has
//! (the rule for using it as is), and which requirements pip said it could not install.
//!
//! Rule: a clone is *satisfied* by an interpreter when every `name==version` the client sent
//! is installed there at exactly that version (names compared PEP 503-normalised). Then the
//! job runs on that interpreter with no build; otherwise the node builds the clone.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

/// How long listing an interpreter's distributions may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

const LIST_SCRIPT: &str = "import importlib.metadata as m, json\nprint(json.dumps([[d.metadata['Name'] or '', d.version] for d in m.distributions()]))";

/// PEP 503 normalisation: lower case, runs of `-`, `_`, `.` become one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Splits `name==version` (other requirement forms have no pinned version).
pub fn pin(requirement: &str) -> Option<(String, &str)> {
    let (name, version) = requirement.split_once("==")?;
    let version = version.trim();
    (!version.is_empty() && !name.trim().is_empty()).then(|| (normalize(name), version))
}

/// Distributions installed for an interpreter: normalised name → version.
pub type Installed = HashMap<String, String>;

/// Lists the distributions `python` sees.
pub async fn installed(python: &Path) -> Result<Installed, String> {
    let run = Command::new(python)
        .arg("-c")
        .arg(LIST_SCRIPT)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LIST_TIMEOUT, run)
        .await
        .map_err(|_| format!("listing {}'s distributions timed out", python.display()))?
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} could not list its distributions: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let pairs: Vec<(String, String)> =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    Ok(pairs
        .into_iter()
        .map(|(name, version)| (normalize(&name), version))
        .collect())
}

/// Whether every pinned requirement is installed at exactly its version (unpinned ones must
/// at least be installed).
pub fn satisfied(requirements: &[String], have: &Installed) -> bool {
    requirements.iter().all(|req| match pin(req) {
        Some((name, version)) => have.get(&name).map(String::as_str) == Some(version),
        None => have.contains_key(&normalize(
            req.split(|c: char| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .next()
                .unwrap_or(req),
        )),
    })
}

/// Requirements pip's log says it could not find, matched back to `requirements`.
pub fn uninstallable(log: &str, requirements: &[String]) -> Vec<String> {
    let markers = [
        "No matching distribution found for ",
        "Could not find a version that satisfies the requirement ",
    ];
    let mut names = Vec::new();
    for line in log.lines() {
        for marker in markers {
            if let Some(at) = line.find(marker) {
                let rest = &line[at + marker.len()..];
                let word = rest.split_whitespace().next().unwrap_or("");
                let name = normalize(
                    word.split(['=', '<', '>', '!', '~', '[', ';'])
                        .next()
                        .unwrap_or(""),
                );
                if !name.is_empty() {
                    names.push(name);
                }
            }
        }
    }
    let mut out: Vec<String> = requirements
        .iter()
        .filter(|req| {
            let name = pin(req).map(|(n, _)| n).unwrap_or_else(|| normalize(req));
            names.contains(&name)
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_pep_503() {
        assert_eq!(normalize("Typing_Extensions"), "typing-extensions");
        assert_eq!(normalize("a.-_b"), "a-b");
        assert_eq!(pin("Six==1.16.0"), Some(("six".into(), "1.16.0")));
        assert_eq!(pin("six>=1"), None);
    }

    #[test]
    fn a_clone_is_satisfied_only_by_exact_versions() {
        let have: Installed = [("six".to_string(), "1.16.0".to_string())].into();
        assert!(satisfied(&["six==1.16.0".into()], &have));
        assert!(satisfied(&["Six".into()], &have));
        assert!(!satisfied(&["six==1.15.0".into()], &have));
        assert!(!satisfied(&["attrs==23.1.0".into()], &have));
        assert!(satisfied(&[], &have));
    }

    #[test]
    fn pip_failures_name_the_requirement() {
        let log = "ERROR: Could not find a version that satisfies the requirement not-on-pypi==0.1 (from versions: none)\nERROR: No matching distribution found for not-on-pypi==0.1\n";
        let reqs = vec!["Not_On_PyPI==0.1".to_string(), "six==1.16.0".to_string()];
        assert_eq!(
            uninstallable(log, &reqs),
            vec!["Not_On_PyPI==0.1".to_string()]
        );
        assert!(uninstallable("all good", &reqs).is_empty());
    }
}

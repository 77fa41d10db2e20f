//! The debootstrap invocation that makes the bare Debian root filesystem.

use std::ffi::OsString;
use std::path::Path;

use tokio::process::Command;

use crate::recipe::{Recipe, IMAGE_PATH};

/// Proxy settings passed through to build steps that download (everything else is cleared, so
/// the host's own settings, such as pip's, cannot leak into the build).
pub const PASSTHROUGH_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// debootstrap's arguments for `recipe` into `target` from `mirror`, caching packages in
/// `cache_dir` (absolute, as debootstrap requires).
pub fn args(recipe: &Recipe, mirror: &str, cache_dir: &Path, target: &Path) -> Vec<OsString> {
    let mut cache = OsString::from("--cache-dir=");
    cache.push(cache_dir);
    vec![
        format!("--variant={}", recipe.variant).into(),
        format!("--include={}", recipe.packages.join(",")).into(),
        "--components=main".into(),
        cache,
        recipe.release.clone().into(),
        target.as_os_str().to_owned(),
        mirror.into(),
    ]
}

/// The debootstrap command, with a cleared environment.
pub fn command(
    debootstrap: &Path,
    recipe: &Recipe,
    mirror: &str,
    cache_dir: &Path,
    target: &Path,
) -> Command {
    let mut command = Command::new(debootstrap);
    command.args(args(recipe, mirror, cache_dir, target));
    clean_env(&mut command);
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// Clears `command`'s environment down to PATH, locale, HOME and [`PASSTHROUGH_ENV`].
pub fn clean_env(command: &mut Command) {
    command
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .env("LANG", "C.UTF-8")
        .env("HOME", "/root");
    for key in PASSTHROUGH_ENV {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_follow_the_recipe() {
        let args = args(
            &Recipe::standard(),
            "http://deb.debian.org/debian",
            Path::new("/w/debs"),
            Path::new("/w/rootfs.partial"),
        );
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(
            args,
            vec![
                "--variant=minbase",
                "--include=ca-certificates,python3,python3-pip,python3-venv",
                "--components=main",
                "--cache-dir=/w/debs",
                "bookworm",
                "/w/rootfs.partial",
                "http://deb.debian.org/debian",
            ]
        );
    }
}

//! What `func_gpu` means: the GPU model-name matching rules, shared by the daemon (which hands
//! out GPUs) and the coordinator (which picks nodes), so both always agree.
//!
//! # Matching rules
//!
//! A model name as NVML reports it (`NVIDIA A100-SXM4-80GB`, `NVIDIA H100 80GB HBM3`,
//! `Tesla V100-SXM2-16GB`) and the requested `func_gpu` (`A100`, `a100-80gb`, `H100`) are both
//! cut into **tokens**: lower-cased runs of letters and digits, split at every other character
//! (space, `-`, `_`, `/`, …).
//!
//! - Every token of the request that is not a memory size must **equal** a token of the name.
//!   `A100` matches `NVIDIA A100-SXM4-80GB` and `NVIDIA A100 80GB PCIe`; `H100` matches
//!   `NVIDIA H100 80GB HBM3`; `RTX 4090` and `4090` match `NVIDIA GeForce RTX 4090`. Tokens are
//!   never matched as substrings: `A10` does not match `NVIDIA A100-SXM4-80GB`, and `L40` does
//!   not match `NVIDIA L40S` (ask for `L40S`).
//! - A token that is a memory size (`80G`, `80GB`, `80GiB`, case-insensitive) narrows by
//!   memory: it matches when the name carries the same size as a token (`80GB` in
//!   `NVIDIA A100-SXM4-80GB`), or when the GPU's total memory is within 10 % below to 1 GiB
//!   above that many GiB (NVML reports less than the nominal size: an 80 GB H100 has
//!   79.6 GiB, a 24 GB A10 has 22.5 GiB). So `A100_80G` and `A100-80GB` match
//!   `NVIDIA A100-SXM4-80GB` but not `NVIDIA A100-SXM4-40GB`.
//! - A request needs at least one token that is not a memory size (`80GB` alone is refused),
//!   and at most one memory size.
//!
//! GPUs in MIG mode are listed by the daemon but never handed out as whole GPUs.

use std::collections::BTreeMap;

use thiserror::Error;

/// A parsed `func_gpu` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuModel {
    text: String,
    tokens: Vec<String>,
    memory_gib: Option<u32>,
}

/// Why a `func_gpu` value cannot name a model.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum GpuModelError {
    /// Empty or only separators.
    #[error("func_gpu must name a GPU model such as \"A100\" or \"H100\", not an empty string")]
    Empty,
    /// Only a memory size, no model.
    #[error("func_gpu={0:?} names only a memory size; name a model too, such as \"A100_80G\"")]
    OnlyMemory(String),
    /// Two memory sizes.
    #[error("func_gpu={0:?} names two memory sizes; keep one, such as \"A100_80G\"")]
    TwoMemorySizes(String),
}

impl GpuModel {
    /// Parses a `func_gpu` value under the rules in the module documentation.
    pub fn parse(text: &str) -> Result<Self, GpuModelError> {
        let mut tokens = Vec::new();
        let mut memory_gib = None;
        for token in tokens_of(text) {
            match memory_token(&token) {
                Some(_) if memory_gib.is_some() => {
                    return Err(GpuModelError::TwoMemorySizes(text.to_owned()));
                }
                Some(gib) => memory_gib = Some(gib),
                None => tokens.push(token),
            }
        }
        if tokens.is_empty() {
            return Err(if memory_gib.is_some() {
                GpuModelError::OnlyMemory(text.to_owned())
            } else {
                GpuModelError::Empty
            });
        }
        Ok(Self {
            text: text.to_owned(),
            tokens,
            memory_gib,
        })
    }

    /// The value as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a GPU named `name` (as NVML reports it) with `memory_bytes` of total memory is
    /// this model.
    pub fn matches(&self, name: &str, memory_bytes: u64) -> bool {
        let name_tokens = tokens_of(name);
        if !self.tokens.iter().all(|want| name_tokens.contains(want)) {
            return false;
        }
        let Some(want_gib) = self.memory_gib else {
            return true;
        };
        if name_tokens
            .iter()
            .any(|token| memory_token(token) == Some(want_gib))
        {
            return true;
        }
        // Within 10 % below to 1 GiB above the nominal size, in MiB to stay in integers.
        let have_mib = memory_bytes >> 20;
        let want_mib = u64::from(want_gib) << 10;
        have_mib * 10 >= want_mib * 9 && have_mib <= want_mib + 1024
    }
}

/// Lower-cased runs of ASCII letters and digits.
pub fn tokens_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|token| !token.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// `80g`, `80gb`, `80gib` → 80.
fn memory_token(token: &str) -> Option<u32> {
    let digits = token.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &token[digits.len()..];
    if digits.is_empty() || !matches!(unit, "g" | "gb" | "gib") {
        return None;
    }
    digits.parse().ok()
}

/// `NVIDIA H100 80GB HBM3 (×8), NVIDIA A10G (×1)`: each model name once with its count, the
/// most common first (then by name), or `no GPUs`.
pub fn describe_models<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    if counts.is_empty() {
        return "no GPUs".to_owned();
    }
    let mut models: Vec<(&str, usize)> = counts.into_iter().collect();
    models.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    models
        .iter()
        .map(|(name, count)| format!("{name} (×{count})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Real NVML names with their real total memory in MiB (from `nvidia-smi` on those cards).
    const CARDS: &[(&str, u64)] = &[
        ("NVIDIA A100-SXM4-80GB", 81920),
        ("NVIDIA A100-SXM4-40GB", 40960),
        ("NVIDIA A100 80GB PCIe", 81920),
        ("NVIDIA A100-PCIE-40GB", 40960),
        ("NVIDIA H100 80GB HBM3", 81559),
        ("NVIDIA H100 PCIe", 81559),
        ("NVIDIA H100 NVL", 95830),
        ("NVIDIA H200", 143771),
        ("NVIDIA GH200 480GB", 97871),
        ("NVIDIA A10", 23028),
        ("NVIDIA A10G", 23028),
        ("NVIDIA L4", 23034),
        ("NVIDIA L40S", 46068),
        ("Tesla T4", 15360),
        ("Tesla V100-SXM2-16GB", 16160),
        ("Tesla V100-SXM2-32GB", 32510),
        ("NVIDIA GeForce RTX 4090", 24564),
        ("NVIDIA RTX A6000", 49140),
    ];

    /// The names of `CARDS` that `query` matches.
    fn matching(query: &str) -> Vec<&'static str> {
        let model = GpuModel::parse(query).expect("parses");
        CARDS
            .iter()
            .filter(|(name, mib)| model.matches(name, mib * MIB))
            .map(|(name, _)| *name)
            .collect()
    }

    #[test]
    fn model_tokens_match_whole_tokens_only() {
        let table: &[(&str, &[&str])] = &[
            (
                "A100",
                &[
                    "NVIDIA A100-SXM4-80GB",
                    "NVIDIA A100-SXM4-40GB",
                    "NVIDIA A100 80GB PCIe",
                    "NVIDIA A100-PCIE-40GB",
                ],
            ),
            (
                "a100",
                &[
                    "NVIDIA A100-SXM4-80GB",
                    "NVIDIA A100-SXM4-40GB",
                    "NVIDIA A100 80GB PCIe",
                    "NVIDIA A100-PCIE-40GB",
                ],
            ),
            ("A10", &["NVIDIA A10"]),
            ("A10G", &["NVIDIA A10G"]),
            (
                "H100",
                &[
                    "NVIDIA H100 80GB HBM3",
                    "NVIDIA H100 PCIe",
                    "NVIDIA H100 NVL",
                ],
            ),
            ("H100 NVL", &["NVIDIA H100 NVL"]),
            ("H200", &["NVIDIA H200"]),
            ("GH200", &["NVIDIA GH200 480GB"]),
            ("L4", &["NVIDIA L4"]),
            ("L40", &[]),
            ("L40S", &["NVIDIA L40S"]),
            ("T4", &["Tesla T4"]),
            ("V100", &["Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"]),
            ("RTX 4090", &["NVIDIA GeForce RTX 4090"]),
            ("4090", &["NVIDIA GeForce RTX 4090"]),
            ("A6000", &["NVIDIA RTX A6000"]),
            ("B200", &[]),
            (
                "nvidia a100 pcie",
                &["NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-40GB"],
            ),
        ];
        for (query, want) in table {
            assert_eq!(matching(query), want.to_vec(), "func_gpu={query:?}");
        }
    }

    #[test]
    fn memory_sizes_narrow() {
        let a100_80 = ["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"];
        assert_eq!(matching("A100_80G"), a100_80);
        assert_eq!(matching("A100-80GB"), a100_80);
        assert_eq!(matching("a100 80gib"), a100_80);
        assert_eq!(
            matching("A100_40G"),
            ["NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"]
        );
        // By NVML's memory where the name carries no size.
        assert_eq!(
            matching("H100_80G"),
            ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"]
        );
        assert_eq!(matching("H100_94GB"), ["NVIDIA H100 NVL"]);
        assert_eq!(matching("H200_141G"), ["NVIDIA H200"]);
        assert_eq!(matching("A10_24G"), ["NVIDIA A10"]);
        assert_eq!(matching("T4_16G"), ["Tesla T4"]);
        assert_eq!(matching("V100-32GB"), ["Tesla V100-SXM2-32GB"]);
        assert_eq!(matching("V100_16G"), ["Tesla V100-SXM2-16GB"]);
        // The name's own size counts even where NVML reports another (GH200: 96 GiB of HBM).
        assert_eq!(matching("GH200_480GB"), ["NVIDIA GH200 480GB"]);
        assert!(matching("A100_24G").is_empty());
    }

    #[test]
    fn bad_requests_say_what_to_change() {
        assert_eq!(GpuModel::parse(""), Err(GpuModelError::Empty));
        assert_eq!(GpuModel::parse(" -_ "), Err(GpuModelError::Empty));
        let err = GpuModel::parse("80GB").expect_err("only memory");
        assert_eq!(
            err.to_string(),
            "func_gpu=\"80GB\" names only a memory size; name a model too, such as \"A100_80G\""
        );
        assert!(matches!(
            GpuModel::parse("A100 40G 80G"),
            Err(GpuModelError::TwoMemorySizes(_))
        ));
        let model = GpuModel::parse("A100_80G").expect("parses");
        assert_eq!(model.as_str(), "A100_80G");
    }

    #[test]
    fn tokens_and_memory_tokens() {
        assert_eq!(
            tokens_of("NVIDIA A100-SXM4-80GB"),
            ["nvidia", "a100", "sxm4", "80gb"]
        );
        assert_eq!(memory_token("80gb"), Some(80));
        assert_eq!(memory_token("80g"), Some(80));
        assert_eq!(memory_token("16gib"), Some(16));
        assert_eq!(memory_token("hbm3"), None);
        assert_eq!(memory_token("gb"), None);
        assert_eq!(memory_token("a100"), None);
        assert_eq!(memory_token("80tb"), None);
    }

    #[test]
    fn fleet_description_counts_models() {
        let names = [
            "NVIDIA H100 80GB HBM3",
            "NVIDIA A10G",
            "NVIDIA H100 80GB HBM3",
        ];
        assert_eq!(
            describe_models(names),
            "NVIDIA H100 80GB HBM3 (×2), NVIDIA A10G (×1)"
        );
        assert_eq!(describe_models([]), "no GPUs");
    }
}

//! What to record: which stages and layers, whether to keep tensors, and
//! which token positions. Parsed from the command line's `--stages`,
//! `--layers`, `--tensors` and `--positions`.

use std::collections::BTreeSet;

use crate::stage::{resolve_alias, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    All,
    /// Keep only the last token's slice of each saved tensor.
    Last,
}

#[derive(Debug, Clone)]
pub struct TracePlan {
    pub stages: BTreeSet<Stage>,
    /// `None`: every layer.
    pub layers: Option<BTreeSet<usize>>,
    pub tensors: bool,
    pub positions: Positions,
}

impl Default for TracePlan {
    fn default() -> Self {
        TracePlan { stages: Stage::ALL.into_iter().collect(), layers: None, tensors: false, positions: Positions::All }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("--stages: {0:?} matches no stage (stages: {1})")]
    NoSuchStage(String, String),
    #[error("--layers: {0:?} is not a layer number or range like 0-3")]
    BadLayers(String),
    #[error("--positions: {0:?} is not `all` or `last`")]
    BadPositions(String),
}

/// `*` matches any run of characters, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Parses `attn_norm,ffn_*,qkv_matmul` into stages.
pub fn parse_stages(spec: &str) -> Result<BTreeSet<Stage>, PlanError> {
    let mut out = BTreeSet::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let names: Vec<&str> = match resolve_alias(item) {
            Some(a) => a.to_vec(),
            None => vec![item],
        };
        let before = out.len();
        let mut matched = false;
        for n in names {
            for s in Stage::ALL {
                if glob_match(n, s.name()) {
                    out.insert(s);
                    matched = true;
                }
            }
        }
        if !matched && out.len() == before {
            let all: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
            return Err(PlanError::NoSuchStage(item.to_string(), all.join(", ")));
        }
    }
    Ok(out)
}

/// Parses `0-3,27` into layer numbers. Ranges are capped at 1,000,000
/// layers so a typo cannot allocate the world.
pub fn parse_layers(spec: &str) -> Result<BTreeSet<usize>, PlanError> {
    let mut out = BTreeSet::new();
    let bad = || PlanError::BadLayers(spec.to_string());
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
                if a > b || b - a > 1_000_000 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(item.parse().map_err(|_| bad())?);
            }
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

pub fn parse_positions(spec: &str) -> Result<Positions, PlanError> {
    match spec {
        "all" => Ok(Positions::All),
        "last" => Ok(Positions::Last),
        other => Err(PlanError::BadPositions(other.to_string())),
    }
}

impl TracePlan {
    pub fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.stages.contains(&stage)
            && match (layer, &self.layers) {
                (Some(l), Some(set)) => set.contains(&l),
                _ => true,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_aliases() {
        let s = parse_stages("ffn_*").unwrap();
        assert!(s.contains(&Stage::FfnGate) && s.contains(&Stage::FfnPostNorm) && !s.contains(&Stage::AttnOut));
        let s = parse_stages("qkv_matmul,lm_head").unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![Stage::QProj, Stage::KProj, Stage::VProj, Stage::Logits]);
        assert!(parse_stages("nonsense").is_err());
        assert!(glob_match("attn_*", "attn_probs") && !glob_match("attn_?", "attn_probs") && glob_match("*", ""));
    }

    #[test]
    fn layers() {
        assert_eq!(parse_layers("0-3,27").unwrap().into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 27]);
        assert!(parse_layers("3-1").is_err());
        assert!(parse_layers("0-999999999999").is_err());
        assert!(parse_layers("x").is_err());
        assert!(parse_layers("").is_err());
    }
}

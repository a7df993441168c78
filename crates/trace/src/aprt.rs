//! aprender's stage dumps (`apr trace --save-tensor`): a folder of APRT
//! files, `layer-N/<stage>.bin` for a layer's stages and `<stage>.bin` for
//! the model's, read as a trace to diff against another.
//!
//! An APRT file is 12 bytes of header (`APRT`, the layer as u32 or
//! 0xFFFFFFFF for the model's stages, the value count as u32) and the
//! values as little-endian f32. It holds no shape and no token ids, so a
//! dump is read against the trace it is compared with: each stage takes
//! that trace's shape where the counts agree, and its token ids where the
//! dump has as many tokens.
//!
//! aprender's stage names are those [`resolve_alias`] maps:
//! `qkv_matmul` (or `qkv_bias`, after the bias) is split per token into
//! `q_proj`, `k_proj` and `v_proj`; `lm_head` holds the last token's logits
//! only. `attn_scores` is not read: aprender writes 0 where the causal mask
//! is, plumb −∞, so the two never agree there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::file::{Trace, TraceError};
use crate::stage::{parse_key, resolve_alias, Stage};
use crate::stats::TensorStats;

const MAGIC: &[u8; 4] = b"APRT";
const HEADER: usize = 12;
const WHOLE_MODEL: u32 = u32::MAX;
/// More files than this in a dump folder is not a dump.
const MAX_FILES: usize = 100_000;

fn invalid(path: &Path, what: impl Into<String>) -> TraceError {
    TraceError::Invalid { path: path.to_path_buf(), what: what.into() }
}

/// Whether `dir` looks like an APRT dump: a folder with `layer-N`
/// subfolders or `.bin` files.
pub fn is_dump(dir: &Path) -> bool {
    dir.is_dir()
        && std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("layer-") || name.ends_with(".bin")
            })
        })
}

/// One file: its layer field and values.
fn read_file(path: &Path) -> Result<(u32, Vec<f32>), TraceError> {
    let bytes = std::fs::read(path).map_err(|e| TraceError::Io { path: path.to_path_buf(), source: e })?;
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(invalid(path, "not an APRT file (it does not start with \"APRT\" and a 12-byte header)"));
    }
    let layer = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let n = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let body = bytes.len() - HEADER;
    if n.checked_mul(4) != Some(body) {
        return Err(invalid(path, format!("the header says {n} values, the file holds {body} bytes after it")));
    }
    let values = bytes[HEADER..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((layer, values))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TraceError + '_ {
    move |source| TraceError::Io { path: path.to_path_buf(), source }
}

/// The dump's files: (layer or None, aprender's stage name, path).
fn files(dir: &Path) -> Result<Vec<(Option<usize>, String, PathBuf)>, TraceError> {
    let mut out = Vec::new();
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(layer) = name.strip_prefix("layer-").filter(|_| path.is_dir()) {
            let layer: usize =
                layer.parse().map_err(|_| invalid(&path, "a layer folder is named layer-N, N a number"))?;
            for e in std::fs::read_dir(&path).map_err(io(&path))? {
                let p = e.map_err(io(&path))?.path();
                if p.extension().is_some_and(|x| x == "bin") {
                    out.push((Some(layer), stem(&p), p));
                }
            }
        } else if path.extension().is_some_and(|x| x == "bin") {
            out.push((None, stem(&path), path));
        }
        if out.len() > MAX_FILES {
            return Err(invalid(dir, format!("more than {MAX_FILES} files: not an APRT dump")));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the dump in `dir` as a trace, shaped after `like` (the trace it
/// will be compared with). Stages `like` does not hold, or holds with
/// another count, are left out and named in `plumb.aprt_skipped`.
pub fn load_dump(dir: &Path, like: &Trace) -> Result<Trace, TraceError> {
    let all = files(dir)?;
    if all.is_empty() {
        return Err(invalid(dir, "no APRT files (layer-N/<stage>.bin or <stage>.bin)"));
    }
    let shape_of = |key: &str| like.stat(key).map(|s| s.shape.clone());
    let width = like.stat("embedding").and_then(|s| s.shape.last().copied());
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    let has_bias = all.iter().any(|(_, s, _)| s == "qkv_bias");
    for (layer_dir, stage, path) in &all {
        let (layer, values) = read_file(path)?;
        let expected = layer_dir.map_or(WHOLE_MODEL, |l| l as u32);
        if layer != expected {
            return Err(invalid(path, format!("the header names layer {layer}, its folder {expected}")));
        }
        let what = |why: &str| format!("{} ({why})", path.strip_prefix(dir).unwrap_or(path).display());
        // aprender writes the embedding with layer 0. Its count over the
        // other trace's width is the dump's token count: the ids are the
        // other trace's only when the counts agree.
        let layer = if stage == "embedding" { None } else { *layer_dir };
        if let (None, Some(width)) = (layer, width.filter(|_| stage == "embedding")) {
            let n = values.len();
            if n != width * like.tokens.len() {
                return Err(invalid(
                    dir,
                    format!(
                        "the dump's embedding holds {n} values, {:.2} tokens of the compared trace's width {width}, which has {} tokens: trace the prompt aprender traced (apr trace uses \"What is 2+2?\" with no BOS: -p \"What is 2+2?\" --no-bos)",
                        n as f64 / width as f64,
                        like.tokens.len()
                    ),
                ));
            }
        }
        if stage == "qkv_matmul" && has_bias || stage == "attn_scores" {
            skipped.push(what(if stage == "attn_scores" {
                "masked as 0, not −∞"
            } else {
                "qkv_bias read instead"
            }));
            continue;
        }
        let names: Vec<&str> = match stage.as_str() {
            "qkv_bias" => vec!["q_proj", "k_proj", "v_proj"],
            s => resolve_alias(s).map(|n| n.to_vec()).unwrap_or_else(|| vec![s]),
        };
        let stages: Option<Vec<Stage>> = names.iter().map(|n| Stage::from_name(n)).collect();
        let Some(stages) = stages.filter(|s| s.iter().all(|st| st.is_per_layer() == layer.is_some())) else {
            skipped.push(what("not a stage plumb traces"));
            continue;
        };
        let keys: Vec<String> = stages.iter().map(|s| s.key(layer)).collect();
        let Some(shapes) = keys.iter().map(|k| shape_of(k)).collect::<Option<Vec<_>>>() else {
            skipped.push(what("not in the trace compared against"));
            continue;
        };
        if let [key] = &keys[..] {
            let shape = &shapes[0];
            let n: usize = shape.iter().product();
            let row = shape.last().copied().unwrap_or(0);
            if n == values.len() {
                tensors.insert(key.clone(), (shape.clone(), values));
            } else if stages[0] == Stage::Logits && row == values.len() {
                // The last token's logits only.
                tensors.insert(key.clone(), (vec![1, row], values));
            } else {
                skipped.push(what(&format!("{} values, the trace's {key} has {n}", values.len())));
            }
            continue;
        }
        // [tokens, q | k | v] split per token.
        let widths: Vec<usize> = shapes.iter().map(|s| s.last().copied().unwrap_or(0)).collect();
        let tokens = shapes[0].first().copied().unwrap_or(0);
        let per_token: usize = widths.iter().sum();
        if shapes.iter().any(|s| s.len() != 2 || s[0] != tokens) || tokens * per_token != values.len() {
            skipped.push(what(&format!("{} values do not split into the trace's q, k and v", values.len())));
            continue;
        }
        let mut parts: Vec<Vec<f32>> = widths.iter().map(|w| Vec::with_capacity(tokens * w)).collect();
        for row in values.chunks_exact(per_token) {
            let mut at = 0;
            for (part, w) in parts.iter_mut().zip(&widths) {
                part.extend_from_slice(&row[at..at + w]);
                at += w;
            }
        }
        for ((key, shape), part) in keys.into_iter().zip(shapes).zip(parts) {
            tensors.insert(key, (shape, part));
        }
    }
    if tensors.is_empty() {
        return Err(invalid(
            dir,
            format!("no stage of the dump matches the trace compared against: {}", skipped.join(", ")),
        ));
    }
    let mut stats = Vec::new();
    for (key, (shape, data)) in &tensors {
        let axis = parse_key(key).map(|(s, _)| s.token_axis()).unwrap_or(0);
        stats.push((key.clone(), TensorStats::compute(data, shape, axis)));
    }
    let tokens = like.tokens.clone();
    let mut meta = BTreeMap::new();
    meta.insert("plumb.engine".into(), "aprender (APRT dump)".into());
    meta.insert("plumb.arch".into(), like.arch().to_string());
    meta.insert("plumb.aprt_dir".into(), dir.display().to_string());
    meta.insert(
        "plumb.aprt_note".into(),
        "APRT files hold no shapes or token ids: both are the compared trace's, where the counts agree".into(),
    );
    if !skipped.is_empty() {
        meta.insert("plumb.aprt_skipped".into(), skipped.join("; "));
    }
    let mut t = Trace { meta, tokens, stats, tensors, spilled: None };
    t.sort();
    Ok(t)
}

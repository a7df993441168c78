//! `plumb inspect MODEL`: what a model file holds and whether plumb can run it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use plumb_formats::gguf::Value;
use plumb_model::config::RopeScaling;
use plumb_model::weights::validate;
use plumb_model::{ModelConfig, ModelSource};
use serde_json::json;

use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a HuggingFace model folder (config.json + safetensors).
    pub model: PathBuf,
    /// Print one JSON document instead of the report.
    #[arg(long)]
    pub json: bool,
    /// List every metadata key (arrays summarised); the default shows the non-tokenizer keys.
    #[arg(long)]
    pub all_metadata: bool,
}

struct Row {
    name: String,
    shape: Vec<usize>,
    ty: String,
    bytes: u64,
    offset: Option<u64>,
}

struct TokenizerInfo {
    kind: String,
    vocab: Option<usize>,
    bos: Option<u64>,
    eos: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let src = ModelSource::open(&args.model).with_context(|| format!("cannot open {}", args.model.display()))?;
    let (format, file_size, rows, metadata, tok) = describe(&src)?;
    let config = ModelConfig::from_source(&src);
    let problems = match &config {
        Ok(cfg) => validate(&src, cfg).iter().map(|p| p.to_string()).collect(),
        Err(e) => vec![format!("{e}")],
    };
    let valid = problems.is_empty();
    let unused = config.as_ref().map(|c| plumb_model::weights::unused_tensors(&src, c)).unwrap_or_default();
    let unused_keys = config.as_ref().map(|c| plumb_model::weights::unused_metadata(&src, c)).unwrap_or_default();

    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    let mut params = 0u64;
    for r in &rows {
        let n: u64 = r.shape.iter().map(|&d| d as u64).product();
        params += n;
        let e = by_type.entry(r.ty.clone()).or_default();
        e.0 += 1;
        e.1 += r.bytes;
        e.2 += n;
    }

    if args.json {
        let cfg_json = config.as_ref().ok().map(|c| {
            json!({
                "arch": c.arch.name(), "layers": c.n_layer, "embedding": c.d, "heads": c.n_head,
                "kv_heads": c.n_head_kv, "head_dim": c.head_dim, "ffn": c.ff, "vocab": c.vocab,
                "context": c.ctx_len, "rms_eps": c.rms_eps, "rope_theta": c.rope_theta,
                "rope_theta_local": c.rope_theta_local, "rope_scaling": c.rope_scaling.describe(),
                "rope_scaling_local": c.rope_scaling_local.describe(), "sliding_window": c.sliding_window,
                "sliding_layers": c.layer_sliding.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect::<Vec<_>>(),
                "qkv_bias": c.qkv_bias, "qk_norm": c.qk_norm, "qk_norm_whole": c.qk_norm_whole,
                "pre_norms": c.pre_norms, "post_norms": c.post_norms,
                "embed_scale": c.embed_scale, "activation": format!("{:?}", c.act), "attn_scale": c.attn_scale,
                "attn_softcap": c.attn_softcap, "final_softcap": c.final_softcap, "tied_output": c.tied_output,
                "experts": c.moe.as_ref().map(|m| json!({
                    "count": m.experts, "used": m.used, "ffn": m.ff, "shared_ffn": m.shared_ff,
                    "renormalized": m.norm_weights,
                })),
            })
        });
        let doc = json!({
            "path": args.model.display().to_string(),
            "format": format,
            "file_size": file_size,
            "config": cfg_json,
            "tokenizer": { "kind": tok.kind, "vocab": tok.vocab, "bos": tok.bos, "eos": tok.eos },
            "metadata": metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "tensors": rows.iter().map(|r| json!({
                "name": r.name, "shape": r.shape, "type": r.ty, "bytes": r.bytes, "offset": r.offset,
            })).collect::<Vec<_>>(),
            "by_type": by_type.iter().map(|(t, (n, b, e))| (t.clone(), json!({"tensors": n, "bytes": b, "elements": e}))).collect::<serde_json::Map<_, _>>(),
            "tensor_count": rows.len(),
            "parameters": params,
            "valid": valid,
            "problems": problems,
            "unused_tensors": unused,
            "unused_metadata": unused_keys,
        });
        out::print(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
    } else {
        let mut s = String::new();
        writeln!(s, "model       {}", args.model.display())?;
        writeln!(s, "format      {format}, {} ({file_size} bytes)", out::bytes(file_size))?;
        match &config {
            Ok(c) => {
                writeln!(s, "arch        {}", c.arch.name())?;
                writeln!(
                    s,
                    "shape       {} layers · d {} · {} heads ({} kv) · head dim {} · ffn {} · vocab {} · context {}",
                    c.n_layer, c.d, c.n_head, c.n_head_kv, c.head_dim, c.ff, c.vocab, c.ctx_len
                )?;
                let sliding: Vec<String> =
                    c.layer_sliding.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i.to_string()).collect();
                writeln!(
                    s,
                    "attention   rope base {} (local {}){} · scale {:.6} · window {} on layers [{}]{}",
                    c.rope_theta,
                    c.rope_theta_local,
                    match (&c.rope_scaling, &c.rope_scaling_local) {
                        (RopeScaling::None, RopeScaling::None) => String::new(),
                        (g, l) if g == l => format!(" · scaling {}", g.describe()),
                        (g, l) => format!(" · scaling {} (local {})", g.describe(), l.describe()),
                    },
                    c.attn_scale,
                    c.sliding_window.map(|w| w.to_string()).unwrap_or_else(|| "none".into()),
                    sliding.join(","),
                    c.attn_softcap.map(|v| format!(" · softcap {v}")).unwrap_or_default(),
                )?;
                let mut quirks = vec![format!("{:?}", c.act), format!("rms eps {:e}", c.rms_eps)];
                if c.qkv_bias {
                    quirks.push("qkv bias".into());
                }
                if c.qk_norm {
                    quirks.push(if c.qk_norm_whole { "q/k norm (whole rows)" } else { "q/k norm" }.into());
                }
                if !c.pre_norms {
                    quirks.push("no pre-norms".into());
                }
                if c.post_norms {
                    quirks.push("post norms".into());
                }
                if c.embed_scale != 1.0 {
                    quirks.push(format!("embedding × {:.4}", c.embed_scale));
                }
                if c.tied_output {
                    quirks.push("tied output".into());
                }
                if let Some(v) = c.final_softcap {
                    quirks.push(format!("final softcap {v}"));
                }
                writeln!(s, "details     {}", quirks.join(" · "))?;
                if let Some(m) = &c.moe {
                    let shared = m.shared_ff.map(|f| format!(" · shared expert ffn {f}")).unwrap_or_default();
                    let norm = if m.norm_weights { "renormalized" } else { "as routed" };
                    writeln!(
                        s,
                        "experts     {} per layer · {} per token (weights {norm}) · expert ffn {}{shared}",
                        m.experts, m.used, m.ff
                    )?;
                }
            }
            Err(e) => writeln!(s, "arch        not runnable: {e}")?,
        }
        let id = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            s,
            "tokenizer   {} · {} tokens · bos {} · eos {}",
            tok.kind,
            tok.vocab.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            id(tok.bos),
            id(tok.eos)
        )?;
        if !metadata.is_empty() {
            writeln!(s, "\nmetadata")?;
            for (k, v) in &metadata {
                if args.all_metadata || !k.starts_with("tokenizer.") {
                    writeln!(s, "  {k:<44} {}", v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))?;
                }
            }
        }
        writeln!(s, "\ntensors ({})", rows.len())?;
        let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
        writeln!(s, "  {:<w$}  {:<16} {:<7} {:>12} {:>12}", "name", "shape", "type", "bytes", "offset")?;
        for r in &rows {
            let shape = format!("{:?}", r.shape);
            let off = r.offset.map(|o| o.to_string()).unwrap_or_else(|| "-".into());
            writeln!(s, "  {:<w$}  {:<16} {:<7} {:>12} {:>12}", r.name, shape, r.ty, r.bytes, off)?;
        }
        writeln!(s, "\nby type")?;
        for (t, (n, b, e)) in &by_type {
            writeln!(s, "  {t:<7} {n:>4} tensors {:>12} {:>10} params", out::bytes(*b), out::count(*e))?;
        }
        writeln!(s, "\nparameters  {} ({params})", out::count(params))?;
        if valid {
            writeln!(s, "verdict     valid: every tensor the architecture needs is present with the right shape")?;
            for (what, names) in [("tensor(s)", &unused), ("metadata key(s)", &unused_keys)] {
                if !names.is_empty() {
                    writeln!(s, "  but {} {what} in the file are not read by plumb:", names.len())?;
                    for n in names {
                        writeln!(s, "  - {n}")?;
                    }
                }
            }
        } else {
            writeln!(s, "verdict     INVALID ({} problems)", problems.len())?;
            for p in &problems {
                writeln!(s, "  - {p}")?;
            }
        }
        out::print(&s)?;
    }
    Ok(if valid { Outcome::Ok } else { Outcome::GateFailed })
}

type Described = (String, u64, Vec<Row>, Vec<(String, serde_json::Value)>, TokenizerInfo);

fn describe(src: &ModelSource) -> anyhow::Result<Described> {
    match src {
        ModelSource::Gguf(g) => {
            let rows = g
                .tensors
                .iter()
                .map(|t| Row {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    ty: t.ty.to_string(),
                    bytes: t.n_bytes,
                    offset: Some(t.start),
                })
                .collect();
            let metadata = g
                .metadata()
                .iter()
                .map(|(k, v)| {
                    let j = match v {
                        Value::Array(a) if a.len() > 16 => serde_json::Value::String(v.summary()),
                        _ => v.to_json(),
                    };
                    (k.clone(), j)
                })
                .collect();
            let tok = TokenizerInfo {
                kind: g.str_opt("tokenizer.ggml.model")?.unwrap_or("none").to_string(),
                vocab: g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len()),
                bos: g.u64_opt("tokenizer.ggml.bos_token_id")?,
                eos: g.u64_opt("tokenizer.ggml.eos_token_id")?,
            };
            Ok((format!("GGUF v{}", g.version), g.file_size(), rows, metadata, tok))
        }
        ModelSource::Hf(h) => {
            let rows = h
                .tensors
                .values()
                .map(|t| Row {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    ty: t.ty.to_string(),
                    bytes: (t.end - t.start) as u64,
                    offset: None,
                })
                .collect();
            let tok_path = h.dir.join("tokenizer.json");
            let tok = if tok_path.is_file() {
                let text = std::fs::read(&tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
                let j: serde_json::Value =
                    serde_json::from_slice(&text).with_context(|| format!("{}: not valid JSON", tok_path.display()))?;
                let kind = j["model"]["type"].as_str().unwrap_or("unknown").to_string();
                let vocab = j["model"]["vocab"]
                    .as_object()
                    .map(|v| v.len())
                    .or_else(|| j["model"]["vocab"].as_array().map(|v| v.len()));
                TokenizerInfo { kind: format!("tokenizer.json ({kind})"), vocab, bos: None, eos: None }
            } else {
                TokenizerInfo { kind: "none".into(), vocab: None, bos: None, eos: None }
            };
            let cfg = &h.config;
            let ids = |k: &str| cfg.get(k).and_then(|v| v.as_u64());
            let tok = TokenizerInfo { bos: ids("bos_token_id"), eos: ids("eos_token_id"), ..tok };
            let metadata = vec![("config.json".to_string(), cfg.clone())];
            Ok((format!("safetensors, {} shard(s)", h.shard_paths.len()), h.total_file_size(), rows, metadata, tok))
        }
        ModelSource::Apr(a) => {
            let rows = a
                .header
                .tensors
                .iter()
                .map(|t| Row {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    ty: t.ty.name().to_string(),
                    bytes: t.len,
                    offset: Some(t.start),
                })
                .collect();
            // Long arrays (the vocabulary, merges) are summarized as GGUF's are.
            let metadata = a
                .header
                .metadata
                .iter()
                .map(|(k, v)| {
                    let j = match v {
                        serde_json::Value::Array(items) if items.len() > 16 => {
                            serde_json::Value::String(format!("[{} items]", items.len()))
                        }
                        _ => v.clone(),
                    };
                    (k.clone(), j)
                })
                .collect();
            let id = |k: &str| a.get(k).and_then(|v| v.as_u64());
            let kind = ["tokenizer.model", "tokenizer.model_type"].iter().find_map(|k| a.get(k)?.as_str());
            let tok = TokenizerInfo {
                kind: kind.unwrap_or("none").to_string(),
                vocab: a.get("tokenizer.vocabulary").and_then(|v| v.as_array()).map(|v| v.len()),
                bos: id("tokenizer.bos_token_id"),
                eos: id("tokenizer.eos_token_id"),
            };
            let h = &a.header;
            let footer = match h.footer {
                plumb_formats::apr::Footer::Verified => "footer checksum verified",
                plumb_formats::apr::Footer::Absent => "no footer checksum",
            };
            let format = format!(
                "APR v{}.{}, flags {:#06x}, header checksum verified, {footer}",
                h.version.0, h.version.1, h.flags
            );
            Ok((format, a.file_size(), rows, metadata, tok))
        }
    }
}

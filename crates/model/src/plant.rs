//! Planted bugs: a copy of a GGUF model with one realistic mistake of the
//! kind converters, quantizers and hand-edited metadata produce, so that the
//! diff tools can be shown to name it (and users can check their own
//! pipeline the same way). Optionally every matrix is first requantized to
//! one type with plumb's quantizers, so the copy also differs by design.
//!
//! Spec: `KIND[:TARGET[,TARGET2]]`. Kinds:
//! - weights: `swap:A,B` (two tensors' contents exchanged), `permute-rope:T`
//!   (rows of each head laid out as interleaved rotary pairs), `shift-rows:T`
//!   (row r holds row r+1), `transpose:T` (the data written transposed, the
//!   shape kept), `block-scale:T` (one block's scale ×8), `scale:T` (every
//!   block's scale ×2), `zero:T`, `offset:T` (a norm's stored weights −1:
//!   the gemma +1 dropped), `offset+:T` (+1: applied twice),
//!   `requant:P,TYPE` (every matrix named P or P.* requantized to TYPE: with
//!   `--requant` for the rest, one layer quantized more coarsely);
//! - metadata: `rope-base`, `rope-local-base`, `rms-eps`, `window`,
//!   `attn-scale`, `all-global`, `softcap`;
//! - tokenizer: `no-bos`, `bos-id`, `vocab-swap`;
//! - `none`: a clean copy (with a requantization, the noisy side alone).
//!
//! Tensor targets are GGUF names without `.weight` (`blk.9.ffn_gate`).

use std::path::Path;

use plumb_formats::gguf::{GgufFile, Value};
use plumb_formats::writer::GgufWriter;
use plumb_quant::blocks::{f16_to_f32, f32_to_f16};
use plumb_quant::GgmlType;

/// The catalogue used by the tests and `plumb plant --list`: every kind at
/// targets where it is realistic for Gemma 3 270M's layout.
pub const CATALOGUE: &[&str] = &[
    "swap:blk.9.ffn_gate,blk.9.ffn_up",
    "swap:blk.2.ffn_gate,blk.2.ffn_up",
    "swap:blk.14.attn_q_norm,blk.14.attn_k_norm",
    "permute-rope:blk.4.attn_q",
    "permute-rope:blk.11.attn_k",
    "shift-rows:blk.5.ffn_up",
    "shift-rows:token_embd",
    "transpose:blk.13.ffn_gate",
    "transpose:blk.16.ffn_up",
    "block-scale:blk.3.ffn_down",
    "block-scale:blk.6.attn_output",
    "block-scale:blk.10.ffn_gate",
    "block-scale:blk.1.attn_v",
    "scale:blk.8.attn_v",
    "scale:blk.12.ffn_down",
    "zero:blk.6.attn_norm",
    "zero:blk.1.ffn_norm",
    "zero:blk.8.post_attention_norm",
    "zero:blk.10.attn_q_norm",
    "offset:blk.7.attn_norm",
    "offset:blk.12.post_ffw_norm",
    "offset:output_norm",
    "offset+:blk.15.attn_k_norm",
    "rope-base",
    "rope-local-base",
    "rms-eps",
    "window",
    "attn-scale",
    "all-global",
    "softcap",
    "no-bos",
    "bos-id",
    "vocab-swap",
];

/// A tensor being rewritten: shape, type and bytes.
struct T {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl T {
    fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }
    fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    fn row_bytes(&self) -> usize {
        self.cols() / self.ty.block_elems() * self.ty.block_bytes()
    }
    fn f32s(&self) -> Result<Vec<f32>, String> {
        let mut v = vec![0f32; self.shape.iter().product()];
        plumb_quant::dequantize(self.ty, &self.data, &mut v).map_err(|e| format!("{}: {e}", self.name))?;
        Ok(v)
    }
    fn set_f32s(&mut self, v: &[f32]) -> Result<(), String> {
        self.data = plumb_quant::quantize(self.ty, v).map_err(|e| format!("{}: {e}", self.name))?;
        Ok(())
    }
    /// Multiplies the scale of block `b` (the f16 `d` and, for K-quants with
    /// minimums, `dmin`) by `f`.
    fn scale_block(&mut self, b: usize, f: f32) -> Result<(), String> {
        let bb = self.ty.block_bytes();
        if (b + 1) * bb > self.data.len() {
            return Err(format!("{}: has no block {b}", self.name));
        }
        let offsets: &[usize] = match self.ty {
            // Block layouts: ggml's block_q*_0/1 start with d; the K-quants
            // with scales and minimums start with d, dmin (q2_K ends with them).
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 => &[0],
            GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q6_K => &[208],
            GgmlType::Q3_K => &[108],
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                // A float tensor has no scales: scale a 32-element run instead.
                let mut v = self.f32s()?;
                let n = v.len();
                v[(b * 32).min(n)..((b + 1) * 32).min(n)].iter_mut().for_each(|x| *x *= f);
                return self.set_f32s(&v);
            }
            other => return Err(format!("{}: no block scale layout known for {other}", self.name)),
        };
        let blk = &mut self.data[b * bb..(b + 1) * bb];
        for &o in offsets {
            let d = f16_to_f32([blk[o], blk[o + 1]]) * f;
            blk[o..o + 2].copy_from_slice(&f32_to_f16(d));
        }
        Ok(())
    }
}

fn find<'a>(ts: &'a mut [T], target: &str) -> Result<&'a mut T, String> {
    let name = if target.ends_with(".weight") { target.to_string() } else { format!("{target}.weight") };
    ts.iter_mut().find(|t| t.name == name).ok_or_else(|| format!("the model has no tensor {name}"))
}

fn set(w: &mut GgufWriter, g: &GgufFile, key: &str, v: Value) -> Result<(), String> {
    let arch = g.arch().ok_or("the model has no general.architecture")?;
    let key = key.replace("{arch}", arch);
    w.set(key, v);
    Ok(())
}

/// Writes to `out` a copy of the GGUF `src` with the bug `spec` planted,
/// after requantizing every matrix to `requant` where given (tensors whose
/// rows that type cannot hold keep their type).
pub fn plant(src: &Path, out: &Path, spec: &str, requant: Option<GgmlType>) -> Result<(), String> {
    let g = GgufFile::open(src).map_err(|e| e.to_string())?;
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k.clone(), v.clone());
    }
    let mut ts: Vec<T> = Vec::with_capacity(g.tensors.len());
    for info in &g.tensors {
        let view = g.view(info);
        let mut t = T { name: info.name.clone(), shape: info.shape.clone(), ty: info.ty, data: view.data.to_vec() };
        if let Some(ty) = requant {
            if t.shape.len() == 2 && t.ty != ty && t.cols().is_multiple_of(ty.block_elems()) {
                let v = t.f32s()?;
                t.ty = ty;
                t.set_f32s(&v)?;
            }
        }
        ts.push(t);
    }
    let (kind, target) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "swap" => {
            let (x, y) = target.split_once(',').ok_or("swap needs two tensors: swap:A,B")?;
            let a = find(&mut ts, x)?;
            let (ad, aty) = (std::mem::take(&mut a.data), a.ty);
            let b = find(&mut ts, y)?;
            let (bd, bty) = (std::mem::replace(&mut b.data, ad), b.ty);
            b.ty = aty;
            let a = find(&mut ts, x)?;
            a.data = bd;
            a.ty = bty;
        }
        "permute-rope" => {
            let hd = g.arch_get("attention.key_length").and_then(|v| v.as_u64()).unwrap_or(128) as usize;
            let t = find(&mut ts, target)?;
            if hd < 2 || !t.rows().is_multiple_of(hd) {
                return Err(format!("{}: {} rows are not whole heads of {hd}", t.name, t.rows()));
            }
            let rb = t.row_bytes();
            let old = t.data.clone();
            for r in 0..t.rows() {
                let (h, i) = (r / hd, r % hd);
                let src = if i % 2 == 0 { i / 2 } else { hd / 2 + i / 2 };
                let s = (h * hd + src) * rb;
                t.data[r * rb..(r + 1) * rb].copy_from_slice(&old[s..s + rb]);
            }
        }
        "shift-rows" => {
            let t = find(&mut ts, target)?;
            let rb = t.row_bytes();
            let n = t.data.len();
            t.data.copy_within(rb..n, 0);
        }
        "transpose" => {
            let t = find(&mut ts, target)?;
            let (rows, cols) = (t.rows(), t.cols());
            let v = t.f32s()?;
            let tr: Vec<f32> = (0..rows * cols).map(|i| v[(i % rows) * cols + i / rows]).collect();
            t.set_f32s(&tr)?;
        }
        "block-scale" => {
            let t = find(&mut ts, target)?;
            // A block in the middle of the tensor, as a bit flip or a bad
            // write would leave.
            let nb = t.data.len() / t.ty.block_bytes();
            t.scale_block(nb / 2 + 1, 8.0)?;
        }
        "scale" => {
            let t = find(&mut ts, target)?;
            for b in 0..t.data.len() / t.ty.block_bytes() {
                t.scale_block(b, 2.0)?;
            }
        }
        "zero" | "offset" | "offset+" => {
            let t = find(&mut ts, target)?;
            let mut v = t.f32s()?;
            match kind {
                "zero" => v.iter_mut().for_each(|x| *x = 0.0),
                "offset" => v.iter_mut().for_each(|x| *x -= 1.0),
                _ => v.iter_mut().for_each(|x| *x += 1.0),
            }
            t.set_f32s(&v)?;
        }
        "requant" => {
            let (prefix, ty) = target.split_once(',').ok_or("requant needs tensors and a type: requant:blk.7,q4_0")?;
            let ty = GgmlType::from_name(ty).ok_or_else(|| format!("requant: unknown type {ty:?}"))?;
            let mut hit = false;
            for t in ts
                .iter_mut()
                .filter(|t| t.name == format!("{prefix}.weight") || t.name.starts_with(&format!("{prefix}.")))
            {
                if t.shape.len() == 2 && t.cols().is_multiple_of(ty.block_elems()) {
                    let v = t.f32s()?;
                    t.ty = ty;
                    t.set_f32s(&v)?;
                    hit = true;
                }
            }
            if !hit {
                return Err(format!("requant: no matrix named {prefix} or {prefix}.* that {ty} can hold"));
            }
        }
        "rope-base" => set(&mut w, &g, "{arch}.rope.freq_base", Value::F32(10000.0))?,
        "rope-local-base" => set(&mut w, &g, "{arch}.rope.local.freq_base", Value::F32(1_000_000.0))?,
        "rms-eps" => set(&mut w, &g, "{arch}.attention.layer_norm_rms_epsilon", Value::F32(1e-5))?,
        "window" => set(&mut w, &g, "{arch}.attention.sliding_window", Value::U32(128))?,
        "attn-scale" => set(&mut w, &g, "{arch}.attention.query_pre_attn_scalar", Value::U32(640))?,
        "all-global" => {
            let n = g.arch_get("block_count").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            set(&mut w, &g, "{arch}.attention.sliding_window_pattern", Value::Array(vec![Value::Bool(false); n]))?
        }
        "softcap" => set(&mut w, &g, "{arch}.final_logit_softcapping", Value::F32(30.0))?,
        // A clean copy: with a requantization, the "differs by design" side alone.
        "none" => {}
        "no-bos" => {
            w.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        }
        "bos-id" => {
            w.set("tokenizer.ggml.bos_token_id", Value::U32(1));
        }
        "vocab-swap" => {
            let tokens = g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .ok_or("the model has no tokenizer.ggml.tokens")?;
            let pos = |s: &str| tokens.iter().position(|t| t.as_str() == Some(s));
            let (i, j) = match (pos("▁the"), pos("▁of")) {
                (Some(i), Some(j)) => (i, j),
                _ => (tokens.len() / 2, tokens.len() / 2 + 1),
            };
            let mut tokens = tokens.to_vec();
            tokens.swap(i, j);
            w.set("tokenizer.ggml.tokens", Value::Array(tokens));
        }
        other => return Err(format!("unknown bug kind {other:?}; `plumb plant --list` shows them")),
    }
    for t in ts {
        w.add_raw(t.name, &t.shape, t.ty, t.data)?;
    }
    w.write(out).map_err(|e| e.to_string())
}

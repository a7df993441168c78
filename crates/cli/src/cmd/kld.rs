//! `plumb kld A [B] -f corpus`: how far A's next-token distributions are
//! from B's over a corpus — KL divergence, the change in the probability of
//! the right token, how often the top token is the same, and the perplexity
//! of both — as llama-perplexity's `--kl-divergence` reports them, plus the
//! divergence along the position in the chunk and the worst tokens.
//!
//! B is another model, A's model at `--b-precision`, or a base file
//! (`--base`) in llama-perplexity's format: `--save-base` writes one from A,
//! and either tool reads the other's. The file holds, per scored token, B's
//! log-probabilities quantized to 16 bits (a scale and an offset per row),
//! as llama-perplexity's `--kl-divergence-base` writes them; A in memory
//! against B goes through the same quantization, so both ways agree.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use plumb_model::hybrid::Side;
use plumb_model::kernels::kernels_for;
use plumb_model::{Model, Precision};
use serde_json::json;

use crate::cmd::attribute::{self, Attribution};
use crate::cmd::common::{check_output, load, parse_precision, ModelArgs, RunChoice};
use crate::cmd::ppl::{sum_exp, Corpus, CorpusArgs, Tokenized};
use crate::progress::bar;
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// A: the model judged (a GGUF file or a HuggingFace folder), at --precision.
    #[arg(required_unless_present = "merge")]
    pub a: Option<PathBuf>,
    /// B: the reference model (default: A's model, at --b-precision).
    pub b: Option<PathBuf>,
    /// A's arithmetic: `fast` (the default) or `exact`.
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// Threads (default: all cores). Results do not depend on it.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// B's arithmetic (default: exact when B is A's model or with
    /// --attribute, else fast). B computes with --kv-type, --flash-attn
    /// and --repack when it is another model at A's precision, else with
    /// its precision's `auto`.
    #[arg(long, value_parser = parse_precision)]
    pub b_precision: Option<Precision>,
    // A's settings; B's too when B is another model at A's precision.
    #[command(flatten)]
    pub settings: RunChoice,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// B is this base file (llama-perplexity's `--kl-divergence-base`
    /// format); its tokens are the corpus, so -f is not needed.
    #[arg(long, conflicts_with_all = ["b", "b_precision", "save_base"])]
    pub base: Option<PathBuf>,
    /// Write A's log-probabilities over the corpus as a base file, for
    /// `plumb kld --base` or `llama-perplexity --kl-divergence`.
    #[arg(long, conflicts_with_all = ["b", "b_precision"])]
    pub save_base: Option<PathBuf>,
    /// Score only the I-th of N equal slices of the chunks (e.g. `2/4`)
    /// and write a partial result to --partial, for `--merge`.
    #[arg(long, value_parser = parse_shard, requires = "partial", conflicts_with = "save_base")]
    pub shard: Option<(usize, usize)>,
    /// Where --shard writes its partial result (JSON).
    #[arg(long, requires = "shard")]
    pub partial: Option<PathBuf>,
    /// Merge the partial results of every shard into the one report a
    /// single pass gives (no model is run, so no A is needed).
    #[arg(long, num_args = 1.., conflicts_with_all = ["base", "save_base", "shard", "b", "b_precision"])]
    pub merge: Vec<PathBuf>,
    /// Attribute the divergence to the units of the forward pass: each
    /// layer's attention and feed-forward halves, the embedding and the
    /// head, each run alone by A on B's input inside B's pass, ranked by
    /// the divergence it makes. B must be a model, run exact; about L + 2
    /// more passes per chunk for L layers.
    #[arg(long, conflicts_with_all = ["base", "save_base", "shard", "merge"])]
    pub attribute: bool,
    /// Also write the report as one self-contained HTML page.
    #[arg(long, conflicts_with_all = ["save_base", "shard"])]
    pub html: Option<PathBuf>,
    /// Overwrite an existing --save-base, --partial or --html file.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

/// u16 entries per row of a base file: the vocabulary rounded up to even,
/// after four holding the row's scale and offset as two f32.
fn row_len(vocab: usize) -> usize {
    2 * vocab.div_ceil(2) + 4
}

/// llama.cpp's rounding of x (|x| < 2²²) to the nearest integer, ties to even.
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// −log p(token) of B's row, written as a base row: log-probabilities from
/// the largest logit down to 16 below it, in 65535 steps; lower ones read
/// as the bottom. The arithmetic is llama-perplexity's, in f32 where it
/// uses f32, so the rows are the bytes it writes for the same logits.
pub fn base_row(logits: &[f32], token: usize, row: &mut [u16]) -> f64 {
    let (mut max, mut min) = (logits[0], logits[0]);
    for &l in &logits[1..] {
        max = if max < l { l } else { max };
        min = if l < min { l } else { min };
    }
    let min = if min < max - 16.0 { max - 16.0 } else { min };
    let sum = sum_exp(logits, max);
    let log_sum_exp = sum.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (s, m) = (scale.to_bits(), min_log_prob.to_bits());
    row[..4].copy_from_slice(&[s as u16, (s >> 16) as u16, m as u16, (m >> 16) as u16]);
    let q = &mut row[4..4 + logits.len()];
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (q, &l) in q.iter_mut().zip(logits) {
            *q = if l > min { nearest_int(inv * (l - min)) as u16 } else { 0 };
        }
    } else {
        q.fill(0);
    }
    f64::from(max + log_sum_exp - logits[token])
}

/// Running sums over the scored tokens, and each token's divergence and
/// Δp for the percentiles.
#[derive(Default)]
pub struct Kld {
    pub count: u64,
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    same_top: u64,
    pub klds: Vec<f32>,
    pub p_diffs: Vec<f32>,
}

impl Kld {
    /// A's logits against B's base row for one token: KL(B‖A) over the
    /// tokens B gives more than e⁻¹⁶, Δp = p_A − p_B of the right token,
    /// and whether the two top tokens agree — llama-perplexity's sums.
    pub fn add(&mut self, logits: &[f32], row: &[u16], token: usize) -> f32 {
        let (mut max, mut imax) = (logits[0], 0);
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                (max, imax) = (l, i);
            }
        }
        let sum = sum_exp(logits, max);
        let log_sum_exp = sum.ln() as f32;
        let scale = f32::from_bits(u32::from(row[0]) | (u32::from(row[1]) << 16));
        let min_log_prob = f32::from_bits(u32::from(row[2]) | (u32::from(row[3]) << 16));
        let base = &row[4..4 + logits.len()];
        let log_p_base = |i: usize| scale * f32::from(base[i]) + min_log_prob;

        let nll = max + log_sum_exp - logits[token];
        self.sum_nll += f64::from(nll);
        self.sum_nll2 += f64::from(nll * nll);
        let nll_base = -log_p_base(token);
        self.sum_nll_base += f64::from(nll_base);
        self.sum_nll_base2 += f64::from(nll_base * nll_base);
        self.sum_nll_nll_base += f64::from(nll * nll_base);

        let norm = max + log_sum_exp;
        let (mut kld, mut imax_base, mut top_base) = (0f64, 0, 0f32);
        for (i, &l) in logits.iter().enumerate() {
            let lp = log_p_base(i);
            if i == 0 || lp > top_base {
                (top_base, imax_base) = (lp, i);
            }
            if lp > -16.0 {
                kld += f64::from(lp.exp() * (lp - l + norm));
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.count += 1;
        self.same_top += u64::from(imax == imax_base);
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.sum_p_diff += f64::from(p_diff);
        let p_diff2 = f64::from(p_diff * p_diff);
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.klds.push(kld as f32);
        self.p_diffs.push(p_diff);
        kld as f32
    }

    /// The mean divergence and its standard error.
    pub fn kld_mean(&self) -> (f64, f64) {
        Self::mean_err(self.sum_kld, self.sum_kld2, self.count)
    }

    /// The fraction of tokens whose top token is the same in A and B.
    pub fn same_top(&self) -> f64 {
        self.same_top as f64 / self.count.max(1) as f64
    }

    /// Mean and its standard error, as llama-perplexity gives them (no
    /// error below 11 values).
    fn mean_err(sum: f64, sum2: f64, n: u64) -> (f64, f64) {
        if n == 0 {
            return (0.0, 0.0);
        }
        let f = sum / n as f64;
        let var = sum2 / n as f64 - f * f;
        (f, if var > 0.0 && n > 10 { (var / (n - 1) as f64).sqrt() } else { 0.0 })
    }

    /// The report's figures, by llama-perplexity's formulas.
    pub fn summary(&self) -> serde_json::Value {
        let n = self.count;
        let (lp, lp_e) = Self::mean_err(self.sum_nll, self.sum_nll2, n);
        let (lb, lb_e) = Self::mean_err(self.sum_nll_base, self.sum_nll_base2, n);
        let cov = if n < 10 {
            0.0
        } else {
            (self.sum_nll_nll_base / n as f64 - (self.sum_nll / n as f64) * (self.sum_nll_base / n as f64))
                / (n - 1) as f64
        };
        let (ppl, ppl_base) = (lp.exp(), lb.exp());
        let ratio_e = (lp_e * lp_e + lb_e * lb_e - 2.0 * cov).sqrt();
        let (kld, kld_e) = Self::mean_err(self.sum_kld, self.sum_kld2, n);
        let (dp, dp_e) = Self::mean_err(self.sum_p_diff, self.sum_p_diff2, n);
        let (mse, mse_e) = Self::mean_err(self.sum_p_diff2, self.sum_p_diff4, n);
        let same = self.same_top as f64 / n as f64;
        let (mut k, mut d) = (self.klds.clone(), self.p_diffs.clone());
        k.sort_by(f32::total_cmp);
        d.sort_by(f32::total_cmp);
        let pct = |v: &[f32], fr: &[f32]| -> serde_json::Value {
            fr.iter().map(|&f| (format!("{}", f * 100.0), f64::from(percentile(v, f)))).collect()
        };
        json!({
            "tokens": n,
            "ppl": ppl, "ppl_error": ppl * lp_e,
            "ppl_base": ppl_base, "ppl_base_error": ppl_base * lb_e,
            "ln_ppl_correlation": cov / (lp_e * lb_e),
            "ln_ppl_ratio": lp - lb, "ln_ppl_ratio_error": ratio_e,
            "ppl_ratio": (lp - lb).exp(), "ppl_ratio_error": (lp - lb).exp() * ratio_e,
            "ppl_diff": ppl - ppl_base,
            "ppl_diff_error": ((ppl * lp_e).powi(2) + (ppl_base * lb_e).powi(2) - 2.0 * ppl * ppl_base * cov).sqrt(),
            "kld_mean": kld, "kld_mean_error": kld_e,
            "kld_median": f64::from(median(&k)),
            "kld_percentiles": pct(&k, &[1.0, 0.999, 0.99, 0.95, 0.9, 0.1, 0.05, 0.01, 0.001, 0.0]),
            "p_diff_mean": dp, "p_diff_mean_error": dp_e,
            "p_diff_median": f64::from(median(&d)),
            "p_diff_percentiles": pct(&d, &[1.0, 0.999, 0.99, 0.95, 0.9, 0.75, 0.25, 0.1, 0.05, 0.01, 0.001, 0.0]),
            "p_diff_rms": mse.sqrt(), "p_diff_rms_error": 0.5 / mse.sqrt() * mse_e,
            "same_top": same, "same_top_error": (same * (1.0 - same) / (n - 1) as f64).sqrt(),
        })
    }
}

/// `I/N`, 1 ≤ I ≤ N.
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shard: {s:?} is not I/N with 1 ≤ I ≤ N (e.g. 2/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

impl Kld {
    const SUMS: [&'static str; 10] = [
        "sum_nll",
        "sum_nll2",
        "sum_nll_base",
        "sum_nll_base2",
        "sum_nll_nll_base",
        "sum_kld",
        "sum_kld2",
        "sum_p_diff",
        "sum_p_diff2",
        "sum_p_diff4",
    ];

    fn sums(&mut self) -> [&mut f64; 10] {
        [
            &mut self.sum_nll,
            &mut self.sum_nll2,
            &mut self.sum_nll_base,
            &mut self.sum_nll_base2,
            &mut self.sum_nll_nll_base,
            &mut self.sum_kld,
            &mut self.sum_kld2,
            &mut self.sum_p_diff,
            &mut self.sum_p_diff2,
            &mut self.sum_p_diff4,
        ]
    }

    /// Everything a merge needs: the sums, and every token's divergence
    /// and Δp (so the merged percentiles are exact).
    fn partial(&mut self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("count".into(), json!(self.count));
        m.insert("same_top".into(), json!(self.same_top));
        m.insert("klds".into(), json!(self.klds));
        m.insert("p_diffs".into(), json!(self.p_diffs));
        let sums: Vec<f64> = self.sums().iter().map(|v| **v).collect();
        for (k, v) in Self::SUMS.iter().zip(sums) {
            m.insert((*k).into(), json!(v));
        }
        serde_json::Value::Object(m)
    }

    /// Adds a partial result's sums and values to these.
    fn merge_json(&mut self, v: &serde_json::Value) -> Option<()> {
        self.count += v["count"].as_u64()?;
        self.same_top += v["same_top"].as_u64()?;
        for (k, sum) in Self::SUMS.iter().zip(self.sums()) {
            *sum += v[*k].as_f64()?;
        }
        let floats =
            |k: &str| -> Option<Vec<f32>> { v[k].as_array()?.iter().map(|x| x.as_f64().map(|x| x as f32)).collect() };
        self.klds.extend(floats("klds")?);
        self.p_diffs.extend(floats("p_diffs")?);
        (self.klds.len() as u64 == self.count && self.p_diffs.len() as u64 == self.count).then_some(())
    }
}

/// llama-perplexity's percentile: linear between the two nearest of the
/// sorted values.
fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f32;
    let i = p as usize;
    let w = p - i as f32;
    (1.0 - w) * sorted[i] + w * sorted[(i + 1).min(sorted.len() - 1)]
}

fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    if n.is_multiple_of(2) {
        0.5 * (sorted[n / 2] + sorted[n / 2 - 1])
    } else {
        sorted[n / 2]
    }
}

/// A base file's header: "_logits_", ctx (u32), vocabulary (i32), chunks
/// (i32), then every chunk's tokens (i32), then per chunk its scored rows.
struct BaseHeader {
    ctx: usize,
    vocab: usize,
    chunks: usize,
    tokens: Vec<u32>,
}

const MAGIC: &[u8; 8] = b"_logits_";

fn write_header(w: &mut impl Write, h: &BaseHeader) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&(h.ctx as u32).to_le_bytes())?;
    w.write_all(&(h.vocab as i32).to_le_bytes())?;
    w.write_all(&(h.chunks as i32).to_le_bytes())?;
    for &t in &h.tokens {
        w.write_all(&(t as i32).to_le_bytes())?;
    }
    Ok(())
}

/// Reads and checks a base file's header against its length, so that a
/// truncated or foreign file is refused before any work.
fn read_header(path: &std::path::Path, r: &mut impl Read, file_len: u64) -> anyhow::Result<BaseHeader> {
    let bad = |what: &str| anyhow::anyhow!("{}: not a base-logits file ({what})", path.display());
    let mut head = [0u8; 20];
    r.read_exact(&mut head).map_err(|_| bad("shorter than its header"))?;
    if &head[..8] != MAGIC {
        return Err(bad("it does not start with \"_logits_\""));
    }
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (ctx, vocab, chunks) = (word(8) as usize, word(12) as i32, word(16) as i32);
    if ctx < 4 || vocab <= 0 || chunks <= 0 {
        return Err(bad(&format!("context {ctx}, vocabulary {vocab}, chunks {chunks}")));
    }
    let (vocab, chunks) = (vocab as usize, chunks as usize);
    let scored = (ctx - 1 - ctx / 2) as u64;
    let want =
        20u128 + (chunks as u128 * ctx as u128) * 4 + chunks as u128 * scored as u128 * row_len(vocab) as u128 * 2;
    if want != u128::from(file_len) {
        return Err(bad(&format!(
            "{file_len} bytes where context {ctx}, vocabulary {vocab} and {chunks} chunks make {want}"
        )));
    }
    let mut raw = vec![0u8; chunks * ctx * 4];
    r.read_exact(&mut raw).map_err(|_| bad("its tokens are cut short"))?;
    let tokens = raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(BaseHeader { ctx, vocab, chunks, tokens })
}

fn read_rows(r: &mut impl Read, rows: &mut [u16]) -> std::io::Result<()> {
    let mut raw = vec![0u8; rows.len() * 2];
    r.read_exact(&mut raw)?;
    for (v, b) in rows.iter_mut().zip(raw.chunks_exact(2)) {
        *v = u16::from_le_bytes([b[0], b[1]]);
    }
    Ok(())
}

fn write_rows(w: &mut impl Write, rows: &[u16]) -> std::io::Result<()> {
    let raw: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.write_all(&raw)
}

/// The worst tokens kept for the report.
const WORST: usize = 8;

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    args.corpus.check()?;
    for path in [&args.save_base, &args.partial, &args.html].into_iter().flatten() {
        check_output(path, args.force)?;
    }
    if !args.merge.is_empty() {
        return merge(&args);
    }
    if args.b.is_none()
        && args.b_precision.is_none()
        && args.base.is_none()
        && args.save_base.is_none()
        && !args.attribute
    {
        bail!("give B: a reference model, --b-precision, or --base FILE (or write one with --save-base FILE)");
    }
    // The base file, checked before any model is loaded.
    let mut base_in = match &args.base {
        Some(path) => {
            let f = std::fs::File::open(path).with_context(|| format!("cannot open base file {}", path.display()))?;
            let len = f.metadata()?.len();
            let mut r = BufReader::with_capacity(1 << 20, f);
            let h = read_header(path, &mut r, len)?;
            Some((r, h))
        }
        None => None,
    };
    let text = if base_in.is_none() { Some(args.corpus.text()?) } else { None };
    let a_path = args.a.clone().unwrap_or_default();
    let loaded = load(&ModelArgs {
        model: a_path.clone(),
        precision: args.precision,
        threads: args.threads,
        settings: args.settings,
    })?;
    let model = &loaded.model;
    let precision = args.precision.unwrap_or(Precision::Fast);
    let kernels = kernels_for(precision);
    let vocab = model.cfg.vocab;
    let (tokens, ctx, chunks, bos) = match (&base_in, &text) {
        (Some((_, h)), _) => {
            if h.vocab != vocab {
                bail!("the base file has a vocabulary of {} tokens, A's model {vocab}", h.vocab);
            }
            crate::cmd::common::check_capacity(model, h.ctx, "the base file's context", 0)?;
            let bos = loaded.tokenizer.as_ref().and_then(|t| t.add_bos.then_some(t.bos).flatten());
            (h.tokens.clone(), h.ctx, h.chunks.min(args.corpus.chunks.unwrap_or(usize::MAX)), bos)
        }
        (None, Some(text)) => {
            let Tokenized { tokens, chunks, bos } = args.corpus.tokenize(text, model, loaded.tokenizer.as_ref())?;
            (tokens, args.corpus.ctx, chunks, bos)
        }
        (None, None) => unreachable!("a corpus or a base file"),
    };
    let (nv, scored) = (row_len(vocab), ctx - 1 - ctx / 2);
    let start = Instant::now();

    if let Some(path) = &args.save_base {
        let mut nll = crate::cmd::ppl::Nll::default();
        let corpus = Corpus { tokens: &tokens, ctx, chunks, bos };
        plumb_formats::atomic::write_atomic_with(path, |tmp| {
            let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
            write_header(&mut w, &BaseHeader { ctx, vocab, chunks, tokens: tokens[..chunks * ctx].to_vec() })?;
            // Filled row by row, written at the end of each chunk.
            let rows = std::cell::RefCell::new(vec![0u16; scored * nv]);
            let mut failed = None;
            let progress = bar("base", chunks * ctx, model.cfg.n_layer);
            corpus.score(
                model,
                kernels.as_ref(),
                progress.as_ref(),
                &mut |_, r, logits, target| {
                    nll.add(base_row(logits, target as usize, &mut rows.borrow_mut()[r * nv..(r + 1) * nv]))
                },
                &mut |_| {
                    if failed.is_none() {
                        failed = write_rows(&mut w, &rows.borrow()).err();
                    }
                },
            );
            if let Some(b) = &progress {
                b.finish_and_clear();
            }
            match failed {
                Some(e) => Err(e),
                None => w.flush(),
            }
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        let doc = json!({
            "base": path, "model": a_path, "precision": precision.name(), "ctx": ctx, "chunks": chunks,
            "tokens": nll.count, "ppl": nll.ppl(), "ppl_error": nll.ppl_error(), "seconds": seconds,
        });
        if args.json {
            out::print(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
        } else {
            out::print(&format!(
                "wrote {} ({chunks} chunks of {ctx}, {} tokens scored; PPL {:.4} +/- {:.5}) in {seconds:.1} s\n",
                path.display(),
                nll.count,
                nll.ppl(),
                nll.ppl_error().unwrap_or(0.0)
            ))?;
        }
        return Ok(Outcome::Ok);
    }

    let b_precision = match args.b_precision {
        Some(p) => p,
        None if args.b.is_some() && !args.attribute => Precision::Fast,
        None => Precision::Exact,
    };
    // B in memory: another model, or A's own at another precision, loaded
    // again where that precision computes with other settings.
    // Another model at A's precision computes with A's settings; any model at
    // another precision with that precision's own.
    let b_choice = if args.b.is_some() && b_precision == precision { args.settings } else { RunChoice::AUTO };
    let b_settings = b_choice.resolve(b_precision)?;
    let b_path = match (&base_in, &args.b) {
        (Some(_), _) => None,
        (None, Some(path)) => Some(path.clone()),
        (None, None) => (model.cfg.run_settings() != b_settings).then(|| a_path.clone()),
    };
    let b_loaded = match b_path {
        Some(path) => Some(load(&ModelArgs {
            model: path,
            precision: Some(b_precision),
            threads: args.threads,
            settings: b_choice,
        })?),
        None => None,
    };
    let b_model: Option<&Model> = match (&base_in, &b_loaded) {
        (Some(_), _) => None,
        (None, Some(l)) => Some(&l.model),
        (None, None) => Some(model),
    };
    if let Some(b) = b_model {
        if b.cfg.vocab != vocab {
            bail!("B has a vocabulary of {} tokens, A {vocab}: their distributions cannot be compared", b.cfg.vocab);
        }
    }
    if args.attribute && b_precision != Precision::Exact {
        bail!(
            "--attribute runs B in exact arithmetic: in the fast one each matrix product rounds its input to 8 bits, \
             so a change to any one unit re-draws the rounding of all after it and every unit looks as guilty as the \
             whole. Leave out --b-precision (A keeps its --precision; give --precision exact too for the weights alone)"
        );
    }
    let b_kernels = kernels_for(b_precision);
    let mut attribution = match b_model {
        Some(b) if args.attribute => {
            if let Some(why) = plumb_model::hybrid::mismatch(model, b) {
                bail!("--attribute runs A's units inside B's pass, but A and B do not fit together: {why}");
            }
            Some(Attribution::new(b, ctx))
        }
        _ => None,
    };

    let mut kld = Kld::default();
    let mut curve = vec![(0f64, 0u64); scored.div_ceil(CURVE_STEP)];
    let mut worst: Vec<(f32, usize, usize)> = Vec::new(); //                (KLD, chunk, row)
    let mut rows = vec![0u16; scored * nv];
    // This shard's chunks (all of them without --shard).
    let (from, to) = match args.shard {
        Some((i, n)) => ((i - 1) * chunks / n, i * chunks / n),
        None => (0, chunks),
    };
    if let Some((r, _)) = &mut base_in {
        r.seek_relative((from * scored * nv * 2) as i64)?;
    }
    // Every token through every layer of A, and of B when B is a model.
    // (and the hybrids of an attribution, about so many passes more).
    let passes = 1 + usize::from(b_model.is_some()) + attribution.as_ref().map_or(0, Attribution::passes);
    let progress = bar("kld", (to - from) * ctx * passes, model.cfg.n_layer);
    for c in from..to {
        let one = Corpus { tokens: &tokens[c * ctx..(c + 1) * ctx], ctx, chunks: 1, bos };
        let (chunk, target) = one.chunk(0);
        match (&mut base_in, b_model) {
            (Some((r, h)), _) => {
                read_rows(r, &mut rows).with_context(|| {
                    format!("{}: cannot read chunk {} of {}", args.base.as_ref().unwrap().display(), c + 1, h.chunks)
                })?;
            }
            (None, Some(b)) if attribution.is_some() => {
                let at = attribution.as_mut().expect("an attribution");
                at.base(Side { model: b, kernels: b_kernels.as_ref() }, &chunk, target, &mut rows, nv);
                if let Some(bar) = &progress {
                    bar.inc((ctx * b.cfg.n_layer) as u64);
                }
            }
            (None, Some(b)) => one.score(
                b,
                b_kernels.as_ref(),
                progress.as_ref(),
                &mut |_, r, logits, target| {
                    base_row(logits, target as usize, &mut rows[r * nv..(r + 1) * nv]);
                },
                &mut |_| {},
            ),
            (None, None) => unreachable!("B is a base file or a model"),
        }
        one.score(
            model,
            kernels.as_ref(),
            progress.as_ref(),
            &mut |_, r, logits, target| {
                let k = kld.add(logits, &rows[r * nv..(r + 1) * nv], target as usize);
                let bucket = &mut curve[r / CURVE_STEP];
                bucket.0 += f64::from(k);
                bucket.1 += 1;
                worst.push((k, c, r));
                if worst.len() > 4 * WORST {
                    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
                    worst.truncate(WORST);
                }
            },
            &mut |_| {},
        );
        if let (Some(at), Some(b)) = (attribution.as_mut(), b_model) {
            let a = Side { model, kernels: kernels.as_ref() };
            let b = Side { model: b, kernels: b_kernels.as_ref() };
            at.score(a, b, target, &rows, nv, progress.as_ref());
        }
    }
    if let Some(b) = &progress {
        b.finish_and_clear();
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    worst.truncate(WORST);
    let seconds = start.elapsed().as_secs_f64();
    let b_name = match (&args.base, &args.b) {
        (Some(p), _) => format!("base file {}", p.display()),
        (None, Some(p)) => format!("{} ({})", p.display(), b_precision.name()),
        (None, None) => format!("{} ({})", a_path.display(), b_precision.name()),
    };
    let first = ctx / 2;
    let tok = loaded.tokenizer.as_ref();
    let worst: Vec<serde_json::Value> = worst
        .iter()
        .map(|&(k, c, r)| {
            let at = c * ctx + first + r;
            let (from, next) = (at.saturating_sub(CONTEXT_TOKENS), tokens[at + 1]);
            json!({
                "kld": k, "chunk": c + 1, "position": first + r,
                "context": tok.map(|t| t.decode(&tokens[from..=at])),
                "next": tok.map(|t| t.decode(&[next])),
            })
        })
        .collect();
    let a_name = format!("{} ({})", a_path.display(), precision.name());
    if let Some(path) = &args.partial {
        let part = json!({
            "format": PARTIAL_FORMAT, "a": a_name, "b": b_name, "ctx": ctx, "chunks_total": chunks,
            "from": from, "to": to, "kld": kld.partial(), "curve": curve, "worst": worst, "seconds": seconds,
        });
        plumb_formats::atomic::write_atomic(path, serde_json::to_string(&part)?.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        out::print(&format!(
            "wrote {} (chunks {}–{} of {chunks}, {} tokens) in {seconds:.1} s\n",
            path.display(),
            from + 1,
            to,
            kld.count
        ))?;
        return Ok(Outcome::Ok);
    }
    let mut doc = report_doc(&kld, &curve, worst, &a_name, &b_name, ctx, chunks, seconds)?;
    if let Some(at) = &attribution {
        doc["attribution"] = at.doc(kld.kld_mean().0, model.cfg.tied_output);
    }
    show(&doc, &args)
}

/// The report as --json, --html and text ask.
fn show(doc: &serde_json::Value, args: &Args) -> anyhow::Result<Outcome> {
    if let Some(path) = &args.html {
        plumb_formats::atomic::write_atomic(path, plumb_diff::html::kld_page(doc).as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        out::print(&(serde_json::to_string_pretty(doc)? + "\n"))?;
    } else {
        let mut text = report(doc);
        if let Some(at) = doc.get("attribution") {
            text += &format!("\n{}", attribute::report(at));
        }
        out::print(&text)?;
    }
    Ok(Outcome::Ok)
}

/// The `format` of a partial result file.
const PARTIAL_FORMAT: &str = "plumb-kld-partial 1";

/// The whole report: llama-perplexity's statistics, the divergence by
/// position and the worst tokens.
#[allow(clippy::too_many_arguments)]
fn report_doc(
    kld: &Kld,
    curve: &[(f64, u64)],
    mut worst: Vec<serde_json::Value>,
    a: &str,
    b: &str,
    ctx: usize,
    chunks: usize,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    if kld.count < 2 {
        bail!("only {} token scored: too few for statistics", kld.count);
    }
    let first = ctx / 2;
    let curve: Vec<serde_json::Value> = curve
        .iter()
        .enumerate()
        .map(|(i, &(s, n))| {
            let (from, to) = (first + i * CURVE_STEP, (first + (i + 1) * CURVE_STEP).min(ctx - 1));
            json!({"from": from, "to": to, "kld_mean": s / n.max(1) as f64})
        })
        .collect();
    worst.sort_by(|x, y| y["kld"].as_f64().unwrap_or(0.0).total_cmp(&x["kld"].as_f64().unwrap_or(0.0)));
    worst.truncate(WORST);
    let mut doc = kld.summary();
    if let serde_json::Value::Object(m) = &mut doc {
        m.insert("a".into(), json!(a));
        m.insert("b".into(), json!(b));
        m.insert("ctx".into(), json!(ctx));
        m.insert("chunks".into(), json!(chunks));
        m.insert("kld_by_position".into(), json!(curve));
        m.insert("worst".into(), json!(worst));
        m.insert("seconds".into(), json!(seconds));
    }
    Ok(doc)
}

/// `--merge`: the partial results of every shard of one run, checked to
/// come from the same A, B and chunks and to cover them once, combined
/// into the report one pass gives.
fn merge(args: &Args) -> anyhow::Result<Outcome> {
    let mut parts = Vec::new();
    for path in &args.merge {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .ok()
            .filter(|v: &serde_json::Value| v["format"] == PARTIAL_FORMAT)
            .ok_or_else(|| anyhow::anyhow!("{}: not a partial result of plumb kld --shard", path.display()))?;
        parts.push((path, v));
    }
    parts.sort_by_key(|(_, v)| v["from"].as_u64().unwrap_or(0));
    let first = &parts[0].1;
    let (ctx, chunks) = (first["ctx"].as_u64().unwrap_or(0) as usize, first["chunks_total"].as_u64().unwrap_or(0));
    let mut kld = Kld::default();
    let mut curve: Vec<(f64, u64)> = Vec::new();
    let (mut worst, mut next, mut seconds) = (Vec::new(), 0u64, 0f64);
    for (path, v) in &parts {
        for key in ["a", "b", "ctx", "chunks_total"] {
            if v[key] != first[key] {
                bail!("{}: {key} {} differs from {} in another part", path.display(), v[key], first[key]);
            }
        }
        let (from, to) = (v["from"].as_u64().unwrap_or(u64::MAX), v["to"].as_u64().unwrap_or(0));
        if from != next || to < from {
            bail!(
                "{}: chunks {}–{to}, where the parts so far end at chunk {next}: a shard is missing or repeated",
                path.display(),
                from + 1
            );
        }
        next = to;
        kld.merge_json(&v["kld"]).ok_or_else(|| anyhow::anyhow!("{}: damaged sums", path.display()))?;
        for (i, c) in v["curve"].as_array().into_iter().flatten().enumerate() {
            if curve.len() <= i {
                curve.push((0.0, 0));
            }
            curve[i].0 += c[0].as_f64().unwrap_or(0.0);
            curve[i].1 += c[1].as_u64().unwrap_or(0);
        }
        worst.extend(v["worst"].as_array().into_iter().flatten().cloned());
        seconds += v["seconds"].as_f64().unwrap_or(0.0);
    }
    if next != chunks {
        bail!("the parts cover chunks 1–{next} of {chunks}: a shard is missing");
    }
    let (a, b) = (first["a"].as_str().unwrap_or(""), first["b"].as_str().unwrap_or(""));
    let doc = report_doc(&kld, &curve, worst, a, b, ctx, chunks as usize, seconds)?;
    show(&doc, args)
}

/// Positions per point of the divergence-by-position curve.
const CURVE_STEP: usize = 32;
/// Tokens of context shown before each of the worst tokens.
const CONTEXT_TOKENS: usize = 12;

/// The report as text: llama-perplexity's three blocks, then the curve and
/// the worst tokens.
fn report(d: &serde_json::Value) -> String {
    let f = |k: &str| d[k].as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "A {} against B {}: {} chunks of {}, {} tokens scored\n\n",
        d["a"].as_str().unwrap_or(""),
        d["b"].as_str().unwrap_or(""),
        d["chunks"],
        d["ctx"],
        d["tokens"]
    );
    s += "perplexity\n";
    s += &format!("  PPL(A)            {:12.6} ± {:.6}\n", f("ppl"), f("ppl_error"));
    s += &format!("  PPL(B)            {:12.6} ± {:.6}\n", f("ppl_base"), f("ppl_base_error"));
    s += &format!("  cor(ln A, ln B)   {:11.2}%\n", 100.0 * f("ln_ppl_correlation"));
    s += &format!("  ln(PPL(A)/PPL(B)) {:12.6} ± {:.6}\n", f("ln_ppl_ratio"), f("ln_ppl_ratio_error"));
    s += &format!("  PPL(A)/PPL(B)     {:12.6} ± {:.6}\n", f("ppl_ratio"), f("ppl_ratio_error"));
    s += &format!("  PPL(A)-PPL(B)     {:12.6} ± {:.6}\n\n", f("ppl_diff"), f("ppl_diff_error"));
    s += "KL divergence KL(B‖A)\n";
    s += &format!("  mean    {:10.6} ± {:.6}\n", f("kld_mean"), f("kld_mean_error"));
    s += &format!("  median  {:10.6}\n", f("kld_median"));
    if let Some(m) = d["kld_percentiles"].as_object() {
        for (k, v) in m {
            s += &format!("  {:>6}% {:10.6}\n", k, v.as_f64().unwrap_or(f64::NAN));
        }
    }
    s += "\nprobability of the right token, Δp = p(A) − p(B)\n";
    s += &format!("  mean    {:7.3}% ± {:.3}%\n", 100.0 * f("p_diff_mean"), 100.0 * f("p_diff_mean_error"));
    s += &format!("  median  {:7.3}%\n", 100.0 * f("p_diff_median"));
    if let Some(m) = d["p_diff_percentiles"].as_object() {
        for (k, v) in m {
            s += &format!("  {:>6}% {:7.3}%\n", k, 100.0 * v.as_f64().unwrap_or(f64::NAN));
        }
    }
    s += &format!("  RMS     {:7.3}% ± {:.3}%\n", 100.0 * f("p_diff_rms"), 100.0 * f("p_diff_rms_error"));
    s += &format!("  same top token {:.3}% ± {:.3}%\n\n", 100.0 * f("same_top"), 100.0 * f("same_top_error"));
    s += "mean KLD by position in the chunk\n";
    for p in d["kld_by_position"].as_array().into_iter().flatten() {
        s += &format!("  {:>5}–{:<5} {:10.6}\n", p["from"], p["to"], p["kld_mean"].as_f64().unwrap_or(f64::NAN));
    }
    s += "\nworst tokens\n";
    for w in d["worst"].as_array().into_iter().flatten() {
        s += &format!(
            "  KLD {:9.4}  chunk {} position {}: …{:?} → {:?}\n",
            w["kld"].as_f64().unwrap_or(f64::NAN),
            w["chunk"],
            w["position"],
            w["context"].as_str().unwrap_or(""),
            w["next"].as_str().unwrap_or("")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row written as a base row reads back as log-probabilities within
    /// half a quantization step, down to 16 below the top; the KLD of the
    /// same logits against their own row is within that rounding of 0, and
    /// the top token agrees.
    #[test]
    fn base_rows_round_trip_and_a_row_against_itself_is_near_zero() {
        let logits: Vec<f32> = (0..1001).map(|i| ((i * 37 % 101) as f32 * 0.23).sin() * 9.0).collect();
        let mut row = vec![0u16; row_len(logits.len())];
        let nll = base_row(&logits, 17, &mut row);
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let lse = f64::from(max) + logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
        assert!((nll - (lse - f64::from(logits[17]))).abs() < 1e-5);
        let scale = f32::from_bits(u32::from(row[0]) | (u32::from(row[1]) << 16));
        let min_lp = f32::from_bits(u32::from(row[2]) | (u32::from(row[3]) << 16));
        for (i, &l) in logits.iter().enumerate() {
            let lp = f64::from(l) - lse;
            let back = f64::from(scale.mul_add(f32::from(row[4 + i]), min_lp));
            if lp > f64::from(max) - lse - 16.0 {
                assert!((back - lp).abs() <= f64::from(scale) * 0.51 + 1e-5, "{i}: {back} vs {lp}");
            }
        }
        // Against its own row only the rounding to 16 bits is left: each
        // log-probability within half a step, so the divergence within
        // half a step too (to first order, Σ p·ε).
        let mut k = Kld::default();
        let v = k.add(&logits, &row, 17);
        assert!(v.abs() <= 0.5 * scale, "{v} against a step of {scale}");
        assert_eq!(k.same_top, 1);
        // Another distribution diverges.
        let other: Vec<f32> = logits.iter().map(|l| -l).collect();
        assert!(k.add(&other, &row, 17) > 1.0);
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [(0.4f32, 0), (0.5, 0), (1.5, 2), (2.5, 2), (65534.6, 65535), (-1.5, -2)] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
    }

    #[test]
    fn percentiles_interpolate_as_llama_perplexity_does() {
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.9), 4.6);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert_eq!(median(&v[..4]), 2.5);
    }
}

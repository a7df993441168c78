//! `plumb ppl MODEL -f corpus.txt`: perplexity over a corpus, as
//! llama-perplexity computes it. The corpus is tokenized whole (with BOS
//! where the model adds one) and cut into chunks of `--ctx` tokens; each
//! chunk runs from an empty cache with its first token replaced by BOS, and
//! only its second half is scored — every token there has at least ctx/2
//! tokens of context. The estimate is exp(mean NLL) ± the standard error
//! of the mean, carried through exp.

use std::time::Instant;

use anyhow::{bail, Context};
use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Precision};
use serde_json::json;

use crate::cmd::common::{check_capacity, load, ModelArgs};
use crate::progress::bar;
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The corpus: a UTF-8 text file.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Tokens per chunk; the second half of each is scored.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks (default: every whole chunk).
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// Running sums of the negative log-likelihood of each scored token.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Nll {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Nll {
    pub fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.sum_sq += v * v;
    }

    /// exp(mean NLL).
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// The perplexity's standard error: that of the mean NLL (sample
    /// deviation over √(n − 1)) times the perplexity, to first order.
    pub fn ppl_error(&self) -> Option<f64> {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        (self.count > 1 && var > 0.0).then(|| (var / (n - 1.0)).sqrt() * self.ppl())
    }
}

/// −log p(token) under `logits`, as llama-perplexity computes it: the
/// largest logit subtracted in f32, the exponentials in f32 summed in f64.
pub fn nll(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(logits[0], f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    sum.ln() - f64::from(logits[token] - max)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4 tokens, got {}", args.ctx);
    }
    if args.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read corpus {}", args.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: corpus is not UTF-8 (invalid byte at offset {})",
            args.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let loaded = load(&args.model)?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let Some(tok) = tok.as_ref() else {
        bail!("this model has no tokenizer plumb can use: a corpus needs one");
    };
    let tokens = tok.encode(&text, true, false);
    if tokens.len() < 2 * args.ctx {
        bail!(
            "{} tokenizes to {} tokens; a context of {} needs at least {} (two chunks' worth, as llama-perplexity asks)",
            args.file.display(),
            tokens.len(),
            args.ctx,
            2 * args.ctx
        );
    }
    check_capacity(model, args.ctx, "--ctx", 0)?;
    let chunks = (tokens.len() / args.ctx).min(args.chunks.unwrap_or(usize::MAX));
    let precision = args.model.precision.unwrap_or(Precision::Fast);
    let kernels = kernels_for(precision);
    let bos = tok.add_bos.then_some(tok.bos).flatten();

    let first = args.ctx / 2;
    let mut total = Nll::default();
    let mut running = Vec::with_capacity(chunks); //              perplexity after each chunk
    let progress = bar("perplexity", chunks * args.ctx, model.cfg.n_layer);
    let start = Instant::now();
    let mut cache = KvCache::new(&model.cfg, args.ctx);
    for c in 0..chunks {
        let mut chunk = tokens[c * args.ctx..(c + 1) * args.ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        cache.len = 0;
        // Row i's logits predict token i + 1 of the corpus (not of the
        // chunk: its first token is BOS, but row ctx − 1 is not scored).
        let target = &tokens[c * args.ctx..(c + 1) * args.ctx];
        model.forward_scoring(
            kernels.as_ref(),
            &chunk,
            &mut cache,
            first,
            &mut |i, logits| {
                if i + 1 < args.ctx {
                    total.add(nll(logits, target[i + 1] as usize));
                }
            },
            &mut |rows| {
                if let Some(b) = &progress {
                    b.inc((rows * model.cfg.n_layer) as u64);
                }
            },
        );
        running.push(total.ppl());
    }
    if let Some(b) = &progress {
        b.finish_and_clear();
    }
    let seconds = start.elapsed().as_secs_f64();
    let tps = (chunks * args.ctx) as f64 / seconds;

    if args.json {
        let doc = json!({
            "model": args.model.model,
            "precision": precision.name(),
            "file": args.file,
            "corpus_tokens": tokens.len(),
            "ctx": args.ctx,
            "chunks": chunks,
            "scored": total.count,
            "ppl": total.ppl(),
            "ppl_error": total.ppl_error(),
            "nll_mean": total.sum / total.count as f64,
            "running_ppl": running,
            "seconds": seconds,
            "tokens_per_second": tps,
        });
        out::print(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
        return Ok(Outcome::Ok);
    }
    let mut s = format!(
        "{} ({}) over {}: {} tokens, {} chunks of {}, {} tokens scored\n",
        args.model.model.display(),
        precision.name(),
        args.file.display(),
        tokens.len(),
        chunks,
        args.ctx,
        total.count
    );
    let list: Vec<String> = running.iter().enumerate().map(|(i, p)| format!("[{}]{p:.4}", i + 1)).collect();
    s.push_str(&list.join(","));
    s.push('\n');
    match total.ppl_error() {
        Some(e) => s.push_str(&format!("Final estimate: PPL = {:.4} +/- {e:.5}\n", total.ppl())),
        None => s.push_str(&format!("Final estimate: PPL = {:.4}\n", total.ppl())),
    }
    s.push_str(&format!("{} tokens in {seconds:.2} s ({tps:.2} tokens/s)\n", chunks * args.ctx));
    out::print(&s)?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// −log softmax against its definition in f64, and the estimate's
    /// error against a hand computation.
    #[test]
    fn nll_and_its_error_follow_their_definitions() {
        let logits = [1.0f32, 3.0, -2.0, 0.5];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        for (t, &l) in logits.iter().enumerate() {
            let want = z.ln() - f64::from(l);
            assert!((nll(&logits, t) - want).abs() < 1e-6, "token {t}");
        }
        let mut n = Nll::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            n.add(v);
        }
        assert!((n.ppl() - 2.5f64.exp()).abs() < 1e-12);
        // Population variance 1.25; its error over √3, times the perplexity.
        let want = (1.25f64 / 3.0).sqrt() * 2.5f64.exp();
        assert!((n.ppl_error().unwrap() - want).abs() < 1e-12);
        let mut one = Nll::default();
        one.add(2.0);
        assert_eq!(one.ppl_error(), None);
    }
}

//! `plumb ppl MODEL -f corpus.txt`: perplexity over a corpus, as
//! llama-perplexity computes it. The corpus is tokenized whole (with BOS
//! where the model adds one) and cut into chunks of `--ctx` tokens; each
//! chunk runs from an empty cache with its first token replaced by BOS, and
//! only its second half is scored — every token there has at least ctx/2
//! tokens of context. The estimate is exp(mean NLL) ± the standard error
//! of the mean, carried through exp.

use std::time::Instant;

use anyhow::bail;
use indicatif::ProgressBar;
use plumb_model::kernels::kernels_for;
use plumb_model::tokenizer::Tokenizer;
use plumb_model::{KvCache, Precision};
use serde_json::json;

use crate::cmd::common::{check_capacity, load, read_text, ModelArgs};
use crate::progress::bar;
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CorpusArgs {
    /// The corpus: a UTF-8 text file.
    #[arg(short = 'f', long = "file")]
    pub file: Option<std::path::PathBuf>,
    /// Tokens per chunk; the second half of each is scored.
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks (default: every whole chunk).
    #[arg(long)]
    pub chunks: Option<usize>,
}

impl CorpusArgs {
    /// Refuses a context or chunk count that cannot work, before anything
    /// is read.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.ctx < 4 {
            bail!("--ctx must be at least 4 tokens, got {}", self.ctx);
        }
        if self.chunks == Some(0) {
            bail!("--chunks must be at least 1");
        }
        Ok(())
    }

    /// The corpus file's text.
    pub fn text(&self) -> anyhow::Result<String> {
        let Some(file) = &self.file else { bail!("give the corpus with -f FILE") };
        read_text(file, "corpus")
    }

    /// The corpus tokenized whole (BOS first where the model adds one) and
    /// how many whole chunks to score; refuses a corpus of fewer than two
    /// chunks, as llama-perplexity does.
    pub fn tokenize(
        &self,
        text: &str,
        model: &plumb_model::Model,
        tok: Option<&Tokenizer>,
    ) -> anyhow::Result<Tokenized> {
        let Some(tok) = tok else {
            bail!("this model has no tokenizer plumb can use: a corpus needs one");
        };
        let tokens = tok.encode(text, true, false);
        if tokens.len() < 2 * self.ctx {
            bail!(
                "{} tokenizes to {} tokens; a context of {} needs at least {} (two chunks' worth, as llama-perplexity asks)",
                self.file.as_deref().unwrap_or(std::path::Path::new("the corpus")).display(),
                tokens.len(),
                self.ctx,
                2 * self.ctx
            );
        }
        check_capacity(model, self.ctx, "--ctx", 0)?;
        let chunks = (tokens.len() / self.ctx).min(self.chunks.unwrap_or(usize::MAX));
        Ok(Tokenized { tokens, chunks, bos: tok.add_bos.then_some(tok.bos).flatten() })
    }
}

/// A corpus's tokens, its chunk count and the BOS each chunk starts with.
pub struct Tokenized {
    pub tokens: Vec<u32>,
    pub chunks: usize,
    pub bos: Option<u32>,
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

/// Σ exp(l − max) over the logits, each exponential in f32 and the sum in
/// f64, as llama-perplexity sums them.
pub fn sum_exp(logits: &[f32], max: f32) -> f64 {
    logits.iter().map(|&l| f64::from((l - max).exp())).sum()
}

/// −log p(token) under `logits`, as llama-perplexity computes it: the
/// largest logit subtracted in f32, the exponentials in f32 summed in f64.
pub fn nll(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(logits[0], f32::max);
    let sum = sum_exp(logits, max);
    sum.ln() - f64::from(logits[token] - max)
}

/// What [`Corpus::score`] hands out for each scored row: (chunk, row from
/// ctx/2, logits [V], the token that follows).
pub type ScoredRow<'a> = dyn FnMut(usize, usize, &[f32], u32) + 'a;

/// Row `i` of a chunk (`target`, as scored) as it is scored: its row
/// counted from ctx/2 and the token it predicts — None for the chunk's last
/// row, which predicts nothing in the chunk.
pub fn scored_row(target: &[u32], i: usize) -> Option<(usize, u32)> {
    (i + 1 < target.len()).then(|| (i - target.len() / 2, target[i + 1]))
}

/// A tokenized corpus cut into chunks, as llama-perplexity cuts it.
pub struct Corpus<'a> {
    pub tokens: &'a [u32],
    pub ctx: usize,
    pub chunks: usize,
    /// The token each chunk starts with instead of its own, where the model
    /// adds one.
    pub bos: Option<u32>,
}

impl Corpus<'_> {
    /// Chunk `c` as it is run (its first token replaced by BOS where the
    /// model adds one) and as it is scored (the corpus's own tokens).
    pub fn chunk(&self, c: usize) -> (Vec<u32>, &[u32]) {
        let target = &self.tokens[c * self.ctx..(c + 1) * self.ctx];
        let mut chunk = target.to_vec();
        if let Some(b) = self.bos {
            chunk[0] = b;
        }
        (chunk, target)
    }

    /// Runs every chunk from an empty cache, its first token replaced by
    /// BOS, and calls `each(chunk, row, logits, next token)` for every
    /// scored row in order (row counted from ctx/2), then `chunk_done(c)`.
    /// `progress` (the caller's, which may span several calls) moves on by
    /// every token through every layer.
    pub fn score(
        &self,
        model: &plumb_model::Model,
        k: &dyn plumb_model::kernels::Kernels,
        progress: Option<&ProgressBar>,
        each: &mut ScoredRow,
        chunk_done: &mut dyn FnMut(usize),
    ) {
        let (ctx, first) = (self.ctx, self.ctx / 2);
        let mut cache = KvCache::new(&model.cfg, ctx);
        for c in 0..self.chunks {
            let (chunk, target) = self.chunk(c);
            cache.len = 0;
            // Row i's logits predict token i + 1 of the corpus (row ctx − 1
            // predicts nothing in the chunk and is not scored).
            model.forward_scoring(
                k,
                &chunk,
                &mut cache,
                first,
                &mut |i, logits| {
                    if let Some((r, next)) = scored_row(target, i) {
                        each(c, r, logits, next);
                    }
                },
                &mut |rows| {
                    if let Some(b) = progress {
                        b.inc((rows * model.cfg.n_layer) as u64);
                    }
                },
            );
            chunk_done(c);
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    args.corpus.check()?;
    let text = args.corpus.text()?;
    let loaded = load(&args.model)?;
    let model = &loaded.model;
    let Tokenized { tokens, chunks, bos } = args.corpus.tokenize(&text, model, loaded.tokenizer.as_ref())?;
    let precision = args.model.precision.unwrap_or(Precision::Fast);
    let kernels = kernels_for(precision);
    let ctx = args.corpus.ctx;

    // Both callbacks read the sums: one adds each token, the other notes
    // the perplexity after each chunk.
    let total = std::cell::RefCell::new(Nll::default());
    let mut running = Vec::with_capacity(chunks); //              perplexity after each chunk
    let start = Instant::now();
    let corpus = Corpus { tokens: &tokens, ctx, chunks, bos };
    let progress = bar("perplexity", chunks * ctx, model.cfg.n_layer);
    corpus.score(
        model,
        kernels.as_ref(),
        progress.as_ref(),
        &mut |_, _, logits, target| total.borrow_mut().add(nll(logits, target as usize)),
        &mut |_| running.push(total.borrow().ppl()),
    );
    if let Some(b) = &progress {
        b.finish_and_clear();
    }
    let total = total.into_inner();
    let seconds = start.elapsed().as_secs_f64();
    let tps = (chunks * ctx) as f64 / seconds;

    if args.json {
        let doc = json!({
            "model": args.model.model,
            "precision": precision.name(),
            "file": args.corpus.file,
            "corpus_tokens": tokens.len(),
            "ctx": ctx,
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
        args.corpus.file.as_deref().unwrap_or(std::path::Path::new("-")).display(),
        tokens.len(),
        chunks,
        ctx,
        total.count
    );
    let list: Vec<String> = running.iter().enumerate().map(|(i, p)| format!("[{}]{p:.4}", i + 1)).collect();
    s.push_str(&list.join(","));
    s.push('\n');
    match total.ppl_error() {
        Some(e) => s.push_str(&format!("Final estimate: PPL = {:.4} +/- {e:.5}\n", total.ppl())),
        None => s.push_str(&format!("Final estimate: PPL = {:.4}\n", total.ppl())),
    }
    s.push_str(&format!("{} tokens in {seconds:.2} s ({tps:.2} tokens/s)\n", chunks * ctx));
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

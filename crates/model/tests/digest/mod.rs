//! Shared body of the digest tests: every stage of the real model's forward
//! pass, on three prompts, prefill and three greedy decoding steps, at both
//! precisions, folded into one 64-bit FNV-1a digest per precision (trace key,
//! shape and the f32 bit patterns, in the order the stages are reported).
//!
//! The digests are a regression pin, not an oracle: they were written by the
//! code before a refactoring that promised to change no number
//! (docs/TRACE_FORMAT.md names every stage hashed), and any change to them
//! must be explained by a deliberate change of arithmetic. The correctness
//! oracles are elsewhere (real_gemma.rs against transformers). Run with
//! `PLUMB_DIGEST_PRINT=1` to print the digests instead of checking them.

use std::path::PathBuf;

use plumb_model::generate::{Flow, Generator, Pick, Until};
use plumb_model::kernels::kernels_for;
use plumb_model::tokenizer::Tokenizer;
use plumb_model::{Model, Observer, Precision, Stage};

pub const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 1905, Albert Einstein published four papers that",
];

/// Decoding steps after the prompt (each a one-token forward pass).
const STEPS: usize = 3;

/// Tokens of the long prompt: past the real model's sliding window (512),
/// so the window layers' masked positions are in play.
const LONG: usize = 700;

struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Wants every stage, as `plumb trace` does, or (`.2`) only those listed,
/// and hashes those it wants of the stages in `.3` (all when None).
struct Digest(Fnv, usize, Option<&'static [Stage]>, Option<&'static [Stage]>);

/// The stages of a run that does not look at the pre-mask scores.
pub const NO_SCORES: &[Stage] = &[Stage::AttnProbs, Stage::AttnContext, Stage::LayerOut, Stage::Logits];
/// The stages of a run that looks at no attention matrix at all (used by
/// digest_active.rs only).
#[allow(dead_code)]
pub const NO_ATTENTION: &[Stage] = &[Stage::AttnContext, Stage::LayerOut, Stage::Logits];

impl Observer for Digest {
    fn wants(&self, _: Option<usize>, stage: Stage) -> bool {
        self.2.is_none_or(|only| only.contains(&stage))
    }
    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        if !self.wants(layer, stage) || self.3.is_some_and(|only| !only.contains(&stage)) {
            return;
        }
        self.0.eat(stage.key(layer).as_bytes());
        for s in shape {
            self.0.eat(&(*s as u64).to_le_bytes());
        }
        for v in data {
            self.0.eat(&v.to_bits().to_le_bytes());
        }
        self.1 += 1;
    }
}

/// CI runs the digest tests rather than ignoring them: without the model
/// there, this fails loudly. Each test binary including this module has it.
#[cfg(not(has_real_model))]
#[test]
fn ci_has_the_real_model() {
    assert!(std::env::var("CI").is_err(), "CI must fetch the real model first (scripts/fetch-model.sh)");
}

pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf")
}

/// Digests on the active kernel path: (fast, exact) of the three prompts
/// with every stage, then (fast, exact) of a long prompt with some stages.
pub fn digests() -> [(&'static str, u64, usize); 4] {
    let path = model_path();
    let model = Model::load(&path).unwrap();
    let tok = Tokenizer::from_gguf(&plumb_formats::gguf::GgufFile::open(&path).unwrap()).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|text| tok.encode(text, true, false)).collect();
    let run = |p: Precision, prompts: &[Vec<u32>], only| run(&model, p, prompts, only, None);
    let (f, e) = (run(Precision::Fast, &prompts, None), run(Precision::Exact, &prompts, None));
    let long = [long_prompt()];
    let (fl, el) = (run(Precision::Fast, &long, Some(NO_SCORES)), run(Precision::Exact, &long, Some(NO_SCORES)));
    [("fast", f.0, f.1), ("exact", e.0, e.1), ("fast, long prompt", fl.0, fl.1), ("exact, long prompt", el.0, el.1)]
}

/// A deterministic long prompt of ordinary text tokens.
pub fn long_prompt() -> Vec<u32> {
    (0..LONG as u32).map(|i| 1000 + (i * 7919) % 20000).collect()
}

/// (digest, records) of the prompts, prefill and greedy steps, wanting the
/// stages in `wanted` (all when None) and hashing those of them in `hashed`.
pub fn run(
    model: &Model,
    p: Precision,
    prompts: &[Vec<u32>],
    wanted: Option<&'static [Stage]>,
    hashed: Option<&'static [Stage]>,
) -> (u64, usize) {
    let k = kernels_for(p);
    let mut d = Digest(Fnv(0xcbf2_9ce4_8422_2325), 0, wanted, hashed);
    for ids in prompts {
        let mut g = Generator::new(model, k.as_ref(), ids.len() + STEPS);
        let logits = g.prefill(ids, true, &mut d);
        g.decode(logits, Pick::Greedy, &Until::tokens(STEPS), &mut d, &mut |_| Flow::Continue);
    }
    (d.0 .0, d.1)
}

/// Checks the digests against `want`, or prints them.
pub fn check(path_name: &str, want: [u64; 4]) {
    let got = digests();
    if std::env::var("PLUMB_DIGEST_PRINT").is_ok() {
        for (p, h, n) in got {
            eprintln!("{path_name} {p}: {h:#018x} over {n} stage records");
        }
        return;
    }
    for ((p, h, n), w) in got.into_iter().zip(want) {
        assert_eq!(h, w, "{path_name} {p}: digest {h:#018x} over {n} records, pinned {w:#018x}");
    }
}

/// (path, [fast, exact, fast long, exact long]), the first two written by
/// the code at commit 6b2d4b1 on the paths its machine had, the long
/// prompt's by the code at 20176fc (before window layers skipped what they
/// cannot see). The SIMD paths sum in other orders than the scalar
/// references, so each path has its own numbers.
pub const PINNED: [(&str, [u64; 4]); 4] = [
    ("scalar", [0x84ab_4309_c01a_925a, 0x0bc4_b72b_a68c_722c, 0x1fc4_0a50_18c4_ce5d, 0xaf0e_3b05_9cef_f61c]),
    // Pinned as "avx2+fma+f16c+avx512vnni", the name of the auto path on an
    // AVX-512 VNNI machine before the kernel paths were named by what runs.
    (
        "avx2+fma+f16c+avx512f+avx512vl+avx512vnni",
        [0xfb5c_6809_3691_d297, 0xd46f_773e_e413_4d6f, 0x4d2e_7eff_fce2_e421, 0x5978_e8fe_96f3_dc88],
    ),
    // Forced on that machine (digest_avx2.rs, digest_avx512.rs): the numbers
    // an AVX2-only CPU computes, and one with AVX512F but no VNNI. Equal to
    // the VNNI path's, as the wider kernels promise (each is its 256-bit
    // counterpart bit for bit).
    ("avx2+fma+f16c", [0xfb5c_6809_3691_d297, 0xd46f_773e_e413_4d6f, 0x4d2e_7eff_fce2_e421, 0x5978_e8fe_96f3_dc88]),
    (
        "avx2+fma+f16c+avx512f",
        [0xfb5c_6809_3691_d297, 0xd46f_773e_e413_4d6f, 0x4d2e_7eff_fce2_e421, 0x5978_e8fe_96f3_dc88],
    ),
];

/// The pinned digests of a path, where some machine has pinned them.
pub fn pinned(path_name: &str) -> Option<[u64; 4]> {
    PINNED.iter().find(|(n, _)| *n == path_name).map(|(_, d)| *d)
}

//! What a run will hold in memory, estimated before it starts: the KV cache,
//! the forward pass's work buffers, and for a trace the tensors it keeps.
//! Commands print it (`--json`) and refuse, before running, a run whose
//! estimate is over the memory budget (`--max-memory`).
//!
//! The figures follow the buffers the code allocates (model.rs, cache.rs,
//! the recorder); they are upper bounds of what is alive at once, within
//! the allocator's slack.

use plumb_trace::plan::Positions;
use plumb_trace::{Stage, TracePlan};

use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::model::{BATCH, LOGITS_BUDGET, SCORES_BUDGET};

/// Bytes, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The model file, mapped (resident once every weight has been read).
    pub model_file: u64,
    /// The KV cache at full capacity.
    pub kv_cache: u64,
    /// The forward pass's largest step: activations, attention scores,
    /// logits.
    pub work: u64,
    /// Tensors a trace keeps until it is saved (none where they are
    /// written to a scratch file as they come).
    pub trace_tensors: u64,
    /// Tensors written to disk as they come (a scratch file, then the
    /// trace file): not memory, not in the total.
    pub tensors_on_disk: u64,
    /// The rest: the tokenizer, threads, the allocator's slack. Calibrated
    /// on Gemma 3 270M (a one-token run holds 80 MiB besides its file).
    pub runtime: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.model_file + self.kv_cache + self.work + self.trace_tensors + self.runtime
    }

    /// The figures in bytes, as `--json` prints them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_file": self.model_file,
            "kv_cache": self.kv_cache,
            "work": self.work,
            "trace_tensors": self.trace_tensors,
            "tensors_on_disk": self.tensors_on_disk,
            "runtime": self.runtime,
            "total": self.total(),
        })
    }
}

/// What a command will run: a prompt of `prompt` tokens (then decoding up
/// to `capacity` positions), with every position's logits or the last's,
/// watched by `plan` (None: nobody looks inside), whose kept tensors go to
/// a scratch file as they come when `spill` (`Recorder::spilling`).
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub prompt: usize,
    pub capacity: usize,
    pub all_logits: bool,
    pub plan: Option<&'a TracePlan>,
    pub spill: bool,
}

/// Floats of one stage's tensor for a step of `t` rows over `tkv`
/// positions (docs/TRACE_FORMAT.md's shapes).
pub fn stage_floats(cfg: &ModelConfig, stage: Stage, t: usize, tkv: usize) -> u64 {
    let (t, tkv) = (t as u64, tkv as u64);
    // A mixture of experts has its own FFN stages in place of the dense ones.
    let moe = cfg.moe.as_ref();
    let width = match stage {
        Stage::QProj | Stage::QNorm | Stage::QRope | Stage::AttnContext => cfg.q_dim(),
        Stage::KProj | Stage::VProj | Stage::KNorm | Stage::KRope => cfg.kv_dim(),
        Stage::AttnScores | Stage::AttnProbs => return cfg.n_head as u64 * t * tkv,
        Stage::FfnGate | Stage::FfnUp | Stage::FfnAct | Stage::FfnMul => moe.map_or(cfg.ff, |_| 0),
        Stage::FfnDown => moe.map_or(cfg.d, |_| 0),
        Stage::FfnRouter | Stage::FfnRouterProbs => moe.map_or(0, |m| m.experts),
        Stage::FfnExperts | Stage::FfnExpertWeights => moe.map_or(0, |m| m.used),
        Stage::FfnMoeOut => moe.map_or(0, |_| cfg.d),
        Stage::FfnSharedOut => moe.and_then(|m| m.shared_ff).map_or(0, |_| cfg.d),
        Stage::Logits => cfg.vocab,
        _ => cfg.d,
    } as u64;
    t * width
}

/// The estimate for `job` on a model of `cfg` whose file is `file_bytes`.
pub fn estimate(cfg: &ModelConfig, file_bytes: u64, job: Job) -> Estimate {
    let observed = job.plan.is_some_and(|p| p.stages.iter().any(|s| !matches!(s, Stage::FinalNorm | Stage::Logits)));
    // model.rs: a trace whose recorder keeps no tensors, or spills them,
    // takes a long prompt in parts (`Model::in_parts`).
    let takes_parts = job.plan.is_some_and(|p| !p.tensors || job.spill);
    let parts = takes_parts && job.prompt > BATCH;
    // Rows a step of the prompt holds at once: an unobserved prompt, and
    // one taken in parts, go in batches.
    let rows = if parts || !(observed || job.all_logits) { job.prompt.min(BATCH) } else { job.prompt } as u64;
    let tkv = job.prompt as u64;
    let (d, ff, qd, kvd, nh) =
        (cfg.d as u64, cfg.ff as u64, cfg.q_dim() as u64, cfg.kv_dim() as u64, cfg.n_head as u64);
    // x, xn, attn, down; q, ctx; k, v; gate, up; the quantized activations.
    let layer = rows * (4 * d + 2 * qd + 2 * kvd + 2 * ff) * 4 + rows * ff * 2;
    // In parts, the residual stream of the whole step.
    let whole_step = if parts { tkv * d * 4 } else { 0 };
    let wants = |s: Stage| job.plan.is_some_and(|p| p.stages.contains(&s));
    let scores = if !parts && (wants(Stage::AttnScores) || wants(Stage::AttnProbs)) {
        nh * rows * tkv
    } else {
        // Blocks of query rows, 16 at least.
        (SCORES_BUDGET as u64).max(16 * nh * tkv).min(nh * rows * tkv)
    } * 4;
    // Such a recorder takes the logits a few rows at a time, whatever the
    // prompt (`Model::forward`).
    let logit_rows = match (job.all_logits, takes_parts) {
        (false, _) => 1,
        (true, true) => ((LOGITS_BUDGET / cfg.vocab).max(2) as u64).min(rows),
        (true, false) => rows,
    };
    Estimate {
        model_file: file_bytes,
        // A run without a trace keeps only the windows of window layers.
        kv_cache: if job.plan.is_none() {
            KvCache::bytes_for_windowed(cfg, job.capacity)
        } else {
            KvCache::bytes_for(cfg, job.capacity)
        },
        work: layer + whole_step + scores + logit_rows * cfg.vocab as u64 * 4,
        trace_tensors: job.plan.filter(|_| !job.spill).map_or(0, |p| trace_tensor_bytes(cfg, p, job.prompt)),
        tensors_on_disk: job.plan.filter(|_| job.spill).map_or(0, |p| trace_tensor_bytes(cfg, p, job.prompt)),
        runtime: (64 << 20) + cfg.vocab as u64 * 64,
    }
}

/// Bytes of the tensors `plan` keeps for a prompt of `t` tokens: what a
/// trace file holds besides its header.
pub fn trace_tensor_bytes(cfg: &ModelConfig, plan: &TracePlan, t: usize) -> u64 {
    let layers = plan.layers.as_ref().map_or(cfg.n_layer, |set| set.iter().filter(|&&l| l < cfg.n_layer).count());
    let rows = match plan.positions {
        Positions::All => t,
        Positions::Last => 1,
    };
    let kept = plan.stages.iter().filter(|_| plan.tensors);
    kept.map(|&s| stage_floats(cfg, s, rows, t) * 4 * if s.is_per_layer() { layers as u64 } else { 1 }).sum()
}

/// The memory budget when none is given: three quarters of what the
/// machine has available now (None where that cannot be read).
pub fn default_budget() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024 / 4 * 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/gemma3/gemma3-f32.gguf");
        crate::Model::load(&path).unwrap().cfg
    }

    #[test]
    fn kept_tensors_count_every_wanted_stage_and_layer() {
        let c = cfg();
        let t = 100;
        let all = TracePlan { tensors: true, ..TracePlan::default() };
        let per_layer: u64 =
            Stage::ALL.iter().filter(|s| s.is_per_layer()).map(|&s| stage_floats(&c, s, t, t) * 4).sum();
        let global: u64 = Stage::ALL.iter().filter(|s| !s.is_per_layer()).map(|&s| stage_floats(&c, s, t, t) * 4).sum();
        assert_eq!(trace_tensor_bytes(&c, &all, t), per_layer * c.n_layer as u64 + global);
        // Scores and probabilities are H × T × T each.
        assert_eq!(stage_floats(&c, Stage::AttnScores, t, t), (c.n_head * t * t) as u64);
        // The last position only: T becomes 1, the positions attended stay T.
        let last = TracePlan { positions: Positions::Last, ..all.clone() };
        let scores_last = stage_floats(&c, Stage::AttnScores, 1, t) * 4 * c.n_layer as u64;
        assert!(trace_tensor_bytes(&c, &last, t) >= scores_last);
        assert!(trace_tensor_bytes(&c, &last, t) < trace_tensor_bytes(&c, &all, t) / 10);
        // Statistics only: nothing kept.
        assert_eq!(trace_tensor_bytes(&c, &TracePlan::default(), t), 0);
    }

    #[test]
    fn an_unobserved_prompt_is_bounded_by_its_batch_and_a_trace_grows_with_the_square() {
        let c = cfg();
        let run =
            |t: usize| estimate(&c, 0, Job { prompt: t, capacity: t, all_logits: false, plan: None, spill: false });
        // Past one batch, only the KV cache grows with the prompt.
        assert_eq!(run(4 * BATCH).work, run(16 * BATCH).work);
        assert!(run(16 * BATCH).kv_cache > run(4 * BATCH).kv_cache);
        let plan = TracePlan { tensors: true, ..TracePlan::default() };
        let trace = |t: usize| {
            estimate(&c, 0, Job { prompt: t, capacity: t, all_logits: true, plan: Some(&plan), spill: false })
        };
        let (a, b) = (trace(1000).work, trace(4000).work);
        assert!(b > 10 * a, "{a} {b}");
    }

    #[test]
    fn a_statistics_only_trace_grows_only_by_its_residual_stream() {
        let c = cfg();
        let plan = TracePlan::default();
        let trace = |t: usize| {
            estimate(&c, 0, Job { prompt: t, capacity: t, all_logits: true, plan: Some(&plan), spill: false })
        };
        // Past the scores' own floor (16 rows of every position), each
        // token adds its row of x, whatever it is traced for.
        let (a, b) = (16 * BATCH, 64 * BATCH);
        let per_token = c.d as u64 * 4;
        let scores_floor = |t: usize| ((16 * c.n_head * t) as u64 * 4).max(SCORES_BUDGET as u64 * 4);
        assert_eq!(trace(b).work - trace(a).work, (b - a) as u64 * per_token + scores_floor(b) - scores_floor(a),);
        // Keeping the tensors grows with the square.
        let kept = TracePlan { tensors: true, ..TracePlan::default() };
        let with = estimate(&c, 0, Job { prompt: a, capacity: a, all_logits: true, plan: Some(&kept), spill: false });
        assert!(with.total() > 100 * trace(a).work);
        // Written to a scratch file as they come, in parts: held as little
        // as statistics are.
        let spilled = estimate(&c, 0, Job { prompt: a, capacity: a, all_logits: true, plan: Some(&kept), spill: true });
        assert_eq!((spilled.trace_tensors, spilled.work), (0, trace(a).work));
    }
}

//! Flags shared by every command that runs a model, and their resolution.

use std::path::PathBuf;

use anyhow::{bail, Context};
use plumb_model::tokenizer::Tokenizer;
use plumb_model::{F16Math, KvType, KvTypes, Model, Precision};

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("unknown precision {s:?} (available: exact, fast)"))
}

/// A setting given on the command line, or left to `auto`: what llama.cpp
/// does by default at the fast precision, what transformers does at the
/// exact one ([`RunChoice::resolve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auto<T> {
    Auto,
    Set(T),
}

impl<T: Copy> Auto<T> {
    /// The value given, or `auto`'s.
    pub fn or(self, auto: T) -> T {
        match self {
            Auto::Auto => auto,
            Auto::Set(v) => v,
        }
    }
}

pub fn parse_kv_type(s: &str) -> Result<Auto<KvTypes>, String> {
    if s == "auto" {
        return Ok(Auto::Auto);
    }
    KvTypes::parse(s).map(Auto::Set).ok_or_else(|| {
        format!("unknown KV cache type {s:?} (available: auto, f32, f16, q8_0, q4_0; or KEYS,VALUES such as q8_0,f16)")
    })
}

/// `on`, `off` or `auto`, as llama.cpp spells its flash attention switch.
pub fn parse_on_off(s: &str) -> Result<Auto<bool>, String> {
    match s {
        "on" => Ok(Auto::Set(true)),
        "off" => Ok(Auto::Set(false)),
        "auto" => Ok(Auto::Auto),
        _ => Err(format!("{s:?}: on, off or auto")),
    }
}

/// `widened`, `native` or `auto`: the f16 arithmetic of the llama.cpp build
/// mirrored ([`F16Math`]).
pub fn parse_f16_math(s: &str) -> Result<Auto<F16Math>, String> {
    match s {
        "widened" => Ok(Auto::Set(F16Math::Widened)),
        "native" => Ok(Auto::Set(F16Math::Native)),
        "auto" => Ok(Auto::Auto),
        _ => Err(format!("{s:?}: widened, native or auto")),
    }
}

/// How a prompt is cut into forward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ubatch {
    /// The whole prompt in one pass.
    All,
    Rows(usize),
}

/// llama.cpp's default ubatch (`-ub`).
pub const LLAMA_CPP_UBATCH: usize = 512;

impl Ubatch {
    /// Rows per forward pass for a prompt of `prompt` tokens.
    pub fn rows(self, prompt: usize) -> usize {
        match self {
            Ubatch::All => prompt.max(1),
            Ubatch::Rows(n) => n,
        }
    }

    /// `auto`'s ubatch: llama.cpp's 512 at the fast precision, the whole
    /// prompt at the exact one.
    pub fn resolve(given: Auto<Ubatch>, precision: Precision) -> Ubatch {
        given.or(match precision {
            Precision::Fast => Ubatch::Rows(LLAMA_CPP_UBATCH),
            Precision::Exact => Ubatch::All,
        })
    }
}

impl Ubatch {
    /// The most rows of a forward pass, None for the whole prompt.
    pub fn limit(self) -> Option<usize> {
        match self {
            Ubatch::All => None,
            Ubatch::Rows(n) => Some(n),
        }
    }
}

/// A ubatch size or `all` (the whole prompt in one forward pass).
pub fn parse_ubatch(s: &str) -> Result<Ubatch, String> {
    match parse_ubatch_auto(s) {
        Ok(Auto::Set(u)) => Ok(u),
        _ => Err(format!("{s:?}: a number of tokens (at least 1) or `all`")),
    }
}

/// A ubatch size, `all` (the whole prompt in one forward pass) or `auto`.
pub fn parse_ubatch_auto(s: &str) -> Result<Auto<Ubatch>, String> {
    match s {
        "auto" => Ok(Auto::Auto),
        "all" => Ok(Auto::Set(Ubatch::All)),
        _ => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Auto::Set(Ubatch::Rows(n))),
            _ => Err(format!("{s:?}: a number of tokens (at least 1), `all` or `auto`")),
        },
    }
}

/// Whether llama.cpp's CPU backend, built for this machine, repacks
/// weights at load: on x86 with AVX2 (its `--repack`, on by default). Read
/// from the CPU itself, not from the kernel path plumb runs, which a test
/// may force to another.
pub fn llama_cpp_repacks() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The three settings that change the arithmetic, as given: the flags of
/// every command that runs a model (bisect spells them per side).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct RunChoice {
    /// KV cache type: `f32`; `f16` (keys and values rounded to f16 as
    /// stored; the fast precision as llama.cpp's `-ctk f16 -ctv f16`);
    /// `q8_0` or `q4_0` (blocks of 32, as llama.cpp's `-ctk q8_0 -ctv q8_0`;
    /// they need flash attention); `KEYS,VALUES` for types that differ
    /// (llama.cpp's `-ctk KEYS -ctv VALUES`: quantized values need flash
    /// attention); `auto`: f16 at the fast precision (as llama.cpp by
    /// default), f32 at the exact one.
    #[arg(long = "kv-type", default_value = "auto", value_parser = parse_kv_type)]
    pub kv_type: Auto<KvTypes>,
    /// Flash attention, as llama.cpp's `-fa on` computes it (the fast
    /// precision only): `on`, `off` or `auto` (on at the fast precision, as
    /// llama.cpp's CPU backend resolves its `auto`; off at the exact one).
    /// Under it a trace has no attn_scores or attn_probs.
    #[arg(long = "flash-attn", default_value = "auto", value_parser = parse_on_off)]
    pub flash_attn: Auto<bool>,
    /// Repacked weights, as llama.cpp's CPU backend repacks them at load
    /// on CPUs with AVX2 (the fast precision only): Q4_0, IQ4_NL and Q4_K
    /// matrices of a multiple of 8 rows (and Q2_K on CPUs with AVX-512)
    /// summed as its interleaved kernels sum them. `on`,
    /// `off` or `auto` (on at the fast precision where llama.cpp repacks).
    #[arg(long = "repack", default_value = "auto", value_parser = parse_on_off)]
    pub repack: Auto<bool>,
    /// The f16 arithmetic of the llama.cpp build mirrored, in flash
    /// attention's f16 running context: `widened` (each f16 widened to
    /// f32, as every build without AVX512-FP16), `native` (one f16
    /// operation, as llama.cpp built with `-march=native` on a CPU with
    /// AVX512-FP16), or `auto` (under flash attention, what llama.cpp built
    /// on this CPU does).
    #[arg(long = "f16-math", default_value = "auto", value_parser = parse_f16_math)]
    pub f16_math: Auto<F16Math>,
}

impl RunChoice {
    /// Every setting left to the precision.
    pub const AUTO: RunChoice =
        RunChoice { kv_type: Auto::Auto, flash_attn: Auto::Auto, repack: Auto::Auto, f16_math: Auto::Auto };

    /// The settings a run computes with. `auto` is llama.cpp's default at
    /// the fast precision (an f16 cache, flash attention, repacked weights
    /// where its CPU backend repacks them, and the f16 arithmetic of
    /// llama.cpp built on this CPU) and transformers' at the exact
    /// one (an f32 cache, plain attention). A setting given that the
    /// precision cannot compute is refused.
    pub fn resolve(self, precision: Precision) -> anyhow::Result<plumb_model::RunSettings> {
        let fast = precision == Precision::Fast;
        let kv_type = self.kv_type.or(KvTypes::both(if fast { KvType::F16 } else { KvType::F32 }));
        // A quantized cache turns llama.cpp's `auto` flash attention on.
        let flash_attn = self.flash_attn.or(fast);
        let repack = self.repack.or(fast && llama_cpp_repacks());
        if flash_attn && !fast {
            bail!("--flash-attn on: flash attention is a setting of the fast precision (llama.cpp's arithmetic); the exact precision computes as transformers does");
        }
        if repack && !fast {
            bail!("--repack on: repacked weights are a setting of the fast precision (llama.cpp's arithmetic); the exact precision computes as transformers does");
        }
        if kv_type.v.block_type().is_some() && !flash_attn {
            bail!(
                "--kv-type {}: a quantized value cache needs flash attention (the fast precision, --flash-attn on or auto), as in llama.cpp (its attention without flash attention cannot read quantized values)",
                kv_type.name()
            );
        }
        if kv_type.k.block_type().is_some() && !fast {
            bail!(
                "--kv-type {}: a quantized key cache is a setting of the fast precision (llama.cpp's arithmetic); the exact precision computes as transformers does",
                kv_type.name()
            );
        }
        // Only flash attention over f16 (or f32) values keeps an f16
        // context; over quantized values it is f32.
        let f16_context = flash_attn && kv_type.v.block_type().is_none();
        let f16_math = self.f16_math.or(if f16_context { F16Math::of_this_cpu() } else { F16Math::Widened });
        if f16_math == F16Math::Native && !f16_context {
            bail!("--f16-math native: a build's f16 arithmetic shows in flash attention's f16 context only, which needs flash attention (the fast precision, --flash-attn on or auto) over an f16 or f32 KV cache");
        }
        Ok(plumb_model::RunSettings { kv_type, flash_attn, repack, swa_ring_ubatch: None, f16_math, ubatch: None })
    }
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// A GGUF file or a HuggingFace model folder.
    pub model: PathBuf,
    /// Arithmetic: `fast` (quantized activations, integer dot products, as
    /// llama.cpp) or `exact` (f32 activations, dequantized weights).
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// Threads (default: all cores). Results do not depend on it, except
    /// under flash attention, where llama.cpp splits one token's cells
    /// into a chunk per thread.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub settings: RunChoice,
}

impl ModelArgs {
    /// The precision asked for: fast unless the command says otherwise.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or(Precision::Fast)
    }
}

#[derive(clap::Args)]
pub struct PromptArgs {
    /// Prompt text.
    #[arg(short = 'p', long = "prompt", conflicts_with_all = ["file", "tokens"])]
    pub text: Option<String>,
    /// Read the prompt from a file (UTF-8).
    #[arg(short = 'f', long = "file", conflicts_with = "tokens")]
    pub file: Option<PathBuf>,
    /// Feed these token ids instead of text, e.g. `--tokens 2,651,6037`.
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// Do not add the BOS token the model asks for.
    #[arg(long)]
    pub no_bos: bool,
    /// Recognize control tokens (e.g. <start_of_turn>) written in the prompt.
    #[arg(long)]
    pub special: bool,
}

// A model with its tokenizer, loaded as bisect's calibration loads it (one
// loader for every command). It belongs in plumb-model; it sits in
// plumb-bisect while model.rs is being rewritten elsewhere.
pub use plumb_bisect::Loaded;

/// Sets up the thread pool and loads the model and its tokenizer, printing
/// a tokenizer plumb cannot use as a warning.
pub fn load(args: &ModelArgs) -> anyhow::Result<Loaded> {
    if args.threads == Some(0) {
        bail!("-t/--threads must be at least 1");
    }
    // This thread is one of the pool's workers, so the forward pass's many
    // small parallel sections start here rather than being handed to the
    // pool and waited for (a context switch each, hundreds per token).
    let mut pool = rayon::ThreadPoolBuilder::new().use_current_thread();
    if let Some(n) = args.threads {
        pool = pool.num_threads(n);
    }
    let settings = args.settings.resolve(args.precision())?;
    pool.build_global().ok();
    let (mut loaded, warning) = Loaded::open(&args.model)?;
    if settings.kv_type.any_quantized() && !loaded.model.cfg.head_dim.is_multiple_of(32) {
        bail!(
            "--kv-type {}: the model's heads are {} wide, not whole blocks of 32",
            settings.kv_type.name(),
            loaded.model.cfg.head_dim
        );
    }
    loaded.model.set_run_settings(settings);
    if let Some(w) = warning {
        eprintln!("plumb: warning: {w}");
    }
    Ok(loaded)
}

impl PromptArgs {
    /// The prompt as the bisect library asks for it: ids under a tokenizer,
    /// with this command line's errors.
    pub fn tokenizer_fn(
        &self,
    ) -> impl Fn(Option<&Tokenizer>) -> Result<Vec<u32>, Box<dyn std::error::Error + Send + Sync>> + '_ {
        move |tok| self.token_ids(tok).map_err(Into::into)
    }

    /// The token ids to feed: from --tokens, or the tokenized prompt.
    pub fn token_ids(&self, tok: Option<&Tokenizer>) -> anyhow::Result<Vec<u32>> {
        if let Some(ids) = &self.tokens {
            if ids.is_empty() {
                bail!("--tokens is empty");
            }
            if let Some(t) = tok {
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= t.vocab_size()) {
                    bail!("--tokens: id {bad} is outside the {}-token vocabulary", t.vocab_size());
                }
            }
            return Ok(ids.clone());
        }
        let text = match (&self.text, &self.file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => read_text(f, "prompt file")?,
            (None, None) => bail!("give a prompt with -p TEXT, -f FILE or --tokens IDS"),
        };
        let Some(tok) = tok else {
            bail!("this model has no tokenizer plumb can use; give the prompt as --tokens");
        };
        let ids = tok.encode(&text, !self.no_bos, self.special);
        if ids.is_empty() {
            bail!("the prompt is empty and the model adds no BOS token: nothing to run");
        }
        Ok(ids)
    }
}

/// A UTF-8 text file the user gave, as `what` (e.g. "prompt file"): a
/// missing file or a byte that is not UTF-8 is an error naming both.
pub fn read_text(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: {what} is not UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a prompt plus `n` more tokens (asked for with `flag`) that
/// overflows the model's context or whose KV cache cannot fit in memory.
pub fn check_capacity(model: &Model, prompt: usize, flag: &str, n: usize) -> anyhow::Result<()> {
    if prompt + n > model.cfg.ctx_len {
        bail!(
            "prompt ({prompt} tokens) + {flag} {n} exceeds the model's context of {} tokens; shorten the prompt or lower {flag}",
            model.cfg.ctx_len
        );
    }
    check_kv_fits(model, prompt + n)
}

/// Refuses a KV cache that cannot fit in the memory available now, before
/// allocating it.
pub fn check_kv_fits(model: &Model, capacity: usize) -> anyhow::Result<()> {
    let need = plumb_model::KvCache::bytes_for(&model.cfg, capacity);
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    });
    if let Some(avail) = avail {
        if need > avail {
            bail!(
                "the KV cache for {capacity} positions needs {} but only {} of memory is available; use a shorter prompt or fewer tokens",
                crate::out::bytes(need),
                crate::out::bytes(avail)
            );
        }
    }
    Ok(())
}

/// Refuses to overwrite an existing output file unless `force`.
pub fn check_output(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    Ok(())
}

/// A memory size: bytes, or a number with K, M, G or T (powers of 1024;
/// `KiB`, `MB` and the like read the same), e.g. `8G`, `512MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 8G, 512M, 1000000)"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (K, M, G or T)")),
    };
    let bytes = n * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

/// The estimate's parts in words, e.g. "KV cache 155 MiB, work 1.2 GiB".
pub fn describe_estimate(e: &plumb_model::memory::Estimate) -> String {
    let parts = [
        ("model file", e.model_file),
        ("KV cache", e.kv_cache),
        ("work buffers", e.work),
        ("kept tensors", e.trace_tensors),
        ("runtime", e.runtime),
    ];
    parts
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(n, b)| format!("{n} {}", crate::out::bytes(*b)))
        .chain(
            (e.tensors_on_disk > 0).then(|| format!("and {} of tensors on disk", crate::out::bytes(e.tensors_on_disk))),
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses, before anything runs, a job whose estimate is over `budget`
/// (`--max-memory`, else three quarters of the memory available now),
/// naming the estimate and the cheaper ways to run it with theirs.
pub fn check_memory(
    est: &plumb_model::memory::Estimate,
    budget: Option<u64>,
    what: &str,
    cheaper: &[(&str, plumb_model::memory::Estimate)],
) -> anyhow::Result<()> {
    let Some(budget) = budget.or_else(plumb_model::memory::default_budget) else { return Ok(()) };
    if est.total() <= budget {
        return Ok(());
    }
    let b = crate::out::bytes;
    let mut msg = format!(
        "{what} would hold about {} ({}), over the memory budget of {} (--max-memory; by default 3/4 of the memory available)",
        b(est.total()),
        describe_estimate(est),
        b(budget)
    );
    let cheaper: Vec<_> = cheaper.iter().filter(|(_, e)| e.total() < est.total()).collect();
    if !cheaper.is_empty() {
        msg.push_str("; cheaper:");
        for (how, e) in cheaper {
            let fits = if e.total() <= budget { "fits" } else { "still over" };
            msg.push_str(&format!("\n  {how}: about {} ({fits})", b(e.total())));
        }
    }
    bail!(msg)
}

/// Bytes free for an unprivileged user on the file system holding `dir`
/// (None where that cannot be read).
pub fn free_disk(dir: &std::path::Path) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a NUL-terminated string and `st` a writable
        // statvfs; the call fills it when it returns 0.
        if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = dir;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_binary_units() {
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 KB "), Ok(2048));
        for bad in ["", "G", "8X", "-1", "0", "1e400", "NaN"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}

//! `plumb run MODEL -p PROMPT`: generate text, streaming it to stdout, with
//! prompt and generation speed on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::bail;
use plumb_model::generate::{Flow, Generator, Pick, Until};
use plumb_model::kernels::kernels_for;
use plumb_model::memory;
use plumb_model::sample::{Sampler, SamplerConfig};
use plumb_model::tokenizer::StreamDecoder;
use plumb_model::NoTrace;

use crate::cmd::common::{check_capacity, load, Auto, ModelArgs, PromptArgs, Ubatch};
use crate::progress::{bar, Progress};
use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    pub n: usize,
    /// Sampling temperature; 0 is greedy (the default).
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Show token ids: the prompt's on stderr, each generated one after its text.
    #[arg(long)]
    pub ids: bool,
    /// Print one JSON document instead of streaming text: the prompt's ids,
    /// the generated ids (an end-of-generation token included) and the text.
    #[arg(long)]
    pub json: bool,
    /// Refuse, before running, a run estimated to hold more memory than
    /// this (e.g. `8G`); by default 3/4 of the memory available.
    #[arg(long, value_parser = crate::cmd::common::parse_size)]
    pub max_memory: Option<u64>,
    /// Compute the prompt N tokens at a time, each part attending to the
    /// cache the earlier ones filled: llama.cpp's physical batch (`-ub`),
    /// which changes its rounding and so, on long prompts, its output.
    /// `all`: the whole prompt at once (llama.cpp with `-ub` ≥ the
    /// prompt); `auto`: 512 at the fast precision (llama.cpp's default),
    /// `all` at the exact one.
    #[arg(long, value_name = "N|all|auto", default_value = "auto", value_parser = crate::cmd::common::parse_ubatch_auto)]
    pub ubatch: Auto<Ubatch>,
    /// The sliding-window layers' KV cache full-size (`on`, as
    /// llama-cpp-python keeps it) or, `off`, as llama-completion keeps it
    /// by default: cells for the window and a ubatch, reused as a ring, so
    /// that past them attention goes over positions out of order (under
    /// flash attention). `auto`: off under flash attention, on otherwise.
    #[arg(long = "swa-full", default_value = "auto", value_parser = crate::cmd::common::parse_on_off)]
    pub swa_full: Auto<bool>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if !args.temp.is_finite() || args.temp < 0.0 {
        bail!("--temp must be a finite number ≥ 0, got {}", args.temp);
    }
    let mut loaded = load(&args.model)?;
    let precision = args.model.precision();
    let flash_attn = loaded.model.cfg.flash_attn;
    let swa_full = args.swa_full.or(!flash_attn);
    if !swa_full && !flash_attn {
        bail!("--swa-full off: the window-sized sliding-window cache is mirrored under flash attention only");
    }
    let prompt_ids = args.prompt.token_ids(loaded.tokenizer.as_ref())?;
    let ubatch = Ubatch::resolve(args.ubatch, precision).rows(prompt_ids.len());
    if !swa_full {
        // Cells for the window and a ubatch.
        let mut r = loaded.model.cfg.run_settings();
        r.swa_ring_ubatch = Some(ubatch);
        loaded.model.set_run_settings(r);
    }
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let capacity = prompt_ids.len() + args.n;
    check_capacity(model, prompt_ids.len(), "-n", args.n)?;
    let file_bytes = model.source.path().metadata().map(|m| m.len()).unwrap_or(0);
    let job = memory::Job { prompt: prompt_ids.len(), capacity, all_logits: false, plan: None, spill: false };
    let estimate = memory::estimate(&model.cfg, file_bytes, job);
    crate::cmd::common::check_memory(&estimate, args.max_memory, "this run", &[])?;
    if args.ids {
        eprintln!("prompt ids: {prompt_ids:?}");
    }
    let kernels = kernels_for(precision);
    // The precision with the settings that change its arithmetic.
    let settings = plumb_bisect::runs::settings(precision, model.cfg.run_settings());
    let mut gen = Generator::windowed(model, kernels.as_ref(), capacity);
    let mut sampler =
        Sampler::new(SamplerConfig { temp: args.temp, top_k: args.top_k, top_p: args.top_p, seed: args.seed });

    let mut stdout = crate::out::Stdout;
    let stream = !args.json;
    if let (Some(t), true) = (tok.as_ref(), stream) {
        write!(
            stdout,
            "{}",
            args.prompt.text.as_deref().map(|_| t.decode(&prompt_ids[usize::from(t.add_bos)..])).unwrap_or_default()
        )?;
        stdout.flush()?;
    }
    let t0 = Instant::now();
    let mut quiet = NoTrace;
    let mut watch = Progress::new(&mut quiet, bar("prompt", prompt_ids.len(), model.cfg.n_layer));
    let logits = gen.prefill_in(&prompt_ids, ubatch, &mut watch);
    watch.finish();
    let prefill = t0.elapsed();

    let mut dec = StreamDecoder::default();
    let t1 = Instant::now();
    let mut text = String::new();
    // A write error (a closed pipe) ends generation and is returned after.
    let mut write_err: Option<std::io::Error> = None;
    let is_eog = |id: u32| tok.as_ref().is_some_and(|t| t.is_eog(id));
    let until = Until { max_new: args.n, stop: Some(&is_eog), feed_last: true };
    let generated = gen
        .decode(logits, Pick::Sample(&mut sampler), &until, &mut NoTrace, &mut |step| {
            let next = step.token;
            if is_eog(next) {
                return Flow::Stop;
            }
            let piece = match tok.as_ref() {
                Some(t) => dec.push(&t.token_bytes(next)),
                None => format!("{next} "),
            };
            text.push_str(&piece);
            if stream {
                let wrote = write!(stdout, "{piece}")
                    .and_then(|_| if args.ids { write!(stdout, "[{next}]") } else { Ok(()) })
                    .and_then(|_| stdout.flush());
                if let Err(e) = wrote {
                    write_err = Some(e);
                    return Flow::Stop;
                }
            }
            Flow::Continue
        })
        .tokens;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let tail = dec.finish();
    text.push_str(&tail);
    if stream {
        writeln!(stdout, "{tail}")?;
    } else {
        let doc = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated": generated,
            "text": text,
            "settings": settings,
            "ubatch": ubatch,
            "memory_estimate": estimate.to_json(),
        });
        writeln!(stdout, "{doc}")?;
    }
    let gen = t1.elapsed();
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tokens/s) · generation: {} tokens in {:.2} s ({:.1} tokens/s) · {}{}, {} threads",
        prompt_ids.len(),
        prefill.as_secs_f64(),
        prompt_ids.len() as f64 / prefill.as_secs_f64(),
        generated.len(),
        gen.as_secs_f64(),
        generated.len() as f64 / gen.as_secs_f64().max(1e-9),
        settings,
        if ubatch < prompt_ids.len() { format!(", ubatch {ubatch}") } else { String::new() },
        rayon::current_num_threads(),
    );
    Ok(Outcome::Ok)
}

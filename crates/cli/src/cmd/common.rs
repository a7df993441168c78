//! Flags shared by every command that runs a model, and their resolution.

use std::path::PathBuf;

use anyhow::{bail, Context};
use plumb_model::tokenizer::Tokenizer;
use plumb_model::{Model, ModelSource, Precision};

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("unknown precision {s:?} (available: exact)"))
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// A GGUF file or a HuggingFace model folder.
    pub model: PathBuf,
    /// Arithmetic: `exact` (f32 activations, dequantized weights).
    #[arg(long, default_value = "exact", value_parser = parse_precision)]
    pub precision: Precision,
    /// Threads (default: all cores). Results do not depend on it.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
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

pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
}

pub fn load(args: &ModelArgs) -> anyhow::Result<Loaded> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("-t/--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
    let model = Model::load(&args.model)
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let tokenizer = match &model.source {
        ModelSource::Gguf(g) => match Tokenizer::from_gguf(g) {
            Ok(t) => {
                if t.vocab_size() != model.cfg.vocab {
                    bail!(
                        "{}: tokenizer has {} tokens but the embedding has {} rows",
                        args.model.display(),
                        t.vocab_size(),
                        model.cfg.vocab
                    );
                }
                Some(t)
            }
            Err(e) => {
                eprintln!("plumb: warning: {e}; give the prompt as --tokens");
                None
            }
        },
        ModelSource::Hf(h) if h.dir.join("tokenizer.json").is_file() => {
            Some(Tokenizer::from_hf_dir(&h.dir).with_context(|| {
                format!("cannot load the tokenizer of {}", args.model.display())
            })?)
        }
        ModelSource::Hf(_) => None,
    };
    Ok(Loaded { model, tokenizer })
}

impl PromptArgs {
    /// The token ids to feed: from --tokens, or the tokenized prompt.
    pub fn token_ids(&self, tok: Option<&Tokenizer>) -> anyhow::Result<Vec<u32>> {
        if let Some(ids) = &self.tokens {
            if ids.is_empty() {
                bail!("--tokens is empty");
            }
            if let Some(t) = tok {
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= t.vocab_size()) {
                    bail!(
                        "--tokens: id {bad} is outside the {}-token vocabulary",
                        t.vocab_size()
                    );
                }
            }
            return Ok(ids.clone());
        }
        let text = match (&self.text, &self.file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => {
                let bytes = std::fs::read(f)
                    .with_context(|| format!("cannot read prompt file {}", f.display()))?;
                String::from_utf8(bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: prompt file is not UTF-8 (invalid byte at offset {})",
                        f.display(),
                        e.utf8_error().valid_up_to()
                    )
                })?
            }
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

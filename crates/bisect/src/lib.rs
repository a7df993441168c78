//! Bisecting two runs of a model: the orchestration behind `plumb bisect`,
//! above the engine (plumb-model) and the comparison (plumb-diff), so the
//! command line, the tests and a future Python binding call the same
//! functions.
//!
//! - [`runs`]: traced runs, stage isolation on a reference's inputs, saved
//!   reference traces, trace metadata;
//! - [`noisy`]: the noise-aware bisect (its default): findings about what the
//!   two sides were given, calibration, bands, the report;
//! - [`fixed`]: the bisect against a fixed bound (`--tol`/`--gate`);
//! - [`teacher`]: teacher forcing, the logits compared on the reference's
//!   greedy tokens.
//!
//! This crate parses no flags and prints nothing: it returns traces,
//! reports (plumb-diff's structs) and notes for the caller to show.

pub mod fixed;
pub mod noisy;
pub mod runs;
pub mod teacher;

use std::path::{Path, PathBuf};

use plumb_model::tokenizer::{Tokenizer, TokenizerError};
use plumb_model::{Model, ModelError, ModelSource, Precision};

/// Errors of a bisect, naming the file, tensor or count at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{path}: tokenizer has {tokenizer} tokens but the embedding has {rows} rows")]
    TokenizerSize { path: PathBuf, tokenizer: usize, rows: usize },
    #[error("cannot load the tokenizer of {path}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error(transparent)]
    Trace(#[from] plumb_trace::TraceError),
    #[error("{path}: the reference trace records no token ids (plumb.tokens)")]
    ReferenceNoTokens { path: PathBuf },
    #[error("{path}: token id {id} is outside A's {vocab}-token vocabulary")]
    ReferenceToken { path: PathBuf, id: u32, vocab: usize },
    #[error("{path}: the reference trace holds no tensors (trace it with --tensors)")]
    ReferenceNoTensors { path: PathBuf },
    #[error("--isolate needs the reference's {key} tensor")]
    IsolateMissing { key: String },
    #[error("--isolate: reference {key} has shape {shape:?}, A needs [{tokens}, {d}]")]
    IsolateShape { key: String, shape: Vec<usize>, tokens: usize, d: usize },
    #[error(
        "--isolate runs each layer on the whole prompt at once: leave out A's --a-ubatch ({ubatch} < {tokens} tokens)"
    )]
    IsolateUbatch { ubatch: usize, tokens: usize },
    #[error("{tokens} tokens exceed A's context of {ctx}")]
    TooLong { tokens: usize, ctx: usize },
    #[error("vocabularies disagree: A has {a} tokens, B has {b}")]
    VocabSize { a: usize, b: usize },
    #[error("vocabularies disagree at token {id}: A {a:?}, B {b:?}")]
    VocabEntry { id: u32, a: String, b: String },
    /// The caller's tokenization of the prompt failed.
    #[error(transparent)]
    Prompt(Box<dyn std::error::Error + Send + Sync>),
    #[error("--save-noise needs a calibration run (the two sides compute the same arithmetic, or --noise was given)")]
    NoCalibration,
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The prompt as the caller resolves it: token ids under a given tokenizer
/// (or none), with the caller's own errors (an empty prompt, a missing
/// tokenizer) passed through as [`Error::Prompt`].
pub type Tokenize<'a> =
    &'a dyn Fn(Option<&Tokenizer>) -> std::result::Result<Vec<u32>, Box<dyn std::error::Error + Send + Sync>>;

/// The two sides of a bisect and the prompt they run on. A carries any
/// injected fault already (`Model::fault`).
pub struct Sides<'a> {
    /// The model under test.
    pub a_path: &'a Path,
    pub a: &'a Loaded,
    pub a_precision: Precision,
    /// The reference model's file (A's when B is A at another precision).
    pub b_path: &'a Path,
    /// The reference model; None when the reference is a saved trace.
    pub b: Option<&'a Loaded>,
    pub b_precision: Precision,
    /// A saved reference trace instead of B's run; its token ids replace
    /// the prompt.
    pub reference: Option<&'a Path>,
    /// The prompt text, for trace metadata.
    pub prompt_text: Option<&'a str>,
    /// The prompt was given as ids: no tokenizer is asked about it.
    pub prompt_is_ids: bool,
    pub tokenize: Tokenize<'a>,
    /// The fault injected into A, as given (for the report's notes).
    pub inject: Option<&'a str>,
}

impl Sides<'_> {
    /// The reference's trace and the token ids both sides run: the saved
    /// trace's, or the prompt under B's tokenizer (A's if B has none).
    fn reference_and_ids(&self) -> Result<(plumb_trace::Trace, Vec<u32>)> {
        match (self.reference, self.b) {
            (Some(r), _) => {
                let t = runs::reference_trace(r, self.a)?;
                let ids = t.tokens.clone();
                Ok((t, ids))
            }
            (None, Some(b)) => {
                let tok = b.tokenizer.as_ref().or(self.a.tokenizer.as_ref());
                let ids = (self.tokenize)(tok).map_err(Error::Prompt)?;
                Ok((runs::traced(self.b_path, b, self.b_precision, &ids, self.prompt_text)?, ids))
            }
            (None, None) => unreachable!("B is a model or a trace"),
        }
    }

    fn check_context(&self, ids: &[u32]) -> Result<()> {
        if ids.len() > self.a.model.cfg.ctx_len {
            return Err(Error::TooLong { tokens: ids.len(), ctx: self.a.model.cfg.ctx_len });
        }
        Ok(())
    }
}

/// A model and its tokenizer, if plumb can use it.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
}

impl Loaded {
    /// Loads a GGUF file, an APR file or a HuggingFace folder with its
    /// tokenizer. A GGUF or APR tokenizer plumb cannot use is not fatal (the prompt can be given as
    /// ids): it comes back as a warning.
    pub fn open(path: &Path) -> Result<(Loaded, Option<String>)> {
        let mut model = Model::load(path).map_err(|source| Error::Load { path: path.into(), source })?;
        let mut warning = None;
        // A file's own tokenizer (GGUF, APR metadata), or a folder's tokenizer.json.
        let embedded = match &model.source {
            ModelSource::Gguf(g) => Some(Tokenizer::from_gguf(g)),
            ModelSource::Apr(a) => Some(Tokenizer::from_apr(a)),
            ModelSource::Hf(_) => None,
        };
        let tokenizer = match (&model.source, embedded) {
            (_, Some(embedded)) => match embedded {
                Ok(t) => {
                    if t.vocab_size() != model.cfg.vocab {
                        return Err(Error::TokenizerSize {
                            path: path.into(),
                            tokenizer: t.vocab_size(),
                            rows: model.cfg.vocab,
                        });
                    }
                    Some(t)
                }
                Err(e) => {
                    warning = Some(format!("{e}; give the prompt as --tokens"));
                    None
                }
            },
            (ModelSource::Hf(h), None) if h.dir.join("tokenizer.json").is_file() => {
                Some(Tokenizer::from_hf_dir(&h.dir).map_err(|source| Error::Tokenizer { path: path.into(), source })?)
            }
            (_, None) => None,
        };
        // The tokenizer holds its own copy of the vocabulary now.
        if let (ModelSource::Gguf(g), Some(_)) = (&mut model.source, &tokenizer) {
            g.release(&[
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges",
            ]);
        }
        // A key or tensor plumb does not read is said, never passed over in
        // silence.
        let unread = [
            ("metadata key", plumb_model::weights::unused_metadata(&model.source, &model.cfg)),
            ("tensor", plumb_model::weights::unused_tensors(&model.source, &model.cfg)),
        ];
        for note in unread.iter().filter_map(|(noun, names)| unread_note(noun, names)) {
            warning = Some(match warning {
                Some(w) => format!("{w}; {note}"),
                None => note,
            });
        }
        Ok((Loaded { model, tokenizer }, warning))
    }
}

/// "3 tensors in the file are not read by plumb (a, b, c); …": what a load
/// says of the keys or tensors (`noun`) it passes over (the first four
/// named), or None where there are none.
fn unread_note(noun: &str, names: &[String]) -> Option<String> {
    let n = names.len();
    if n == 0 {
        return None;
    }
    let shown = names.iter().take(4).map(String::as_str).collect::<Vec<_>>().join(", ");
    let more = if n > 4 { format!(" and {} more", n - 4) } else { String::new() };
    let (s, is, them) = if n == 1 { ("", "is", "it") } else { ("s", "are", "them") };
    Some(format!(
        "{n} {noun}{s} in the file {is} not read by plumb ({shown}{more}); if the converter meant {them} to change the model, its results will differ"
    ))
}

/// Refuses to compare two models whose vocabularies disagree, naming the
/// first token where they part.
pub fn check_vocabularies(a: &Loaded, b: &Loaded) -> Result<()> {
    if a.model.cfg.vocab != b.model.cfg.vocab {
        return Err(Error::VocabSize { a: a.model.cfg.vocab, b: b.model.cfg.vocab });
    }
    if let (Some(ta), Some(tb)) = (&a.tokenizer, &b.tokenizer) {
        for id in 0..ta.vocab_size().min(tb.vocab_size()) as u32 {
            if ta.piece(id) != tb.piece(id) {
                return Err(Error::VocabEntry {
                    id,
                    a: ta.piece(id).unwrap_or("").into(),
                    b: tb.piece(id).unwrap_or("").into(),
                });
            }
        }
    }
    Ok(())
}

/// A file's name for reports ("" for none).
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

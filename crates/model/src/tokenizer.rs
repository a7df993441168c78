//! Tokenizers: SentencePiece-style from GGUF metadata (ours, below), and
//! byte-level BPE — GGUF `gpt2` vocabularies and HF `tokenizer.json` files —
//! through the `tokenizers` crate.
//!
//! `llama` (SentencePiece-style): text has its spaces escaped to `▁`
//! (and a leading one added when `tokenizer.ggml.add_space_prefix` says so),
//! is split into characters, and adjacent pieces are merged greedily by the
//! highest vocabulary score, leftmost first; pieces not in the vocabulary
//! fall back to `<0xXX>` byte tokens. User-defined tokens are matched in the
//! raw text first, and control tokens too when special parsing is on.

use std::collections::{BinaryHeap, HashMap};

use plumb_formats::gguf::{GgufFile, Value};

/// GGUF token types (llama.cpp `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_BYTE: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer: {0}")]
    Invalid(String),
}

/// How text becomes ids.
enum Backend {
    /// Score-ordered merges over characters (below).
    Spm,
    /// A `tokenizers` pipeline, with whether token strings are byte-level
    /// (GPT-2's byte-to-unicode alphabet) or SentencePiece-style.
    Hf { tk: Box<tokenizers::Tokenizer>, byte_level: bool },
}

pub struct Tokenizer {
    pub kind: String,
    backend: Backend,
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<String, u32>,
    byte_tokens: [Option<u32>; 256],
    /// Tokens matched in raw text before merging, longest first.
    specials: Vec<(String, u32, bool)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Extra end-of-generation tokens (end of turn).
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    pub unk: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({}, {} tokens)", self.kind, self.tokens.len())
    }
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Highest score first; on ties the leftmost pair.
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Self::from_metadata(g.path(), &|k| g.get(k))
    }

    /// The tokenizer aprender stores in an APR file's metadata
    /// (`tokenizer.vocabulary`, `tokenizer.merges`, ...), read as the GGUF
    /// keys it was copied from. A SentencePiece vocabulary needs its scores,
    /// which aprender does not keep: without them it is refused.
    pub fn from_apr(a: &plumb_formats::apr::AprFile) -> Result<Tokenizer, TokenizerError> {
        let keys = [
            ("tokenizer.vocabulary", "tokenizer.ggml.tokens"),
            ("tokenizer.merges", "tokenizer.ggml.merges"),
            ("tokenizer.scores", "tokenizer.ggml.scores"),
            ("tokenizer.token_type", "tokenizer.ggml.token_type"),
            ("tokenizer.model", "tokenizer.ggml.model"),
            ("tokenizer.model_type", "tokenizer.ggml.model"),
            ("tokenizer.bos_token_id", "tokenizer.ggml.bos_token_id"),
            ("tokenizer.eos_token_id", "tokenizer.ggml.eos_token_id"),
            ("tokenizer.padding_token_id", "tokenizer.ggml.padding_token_id"),
            ("tokenizer.add_bos_token", "tokenizer.ggml.add_bos_token"),
            ("tokenizer.pre_type", "tokenizer.ggml.pre"),
        ];
        let mut meta: HashMap<&str, Value> = HashMap::new();
        for (apr, gguf) in keys {
            if let Some(v) = a.get(apr).and_then(json_value) {
                meta.entry(gguf).or_insert(v);
            }
        }
        if !meta.contains_key("tokenizer.ggml.tokens") {
            return Err(TokenizerError::Invalid(format!("{}: no tokenizer.vocabulary", a.path().display())));
        }
        let kind = meta.get("tokenizer.ggml.model").and_then(Value::as_str);
        if kind == Some("llama") && !meta.contains_key("tokenizer.ggml.scores") {
            return Err(TokenizerError::Invalid(format!(
                "{}: a SentencePiece vocabulary without its scores (aprender does not keep them)",
                a.path().display()
            )));
        }
        Self::from_metadata(a.path(), &|k| meta.get(k))
    }

    /// A tokenizer from GGUF-named metadata (`tokenizer.ggml.*`), wherever
    /// it was read from; `path` names the file in errors.
    pub fn from_metadata<'a>(
        path: &std::path::Path,
        get: &dyn Fn(&str) -> Option<&'a Value>,
    ) -> Result<Tokenizer, TokenizerError> {
        let bad = |m: String| TokenizerError::Invalid(format!("{}: {m}", path.display()));
        let str_opt = |k: &str| -> Result<Option<&'a str>, TokenizerError> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.as_str().map(Some).ok_or_else(|| bad(format!("{k} is not a string"))),
            }
        };
        let u64_opt = |k: &str| -> Result<Option<u64>, TokenizerError> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| bad(format!("{k} is not a non-negative integer"))),
            }
        };
        let kind = str_opt("tokenizer.ggml.model")?.unwrap_or("none").to_string();
        if kind != "llama" && kind != "gpt2" {
            return Err(bad(format!("tokenizer model {kind:?} is not supported (llama, gpt2)")));
        }
        let arr = |k: &str| -> Option<&'a [Value]> { get(k).and_then(Value::as_array) };
        let tokens: Vec<String> = arr("tokenizer.ggml.tokens")
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(|| bad("tokenizer.ggml.tokens holds a non-string".into())))
            .collect::<Result<_, _>>()?;
        let n = tokens.len();
        let scores: Vec<f32> = match arr("tokenizer.ggml.scores") {
            Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
            Some(a) => return Err(bad(format!("{} scores for {n} tokens", a.len()))),
            None => vec![0.0; n],
        };
        let types: Vec<i32> = match arr("tokenizer.ggml.token_type") {
            Some(a) if a.len() == n => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
            Some(a) => return Err(bad(format!("{} token types for {n} tokens", a.len()))),
            None => vec![TOKEN_NORMAL; n],
        };
        let mut index = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            index.entry(t.clone()).or_insert(i as u32);
        }
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = index.get(&format!("<0x{b:02X}>")).copied();
        }
        let mut specials: Vec<(String, u32, bool)> = types
            .iter()
            .enumerate()
            .filter(|(_, &ty)| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .filter(|(i, _)| !tokens[*i].is_empty())
            .map(|(i, &ty)| (tokens[i].clone(), i as u32, ty == TOKEN_CONTROL))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let id = |k: &str| -> Result<Option<u32>, TokenizerError> {
            match u64_opt(k)? {
                Some(v) if (v as usize) < n => Ok(Some(v as u32)),
                Some(v) => Err(bad(format!("{k} = {v} is outside the {n}-token vocabulary"))),
                None => Ok(None),
            }
        };
        let flag = |k: &str, default: bool| get(k).and_then(Value::as_bool).unwrap_or(default);
        let mut eog = Vec::new();
        if let Some(e) = id("tokenizer.ggml.eot_token_id")? {
            eog.push(e);
        }
        // Chat models end a turn with <end_of_turn> / <|im_end|> / <|eot_id|>.
        for name in ["<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(&i) = index.get(name) {
                if types[i as usize] == TOKEN_CONTROL && !eog.contains(&i) {
                    eog.push(i);
                }
            }
        }
        let backend = if kind == "gpt2" {
            let merges: Vec<String> = arr("tokenizer.ggml.merges")
                .ok_or_else(|| bad("tokenizer.ggml.merges is missing for a gpt2 tokenizer".into()))?
                .iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| bad("tokenizer.ggml.merges holds a non-string".into()))
                })
                .collect::<Result<_, _>>()?;
            let pre = str_opt("tokenizer.ggml.pre")?.unwrap_or("default");
            let tk = byte_level_bpe(&tokens, &types, &merges, pre).map_err(bad)?;
            Backend::Hf { tk: Box::new(tk), byte_level: true }
        } else {
            Backend::Spm
        };
        let default_bos = kind == "llama";
        Ok(Tokenizer {
            kind,
            backend,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token", default_bos),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", default_bos),
            tokens,
            scores,
            types,
            index,
            byte_tokens,
            specials,
            eog,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_eog(&self, id: u32) -> bool {
        Some(id) == self.eos || self.eog.contains(&id)
    }

    /// Token ids for `text`; BOS first when the model asks for it and
    /// `add_special` is set; control tokens in the text are recognized when
    /// `parse_special` is set.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        if let Backend::Hf { tk, .. } = &self.backend {
            // Added tokens are always matched by `tokenizers`; BOS is ours.
            match tk.encode(text, false) {
                Ok(enc) => out.extend_from_slice(enc.get_ids()),
                Err(e) => eprintln!("plumb: warning: tokenizer failed on the prompt: {e}"),
            }
            return out;
        }
        // Split into raw-text fragments and special tokens.
        let mut frag_start = 0;
        let mut i = 0;
        let mut first = true;
        let bytes = text.as_bytes();
        while i < bytes.len() {
            let hit = if text.is_char_boundary(i) {
                self.specials
                    .iter()
                    .find(|(s, _, control)| (parse_special || !control) && text[i..].starts_with(s.as_str()))
            } else {
                None
            };
            match hit {
                Some((s, id, _)) => {
                    if frag_start < i {
                        self.encode_fragment(&text[frag_start..i], first, &mut out);
                    }
                    first = false;
                    out.push(*id);
                    i += s.len();
                    frag_start = i;
                }
                None => i += 1,
            }
        }
        if frag_start < bytes.len() {
            self.encode_fragment(&text[frag_start..], first, &mut out);
        }
        out
    }

    fn encode_fragment(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && first {
            s.push('▁');
        }
        for c in text.chars() {
            s.push(if c == ' ' { '▁' } else { c });
        }
        // Symbols as a linked list over char ranges of s.
        struct Sym {
            start: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (k, (pos, c)) in s.char_indices().enumerate() {
            syms.push(Sym { start: pos, len: c.len_utf8(), prev: k.checked_sub(1), next: Some(k + 1) });
        }
        if let Some(last) = syms.last_mut() {
            last.next = None;
        }
        let mut heap = BinaryHeap::new();
        let try_pair = |syms: &Vec<Sym>, heap: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
            let piece = &s[syms[left].start..syms[right].start + syms[right].len];
            if let Some(&id) = self.index.get(piece) {
                heap.push(Bigram { score: self.scores[id as usize], left, right, len: piece.len() });
            }
        };
        for k in 1..syms.len() {
            try_pair(&syms, &mut heap, k - 1, k);
        }
        while let Some(b) = heap.pop() {
            // Skip pairs invalidated by an earlier merge.
            if syms[b.left].len == 0 || syms[b.right].len == 0 || syms[b.left].len + syms[b.right].len != b.len {
                continue;
            }
            syms[b.left].len += syms[b.right].len;
            syms[b.right].len = 0;
            syms[b.left].next = syms[b.right].next;
            if let Some(nx) = syms[b.right].next {
                syms[nx].prev = Some(b.left);
            }
            if let Some(pv) = syms[b.left].prev {
                try_pair(&syms, &mut heap, pv, b.left);
            }
            if let Some(nx) = syms[b.left].next {
                try_pair(&syms, &mut heap, b.left, nx);
            }
        }
        let mut k = if syms.is_empty() { None } else { Some(0) };
        while let Some(idx) = k {
            let sym = &syms[idx];
            let piece = &s[sym.start..sym.start + sym.len];
            match self.index.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                            out.push(id)
                        }
                    }
                }
            }
            k = sym.next;
        }
    }

    /// The bytes a token stands for in generated text (control tokens give
    /// none; byte tokens their byte; `▁` becomes a space).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if let Backend::Hf { byte_level: true, .. } = &self.backend {
            if self.types[id as usize] == TOKEN_CONTROL {
                return Vec::new();
            }
            return t.chars().map(|c| unicode_to_byte(c).unwrap_or(b'?')).collect();
        }
        match self.types[id as usize] {
            TOKEN_CONTROL | TOKEN_UNKNOWN => Vec::new(),
            TOKEN_BYTE => {
                let hex = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'));
                hex.and_then(|h| u8::from_str_radix(h, 16).ok()).map(|b| vec![b]).unwrap_or_default()
            }
            _ => t.replace('▁', " ").into_bytes(),
        }
    }

    /// The vocabulary string of a token, as stored.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Decodes ids to text; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token bytes into printable text, holding back an
/// incomplete UTF-8 sequence until its last byte arrives.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete tail: keep it for the next token.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end, lossily.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// GPT-2's reversible byte → printable-char map: printable Latin-1 bytes map
/// to themselves, the other 68 to U+0100 upward in byte order.
fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('?')
        };
    }
    map
}

fn unicode_to_byte(c: char) -> Option<u8> {
    let u = c as u32;
    let b = u as u8;
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if u <= 0xFF && printable(b) {
        return Some(b);
    }
    byte_to_unicode().iter().position(|&m| m == c).map(|p| p as u8)
}

/// The pre-tokenizer split pattern for a GGUF `tokenizer.ggml.pre` name
/// (the regexes of the model families' tokenizer.json files).
fn pre_pattern(pre: &str) -> Result<&'static str, String> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => GPT2,
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => LLAMA3,
        "qwen2" | "deepseek-r1-qwen" => QWEN2,
        other => return Err(format!("pre-tokenizer {other:?} is not supported (default, llama-bpe, qwen2)")),
    })
}

/// Builds a byte-level BPE `tokenizers` pipeline from GGUF vocabulary data,
/// as a tokenizer.json document handed to the crate.
fn byte_level_bpe(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
    pre: &str,
) -> Result<tokenizers::Tokenizer, String> {
    use serde_json::json;
    let pattern = pre_pattern(pre)?;
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &ty)| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
        .map(|(i, &ty)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": ty == TOKEN_CONTROL})
        })
        .collect();
    let normalizer = if pre == "qwen2" { json!({"type": "NFC"}) } else { serde_json::Value::Null };
    let doc = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": pre != "qwen2" && pre != "default" && pre != "gpt2",
                  "vocab": vocab, "merges": merges},
    });
    <tokenizers::Tokenizer as std::str::FromStr>::from_str(&doc.to_string())
        .map_err(|e| format!("cannot build the BPE tokenizer: {e}"))
}

impl Tokenizer {
    /// Loads `tokenizer.json` (and BOS/EOS from `tokenizer_config.json` /
    /// `config.json`) from a HuggingFace model folder.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let bad = |m: String| TokenizerError::Invalid(format!("{}: {m}", path.display()));
        let tk = tokenizers::Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        let n = tk.get_vocab_size(true);
        let mut tokens = vec![String::new(); n];
        for (t, i) in tk.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(i as usize) {
                *slot = t;
            }
        }
        let mut types = vec![TOKEN_NORMAL; n];
        for (i, at) in tk.get_added_tokens_decoder() {
            if let Some(slot) = types.get_mut(i as usize) {
                *slot = if at.special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
            }
        }
        let json: serde_json::Value =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let byte_level = json["decoder"]["type"] == "ByteLevel"
            || json["pre_tokenizer"]["pretokenizers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["type"] == "ByteLevel"));
        let read = |name: &str| -> serde_json::Value {
            std::fs::read(dir.join(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
        };
        let (tc, cfg) = (read("tokenizer_config.json"), read("config.json"));
        let token_id = |v: &serde_json::Value| -> Option<u32> {
            let s = v.as_str().or_else(|| v["content"].as_str())?;
            tk.token_to_id(s)
        };
        let bos = token_id(&tc["bos_token"]).or_else(|| cfg["bos_token_id"].as_u64().map(|v| v as u32));
        let eos = token_id(&tc["eos_token"]).or_else(|| cfg["eos_token_id"].as_u64().map(|v| v as u32));
        // BOS is added when the post-processor's template starts with it or
        // the config says so.
        // The template may sit in a Sequence of processors (Llama-3 style).
        let pp = &json["post_processor"];
        let mut templates: Vec<&serde_json::Value> = vec![pp];
        if let Some(list) = pp["processors"].as_array() {
            templates.extend(list.iter());
        }
        let template_bos = bos.is_some_and(|b| {
            templates
                .iter()
                .any(|t| t["single"][0]["SpecialToken"]["id"].as_str().and_then(|s| tk.token_to_id(s)) == Some(b))
        });
        let add_bos = tc["add_bos_token"].as_bool().unwrap_or(template_bos);
        let index = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut eog = Vec::new();
        for name in ["<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(i) = tk.token_to_id(name) {
                eog.push(i);
            }
        }
        let mut tk = tk;
        tk.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        Ok(Tokenizer {
            kind: "tokenizer.json".into(),
            backend: Backend::Hf { tk: Box::new(tk), byte_level },
            scores: vec![0.0; n],
            byte_tokens: [None; 256],
            specials: Vec::new(),
            unk: None,
            add_space_prefix: false,
            tokens,
            types,
            index,
            bos,
            eos,
            eog,
            add_bos,
        })
    }
}

/// A JSON metadata value as the GGUF value it stands for: integers as
/// u64/i64, other numbers as f64, arrays element by element.
fn json_value(v: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::U64(u),
            (None, Some(i)) => Value::I64(i),
            _ => Value::F64(n.as_f64()?),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(a) => Value::Array(a.iter().map(json_value).collect::<Option<_>>()?),
        J::Null | J::Object(_) => return None,
    })
}

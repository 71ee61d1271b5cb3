//! The encoder: text in, vectors (or masked-token predictions) out.
//!
//! Long notes are split into overlapping token windows, each embedded on its own, so that
//! nothing past the model's position limit is silently dropped and the index can point a hit
//! back to the passage that matched.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::bert::{l2_normalize, BertModel, MlmHead};
use super::config::{self, BertConfig, Pooling};
use super::hub::{resolve_model, ResolvedModel};
use super::tokenizer::TextTokenizer;
use super::weights::Weights;
use crate::error::{Error, Result};

/// How long texts are cut into windows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WindowConfig {
    /// Tokens per window including `[CLS]` and `[SEP]`; `None` takes the model's own limit
    /// (sentence-transformers' `max_seq_length`, else `max_position_embeddings`).
    pub size: Option<usize>,
    /// Tokens shared by consecutive windows (the `stride` of HF tokenizers' overflow).
    /// `None`: 32, or a quarter of the window for very small windows.
    pub stride: Option<usize>,
    /// At most this many windows per text; the rest of an enormous note is not embedded
    /// (a warning is logged). `None`: no cap.
    pub max_windows: Option<usize>,
    /// What every window carries besides its own text. `None`: [`WindowContext::default`].
    pub context: Option<WindowContext>,
}

/// What a note's windows carry besides their own stretch of text. The first window always
/// starts with the title; the question is whether the later ones do too. A later window
/// without them is read out of context ("No fever. Lungs clear." of whose note?), and a note
/// scores by its best window, so on collections of long unrelated passages later windows
/// can outrank the right notes (issue 17). The choice is recorded in the data directory.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WindowContext {
    /// The title in the first window only (the text embedded as "title\ntext").
    #[default]
    None,
    /// The title at the start of every window.
    Title,
    /// The title, then the section heading in force (`HISTORY OF PRESENT ILLNESS:`), at
    /// the start of every window that does not itself begin the section.
    Heading,
}

impl WindowContext {
    pub const ALL: [WindowContext; 3] = [
        WindowContext::None,
        WindowContext::Title,
        WindowContext::Heading,
    ];
}

impl std::fmt::Display for WindowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowContext::None => "none",
            WindowContext::Title => "title",
            WindowContext::Heading => "heading",
        })
    }
}

impl std::str::FromStr for WindowContext {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "first" => Ok(WindowContext::None),
            "title" => Ok(WindowContext::Title),
            "heading" | "title+heading" => Ok(WindowContext::Heading),
            other => Err(format!(
                "unknown window context {other:?}: use none, title or heading"
            )),
        }
    }
}

/// A text to embed in windows with its context (see [`Encoder::embed_windows_in_context`]).
#[derive(Debug, Clone, Copy)]
pub struct ContextText<'a> {
    pub title: Option<&'a str>,
    pub text: &'a str,
    /// Section headings of `text`, in order: the byte offset where each starts, and the
    /// heading as it should be read ("PHYSICAL EXAM:"). Ignored unless the context is
    /// [`WindowContext::Heading`].
    pub headings: &'a [(usize, String)],
}

/// One window to embed: the tokens of its context prefix, and the token range `[a, b)` of
/// the text it covers.
type Plan = (Vec<u32>, usize, usize);

/// The most tokens of a title every window carries (a quarter of the window at most).
const MAX_TITLE_TOKENS: usize = 48;
/// The most tokens of a section heading a window carries (an eighth of the window at most).
const MAX_HEADING_TOKENS: usize = 16;

/// Everything that can be chosen when loading an encoder.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// `None`: the sentence-transformers pooling config if present, else mean.
    pub pooling: Option<Pooling>,
    /// L2-normalise vectors. `None`: true (cosine = dot product for the vector index).
    pub normalize: Option<bool>,
    pub window: WindowConfig,
    /// Sequences per forward pass.
    pub batch_size: usize,
    pub device: Device,
    pub dtype: DType,
    /// Dense layers in int8 (CPU with AVX-512 VNNI; `--dtype int8`): weights quantised at
    /// load, activations per row as each layer runs (see [`super::quant`]). Elsewhere the
    /// model stays f32 and a warning says so.
    pub int8: bool,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            pooling: None,
            normalize: None,
            window: WindowConfig::default(),
            batch_size: 32,
            device: Device::Cpu,
            dtype: DType::F32,
            int8: false,
        }
    }
}

/// What `clinsearch model info` prints, and what a data directory records of its model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The model as the user named it (folder or Hub id).
    pub id: String,
    pub dir: PathBuf,
    /// Hub revision asked for and the commit it resolved to.
    pub revision: Option<String>,
    pub commit: Option<String>,
    pub model_type: String,
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub pooling: Pooling,
    pub normalize: bool,
    pub window_size: usize,
    pub stride: usize,
    /// What every window carries besides its text.
    pub window_context: WindowContext,
    /// Heads present in the checkpoint besides the encoder (`mlm`).
    pub heads: Vec<String>,
    pub weight_format: super::weights::WeightFormat,
    pub tokenizer: String,
    pub lowercase: bool,
    pub files: Vec<String>,
    pub dtype: String,
    pub device: String,
}

/// One embedded window of a text.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Window {
    /// Position of the window in its text (0, 1, ...).
    pub index: usize,
    /// Byte span `[start, end)` of the window in the text.
    pub start: usize,
    pub end: usize,
    /// The same span in Unicode scalar values (characters).
    pub char_start: usize,
    pub char_end: usize,
    /// Tokens in the window, without `[CLS]`/`[SEP]`.
    pub tokens: usize,
    pub vector: Vec<f32>,
}

/// A candidate token for one `[MASK]`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenScore {
    pub id: u32,
    pub token: String,
    pub score: f32,
}

/// The predictions for one `[MASK]` of a text.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MaskPrediction {
    /// Which mask (0 for the first in the text).
    pub mask_index: usize,
    /// Token position in the model input (`[CLS]` is 0).
    pub position: usize,
    pub candidates: Vec<TokenScore>,
}

/// A loaded BERT encoder with its tokenizer and optional MLM head.
pub struct Encoder {
    model: BertModel,
    mlm: Option<MlmHead>,
    tokenizer: TextTokenizer,
    info: ModelInfo,
    window_size: usize,
    stride: usize,
    max_windows: Option<usize>,
    context: WindowContext,
    batch_size: usize,
}

impl Encoder {
    /// Resolves `spec` (a folder, or a Hub id `org/name[@revision]`) and loads it.
    pub fn load(spec: &str, opts: &EncoderOptions) -> Result<Self> {
        let resolved = resolve_model(spec)?;
        Self::from_resolved(&resolved, opts)
    }

    /// Loads a model folder that is already on disk.
    pub fn from_resolved(resolved: &ResolvedModel, opts: &EncoderOptions) -> Result<Self> {
        let dir = &resolved.dir;
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::MissingWeights {
                model: dir.display().to_string(),
                what: "config.json".into(),
            });
        }
        let config = BertConfig::from_file(&config_path)?;
        let weights = Weights::load(dir)?;
        let tokenizer = TextTokenizer::load(dir)?;
        let mut model = BertModel::load(&weights, &config, opts.dtype, &opts.device)?;
        let mlm = MlmHead::load(&weights, &model)?;
        let int8 = opts.int8 && model.quantize_int8()?;
        if opts.int8 && !int8 {
            tracing::warn!(
                "--dtype int8 needs f32 on a CPU with AVX-512 VNNI; running the model in f32"
            );
        }

        let pooling = match opts.pooling {
            Some(p) => p,
            None => config::sentence_transformers_pooling(dir)?.unwrap_or(Pooling::Mean),
        };
        let normalize = opts.normalize.unwrap_or(true);
        let default_size = config::sentence_transformers_max_len(dir)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let window_size = opts.window.size.unwrap_or(default_size);
        if window_size < 3 || window_size > config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "window size {window_size} must be between 3 and the model's {} positions",
                config.max_position_embeddings
            )));
        }
        let stride = opts.window.stride.unwrap_or(32.min((window_size - 2) / 4));
        if stride >= window_size - 2 {
            return Err(Error::InvalidInput(format!(
                "window stride (overlap) {stride} must be smaller than the window's {} text tokens",
                window_size - 2
            )));
        }
        if opts.batch_size == 0 {
            return Err(Error::InvalidInput("batch size must be at least 1".into()));
        }
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        files.sort();
        let info = ModelInfo {
            id: resolved.spec.clone(),
            dir: dir.clone(),
            revision: resolved.revision.clone(),
            commit: resolved.commit.clone(),
            model_type: config.model_type.clone(),
            architectures: config.architectures.clone(),
            hidden_size: config.hidden_size,
            num_layers: config.num_hidden_layers,
            num_heads: config.num_attention_heads,
            vocab_size: config.vocab_size,
            max_position_embeddings: config.max_position_embeddings,
            hidden_act: config.hidden_act.name().into(),
            pooling,
            normalize,
            window_size,
            stride,
            window_context: opts.window.context.unwrap_or_default(),
            heads: mlm.iter().map(|_| "mlm".to_string()).collect(),
            weight_format: weights.format,
            tokenizer: tokenizer.source.into(),
            lowercase: tokenizer.lowercase,
            files,
            dtype: if int8 {
                "int8".into()
            } else {
                format!("{:?}", opts.dtype).to_lowercase()
            },
            device: super::device::device_name(&opts.device),
        };
        Ok(Encoder {
            model,
            mlm,
            tokenizer,
            info,
            window_size,
            stride,
            max_windows: opts.window.max_windows,
            context: opts.window.context.unwrap_or_default(),
            batch_size: opts.batch_size,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn has_mlm_head(&self) -> bool {
        self.mlm.is_some()
    }

    fn tokens_of(&self, text: &str, what: &str) -> Result<super::tokenizer::Tokens> {
        if text.trim().is_empty() {
            return Err(Error::InvalidInput(format!("{what} is empty")));
        }
        let tokens = self.tokenizer.encode(text)?;
        if tokens.ids.is_empty() {
            return Err(Error::InvalidInput(format!("{what} has no tokens")));
        }
        Ok(tokens)
    }

    /// [`Self::tokens_of`] for every text, across the thread pool: on a GPU, tokenising long
    /// notes one after another on one core took longer than the model itself (measured on an
    /// H100: 32 MTSamples notes per batch ran at a quarter of PyTorch's rate, whose tokenizer
    /// works in parallel). The first error (in text order) is returned.
    fn tokens_all(&self, texts: &[&str]) -> Result<Vec<super::tokenizer::Tokens>> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .enumerate()
            .map(|(i, t)| self.tokens_of(t, &format!("text {}", i + 1)))
            .collect()
    }

    fn wrap(&self, ids: &[u32]) -> Vec<u32> {
        let mut seq = Vec::with_capacity(ids.len() + 2);
        seq.push(self.tokenizer.cls_id);
        seq.extend_from_slice(ids);
        seq.push(self.tokenizer.sep_id);
        seq
    }

    /// One vector per text, truncated to one window as sentence-transformers does: for
    /// queries and short texts. An empty text is an error.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let seqs: Vec<Vec<u32>> = self
            .tokens_all(texts)?
            .iter()
            .map(|tokens| self.sequence_of_ids(&tokens.ids))
            .collect();
        self.run_batches(&seqs, self.info.normalize)
    }

    /// Tokens of a text the model reads in one window (special tokens excluded).
    pub fn max_input_tokens(&self) -> usize {
        self.window_size - 2
    }

    /// The model input for `text` as [`Self::embed`] builds it: its tokens, truncated to one
    /// window, between `[CLS]` and `[SEP]`.
    pub fn sequence_of(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.sequence_of_ids(&self.tokens_of(text, "the text")?.ids))
    }

    /// The model input for token ids (without special tokens), truncated to one window
    /// ([`Self::embed_sequences`] refuses ids outside the vocabulary).
    pub fn sequence_of_ids(&self, ids: &[u32]) -> Vec<u32> {
        let n = ids.len().min(self.window_size - 2);
        self.wrap(&ids[..n])
    }

    /// Vectors for model inputs made by [`Self::sequence_of`], normalised or not (the
    /// embedding endpoints let the client choose).
    pub fn embed_sequences(&self, seqs: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let vocab = self.model.config.vocab_size as u32;
        if let Some(bad) = seqs.iter().flatten().find(|&&id| id >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        self.run_batches(seqs, normalize)
    }

    /// Token windows `[start, end)` covering `n` tokens with the configured overlap.
    fn window_ranges(&self, n: usize) -> Vec<(usize, usize)> {
        let cap = self.window_size - 2;
        let step = cap - self.stride;
        let mut out = vec![];
        let mut start = 0;
        loop {
            let end = (start + cap).min(n);
            out.push((start, end));
            if end >= n {
                break;
            }
            start += step;
        }
        out
    }

    /// How many windows [`Self::embed_windows`] would embed for `texts` (the window cap
    /// applied), without running the model: the server bounds a request's work by it.
    /// Texts that cannot be embedded count nothing (embedding reports them).
    pub fn count_windows(&self, texts: &[&str]) -> Result<usize> {
        use rayon::prelude::*;
        Ok(texts
            .par_iter()
            .map(|t| match self.tokens_of(t, "text") {
                Ok(tokens) => {
                    let n = self.window_ranges(tokens.ids.len()).len();
                    self.max_windows.map_or(n, |cap| n.min(cap))
                }
                Err(_) => 0,
            })
            .sum())
    }

    /// Splits each text into overlapping windows and embeds every window: one vector per
    /// window with its span in the text. An empty text is an error.
    pub fn embed_windows(&self, texts: &[&str]) -> Result<Vec<Vec<Window>>> {
        let tokens = self.tokens_all(texts)?;
        let plans = tokens
            .iter()
            .map(|t| {
                self.window_ranges(t.ids.len())
                    .into_iter()
                    .map(|(a, b)| (vec![], a, b))
                    .collect()
            })
            .collect();
        self.embed_plans(texts, &tokens, plans)
    }

    /// Embeds planned windows: for each text, each window's prefix tokens and the token
    /// range `[a, b)` of the text it covers (the window cap applied here). Spans point into
    /// the text.
    fn embed_plans(
        &self,
        texts: &[&str],
        tokens: &[super::tokenizer::Tokens],
        plans: Vec<Vec<Plan>>,
    ) -> Result<Vec<Vec<Window>>> {
        let mut seqs = vec![];
        let mut layout: Vec<Vec<Window>> = Vec::with_capacity(texts.len());
        for (i, ((text, tokens), mut plan)) in texts.iter().zip(tokens).zip(plans).enumerate() {
            if let Some(cap) = self.max_windows {
                if plan.len() > cap {
                    tracing::warn!(
                        text = i + 1,
                        windows = plan.len(),
                        cap,
                        "text is longer than the window cap; only its first windows are embedded"
                    );
                    plan.truncate(cap);
                }
            }
            let chars = CharIndex::new(text);
            let mut windows = Vec::with_capacity(plan.len());
            for (index, (mut ids, a, b)) in plan.into_iter().enumerate() {
                let start = tokens.offsets[a].0;
                let end = tokens.offsets[b - 1].1;
                ids.extend_from_slice(&tokens.ids[a..b]);
                seqs.push(self.wrap(&ids));
                windows.push(Window {
                    index,
                    start,
                    end,
                    char_start: chars.char_at(start),
                    char_end: chars.char_at(end),
                    tokens: b - a,
                    vector: vec![],
                });
            }
            layout.push(windows);
        }
        let mut vectors = self.run_batches(&seqs, self.info.normalize)?.into_iter();
        for windows in layout.iter_mut() {
            for w in windows.iter_mut() {
                w.vector = vectors.next().expect("one vector per window");
            }
        }
        Ok(layout)
    }

    /// What this encoder's windows carry besides their text.
    pub fn window_context(&self) -> WindowContext {
        self.context
    }

    /// The windows of one text with its context: for each, the tokens of the context
    /// prefix, and the token range `[a, b)` of the text it covers. The prefix shortens the
    /// window's own text so every sequence still fits the model; consecutive windows share
    /// `stride` text tokens as in [`Self::window_ranges`].
    fn context_plan(
        &self,
        doc: &ContextText<'_>,
        tokens: &super::tokenizer::Tokens,
    ) -> Result<Vec<Plan>> {
        let cap = self.window_size - 2;
        let title: Vec<u32> = match doc.title.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => {
                let mut ids = self.tokenizer.encode(t)?.ids;
                ids.truncate(MAX_TITLE_TOKENS.min(cap / 4));
                ids
            }
            None => vec![],
        };
        let mut headings: Vec<(usize, Vec<u32>)> = vec![];
        if self.context == WindowContext::Heading {
            for (at, h) in doc.headings {
                let mut ids = self.tokenizer.encode(h)?.ids;
                ids.truncate(MAX_HEADING_TOKENS.min(cap / 8));
                headings.push((*at, ids));
            }
        }
        let n = tokens.ids.len();
        let mut out = vec![];
        let mut start = 0;
        loop {
            let mut prefix = title.clone();
            if start > 0 {
                // The heading in force: the last one that begins before this window does
                // (one that begins the window is in the window already).
                let at = tokens.offsets[start].0;
                if let Some((_, h)) = headings.iter().rev().find(|(b, _)| *b < at) {
                    prefix.extend_from_slice(h);
                }
            }
            let end = (start + cap - prefix.len()).min(n);
            out.push((prefix, start, end));
            if end >= n {
                break;
            }
            start = end.saturating_sub(self.stride).max(start + 1);
        }
        Ok(out)
    }

    /// [`Self::embed_windows`] for texts with a title (and section headings): every window
    /// begins with the context [`WindowContext`] asks for (the first window with the title
    /// alone). Window spans point into the text. With [`WindowContext::None`] it embeds
    /// "title\ntext" as [`Self::embed_windows`] does. An empty text is an error.
    pub fn embed_windows_in_context(&self, docs: &[ContextText<'_>]) -> Result<Vec<Vec<Window>>> {
        if self.context == WindowContext::None {
            return self.embed_titled(docs);
        }
        let texts: Vec<&str> = docs.iter().map(|d| d.text).collect();
        let tokens = self.tokens_all(&texts)?;
        let plans = docs
            .iter()
            .zip(&tokens)
            .map(|(doc, t)| self.context_plan(doc, t))
            .collect::<Result<_>>()?;
        self.embed_plans(&texts, &tokens, plans)
    }

    /// "title\ntext" of a document, and the length of the title prefix in bytes and
    /// characters: what [`WindowContext::None`] embeds, as sentence-transformers and
    /// BEIR/MTEB embed "title text".
    fn titled<'a>(doc: &ContextText<'a>) -> (std::borrow::Cow<'a, str>, usize, usize) {
        match doc.title.map(str::trim).filter(|t| !t.is_empty()) {
            Some(title) => {
                let prefix = format!("{title}\n");
                let (bytes, chars) = (prefix.len(), prefix.chars().count());
                (std::borrow::Cow::Owned(prefix + doc.text), bytes, chars)
            }
            None => (std::borrow::Cow::Borrowed(doc.text), 0, 0),
        }
    }

    /// [`WindowContext::None`]: "title\ntext" in windows, spans shifted back into the text.
    fn embed_titled(&self, docs: &[ContextText<'_>]) -> Result<Vec<Vec<Window>>> {
        let inputs: Vec<_> = docs.iter().map(Self::titled).collect();
        let texts: Vec<&str> = inputs.iter().map(|(t, _, _)| t.as_ref()).collect();
        let raw = self.embed_windows(&texts)?;
        Ok(raw
            .into_iter()
            .zip(&inputs)
            .map(|(ws, (_, pb, pc))| {
                ws.into_iter()
                    .map(|mut w| {
                        w.start = w.start.saturating_sub(*pb);
                        w.end = w.end.saturating_sub(*pb);
                        w.char_start = w.char_start.saturating_sub(*pc);
                        w.char_end = w.char_end.saturating_sub(*pc);
                        w
                    })
                    .collect()
            })
            .collect())
    }

    /// How many windows [`Self::embed_windows_in_context`] would embed (the cap applied),
    /// without running the model. Texts that cannot be embedded count nothing.
    pub fn count_windows_in_context(&self, docs: &[ContextText<'_>]) -> Result<usize> {
        if self.context == WindowContext::None {
            let inputs: Vec<_> = docs.iter().map(Self::titled).collect();
            let texts: Vec<&str> = inputs.iter().map(|(t, _, _)| t.as_ref()).collect();
            return self.count_windows(&texts);
        }
        let mut total = 0;
        for doc in docs {
            let Ok(tokens) = self.tokens_of(doc.text, "text") else {
                continue;
            };
            let n = self.context_plan(doc, &tokens)?.len();
            total += self.max_windows.map_or(n, |cap| n.min(cap));
        }
        Ok(total)
    }

    /// Token ids (with specials) and last hidden states `[seq, hidden]` of one text,
    /// truncated to one window. For tests and diagnostics.
    pub fn hidden_states(&self, text: &str) -> Result<(Vec<u32>, Tensor)> {
        let tokens = self.tokenizer.encode(text)?;
        let n = tokens.ids.len().min(self.window_size - 2);
        let seq = self.wrap(&tokens.ids[..n]);
        let ids = Tensor::new(seq.as_slice(), &self.model.device)?.unsqueeze(0)?;
        let mask = Tensor::ones((1, seq.len()), DType::U32, &self.model.device)?;
        let h = self
            .model
            .forward(&ids, &mask)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        Ok((seq, h))
    }

    /// Sorts sequences by length (less padding), runs them in batches, pools and normalises.
    /// Returns vectors in the input order.
    fn run_batches(&self, seqs: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out: Vec<Vec<f32>> = vec![vec![]; seqs.len()];
        for chunk in order.chunks(self.batch_size) {
            let vecs = self.forward_pooled(chunk.iter().map(|&i| seqs[i].as_slice()), normalize)?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One padded batch through the model, pooled (and normalised) to `[batch, hidden]`.
    fn forward_pooled<'a>(
        &self,
        batch: impl Iterator<Item = &'a [u32]>,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let batch: Vec<&[u32]> = batch.collect();
        let b = batch.len();
        let t = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = vec![self.tokenizer.pad_id; b * t];
        let mut mask = vec![0u32; b * t];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * t..r * t + seq.len()].copy_from_slice(seq);
            mask[r * t..r * t + seq.len()]
                .iter_mut()
                .for_each(|m| *m = 1);
        }
        let dev = &self.model.device;
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let mask = Tensor::from_vec(mask, (b, t), dev)?;
        let hidden = self.model.forward(&ids, &mask)?.to_dtype(DType::F32)?;
        let pooled = match self.info.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                sum.broadcast_div(&m.sum(1)?)?
            }
        };
        let pooled = if normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        };
        Ok(pooled.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
    }

    /// Predicts every `[MASK]` of `text`: the `top_k` most likely tokens with probabilities.
    pub fn fill_mask(&self, text: &str, top_k: usize) -> Result<Vec<MaskPrediction>> {
        let mlm = self.mlm.as_ref().ok_or_else(|| Error::MissingWeights {
            model: self.info.id.clone(),
            what: "a masked-language-model head (cls.predictions.* tensors): it is an encoder-only \
                   checkpoint such as a sentence-transformers model; use a BertForMaskedLM checkpoint \
                   such as emilyalsentzer/Bio_ClinicalBERT for fill-mask"
                .into(),
        })?;
        let mask_id = self
            .tokenizer
            .mask_id
            .ok_or_else(|| Error::MissingWeights {
                model: self.info.id.clone(),
                what: "a [MASK] token in its vocabulary".into(),
            })?;
        if top_k == 0 {
            return Err(Error::InvalidInput("top-k must be at least 1".into()));
        }
        let tokens = self.tokens_of(text, "the text")?;
        let seq = self.wrap(&tokens.ids);
        if seq.len() > self.model.config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "the text has {} tokens; fill-mask reads at most {}",
                seq.len(),
                self.model.config.max_position_embeddings
            )));
        }
        let positions: Vec<u32> = seq
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == mask_id)
            .map(|(i, _)| i as u32)
            .collect();
        if positions.is_empty() {
            return Err(Error::InvalidInput("the text has no [MASK] token".into()));
        }
        let dev = &self.model.device;
        let ids = Tensor::new(seq.as_slice(), dev)?.unsqueeze(0)?;
        let mask = Tensor::ones((1, seq.len()), DType::U32, dev)?;
        let hidden = self.model.forward(&ids, &mask)?.squeeze(0)?;
        let at_masks = hidden.index_select(&Tensor::new(positions.as_slice(), dev)?, 0)?;
        let logits = mlm.forward(&at_masks)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        let k = top_k.min(self.model.config.vocab_size);
        Ok(positions
            .iter()
            .zip(probs)
            .enumerate()
            .map(|(mask_index, (&pos, row))| {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                idx.truncate(k);
                idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                MaskPrediction {
                    mask_index,
                    position: pos as usize,
                    candidates: idx
                        .into_iter()
                        .map(|i| TokenScore {
                            id: i as u32,
                            token: self.tokenizer.id_to_token(i as u32).unwrap_or_default(),
                            score: row[i],
                        })
                        .collect(),
                }
            })
            .collect())
    }
}

/// Maps byte offsets of a text to character offsets.
struct CharIndex {
    starts: Vec<usize>,
}

impl CharIndex {
    fn new(text: &str) -> Self {
        CharIndex {
            starts: text.char_indices().map(|(b, _)| b).collect(),
        }
    }
    fn char_at(&self, byte: usize) -> usize {
        self.starts.partition_point(|&b| b < byte)
    }
}

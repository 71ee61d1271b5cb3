//! Domain-adaptive pretraining: BERT's masked-language-model objective continued on a
//! hospital's own notes (what made Bio_ClinicalBERT out of BioBERT), written out as a
//! `BertForMaskedLM` folder that transformers, `fill-mask`, the fine-tuning tasks and
//! `ingest --model` all load.
//!
//! The pieces, each as transformers or the original BERT does it:
//! * **Packing** ([`pack`]): each note is split into sentences and tokenised; consecutive
//!   sentences fill sequences of up to `max_len` tokens (`[CLS] ... [SEP]`); a sequence may
//!   run on into the next note after a `[SEP]` (RoBERTa's FULL-SENTENCES), and a sentence
//!   longer than a sequence is cut at a word start where one is near.
//! * **Masking** ([`mask_sequence`]): `DataCollatorForLanguageModeling`'s rule: each token
//!   chosen with probability 0.15 (special tokens never), a chosen token becomes `[MASK]`
//!   80% of the time, a random vocabulary token 10%, stays 10%; the loss is over chosen
//!   tokens only. With `whole_word`, words (a token and its `##` continuations) are chosen
//!   instead, as Google's whole-word-masking BERT: words in random order until 15% of the
//!   tokens are covered. Training masks are redrawn every epoch (dynamic masking) from
//!   `(seed, epoch, sequence)`, so a resumed run draws the same ones; dev masks are drawn
//!   once, so every epoch's dev figures are on the same masked tokens.
//! * **Head** ([`new_head`]): the base's `cls.predictions.*` when it has them, else a new
//!   one initialised as transformers does (dense normal(0, initializer_range), LayerNorm
//!   1/0, bias 0) with the decoder tied to the word embeddings.
//! * **Held-out figures**: masked-token accuracy, loss and perplexity on dev notes never
//!   trained on, before training and after every epoch.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::data::read_records;
use super::optim::{AdamW, AdamWConfig};
use super::{pad_batch, Base, EpochReport, Task, TrainEvent, TrainOptions};
use crate::error::{Error, Result};
use crate::model::bert::{BertModel, Dropout, LayerNorm, Linear, MlmHead, MLM_HEAD_KEY};
use crate::model::tokenizer::TextTokenizer;
use crate::model::weights::Weights;

/// Notes with fewer word-piece tokens than this are skipped (and counted): a heading or a
/// signature line teaches the model nothing about note text.
pub const MIN_NOTE_TOKENS: usize = 5;

/// Sequence length used when none is given: Bio_ClinicalBERT's pretraining length.
pub const DEFAULT_MAX_LEN: usize = 128;

/// Label value of a position that is not predicted.
const NOT_PREDICTED: i64 = -100;

/// One note of the corpus, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct CorpusNote {
    pub text: String,
    /// `file:line` or `file`.
    pub origin: String,
}

/// Reads a corpus: a JSON Lines or CSV file (the text in `text_field`), or a folder of such
/// files and `.txt` files (one note each), read in name order, recursively.
pub fn read_corpus(path: &Path, text_field: &str) -> Result<Vec<CorpusNote>> {
    let mut out = vec![];
    if path.is_dir() {
        let mut files = vec![];
        collect_files(path, &mut files)?;
        if files.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{}: no .txt, .jsonl, .json or .csv files in the folder",
                path.display()
            )));
        }
        for f in files {
            read_file(&f, text_field, &mut out)?;
        }
    } else {
        read_file(path, text_field, &mut out)?;
    }
    if out.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: the corpus has no notes",
            path.display()
        )));
    }
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("txt" | "jsonl" | "json" | "csv")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

fn read_file(path: &Path, text_field: &str, out: &mut Vec<CorpusNote>) -> Result<()> {
    let is_txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if is_txt {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if !text.trim().is_empty() {
            out.push(CorpusNote {
                text,
                origin: path.display().to_string(),
            });
        }
        return Ok(());
    }
    for r in read_records(path)? {
        out.push(CorpusNote {
            text: r.required(path, text_field, "--text-field")?,
            origin: format!("{}:{}", path.display(), r.line),
        });
    }
    Ok(())
}

/// A stable digest of a corpus (texts in order), recorded in checkpoints so that resuming
/// on other notes can be reported.
pub fn corpus_digest(notes: &[CorpusNote]) -> String {
    let mut h = DefaultHasher::new();
    notes.len().hash(&mut h);
    for n in notes {
        n.text.hash(&mut h);
    }
    format!("{} notes, {:016x}", notes.len(), h.finish())
}

/// Splits notes into training and dev notes: `dev_fraction` of them (at least one when
/// there are two or more notes and the fraction is positive), chosen by a seeded shuffle.
pub fn split_notes(n: usize, dev_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(seed ^ 0x6d6c_6d5f_6465_7673).shuffle(&mut order);
    let mut dev_n = (dev_fraction * n as f64).round() as usize;
    if dev_fraction > 0.0 && n >= 2 {
        dev_n = dev_n.clamp(1, n - 1);
    }
    let (dev, train) = order.split_at(dev_n.min(n));
    let (mut dev, mut train) = (dev.to_vec(), train.to_vec());
    dev.sort_unstable();
    train.sort_unstable();
    (train, dev)
}

/// What packing needs of the tokenizer.
pub struct Vocab {
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    pub mask: u32,
    pub size: usize,
    /// Whether each token id continues a word (`##` WordPiece pieces).
    pub continuation: Vec<bool>,
}

impl Vocab {
    pub fn of(tok: &TextTokenizer, base: &str) -> Result<Vocab> {
        let mask = tok.mask_id.ok_or_else(|| Error::MissingWeights {
            model: base.to_string(),
            what: "the [MASK] token in its tokenizer vocabulary".into(),
        })?;
        let size = tok.vocab_size();
        let continuation = (0..size as u32)
            .map(|i| tok.id_to_token(i).is_some_and(|t| t.starts_with("##")))
            .collect();
        Ok(Vocab {
            cls: tok.cls_id,
            sep: tok.sep_id,
            pad: tok.pad_id,
            mask,
            size,
            continuation,
        })
    }

    fn is_special(&self, id: u32) -> bool {
        id == self.cls || id == self.sep || id == self.pad
    }

    fn continues(&self, id: u32) -> bool {
        self.continuation.get(id as usize).copied().unwrap_or(false)
    }
}

/// A note tokenised sentence by sentence (ids without special tokens).
pub fn tokenize_note(tok: &TextTokenizer, text: &str) -> Result<Vec<Vec<u32>>> {
    crate::clinical::assertion::sentences(text)
        .into_iter()
        .map(|(s, e)| Ok(tok.encode(&text[s..e])?.ids))
        .filter(|r: &Result<Vec<u32>>| r.as_ref().map_or(true, |ids| !ids.is_empty()))
        .collect()
}

/// Packs tokenised notes into sequences of at most `max_len` tokens (see the module doc).
pub fn pack(notes: &[Vec<Vec<u32>>], vocab: &Vocab, max_len: usize) -> Vec<Vec<u32>> {
    let cap = max_len - 2;
    let mut out = vec![];
    let mut cur: Vec<u32> = vec![];
    let flush = |cur: &mut Vec<u32>, out: &mut Vec<Vec<u32>>| {
        if cur.iter().any(|&t| t != vocab.sep) {
            let mut seq = Vec::with_capacity(cur.len() + 2);
            seq.push(vocab.cls);
            seq.append(cur);
            seq.push(vocab.sep);
            out.push(seq);
        }
        cur.clear();
    };
    for note in notes {
        let mut first_piece = true;
        for sentence in note {
            let mut rest: &[u32] = sentence;
            while !rest.is_empty() {
                let take = if rest.len() <= cap {
                    rest.len()
                } else {
                    // Cut before a word start within the last quarter, else at the cap.
                    (cap * 3 / 4..=cap)
                        .rev()
                        .find(|&i| i < rest.len() && !vocab.continues(rest[i]))
                        .filter(|&i| i > 0)
                        .unwrap_or(cap)
                };
                let piece = &rest[..take];
                let boundary = first_piece && !cur.is_empty();
                let need = piece.len() + usize::from(boundary);
                if cur.len() + need > cap {
                    flush(&mut cur, &mut out);
                }
                if first_piece && !cur.is_empty() {
                    cur.push(vocab.sep);
                }
                cur.extend_from_slice(piece);
                first_piece = false;
                rest = &rest[take..];
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Masking settings.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct MaskConfig {
    /// Share of tokens predicted (0.15).
    pub probability: f64,
    pub whole_word: bool,
}

impl Default for MaskConfig {
    fn default() -> Self {
        MaskConfig {
            probability: 0.15,
            whole_word: false,
        }
    }
}

/// A masked sequence: the model's input and, per position, the original token to predict
/// (-100 where nothing is predicted).
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    pub input: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Masks one sequence with `rng` (see the module doc). At least one token is chosen when the
/// sequence has any that may be (as the original BERT's `max(1, ...)`), so every sequence
/// contributes to the loss.
pub fn mask_sequence(
    ids: &[u32],
    vocab: &Vocab,
    cfg: MaskConfig,
    rng: &mut fastrand::Rng,
) -> Masked {
    let candidates: Vec<usize> = (0..ids.len())
        .filter(|&i| !vocab.is_special(ids[i]))
        .collect();
    let mut chosen = vec![false; ids.len()];
    if cfg.whole_word {
        // Words: a candidate and the `##` pieces right after it.
        let mut words: Vec<Vec<usize>> = vec![];
        for &i in &candidates {
            match words.last_mut() {
                Some(w) if vocab.continues(ids[i]) && *w.last().unwrap_or(&usize::MAX) + 1 == i => {
                    w.push(i)
                }
                _ => words.push(vec![i]),
            }
        }
        let target = ((candidates.len() as f64 * cfg.probability).round() as usize).max(1);
        rng.shuffle(&mut words);
        let mut covered = 0;
        for w in &words {
            if covered >= target {
                break;
            }
            if covered + w.len() > target {
                continue;
            }
            covered += w.len();
            for &i in w {
                chosen[i] = true;
            }
        }
        if covered == 0 {
            if let Some(w) = words.first() {
                for &i in w {
                    chosen[i] = true;
                }
            }
        }
    } else {
        for &i in &candidates {
            chosen[i] = rng.f64() < cfg.probability;
        }
        if !candidates.is_empty() && !candidates.iter().any(|&i| chosen[i]) {
            chosen[candidates[rng.usize(..candidates.len())]] = true;
        }
    }
    let mut input = ids.to_vec();
    let mut labels = vec![NOT_PREDICTED; ids.len()];
    for i in 0..ids.len() {
        if !chosen[i] {
            continue;
        }
        labels[i] = ids[i] as i64;
        if rng.f64() < 0.8 {
            input[i] = vocab.mask;
        } else if rng.f64() < 0.5 {
            input[i] = rng.u32(0..vocab.size as u32);
        }
    }
    Masked { input, labels }
}

/// The generator of sequence `index`'s mask in `epoch` (`u64::MAX`: the fixed dev masks).
fn mask_rng(seed: u64, epoch: u64, index: usize) -> fastrand::Rng {
    let mut h = DefaultHasher::new();
    (seed, epoch, index as u64, "mlm-mask").hash(&mut h);
    fastrand::Rng::with_seed(h.finish())
}

/// A new MLM head for a model of `config_json`'s shape, initialised as transformers'
/// `BertPreTrainedModel._init_weights` does; the decoder is `model`'s word embeddings.
pub fn new_head(model: &BertModel, config_json: &serde_json::Value, seed: u64) -> Result<MlmHead> {
    let c = &model.config;
    let h = c.hidden_size;
    let std = config_json
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02);
    let dev = &model.device;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6865_6164);
    Ok(MlmHead {
        dense: Linear::new(
            Tensor::from_vec(super::randn(&mut rng, h * h, std), (h, h), dev)?,
            Some(Tensor::zeros(h, DType::F32, dev)?),
        ),
        norm: LayerNorm {
            weight: Tensor::ones(h, DType::F32, dev)?,
            bias: Tensor::zeros(h, DType::F32, dev)?,
            eps: c.layer_norm_eps,
        },
        decoder: model.word_embeddings().clone(),
        bias: Tensor::zeros(c.vocab_size, DType::F32, dev)?,
        act: c.hidden_act,
    })
}

/// Masked-token figures of `model` + `head` on masked sequences: accuracy, mean loss and
/// perplexity over every predicted token, and the count.
pub fn masked_accuracy(
    model: &BertModel,
    head: &MlmHead,
    seqs: &[Masked],
    pad: u32,
) -> Result<(f64, f64, usize)> {
    let (mut correct, mut loss, mut n) = (0usize, 0f64, 0usize);
    for chunk in seqs.chunks(32) {
        let inputs: Vec<&[u32]> = chunk.iter().map(|m| m.input.as_slice()).collect();
        let (ids, mask) = pad_batch(&inputs, pad, &model.device)?;
        let (positions, targets) = predicted(chunk, ids.dim(1)?);
        if positions.is_empty() {
            continue;
        }
        let logits = head_logits(model, head, &ids, &mask, &positions, None)?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, 1)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        for (row, &t) in logp.iter().zip(&targets) {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            correct += usize::from(best == t as usize);
            loss -= row[t as usize] as f64;
            n += 1;
        }
    }
    let n_f = n.max(1) as f64;
    Ok((correct as f64 / n_f, loss / n_f, n))
}

/// Flat positions (`row * t + col`) of the predicted tokens of a padded batch, and their
/// labels.
fn predicted(batch: &[Masked], t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut positions = vec![];
    let mut targets = vec![];
    for (r, m) in batch.iter().enumerate() {
        for (c, &l) in m.labels.iter().enumerate() {
            if l >= 0 {
                positions.push((r * t + c) as u32);
                targets.push(l as u32);
            }
        }
    }
    (positions, targets)
}

/// Vocabulary logits `[predicted, vocab]` at `positions` only: the decoder (vocab x hidden)
/// is the costliest matrix of the model, and the other positions have no loss.
fn head_logits(
    model: &BertModel,
    head: &MlmHead,
    ids: &Tensor,
    mask: &Tensor,
    positions: &[u32],
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    let hidden = model.forward_with(ids, mask, dropout)?;
    let (b, t, h) = hidden.dims3()?;
    let idx = Tensor::from_vec(positions.to_vec(), positions.len(), &model.device)?;
    let picked = hidden.reshape((b * t, h))?.index_select(&idx, 0)?;
    head.forward(&picked)
}

/// What `clinsearch finetune mlm` is given.
#[derive(Debug, Clone)]
pub struct MlmArgs {
    pub base: String,
    pub notes: Vec<CorpusNote>,
    /// Dev notes from their own file; None: `dev_fraction` of `notes` are held out.
    pub dev_notes: Option<Vec<CorpusNote>>,
    pub dev_fraction: f64,
    pub masking: MaskConfig,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    pub device: Device,
    /// `max_len` None means [`DEFAULT_MAX_LEN`] (capped by the model's positions).
    pub options: TrainOptions,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct MlmOutcome {
    pub notes: usize,
    /// Notes under [`MIN_NOTE_TOKENS`] tokens, skipped.
    pub skipped_short: usize,
    pub train_notes: usize,
    pub dev_notes: usize,
    pub train_sequences: usize,
    pub dev_sequences: usize,
    /// Tokens per training epoch (special tokens included).
    pub train_tokens: usize,
    /// Masked tokens in the fixed dev masks.
    pub dev_masked_tokens: usize,
    pub max_len: usize,
    /// The base had no MLM head and got a new one.
    pub new_head: bool,
    /// Dev figures before training (the base's, or the resumed checkpoint's).
    pub before: serde_json::Map<String, serde_json::Value>,
    pub history: Vec<EpochReport>,
    /// Resumed from a checkpoint trained on other notes (allowed).
    pub corpus_changed: bool,
    /// Training tokens per second over the run's steps (special tokens included; dev
    /// evaluations and checkpoints not counted).
    pub tokens_per_second: f64,
    /// Mean seconds per optimiser step (forward, backward, update).
    pub seconds_per_step: f64,
}

struct MlmTask<'a> {
    model: BertModel,
    head: MlmHead,
    base: &'a Base,
    vocab: Vocab,
    masking: MaskConfig,
    seed: u64,
    train: Vec<Vec<u32>>,
    dev: Vec<Masked>,
    /// The epoch whose masks `loss` draws (set by the loop through `set_epoch`).
    epoch: std::cell::Cell<usize>,
}

impl MlmTask<'_> {
    fn detached(&self) -> Result<(BertModel, MlmHead)> {
        let w = Weights::from_tensors(self.model.named_tensors().into_iter().collect(), "training");
        let model = BertModel::load(&w, &self.model.config, self.model.dtype, &self.model.device)?;
        let lin = |l: &Linear| Linear::new(l.weight.detach(), l.bias.as_ref().map(|b| b.detach()));
        let head = MlmHead {
            dense: lin(&self.head.dense),
            norm: LayerNorm {
                weight: self.head.norm.weight.detach(),
                bias: self.head.norm.bias.detach(),
                eps: self.head.norm.eps,
            },
            decoder: model.word_embeddings().clone(),
            bias: self.head.bias.detach(),
            act: self.head.act,
        };
        Ok((model, head))
    }
}

impl Task for MlmTask<'_> {
    const NAME: &'static str = "mlm";

    fn len(&self) -> usize {
        self.train.len()
    }

    fn begin_epoch(&self, epoch: usize) {
        self.epoch.set(epoch);
    }

    fn loss(&self, batch: &[usize], dropout: Option<&Dropout>) -> Result<Tensor> {
        let epoch = self.epoch.get() as u64;
        let masked: Vec<Masked> = batch
            .iter()
            .map(|&i| {
                let mut rng = mask_rng(self.seed, epoch, i);
                mask_sequence(&self.train[i], &self.vocab, self.masking, &mut rng)
            })
            .collect();
        let inputs: Vec<&[u32]> = masked.iter().map(|m| m.input.as_slice()).collect();
        let (ids, mask) = pad_batch(&inputs, self.vocab.pad, &self.model.device)?;
        let (positions, targets) = predicted(&masked, ids.dim(1)?);
        let logits = head_logits(&self.model, &self.head, &ids, &mask, &positions, dropout)?;
        let logits = logits.to_dtype(DType::F32)?;
        if crate::model::grad_ops::applies(&logits) {
            return Ok(crate::model::grad_ops::cross_entropy(&logits, &targets)?);
        }
        let targets = Tensor::from_vec(targets, positions.len(), &self.model.device)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    }

    fn evaluate(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        if self.dev.is_empty() {
            return Ok(m);
        }
        let (model, head) = self.detached()?;
        let (acc, loss, n) = masked_accuracy(&model, &head, &self.dev, self.vocab.pad)?;
        m.insert("masked_accuracy".into(), acc.into());
        m.insert("loss".into(), loss.into());
        m.insert("perplexity".into(), loss.exp().into());
        m.insert("masked_tokens".into(), n.into());
        Ok(m)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors: Vec<(String, Tensor)> = self
            .model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("bert.{n}"), t))
            .collect();
        let h = &self.head;
        let p = "cls.predictions";
        tensors.push((
            format!("{p}.transform.dense.weight"),
            h.dense.weight.detach(),
        ));
        if let Some(b) = &h.dense.bias {
            tensors.push((format!("{p}.transform.dense.bias"), b.detach()));
        }
        tensors.push((
            format!("{p}.transform.LayerNorm.weight"),
            h.norm.weight.detach(),
        ));
        tensors.push((
            format!("{p}.transform.LayerNorm.bias"),
            h.norm.bias.detach(),
        ));
        tensors.push((format!("{p}.bias"), h.bias.detach()));
        super::save_safetensors(dir, tensors)?;
        let mut config = self.base.config_json.clone();
        if let Some(obj) = config.as_object_mut() {
            obj.insert(
                "architectures".into(),
                serde_json::json!(["BertForMaskedLM"]),
            );
            // The decoder is the word embedding matrix (not stored twice).
            obj.insert("tie_word_embeddings".into(), true.into());
            for k in ["id2label", "label2id", "num_labels", "problem_type"] {
                obj.remove(k);
            }
        }
        super::write_json(&dir.join("config.json"), &config)?;
        super::copy_tokenizer_files(&self.base.dir, dir)?;
        super::copy_sentence_transformers_files(&self.base.dir, dir)
    }
}

/// Tokenises, skips short notes, packs: `(sequences, notes kept, notes skipped, tokens)`.
fn prepare(
    tok: &TextTokenizer,
    vocab: &Vocab,
    notes: &[&CorpusNote],
    max_len: usize,
) -> Result<(Vec<Vec<u32>>, usize, usize)> {
    let mut kept = vec![];
    let mut skipped = 0;
    for n in notes {
        let sentences = tokenize_note(tok, &n.text)?;
        if sentences.iter().map(Vec::len).sum::<usize>() < MIN_NOTE_TOKENS {
            skipped += 1;
            continue;
        }
        kept.push(sentences);
    }
    let n_kept = kept.len();
    Ok((pack(&kept, vocab, max_len), n_kept, skipped))
}

/// Continues masked-language-model training of `args.base` on the notes. Every input
/// problem (an empty corpus, only short notes, a length beyond the model's positions, a
/// tokenizer without `[MASK]`, a checkpoint of another base) is reported before the first
/// step.
pub fn finetune(args: &MlmArgs, on_event: &mut dyn FnMut(&TrainEvent)) -> Result<MlmOutcome> {
    let mut opts = args.options.clone();
    opts.validate()?;
    if !(args.masking.probability > 0.0 && args.masking.probability < 1.0) {
        return Err(Error::InvalidInput(format!(
            "--mlm-probability {} must be in (0, 1)",
            args.masking.probability
        )));
    }
    if !(0.0..1.0).contains(&args.dev_fraction) {
        return Err(Error::InvalidInput(format!(
            "--dev-fraction {} must be in [0, 1)",
            args.dev_fraction
        )));
    }
    if args.notes.is_empty() {
        return Err(Error::InvalidInput("the corpus has no notes".into()));
    }
    let base = Base::load(&args.base, &args.device)?;
    if opts.max_len.is_none() {
        opts.max_len = Some(DEFAULT_MAX_LEN.min(base.config.max_position_embeddings));
    }
    let max_len = base.max_len(&opts)?;
    let vocab = Vocab::of(&base.tokenizer, &args.base)?;

    let (train_notes, dev_notes): (Vec<&CorpusNote>, Vec<&CorpusNote>) = match &args.dev_notes {
        Some(dev) => (args.notes.iter().collect(), dev.iter().collect()),
        None => {
            let (tr, dv) = split_notes(args.notes.len(), args.dev_fraction, opts.seed);
            (
                tr.iter().map(|&i| &args.notes[i]).collect(),
                dv.iter().map(|&i| &args.notes[i]).collect(),
            )
        }
    };
    let (train, train_kept, train_skipped) =
        prepare(&base.tokenizer, &vocab, &train_notes, max_len)?;
    let (dev_seqs, dev_kept, dev_skipped) = prepare(&base.tokenizer, &vocab, &dev_notes, max_len)?;
    if train.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no training note has {MIN_NOTE_TOKENS} tokens or more ({} notes, all skipped as too short)",
            train_notes.len()
        )));
    }
    let dev: Vec<Masked> = dev_seqs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            mask_sequence(
                s,
                &vocab,
                args.masking,
                &mut mask_rng(opts.seed, u64::MAX, i),
            )
        })
        .collect();

    let corpus = corpus_digest(&args.notes);
    let resume = match args.resume.as_deref() {
        Some(p) => {
            let ckpt = super::find_checkpoint(p)?;
            let state = super::check_resume(&ckpt, "mlm", &base, &opts)?;
            Some((ckpt, state))
        }
        None => None,
    };
    let corpus_changed = resume
        .as_ref()
        .is_some_and(|(_, s)| s.corpus.as_deref().is_some_and(|c| c != corpus));

    let device = &args.device;
    let w = base.starting_weights(resume.as_ref().map(|(c, _)| c.as_path()))?;
    let w: &Weights = &w;
    let mut model = BertModel::load(w, &base.config, DType::F32, device)?;
    let mut vars = model.make_trainable(opts.freeze_layers)?;
    let frozen = model.named_tensors().len() - vars.len();
    let new_head_made = !w.contains(MLM_HEAD_KEY);
    let head = match MlmHead::load(w, &model)? {
        Some(mut h) => {
            // Tied to the (now trainable) word embeddings.
            h.decoder = model.word_embeddings().clone();
            h
        }
        None => new_head(&model, &base.config_json, opts.seed)?,
    };
    let mut var = |name: &str, t: &Tensor| -> Result<Tensor> {
        let v = candle_core::Var::from_tensor(t)?;
        let out = v.as_tensor().clone();
        vars.push((name.to_string(), v));
        Ok(out)
    };
    let p = "cls.predictions";
    let head = MlmHead {
        dense: Linear::new(
            var(&format!("{p}.transform.dense.weight"), &head.dense.weight)?,
            Some(var(
                &format!("{p}.transform.dense.bias"),
                head.dense
                    .bias
                    .as_ref()
                    .expect("the MLM transform has a bias"),
            )?),
        ),
        norm: LayerNorm {
            weight: var(
                &format!("{p}.transform.LayerNorm.weight"),
                &head.norm.weight,
            )?,
            bias: var(&format!("{p}.transform.LayerNorm.bias"), &head.norm.bias)?,
            eps: head.norm.eps,
        },
        decoder: head.decoder,
        bias: var(&format!("{p}.bias"), &head.bias)?,
        act: head.act,
    };
    let optimizer = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    let train_tokens: usize = train.iter().map(Vec::len).sum();
    let task = MlmTask {
        model,
        head,
        base: &base,
        vocab,
        masking: args.masking,
        seed: opts.seed,
        train,
        dev,
        epoch: std::cell::Cell::new(0),
    };
    let before = task.evaluate()?;
    let (mut steps_run, mut epochs_run) = (0usize, 0usize);
    let batch = opts.batch_size;
    let history = super::run_with(
        &task,
        &base,
        super::Start {
            optimizer,
            frozen,
            resume,
        },
        &opts,
        &args.out,
        Some(corpus),
        &mut |e| {
            match e {
                TrainEvent::Step { .. } => steps_run += 1,
                TrainEvent::Epoch(_) => epochs_run += 1,
                _ => {}
            }
            on_event(e)
        },
    )?;
    // Time in the steps of this run's epochs (not the dev evaluations or checkpoints).
    let seconds: f64 = history[history.len() - epochs_run..]
        .iter()
        .map(|r| r.timing.forward_s + r.timing.backward_s + r.timing.update_s)
        .sum();
    let mean_seq = train_tokens as f64 / task.train.len() as f64;
    Ok(MlmOutcome {
        notes: args.notes.len() + args.dev_notes.as_ref().map_or(0, Vec::len),
        skipped_short: train_skipped + dev_skipped,
        train_notes: train_kept,
        dev_notes: dev_kept,
        train_sequences: task.train.len(),
        dev_sequences: task.dev.len(),
        train_tokens,
        dev_masked_tokens: task
            .dev
            .iter()
            .map(|m| m.labels.iter().filter(|&&l| l >= 0).count())
            .sum(),
        max_len,
        new_head: new_head_made,
        before,
        history,
        corpus_changed,
        tokens_per_second: if steps_run > 0 {
            (steps_run * batch) as f64 * mean_seq / seconds.max(1e-9)
        } else {
            0.0
        },
        seconds_per_step: if steps_run > 0 {
            seconds / steps_run as f64
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: 0 pad, 1 cls, 2 sep, 3 mask, 4.. words, odd ids from 11 up are
    /// `##` continuations.
    fn vocab() -> Vocab {
        Vocab {
            cls: 1,
            sep: 2,
            pad: 0,
            mask: 3,
            size: 100,
            continuation: (0..100).map(|i| i > 10 && i % 2 == 1).collect(),
        }
    }

    #[test]
    fn token_masking_follows_the_collator_rates_and_never_touches_special_tokens() {
        let v = vocab();
        let mut ids = vec![1u32];
        ids.extend((0..2000).map(|i| 4 + (i % 90) as u32));
        ids.push(2);
        let mut rng = fastrand::Rng::with_seed(3);
        let (mut chosen, mut masked, mut random, mut kept) = (0, 0, 0, 0);
        for _ in 0..20 {
            let m = mask_sequence(&ids, &v, MaskConfig::default(), &mut rng);
            assert_eq!(m.labels[0], NOT_PREDICTED);
            assert_eq!(m.labels[ids.len() - 1], NOT_PREDICTED);
            assert_eq!((m.input[0], m.input[ids.len() - 1]), (1, 2));
            #[allow(clippy::needless_range_loop)] // three arrays by one index
            for i in 0..ids.len() {
                if m.labels[i] == NOT_PREDICTED {
                    assert_eq!(m.input[i], ids[i], "an unchosen token is left as it is");
                    continue;
                }
                assert_eq!(
                    m.labels[i], ids[i] as i64,
                    "the label is the original token"
                );
                chosen += 1;
                if m.input[i] == 3 {
                    masked += 1;
                } else if m.input[i] == ids[i] {
                    kept += 1;
                } else {
                    random += 1;
                }
            }
        }
        let total = 20.0 * 2000.0;
        let rate = chosen as f64 / total;
        assert!((rate - 0.15).abs() < 0.01, "chosen {rate}");
        let c = chosen as f64;
        assert!(
            (masked as f64 / c - 0.8).abs() < 0.02,
            "[MASK] {}",
            masked as f64 / c
        );
        // A random draw can land on the original token (1 in 100 here): counted as kept.
        assert!(
            (random as f64 / c - 0.099).abs() < 0.015,
            "random {}",
            random as f64 / c
        );
        assert!(
            (kept as f64 / c - 0.101).abs() < 0.015,
            "kept {}",
            kept as f64 / c
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_mask_and_every_sequence_predicts_something() {
        let v = vocab();
        let ids = [1, 4, 5, 6, 2];
        let a = mask_sequence(&ids, &v, MaskConfig::default(), &mut mask_rng(7, 0, 3));
        let b = mask_sequence(&ids, &v, MaskConfig::default(), &mut mask_rng(7, 0, 3));
        assert_eq!(a, b);
        for seed in 0..200 {
            let m = mask_sequence(&ids, &v, MaskConfig::default(), &mut mask_rng(seed, 1, 0));
            assert!(
                m.labels.iter().any(|&l| l >= 0),
                "seed {seed}: nothing to predict"
            );
        }
        let next_epoch = (0..20)
            .filter(|&s| {
                mask_sequence(
                    &[1, 4, 5, 6, 7, 8, 9, 10, 2],
                    &v,
                    MaskConfig::default(),
                    &mut mask_rng(s, 0, 0),
                ) != mask_sequence(
                    &[1, 4, 5, 6, 7, 8, 9, 10, 2],
                    &v,
                    MaskConfig::default(),
                    &mut mask_rng(s, 1, 0),
                )
            })
            .count();
        assert!(
            next_epoch > 10,
            "masks are redrawn each epoch ({next_epoch}/20 differ)"
        );
    }

    #[test]
    fn whole_word_masking_masks_every_piece_of_a_chosen_word() {
        let v = vocab();
        // Words: [4 11] [6] [8 13 15] [10] ... repeated.
        let mut ids = vec![1u32];
        for _ in 0..100 {
            ids.extend([4, 11, 6, 8, 13, 15, 10]);
        }
        ids.push(2);
        let cfg = MaskConfig {
            whole_word: true,
            ..Default::default()
        };
        let m = mask_sequence(&ids, &v, cfg, &mut fastrand::Rng::with_seed(9));
        let chosen: Vec<bool> = m.labels.iter().map(|&l| l >= 0).collect();
        let mut i = 1;
        while i < ids.len() - 1 {
            let mut j = i + 1;
            while j < ids.len() - 1 && v.continues(ids[j]) {
                j += 1;
            }
            let word = &chosen[i..j];
            assert!(
                word.iter().all(|&c| c == word[0]),
                "word at {i} split: {word:?}"
            );
            i = j;
        }
        let n = chosen.iter().filter(|&&c| c).count();
        assert!((100..=105).contains(&n), "{n} of 700 tokens (15% = 105)");
    }

    #[test]
    fn packing_fills_sequences_from_consecutive_sentences_and_notes() {
        let v = vocab();
        let notes = vec![
            vec![vec![4, 5, 6], vec![7, 8]],
            vec![vec![9, 10]],
            vec![vec![4; 20]],
        ];
        let seqs = pack(&notes, &v, 10);
        // 8 tokens of room: note 1 (5 tokens) + [SEP] + note 2 (2) = 8; the 20-token sentence
        // is cut into 8 + 8 + 4.
        assert_eq!(seqs[0], vec![1, 4, 5, 6, 7, 8, 2, 9, 10, 2]);
        assert_eq!(seqs[1].len(), 10);
        assert_eq!(seqs[3], vec![1, 4, 4, 4, 4, 2]);
        assert_eq!(seqs.len(), 4);
        assert!(seqs
            .iter()
            .all(|s| s.len() <= 10 && s[0] == 1 && *s.last().unwrap() == 2));
        // A long sentence is cut before a word start, not inside a word.
        let words: Vec<u32> = [4, 11, 13, 6, 11, 8, 13, 15, 17, 10].to_vec();
        let seqs = pack(&[vec![words]], &v, 8);
        assert_eq!(
            seqs[0],
            vec![1, 4, 11, 13, 6, 11, 2],
            "cut before 8, a word start"
        );
    }

    #[test]
    fn the_dev_split_holds_out_whole_notes_by_seed() {
        let (train, dev) = split_notes(100, 0.1, 5);
        assert_eq!((train.len(), dev.len()), (90, 10));
        assert!(dev.iter().all(|d| !train.contains(d)));
        assert_eq!(split_notes(100, 0.1, 5), (train, dev));
        assert_eq!(split_notes(2, 0.1, 5).1.len(), 1);
        assert_eq!(split_notes(1, 0.1, 5).1.len(), 0);
        assert_eq!(split_notes(10, 0.0, 5).1.len(), 0);
    }
}

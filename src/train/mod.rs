//! Fine-tuning on candle's autograd: a sequence-classification head
//! ([`classify`], as transformers' `BertForSequenceClassification`) and contrastive retrieval
//! tuning of the embedding model ([`retrieval`], sentence-transformers'
//! `MultipleNegativesRankingLoss`). Both share this module's machinery: the base model made
//! trainable (every encoder parameter a variable, LayerNorm and softmax in differentiable
//! ops), seeded dropout, AdamW with warm-up and linear decay, gradient clipping, optional
//! freezing of lower layers, a checkpoint per epoch and resuming from one. Output folders are
//! in the Hugging Face layout, so transformers and sentence-transformers load them as they
//! load any checkpoint, and clinsearch loads them like any other model folder.

pub mod classify;
pub mod data;
pub mod mlm;
pub mod ner;
pub mod optim;
pub mod retrieval;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::bert::{BertModel, Dropout};
use crate::model::config::{self, BertConfig, Pooling};
use crate::model::tokenizer::TextTokenizer;
use crate::model::weights::Weights;
use optim::{AdamW, LinearSchedule};

/// What both fine-tuning tasks let the user choose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Fraction of all steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Keep the embeddings and the first N transformer layers fixed.
    pub freeze_layers: usize,
    /// Tokens per training text including `[CLS]`/`[SEP]` (None: the model's window).
    pub max_len: Option<usize>,
    /// Seeds shuffling, dropout and head initialisation.
    pub seed: u64,
    /// Do not apply dropout (tests use it for exact reproducibility across paths).
    pub no_dropout: bool,
    /// Stop after this many optimiser steps in all (for smoke tests and quick trials).
    pub max_steps: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 3,
            batch_size: 16,
            lr: 2e-5,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            freeze_layers: 0,
            max_len: None,
            seed: 42,
            no_dropout: false,
            max_steps: None,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr {} must be a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio {} must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if self.weight_decay < 0.0 {
            return bad("--weight-decay must not be negative".into());
        }
        if matches!(self.max_grad_norm, Some(n) if n <= 0.0) {
            return bad("--max-grad-norm must be positive".into());
        }
        if matches!(self.max_len, Some(n) if n < 3) {
            return bad("--max-len must be at least 3 tokens".into());
        }
        Ok(())
    }
}

/// What the training loop reports as it goes (the CLI draws a progress bar from it).
#[derive(Debug, Clone)]
pub enum TrainEvent {
    Start {
        epochs: usize,
        steps_per_epoch: usize,
        first_epoch: usize,
        trainable: usize,
        frozen: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
    },
    Epoch(EpochReport),
}

/// One epoch's summary: mean training loss and the task's dev metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub steps: usize,
    pub train_loss: f64,
    pub seconds: f64,
    /// Where the epoch's training time went: seconds in the forward pass (the loss),
    /// the backward pass and the optimiser update, summed over its steps.
    #[serde(default)]
    pub timing: StepTiming,
    /// Task metrics on the dev set (empty without one).
    pub dev: serde_json::Map<String, serde_json::Value>,
    pub checkpoint: PathBuf,
}

/// Seconds spent in each part of the training steps of an epoch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StepTiming {
    pub forward_s: f64,
    pub backward_s: f64,
    pub update_s: f64,
}

/// A base checkpoint loaded for training.
pub struct Base {
    pub dir: PathBuf,
    /// The spec the user gave (folder or Hub id).
    pub spec: String,
    pub config: BertConfig,
    /// `config.json` as written, so the output keeps every field transformers reads.
    pub config_json: serde_json::Value,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub model: BertModel,
    /// The model's own text length (sentence-transformers' max_seq_length or its positions).
    pub window: usize,
    pub pooling: Pooling,
}

impl Base {
    /// Resolves and loads `spec` (folder or Hub id) in f32 on `device`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let resolved = crate::model::resolve_model(spec)?;
        Self::load_dir(&resolved.dir, spec, device)
    }

    fn load_dir(dir: &Path, spec: &str, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config = BertConfig::from_json(&text).map_err(|e| match e {
            Error::InvalidInput(r) => Error::bad_file(&config_path, r),
            other => other,
        })?;
        let config_json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&config_path, e))?;
        let weights = Weights::load(dir)?;
        let tokenizer = TextTokenizer::load(dir)?;
        let model = BertModel::load(&weights, &config, DType::F32, device)?;
        let window = config::sentence_transformers_max_len(dir)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let pooling = config::sentence_transformers_pooling(dir)?.unwrap_or(Pooling::Mean);
        Ok(Base {
            dir: dir.to_path_buf(),
            spec: spec.to_string(),
            config,
            config_json,
            weights,
            tokenizer,
            model,
            window,
            pooling,
        })
    }

    /// A digest of the base's word embeddings: two bases of the same shape (another
    /// MiniLM) still differ here, so a checkpoint cannot silently resume onto the wrong one.
    /// The weights a run starts from: the checkpoint's when resuming, else the base's.
    pub(crate) fn starting_weights(
        &self,
        resume: Option<&Path>,
    ) -> Result<std::borrow::Cow<'_, Weights>> {
        Ok(match resume {
            Some(ckpt) => std::borrow::Cow::Owned(Weights::load(ckpt)?),
            None => std::borrow::Cow::Borrowed(&self.weights),
        })
    }

    pub fn digest(&self) -> Result<String> {
        use std::hash::{Hash, Hasher};
        let values = self
            .model
            .word_embeddings()
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for v in values.iter().step_by(7) {
            v.to_bits().hash(&mut h);
        }
        Ok(format!("{:016x}", h.finish()))
    }

    /// The shape of the encoder: a checkpoint can only resume onto a base of the same shape.
    pub fn fingerprint(&self) -> String {
        let c = &self.config;
        format!(
            "bert h{} l{} a{} i{} v{} p{}",
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
            c.vocab_size,
            c.max_position_embeddings
        )
    }

    /// Tokens per text for training: the option, else the model's window.
    pub fn max_len(&self, opts: &TrainOptions) -> Result<usize> {
        let n = opts.max_len.unwrap_or(self.window);
        if n > self.config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "--max-len {n} exceeds the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        Ok(n)
    }
}

/// Token ids of `text` cut to `max_len` with `[CLS]`/`[SEP]` (an empty text is an error).
pub fn encode(tok: &TextTokenizer, text: &str, max_len: usize) -> Result<Vec<u32>> {
    let ids = tok.encode(text)?.ids;
    let n = ids.len().min(max_len - 2);
    let mut seq = Vec::with_capacity(n + 2);
    seq.push(tok.cls_id);
    seq.extend_from_slice(&ids[..n]);
    seq.push(tok.sep_id);
    Ok(seq)
}

/// Pads sequences to the longest: `(input_ids, attention_mask)` as `[b, t]` u32 tensors.
pub fn pad_batch(seqs: &[&[u32]], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad; b * t];
    let mut mask = vec![0u32; b * t];
    for (r, s) in seqs.iter().enumerate() {
        ids[r * t..r * t + s.len()].copy_from_slice(s);
        mask[r * t..r * t + s.len()].fill(1);
    }
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
    ))
}

/// Mean or CLS pooling of `hidden` `[b, t, h]` under `mask` `[b, t]`.
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    Ok(match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
            hidden
                .broadcast_mul(&m)?
                .sum(1)?
                .broadcast_div(&m.sum(1)?)?
        }
    })
}

/// Normal(0, std) values from a seeded generator (Box-Muller), for new head weights.
pub fn randn(rng: &mut fastrand::Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.f64().max(1e-12);
            let u2 = rng.f64();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect()
}

/// Writes the tokenizer files of `from` (those present) into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| Error::io(to.join(name), e))?;
        }
    }
    Ok(())
}

/// Copies the sentence-transformers description of `from` (modules, pooling, normalisation)
/// into `to` when it has one, so that the output embeds as the base did.
pub fn copy_sentence_transformers_files(from: &Path, to: &Path) -> Result<()> {
    let modules = from.join("modules.json");
    if !modules.is_file() {
        return Ok(());
    }
    for name in [
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ] {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| Error::io(to.join(name), e))?;
        }
    }
    let text = std::fs::read_to_string(&modules).map_err(|e| Error::io(&modules, e))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&modules, e))?;
    for m in list {
        let Some(sub) = m
            .get("path")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        let (src, dst) = (from.join(sub), to.join(sub));
        if !src.is_dir() {
            continue;
        }
        std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
        for f in std::fs::read_dir(&src).map_err(|e| Error::io(&src, e))? {
            let f = f.map_err(|e| Error::io(&src, e))?;
            if f.path().is_file() {
                std::fs::copy(f.path(), dst.join(f.file_name()))
                    .map_err(|e| Error::io(dst.join(f.file_name()), e))?;
            }
        }
    }
    Ok(())
}

/// Writes transformers' `id2label` and `label2id` for `labels` (in index order) into a
/// `config.json` object.
pub fn insert_label_maps(
    config: &mut serde_json::Map<String, serde_json::Value>,
    labels: &[String],
) {
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    config.insert("id2label".into(), id2label.into());
    config.insert("label2id".into(), label2id.into());
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::InvalidInput(format!("cannot serialise {}: {e}", path.display())))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Saves tensors as `model.safetensors` in `dir`, written beside and renamed so that an
/// interrupted save never leaves a truncated model behind.
pub fn save_safetensors(dir: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let tmp = dir.join("model.safetensors.partial");
    candle_core::safetensors::save(&map, &tmp)
        .map_err(|e| Error::bad_file(&tmp, format!("cannot write weights: {e}")))?;
    let dst = dir.join("model.safetensors");
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))
}

/// Everything needed to resume: written as `trainer_state.json` in each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// `classify` or `retrieval`.
    pub task: String,
    pub base: String,
    pub base_fingerprint: String,
    /// Epochs completed.
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    pub options: TrainOptions,
    /// Class labels (classification) in index order.
    #[serde(default)]
    pub labels: Vec<String>,
    pub history: Vec<EpochReport>,
    /// [`Base::digest`] of the base (absent in checkpoints of earlier versions).
    #[serde(default)]
    pub base_digest: Option<String>,
    /// What the run trained on, where a task records it (the MLM corpus's digest).
    #[serde(default)]
    pub corpus: Option<String>,
}

/// The checkpoint folder `OUT/checkpoints/epoch-N`.
pub fn checkpoint_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join("checkpoints").join(format!("epoch-{epoch}"))
}

/// Finds the checkpoint to resume from: `path` itself when it holds a `trainer_state.json`,
/// else the latest `checkpoints/epoch-N` under it.
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    let dir = path.join("checkpoints");
    let is_checkpoint = |p: &Path| {
        p.join("trainer_state.json").is_file() && p.join("optimizer.safetensors").is_file()
    };
    if !dir.is_dir() && is_checkpoint(path) {
        return Ok(path.to_path_buf());
    }
    let latest = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: usize = name.strip_prefix("epoch-")?.parse().ok()?;
            is_checkpoint(&e.path()).then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    latest.map(|(_, p)| p).ok_or_else(|| {
        Error::InvalidInput(format!(
            "--resume {}: no checkpoint there (expected trainer_state.json or checkpoints/epoch-N/)",
            path.display()
        ))
    })
}

pub fn read_state(checkpoint: &Path) -> Result<TrainerState> {
    let path = checkpoint.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e))
}

/// A resumed run: the checkpoint's state, after checking it belongs to this run.
pub fn check_resume(
    checkpoint: &Path,
    task: &str,
    base: &Base,
    opts: &TrainOptions,
) -> Result<TrainerState> {
    let state = read_state(checkpoint)?;
    let mismatch = |what: String| {
        Err(Error::InvalidInput(format!(
            "cannot resume from {}: {what}",
            checkpoint.display()
        )))
    };
    if state.task != task {
        return mismatch(format!("it is a {} checkpoint, not {task}", state.task));
    }
    if state.base_fingerprint != base.fingerprint() {
        return mismatch(format!(
            "it was trained from {} ({}), but --base {} is {}",
            state.base,
            state.base_fingerprint,
            base.spec,
            base.fingerprint()
        ));
    }
    if let (Some(theirs), Ok(ours)) = (&state.base_digest, base.digest()) {
        if *theirs != ours {
            return mismatch(format!(
                "it was trained from {}, whose weights differ from --base {} (same shape, other weights)",
                state.base, base.spec
            ));
        }
    }
    if state.options.freeze_layers != opts.freeze_layers {
        return mismatch(format!(
            "it froze {} layers, this run {}",
            state.options.freeze_layers, opts.freeze_layers
        ));
    }
    if state.epoch >= opts.epochs {
        return mismatch(format!(
            "it already completed {} of the {} epochs asked for",
            state.epoch, opts.epochs
        ));
    }
    Ok(state)
}

/// The checkpoint `resume` names, checked against this run ([`check_resume`]) and against
/// the run's label list (`what` names them in the error: labels, tags); None without one.
pub fn resume_with_labels(
    resume: Option<&Path>,
    task: &str,
    base: &Base,
    opts: &TrainOptions,
    labels: &[String],
    what: &str,
) -> Result<Option<(PathBuf, TrainerState)>> {
    let Some(p) = resume else {
        return Ok(None);
    };
    let ckpt = find_checkpoint(p)?;
    let state = check_resume(&ckpt, task, base, opts)?;
    if state.labels != labels {
        return Err(Error::InvalidInput(format!(
            "cannot resume from {}: it was trained on the {what} {:?}, the training file has {:?}",
            ckpt.display(),
            state.labels,
            labels
        )));
    }
    Ok(Some((ckpt, state)))
}

/// One fine-tuning task as the shared loop sees it.
pub(crate) trait Task {
    const NAME: &'static str;
    /// Training examples.
    fn len(&self) -> usize;
    /// The loss of a batch (indices into the training set).
    fn loss(&self, batch: &[usize], dropout: Option<&Dropout>) -> Result<Tensor>;
    /// Dev-set metrics (empty without a dev set).
    fn evaluate(&self) -> Result<serde_json::Map<String, serde_json::Value>>;
    /// Writes the model in the Hugging Face layout into `dir`.
    fn save(&self, dir: &Path) -> Result<()>;
    /// The label list recorded in checkpoints (classification).
    fn labels(&self) -> Vec<String> {
        vec![]
    }
    /// Called before each epoch's first batch (0-based), for tasks whose examples change
    /// per epoch (MLM redraws its masks).
    fn begin_epoch(&self, _epoch: usize) {}
}

/// Seeded Fisher-Yates order of `0..n` for `epoch` (the same on a resumed run).
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng =
        fastrand::Rng::with_seed(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    order
}

/// Where a run starts: the optimiser over the trained variables, how many parameter tensors
/// stay frozen, and the checkpoint being resumed (with its state).
pub(crate) struct Start {
    pub optimizer: AdamW,
    pub frozen: usize,
    pub resume: Option<(PathBuf, TrainerState)>,
}

/// The shared loop: epochs of shuffled batches, AdamW on the schedule, a checkpoint and dev
/// metrics after each epoch, the final model in `out`. `optimizer` already holds the trained
/// variables; `resume` is the state of the checkpoint it was restored from.
pub(crate) fn run<T: Task>(
    task: &T,
    base: &Base,
    start: Start,
    opts: &TrainOptions,
    out: &Path,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<Vec<EpochReport>> {
    run_with(task, base, start, opts, out, None, on_event)
}

/// [`run`], recording `corpus` (what the run trained on) in each checkpoint's state.
pub(crate) fn run_with<T: Task>(
    task: &T,
    base: &Base,
    start: Start,
    opts: &TrainOptions,
    out: &Path,
    corpus: Option<String>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<Vec<EpochReport>> {
    let base_digest = Some(base.digest()?);
    let Start {
        mut optimizer,
        frozen,
        resume,
    } = start;
    let steps_per_epoch = task.len().div_ceil(opts.batch_size);
    let mut total = steps_per_epoch * opts.epochs;
    if let Some(max) = opts.max_steps {
        total = total.min(max);
    }
    let schedule = LinearSchedule {
        peak: opts.lr,
        warmup: (opts.warmup_ratio * total as f64).round() as usize,
        total,
    };
    let (first_epoch, mut history) = match resume {
        Some((ckpt, state)) => {
            optimizer.load_state(&ckpt.join("optimizer.safetensors"), state.step)?;
            (state.epoch, state.history)
        }
        None => (0, vec![]),
    };
    on_event(&TrainEvent::Start {
        epochs: opts.epochs,
        steps_per_epoch,
        first_epoch,
        trainable: optimizer.len(),
        frozen,
    });
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for epoch in first_epoch..opts.epochs {
        if optimizer.step >= total {
            break;
        }
        let started = std::time::Instant::now();
        let dropout = (!opts.no_dropout)
            .then(|| Dropout::new(&base.config, opts.seed.wrapping_add(1 + epoch as u64)));
        let order = epoch_order(task.len(), opts.seed, epoch);
        task.begin_epoch(epoch);
        let (mut loss_sum, mut steps) = (0.0, 0);
        let mut timing = StepTiming::default();
        for batch in order.chunks(opts.batch_size) {
            if optimizer.step >= total {
                break;
            }
            let t0 = std::time::Instant::now();
            let loss = task.loss(batch, dropout.as_ref())?;
            let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
            timing.forward_s += t0.elapsed().as_secs_f64();
            if !value.is_finite() {
                return Err(Error::InvalidInput(format!(
                    "the loss became {value} at step {}: lower the learning rate",
                    optimizer.step + 1
                )));
            }
            let t1 = std::time::Instant::now();
            let grads = loss.backward()?;
            timing.backward_s += t1.elapsed().as_secs_f64();
            let t2 = std::time::Instant::now();
            let lr = schedule.lr(optimizer.step);
            let grad_norm = optimizer.step(&grads, lr, opts.max_grad_norm)?;
            drop(grads);
            timing.update_s += t2.elapsed().as_secs_f64();
            loss_sum += value;
            steps += 1;
            on_event(&TrainEvent::Step {
                epoch: epoch + 1,
                step: optimizer.step,
                loss: value,
                lr,
                grad_norm,
            });
        }
        let dev = task.evaluate()?;
        let ckpt = checkpoint_dir(out, epoch + 1);
        std::fs::create_dir_all(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
        task.save(&ckpt)?;
        optimizer.save_state(&ckpt.join("optimizer.safetensors"))?;
        let report = EpochReport {
            epoch: epoch + 1,
            steps,
            train_loss: if steps > 0 {
                loss_sum / steps as f64
            } else {
                f64::NAN
            },
            seconds: started.elapsed().as_secs_f64(),
            timing,
            dev,
            checkpoint: ckpt.clone(),
        };
        history.push(report.clone());
        let state = TrainerState {
            task: T::NAME.into(),
            base: base.spec.clone(),
            base_fingerprint: base.fingerprint(),
            epoch: epoch + 1,
            step: optimizer.step,
            total_steps: total,
            options: opts.clone(),
            labels: task.labels(),
            history: history.clone(),
            base_digest: base_digest.clone(),
            corpus: corpus.clone(),
        };
        // Written last: a checkpoint without it is incomplete and is never resumed from.
        write_json(&ckpt.join("trainer_state.json"), &state)?;
        on_event(&TrainEvent::Epoch(report));
    }
    task.save(out)?;
    if let Some(last) = history.last() {
        let state = read_state(&last.checkpoint)?;
        write_json(&out.join("trainer_state.json"), &state)?;
    }
    Ok(history)
}

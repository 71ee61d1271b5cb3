//! Token classification (named-entity tagging): BERT plus transformers'
//! `BertForTokenClassification` head, trained with cross-entropy on each word's first
//! sub-word, dev metrics as seqeval computes them. The model and its windows are
//! [`crate::ner`]'s; this file is the training task.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::optim::{AdamW, AdamWConfig};
use super::{pad_batch, Base, EpochReport, Task, TrainEvent, TrainOptions};
use crate::error::{Error, Result};
use crate::model::bert::{BertModel, Dropout, Linear};
use crate::model::weights::Weights;
use crate::ner::data::{self, Scheme, Sentence};
use crate::ner::{self, TokenClassifier, HEAD, IGNORE};

/// What `clinsearch finetune ner` is given.
#[derive(Debug, Clone)]
pub struct NerArgs {
    pub base: String,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    /// IOB2 only (an `I-` after `O` is an error) instead of IOB1 or IOB2.
    pub strict: bool,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    pub device: Device,
    pub options: TrainOptions,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct NerOutcome {
    pub labels: Vec<String>,
    pub train_sentences: usize,
    /// Training windows (more than sentences when some are longer than one window).
    pub train_windows: usize,
    pub dev_sentences: usize,
    pub history: Vec<EpochReport>,
}

struct NerTask<'a> {
    clf: TokenClassifier,
    base: &'a Base,
    /// Token ids of each training window, and the label id at each position (IGNORE where
    /// none).
    train: Vec<(Vec<u32>, Vec<i64>)>,
    dev: Vec<Sentence>,
}

/// A copy whose weights are plain tensors sharing storage: evaluation builds no graph.
fn detached(clf: &TokenClassifier) -> Result<TokenClassifier> {
    let names = clf.model.named_tensors();
    let w = Weights::from_tensors(names.into_iter().collect(), "training");
    let model = BertModel::load(&w, &clf.model.config, clf.model.dtype, &clf.model.device)?;
    let head = Linear::new(
        clf.head.weight.detach(),
        clf.head.bias.as_ref().map(|b| b.detach()),
    );
    Ok(TokenClassifier {
        spec: clf.spec.clone(),
        model,
        head,
        labels: clf.labels.clone(),
        tokenizer: clf.tokenizer.clone(),
        max_len: clf.max_len,
        dir: clf.dir.clone(),
    })
}

/// seqeval's figures of `clf` on tagged sentences, and the mean cross-entropy of the gold
/// tags (over words).
pub fn score(clf: &TokenClassifier, sentences: &[Sentence]) -> Result<(ner::seqeval::Report, f64)> {
    let seqs: Vec<Vec<Vec<u32>>> = sentences
        .iter()
        .map(|s| ner::word_pieces(&clf.tokenizer, &s.words))
        .collect::<Result<_>>()?;
    let probs = clf.word_probabilities(&seqs)?;
    let (mut loss, mut words) = (0.0, 0usize);
    let mut pred = vec![];
    for (s, p) in sentences.iter().zip(&probs) {
        let mut tags = vec![];
        for (gold, q) in s.tags.iter().zip(p) {
            let g = clf.labels.iter().position(|l| l == gold);
            loss -= g.map_or(0.0, |g| (q[g].max(1e-12) as f64).ln());
            words += 1;
            let k = (0..q.len())
                .max_by(|&a, &b| q[a].total_cmp(&q[b]))
                .unwrap_or(0);
            tags.push(clf.labels[k].clone());
        }
        pred.push(tags);
    }
    let gold: Vec<Vec<String>> = sentences.iter().map(|s| s.tags.clone()).collect();
    Ok((
        ner::seqeval::evaluate(&gold, &pred),
        loss / words.max(1) as f64,
    ))
}

impl Task for NerTask<'_> {
    const NAME: &'static str = "ner";

    fn len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, batch: &[usize], dropout: Option<&Dropout>) -> Result<Tensor> {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| self.train[i].0.as_slice()).collect();
        let device = &self.clf.model.device;
        let (ids, mask) = pad_batch(&seqs, self.clf.tokenizer.pad_id, device)?;
        let t = ids.dim(1)?;
        // The labelled positions of the flattened batch and their labels.
        let (mut at, mut target) = (vec![], vec![]);
        for (r, &i) in batch.iter().enumerate() {
            for (pos, &l) in self.train[i].1.iter().enumerate() {
                if l != IGNORE {
                    at.push((r * t + pos) as u32);
                    target.push(l as u32);
                }
            }
        }
        let logits = self.clf.logits(&ids, &mask, dropout)?;
        let n = self.clf.labels.len();
        let flat = logits.reshape((batch.len() * t, n))?;
        let at = Tensor::from_vec(at, target.len(), device)?;
        let picked = flat.index_select(&at, 0)?;
        let target = Tensor::from_vec(target, picked.dim(0)?, device)?;
        Ok(candle_nn::loss::cross_entropy(
            &picked.to_dtype(DType::F32)?,
            &target,
        )?)
    }

    fn evaluate(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        if self.dev.is_empty() {
            return Ok(m);
        }
        let (r, loss) = score(&detached(&self.clf)?, &self.dev)?;
        m.insert("loss".into(), loss.into());
        m.insert("precision".into(), r.overall.precision.into());
        m.insert("recall".into(), r.overall.recall.into());
        m.insert("f1".into(), r.overall.f1.into());
        m.insert("token_accuracy".into(), r.token_accuracy.into());
        for (ty, p) in &r.per_type {
            m.insert(format!("f1_{ty}"), p.f1.into());
        }
        Ok(m)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors: Vec<(String, Tensor)> = self
            .clf
            .model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("bert.{n}"), t))
            .collect();
        tensors.push((format!("{HEAD}.weight"), self.clf.head.weight.detach()));
        if let Some(b) = &self.clf.head.bias {
            tensors.push((format!("{HEAD}.bias"), b.detach()));
        }
        super::save_safetensors(dir, tensors)?;
        let mut config = self.base.config_json.clone();
        let labels = &self.clf.labels;
        if let Some(obj) = config.as_object_mut() {
            obj.insert(
                "architectures".into(),
                serde_json::json!([ner::ARCHITECTURE]),
            );
            super::insert_label_maps(obj, labels);
            obj.remove("problem_type");
        }
        super::write_json(&dir.join("config.json"), &config)?;
        super::copy_tokenizer_files(&self.base.dir, dir)
    }

    fn labels(&self) -> Vec<String> {
        self.clf.labels.clone()
    }
}

/// The training windows of tagged sentences: token ids, and each position's label id.
fn training_windows(
    clf: &TokenClassifier,
    sentences: &[Sentence],
) -> Result<Vec<(Vec<u32>, Vec<i64>)>> {
    let mut out = vec![];
    for s in sentences {
        let pieces = ner::word_pieces(&clf.tokenizer, &s.words)?;
        for w in ner::window_inputs(&clf.tokenizer, &pieces, clf.max_len) {
            let mut labels = vec![IGNORE; w.ids.len()];
            for &(word, pos) in &w.heads {
                let id = clf
                    .labels
                    .iter()
                    .position(|l| *l == s.tags[word])
                    .expect("labels come from the training tags");
                labels[pos] = id as i64;
            }
            out.push((w.ids, labels));
        }
    }
    Ok(out)
}

/// Fine-tunes a token classifier. Every input problem (tags, files, a checkpoint of another
/// base or label set) is reported before the first step.
pub fn finetune(args: &NerArgs, on_event: &mut dyn FnMut(&TrainEvent)) -> Result<NerOutcome> {
    let opts = &args.options;
    opts.validate()?;
    let scheme = if args.strict {
        Scheme::Strict
    } else {
        Scheme::Lenient
    };
    let train = data::read(&args.train, scheme)?;
    let labels = data::labels(&train);
    if labels.len() < 3 {
        return Err(Error::InvalidInput(format!(
            "{}: no entity tags (every tag is O); a tagger needs at least one entity type",
            args.train.display()
        )));
    }
    let dev = match &args.dev {
        Some(p) => {
            let dev = data::read(p, scheme)?;
            for s in &dev {
                if let Some(t) = s.tags.iter().find(|t| !labels.contains(t)) {
                    return Err(Error::InvalidInput(format!(
                        "{}:{}: tag {t:?} does not occur in the training file",
                        p.display(),
                        s.line
                    )));
                }
            }
            dev
        }
        None => vec![],
    };
    let base = Base::load(&args.base, &args.device)?;
    let max_len = base.max_len(opts)?;
    let resume =
        super::resume_with_labels(args.resume.as_deref(), "ner", &base, opts, &labels, "tags")?;

    let device = &args.device;
    let h = base.config.hidden_size;
    let w = base.starting_weights(resume.as_ref().map(|(c, _)| c.as_path()))?;
    let w: &Weights = &w;
    let mut model = BertModel::load(w, &base.config, DType::F32, device)?;
    let same_head = resume.is_some() || base.config.labels == labels;
    let head = if same_head && w.contains("classifier.weight") {
        Linear::load(w, HEAD, labels.len(), h, DType::F32, device)?
    } else {
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        Linear::new(
            Tensor::from_vec(
                super::randn(&mut rng, labels.len() * h, 0.02),
                (labels.len(), h),
                device,
            )?,
            Some(Tensor::zeros(labels.len(), DType::F32, device)?),
        )
    };
    let mut vars = model.make_trainable(opts.freeze_layers)?;
    let frozen = model.named_tensors().len() - vars.len();
    let wv = candle_core::Var::from_tensor(&head.weight)?;
    let bv = candle_core::Var::from_tensor(head.bias.as_ref().expect("the head has a bias"))?;
    let head = Linear::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone()));
    vars.push((format!("{HEAD}.weight"), wv));
    vars.push((format!("{HEAD}.bias"), bv));
    let optimizer = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    let clf = TokenClassifier {
        spec: args.out.display().to_string(),
        model,
        head,
        labels: labels.clone(),
        tokenizer: base.tokenizer.clone(),
        max_len,
        dir: args.out.clone(),
    };
    let windows = training_windows(&clf, &train)?;
    let task = NerTask {
        clf,
        base: &base,
        train: windows,
        dev: dev.clone(),
    };
    let train_windows = task.train.len();
    let history = super::run(
        &task,
        &base,
        super::Start {
            optimizer,
            frozen,
            resume,
        },
        opts,
        &args.out,
        on_event,
    )?;
    Ok(NerOutcome {
        labels,
        train_sentences: train.len(),
        train_windows,
        dev_sentences: dev.len(),
        history,
    })
}

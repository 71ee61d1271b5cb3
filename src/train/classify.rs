//! Sequence classification: BERT plus transformers' `BertForSequenceClassification` head
//! (the pooler, `tanh(W [CLS] + b)`, then dropout and a linear classifier), trained with
//! cross-entropy; and the classifier that `clinsearch classify` and `POST /api/classify` run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Serialize;

use super::data::read_records;
use super::optim::{AdamW, AdamWConfig};
use super::{encode, pad_batch, Base, EpochReport, Task, TrainEvent, TrainOptions};
use crate::error::{Error, Result};
use crate::model::bert::{BertModel, Dropout, Linear};
use crate::model::config::BertConfig;
use crate::model::tokenizer::TextTokenizer;
use crate::model::weights::Weights;

/// One labelled example as read from a file.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub text: String,
    pub label: String,
    pub line: usize,
}

/// Reads `path` (JSON Lines or CSV) taking the text and label from the named fields. A
/// missing or empty field is an error naming the file and line.
pub fn read_labelled(path: &Path, text_field: &str, label_field: &str) -> Result<Vec<Labelled>> {
    read_records(path)?
        .iter()
        .map(|r| {
            Ok(Labelled {
                text: r.required(path, text_field, "--text-field")?,
                label: r
                    .required(path, label_field, "--label-field")?
                    .trim()
                    .to_string(),
                line: r.line,
            })
        })
        .collect()
}

/// A label with its probability.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// The prediction for one text: the best label and the `top_k` most likely.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Classification {
    pub label: String,
    pub score: f32,
    pub top: Vec<LabelScore>,
}

/// A BERT sequence classifier.
pub struct Classifier {
    pub model: BertModel,
    pooler: Linear,
    head: Linear,
    pub labels: Vec<String>,
    pub tokenizer: TextTokenizer,
    /// Tokens per text (longer texts are truncated, as transformers does).
    pub max_len: usize,
    pub dir: PathBuf,
}

/// Tensor names of the head in transformers' layout (after `bert.` is stripped).
const POOLER: &str = "pooler.dense";
const CLASSIFIER: &str = "classifier";

impl Classifier {
    /// Loads a fine-tuned classification folder (or Hub id).
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let resolved = crate::model::resolve_model(spec)?;
        let dir = resolved.dir;
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::load(&dir)?;
        if config.labels.is_empty() || !weights.contains("classifier.weight") {
            return Err(Error::MissingWeights {
                model: dir.display().to_string(),
                what: "a sequence-classification head (labels in config.json and classifier.weight); make one with `clinsearch finetune classify`".into(),
            });
        }
        let tokenizer = TextTokenizer::load(&dir)?;
        let model = BertModel::load(&weights, &config, DType::F32, device)?;
        let (h, n) = (config.hidden_size, config.labels.len());
        let pooler = Linear::load(&weights, POOLER, h, h, DType::F32, device)?;
        let head = Linear::load(&weights, CLASSIFIER, n, h, DType::F32, device)?;
        Ok(Classifier {
            max_len: config.max_position_embeddings,
            model,
            pooler,
            head,
            labels: config.labels,
            tokenizer,
            dir,
        })
    }

    /// Logits `[b, labels]` for a padded batch; `dropout` only while training.
    pub fn logits(&self, ids: &Tensor, mask: &Tensor, dropout: Option<&Dropout>) -> Result<Tensor> {
        let hidden = self.model.forward_with(ids, mask, dropout)?;
        let cls = hidden.i((.., 0, ..))?.contiguous()?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let pooled = match dropout {
            Some(d) => d.apply(&pooled, d.classifier)?,
            None => pooled,
        };
        Ok(self.head.forward(&pooled)?)
    }

    /// Class probabilities `[texts, labels]` for already tokenised texts, batched by length.
    pub fn probabilities_of(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![vec![]; seqs.len()];
        for chunk in order.chunks(32) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let (ids, mask) = pad_batch(&batch, self.tokenizer.pad_id, &self.model.device)?;
            let logits = self.logits(&ids, &mask, None)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?
                .to_device(&Device::Cpu)?
                .to_vec2::<f32>()?;
            for (&i, p) in chunk.iter().zip(probs) {
                out[i] = p;
            }
        }
        Ok(out)
    }

    /// Classifies each text; `top_k` labels with probabilities (at least 1).
    pub fn predict(&self, texts: &[&str], top_k: usize) -> Result<Vec<Classification>> {
        let mut seqs = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(Error::InvalidInput(format!("text {} is empty", i + 1)));
            }
            seqs.push(encode(&self.tokenizer, t, self.max_len)?);
        }
        let probs = self.probabilities_of(&seqs)?;
        Ok(probs
            .into_iter()
            .map(|p| {
                let mut ranked: Vec<LabelScore> = p
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| LabelScore {
                        label: self.labels[i].clone(),
                        score: s,
                    })
                    .collect();
                ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
                ranked.truncate(top_k.max(1));
                Classification {
                    label: ranked[0].label.clone(),
                    score: ranked[0].score,
                    top: ranked,
                }
            })
            .collect())
    }

    /// A copy whose weights are plain tensors (sharing storage): evaluation during training
    /// then builds no autograd graph.
    fn detached(&self) -> Result<Classifier> {
        let names = self.model.named_tensors();
        let w = Weights::from_tensors(names.into_iter().collect(), "training");
        let model = BertModel::load(&w, &self.model.config, self.model.dtype, &self.model.device)?;
        let det = |l: &Linear| Linear::new(l.weight.detach(), l.bias.as_ref().map(|b| b.detach()));
        Ok(Classifier {
            model,
            pooler: det(&self.pooler),
            head: det(&self.head),
            labels: self.labels.clone(),
            tokenizer: self.tokenizer.clone(),
            max_len: self.max_len,
            dir: self.dir.clone(),
        })
    }

    /// All tensors in transformers' `BertForSequenceClassification` names.
    fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("bert.{n}"), t))
            .collect();
        for (prefix, l) in [
            (format!("bert.{POOLER}"), &self.pooler),
            (CLASSIFIER.to_string(), &self.head),
        ] {
            out.push((format!("{prefix}.weight"), l.weight.detach()));
            if let Some(b) = &l.bias {
                out.push((format!("{prefix}.bias"), b.detach()));
            }
        }
        out
    }
}

/// Accuracy and macro-F1 (the unweighted mean of per-class F1 over every class that occurs
/// in the gold labels or the predictions, as scikit-learn computes it).
pub fn accuracy_macro_f1(gold: &[usize], pred: &[usize]) -> (f64, f64) {
    assert_eq!(gold.len(), pred.len());
    if gold.is_empty() {
        return (0.0, 0.0);
    }
    let correct = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
    let classes: BTreeSet<usize> = gold.iter().chain(pred).copied().collect();
    let mut f1_sum = 0.0;
    for &c in &classes {
        let tp = gold
            .iter()
            .zip(pred)
            .filter(|(&g, &p)| g == c && p == c)
            .count() as f64;
        let fp = gold
            .iter()
            .zip(pred)
            .filter(|(&g, &p)| g != c && p == c)
            .count() as f64;
        let fnn = gold
            .iter()
            .zip(pred)
            .filter(|(&g, &p)| g == c && p != c)
            .count() as f64;
        let denom = 2.0 * tp + fp + fnn;
        f1_sum += if denom > 0.0 { 2.0 * tp / denom } else { 0.0 };
    }
    (
        correct as f64 / gold.len() as f64,
        f1_sum / classes.len() as f64,
    )
}

/// What `clinsearch finetune classify` is given.
#[derive(Debug, Clone)]
pub struct ClassifyArgs {
    pub base: String,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub text_field: String,
    pub label_field: String,
    pub out: PathBuf,
    /// A checkpoint folder, or an earlier run's output folder (its latest checkpoint).
    pub resume: Option<PathBuf>,
    pub device: Device,
    pub options: TrainOptions,
}

/// The outcome of a classification run.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyOutcome {
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub dev_examples: usize,
    pub history: Vec<EpochReport>,
}

struct ClassifyTask<'a> {
    clf: Classifier,
    base: &'a Base,
    train: Vec<(Vec<u32>, u32)>,
    dev: Vec<(Vec<u32>, usize)>,
}

impl Task for ClassifyTask<'_> {
    const NAME: &'static str = "classify";

    fn len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, batch: &[usize], dropout: Option<&Dropout>) -> Result<Tensor> {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| self.train[i].0.as_slice()).collect();
        let (ids, mask) = pad_batch(&seqs, self.clf.tokenizer.pad_id, &self.clf.model.device)?;
        let targets: Vec<u32> = batch.iter().map(|&i| self.train[i].1).collect();
        let targets = Tensor::from_vec(targets, batch.len(), &self.clf.model.device)?;
        let logits = self.clf.logits(&ids, &mask, dropout)?;
        Ok(candle_nn::loss::cross_entropy(
            &logits.to_dtype(DType::F32)?,
            &targets,
        )?)
    }

    fn evaluate(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        if self.dev.is_empty() {
            return Ok(m);
        }
        let clf = self.clf.detached()?;
        let seqs: Vec<Vec<u32>> = self.dev.iter().map(|(s, _)| s.clone()).collect();
        let probs = clf.probabilities_of(&seqs)?;
        let gold: Vec<usize> = self.dev.iter().map(|(_, l)| *l).collect();
        let mut loss = 0.0;
        let pred: Vec<usize> = probs
            .iter()
            .zip(&gold)
            .map(|(p, &g)| {
                loss -= (p[g].max(1e-12) as f64).ln();
                (0..p.len())
                    .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                    .unwrap_or(0)
            })
            .collect();
        let (acc, f1) = accuracy_macro_f1(&gold, &pred);
        m.insert("loss".into(), (loss / gold.len() as f64).into());
        m.insert("accuracy".into(), acc.into());
        m.insert("macro_f1".into(), f1.into());
        Ok(m)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        super::save_safetensors(dir, self.clf.hf_tensors())?;
        let mut config = self.base.config_json.clone();
        let labels = &self.clf.labels;
        if let Some(obj) = config.as_object_mut() {
            obj.insert(
                "architectures".into(),
                serde_json::json!(["BertForSequenceClassification"]),
            );
            super::insert_label_maps(obj, labels);
            obj.insert("num_labels".into(), labels.len().into());
            obj.insert("problem_type".into(), "single_label_classification".into());
        }
        super::write_json(&dir.join("config.json"), &config)?;
        super::copy_tokenizer_files(&self.base.dir, dir)
    }

    fn labels(&self) -> Vec<String> {
        self.clf.labels.clone()
    }
}

/// Fine-tunes a classifier. Every input problem (fields, labels, files, a checkpoint from
/// another base) is reported before the first step.
pub fn finetune(
    args: &ClassifyArgs,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<ClassifyOutcome> {
    let opts = &args.options;
    opts.validate()?;
    let train = read_labelled(&args.train, &args.text_field, &args.label_field)?;
    let labels: Vec<String> = train
        .iter()
        .map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "{}: every example has the label {:?}; a classifier needs at least two classes",
            args.train.display(),
            labels.first().map(String::as_str).unwrap_or("")
        )));
    }
    let dev = match &args.dev {
        Some(p) => {
            let dev = read_labelled(p, &args.text_field, &args.label_field)?;
            if let Some(e) = dev.iter().find(|e| labels.binary_search(&e.label).is_err()) {
                return Err(Error::InvalidInput(format!(
                    "{}:{}: label {:?} does not occur in the training file",
                    p.display(),
                    e.line,
                    e.label
                )));
            }
            dev
        }
        None => vec![],
    };
    let base = Base::load(&args.base, &args.device)?;
    let max_len = base.max_len(opts)?;
    let resume = super::resume_with_labels(
        args.resume.as_deref(),
        "classify",
        &base,
        opts,
        &labels,
        "labels",
    )?;

    // Weights: the checkpoint's when resuming, else the base's with a new head (or the base's
    // own head when it is a classifier over the same labels).
    let device = &args.device;
    let h = base.config.hidden_size;
    let (mut model, pooler, head) = {
        let w = base.starting_weights(resume.as_ref().map(|(c, _)| c.as_path()))?;
        let w: &Weights = &w;
        let model = BertModel::load(w, &base.config, DType::F32, device)?;
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        let fresh = |rng: &mut fastrand::Rng, out: usize| -> Result<Linear> {
            Ok(Linear::new(
                Tensor::from_vec(super::randn(rng, out * h, 0.02), (out, h), device)?,
                Some(Tensor::zeros(out, DType::F32, device)?),
            ))
        };
        let pooler = if w.contains("pooler.dense.weight") {
            Linear::load(w, POOLER, h, h, DType::F32, device)?
        } else {
            fresh(&mut rng, h)?
        };
        let same_head = resume.is_some() || base.config.labels == labels;
        let head = if same_head && w.contains("classifier.weight") {
            Linear::load(w, CLASSIFIER, labels.len(), h, DType::F32, device)?
        } else {
            fresh(&mut rng, labels.len())?
        };
        (model, pooler, head)
    };
    let mut vars = model.make_trainable(opts.freeze_layers)?;
    let frozen = model.named_tensors().len() - vars.len();
    let mut head_var = |name: &str, l: &Linear| -> Result<Linear> {
        let w = candle_core::Var::from_tensor(&l.weight)?;
        let b = candle_core::Var::from_tensor(l.bias.as_ref().expect("heads have a bias"))?;
        let lin = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        vars.push((format!("{name}.weight"), w));
        vars.push((format!("{name}.bias"), b));
        Ok(lin)
    };
    let pooler = head_var(POOLER, &pooler)?;
    let head = head_var(CLASSIFIER, &head)?;
    let optimizer = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;

    let index = |l: &str| {
        labels
            .binary_search_by(|x| x.as_str().cmp(l))
            .expect("known label")
    };
    let tokenize = |set: &[Labelled]| -> Result<Vec<(Vec<u32>, usize)>> {
        set.iter()
            .map(|e| Ok((encode(&base.tokenizer, &e.text, max_len)?, index(&e.label))))
            .collect()
    };
    let train_tok: Vec<(Vec<u32>, u32)> = tokenize(&train)?
        .into_iter()
        .map(|(s, l)| (s, l as u32))
        .collect();
    let task = ClassifyTask {
        clf: Classifier {
            model,
            pooler,
            head,
            labels: labels.clone(),
            tokenizer: base.tokenizer.clone(),
            max_len,
            dir: args.out.clone(),
        },
        base: &base,
        train: train_tok,
        dev: tokenize(&dev)?,
    };
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
    Ok(ClassifyOutcome {
        labels,
        train_examples: train.len(),
        dev_examples: dev.len(),
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // sklearn.metrics.f1_score([0,0,1,1,2], [0,1,1,1,0], average="macro") = 0.4222...
        let (acc, f1) = accuracy_macro_f1(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0]);
        assert!((acc - 0.6).abs() < 1e-12);
        assert!((f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12, "{f1}");
    }
}

//! Contrastive retrieval tuning of the embedding model: (query, relevant note[, hard
//! negative]) pairs, every other note in the batch a negative (sentence-transformers'
//! `MultipleNegativesRankingLoss`: cross-entropy over scaled cosine similarities). The result
//! is a sentence-transformers folder that `clinsearch ingest/serve --model DIR` loads as is.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::data::read_records;
use super::optim::{AdamW, AdamWConfig};
use super::{encode, pad_batch, pool, Base, EpochReport, Task, TrainEvent, TrainOptions};
use crate::error::{Error, Result};
use crate::model::bert::{l2_normalize, BertModel, Dropout};
use crate::model::config::Pooling;
use crate::model::weights::Weights;

/// One training pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub query: String,
    pub positive: String,
    pub negative: Option<String>,
    pub line: usize,
}

/// Field names of a pairs file.
#[derive(Debug, Clone)]
pub struct PairFields {
    pub query: String,
    pub positive: String,
    pub negative: String,
}

impl Default for PairFields {
    fn default() -> Self {
        PairFields {
            query: "query".into(),
            positive: "positive".into(),
            negative: "negative".into(),
        }
    }
}

/// Reads pairs from JSON Lines or CSV; the negative is optional per line.
pub fn read_pairs(path: &Path, fields: &PairFields) -> Result<Vec<Pair>> {
    read_records(path)?
        .iter()
        .map(|r| {
            Ok(Pair {
                query: r.required(path, &fields.query, "--query-field")?,
                positive: r.required(path, &fields.positive, "--positive-field")?,
                negative: r
                    .text(path, &fields.negative)?
                    .filter(|s| !s.trim().is_empty()),
                line: r.line,
            })
        })
        .collect()
}

/// What `clinsearch finetune retrieval` is given.
#[derive(Debug, Clone)]
pub struct RetrievalArgs {
    pub base: String,
    pub pairs: PathBuf,
    pub dev: Option<PathBuf>,
    pub fields: PairFields,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    pub device: Device,
    pub options: TrainOptions,
    /// Softmax temperature over cosine similarities (0.05 = sentence-transformers' scale 20).
    pub temperature: f64,
    /// Tokens per query (documents use `options.max_len`).
    pub query_max_len: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalOutcome {
    pub pairs: usize,
    pub with_negative: usize,
    pub dev_pairs: usize,
    pub history: Vec<EpochReport>,
}

struct Tokenized {
    query: Vec<u32>,
    positive: Vec<u32>,
    negative: Option<Vec<u32>>,
}

struct RetrievalTask<'a> {
    model: BertModel,
    base: &'a Base,
    pooling: Pooling,
    temperature: f64,
    train: Vec<Tokenized>,
    dev: Vec<Tokenized>,
    max_len: usize,
}

impl RetrievalTask<'_> {
    fn embed(
        &self,
        model: &BertModel,
        seqs: &[&[u32]],
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (ids, mask) = pad_batch(seqs, self.base.tokenizer.pad_id, &model.device)?;
        let hidden = model.forward_with(&ids, &mask, dropout)?;
        Ok(l2_normalize(&pool(&hidden, &mask, self.pooling)?)?)
    }
}

impl Task for RetrievalTask<'_> {
    const NAME: &'static str = "retrieval";

    fn len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, batch: &[usize], dropout: Option<&Dropout>) -> Result<Tensor> {
        let ex: Vec<&Tokenized> = batch.iter().map(|&i| &self.train[i]).collect();
        let queries: Vec<&[u32]> = ex.iter().map(|e| e.query.as_slice()).collect();
        let mut docs: Vec<&[u32]> = ex.iter().map(|e| e.positive.as_slice()).collect();
        docs.extend(ex.iter().filter_map(|e| e.negative.as_deref()));
        let q = self.embed(&self.model, &queries, dropout)?;
        let d = self.embed(&self.model, &docs, dropout)?;
        // scores[i][j] = cos(query i, doc j) / temperature; doc i is query i's positive.
        let scores = (q.matmul(&d.t()?)? / self.temperature)?;
        let targets = Tensor::arange(0u32, batch.len() as u32, &self.model.device)?;
        Ok(candle_nn::loss::cross_entropy(&scores, &targets)?)
    }

    /// Ranks every dev positive for every dev query: MRR@10, Recall@1 and Recall@10.
    fn evaluate(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        if self.dev.is_empty() {
            return Ok(m);
        }
        let w = Weights::from_tensors(self.model.named_tensors().into_iter().collect(), "training");
        let model = BertModel::load(&w, &self.model.config, DType::F32, &self.model.device)?;
        let embed_all = |seqs: Vec<&[u32]>| -> Result<Vec<Vec<f32>>> {
            let mut out = vec![];
            for chunk in seqs.chunks(32) {
                out.extend(
                    self.embed(&model, chunk, None)?
                        .to_device(&Device::Cpu)?
                        .to_vec2::<f32>()?,
                );
            }
            Ok(out)
        };
        let q = embed_all(self.dev.iter().map(|e| e.query.as_slice()).collect())?;
        let d = embed_all(self.dev.iter().map(|e| e.positive.as_slice()).collect())?;
        let (mut mrr, mut r1, mut r10) = (0.0, 0.0, 0.0);
        for (i, qv) in q.iter().enumerate() {
            let score = |v: &Vec<f32>| crate::search::cosine(qv, v);
            let own = score(&d[i]);
            let rank = 1 + d
                .iter()
                .enumerate()
                .filter(|(j, v)| *j != i && score(v) > own)
                .count();
            if rank <= 10 {
                mrr += 1.0 / rank as f64;
                r10 += 1.0;
            }
            if rank == 1 {
                r1 += 1.0;
            }
        }
        let n = q.len() as f64;
        m.insert("mrr@10".into(), (mrr / n).into());
        m.insert("recall@1".into(), (r1 / n).into());
        m.insert("recall@10".into(), (r10 / n).into());
        Ok(m)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors = self.model.named_tensors();
        // Carry over what was not trained (BertModel's pooler), so transformers finds it.
        for name in ["pooler.dense.weight", "pooler.dense.bias"] {
            if self.base.weights.contains(name) {
                let t = self.base.weights.get_any(name)?;
                tensors.push((name.to_string(), t));
            }
        }
        super::save_safetensors(dir, tensors)?;
        let mut config = self.base.config_json.clone();
        if let Some(obj) = config.as_object_mut() {
            obj.insert("architectures".into(), serde_json::json!(["BertModel"]));
            for k in ["id2label", "label2id", "num_labels", "problem_type"] {
                obj.remove(k);
            }
        }
        super::write_json(&dir.join("config.json"), &config)?;
        super::copy_tokenizer_files(&self.base.dir, dir)?;
        write_sentence_transformers_files(
            dir,
            self.base.config.hidden_size,
            self.pooling,
            self.max_len,
        )
    }
}

/// The sentence-transformers module files: Transformer -> Pooling -> Normalize.
pub fn write_sentence_transformers_files(
    dir: &Path,
    dim: usize,
    pooling: Pooling,
    max_len: usize,
) -> Result<()> {
    super::write_json(
        &dir.join("modules.json"),
        &serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]),
    )?;
    super::write_json(
        &dir.join("sentence_bert_config.json"),
        &serde_json::json!({"max_seq_length": max_len, "do_lower_case": false}),
    )?;
    super::write_json(
        &dir.join("1_Pooling").join("config.json"),
        &serde_json::json!({
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == Pooling::Cls,
            "pooling_mode_mean_tokens": pooling == Pooling::Mean,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false
        }),
    )?;
    let norm = dir.join("2_Normalize");
    std::fs::create_dir_all(&norm).map_err(|e| Error::io(&norm, e))?;
    super::write_json(
        &dir.join("config_sentence_transformers.json"),
        &serde_json::json!({"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": null}),
    )
}

/// Tunes the embedding model on pairs. Input problems are reported before the first step.
pub fn finetune(
    args: &RetrievalArgs,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<RetrievalOutcome> {
    let opts = &args.options;
    opts.validate()?;
    if !(args.temperature > 0.0 && args.temperature.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "--temperature {} must be a positive number",
            args.temperature
        )));
    }
    if args.query_max_len < 3 {
        return Err(Error::InvalidInput(
            "--query-max-len must be at least 3 tokens".into(),
        ));
    }
    let pairs = read_pairs(&args.pairs, &args.fields)?;
    if pairs.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "{}: one pair only; in-batch negatives need at least two",
            args.pairs.display()
        )));
    }
    if opts.batch_size < 2 {
        return Err(Error::InvalidInput(
            "--batch-size must be at least 2: the other pairs of a batch are the negatives".into(),
        ));
    }
    let dev = match &args.dev {
        Some(p) => read_pairs(p, &args.fields)?,
        None => vec![],
    };
    let base = Base::load(&args.base, &args.device)?;
    let max_len = base.max_len(opts)?;
    let resume = match &args.resume {
        Some(p) => {
            let ckpt = super::find_checkpoint(p)?;
            let state = super::check_resume(&ckpt, "retrieval", &base, opts)?;
            Some((ckpt, state))
        }
        None => None,
    };
    let mut model = match &resume {
        Some((ckpt, _)) => BertModel::load(
            &Weights::load(ckpt)?,
            &base.config,
            DType::F32,
            &args.device,
        )?,
        None => base.model.clone(),
    };
    let vars = model.make_trainable(opts.freeze_layers)?;
    let frozen = model.named_tensors().len() - vars.len();
    let optimizer = AdamW::new(
        vars,
        AdamWConfig {
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    let qlen = args.query_max_len.min(base.config.max_position_embeddings);
    let tokenize = |set: &[Pair]| -> Result<Vec<Tokenized>> {
        set.iter()
            .map(|p| {
                Ok(Tokenized {
                    query: encode(&base.tokenizer, &p.query, qlen)?,
                    positive: encode(&base.tokenizer, &p.positive, max_len)?,
                    negative: p
                        .negative
                        .as_deref()
                        .map(|n| encode(&base.tokenizer, n, max_len))
                        .transpose()?,
                })
            })
            .collect()
    };
    let task = RetrievalTask {
        model,
        base: &base,
        pooling: base.pooling,
        temperature: args.temperature,
        train: tokenize(&pairs)?,
        dev: tokenize(&dev)?,
        max_len: base.window,
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
    Ok(RetrievalOutcome {
        pairs: pairs.len(),
        with_negative: pairs.iter().filter(|p| p.negative.is_some()).count(),
        dev_pairs: dev.len(),
        history,
    })
}

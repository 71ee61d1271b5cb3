//! `config.json` of a BERT-family checkpoint, plus the sentence-transformers side files.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Activation functions that BERT-family configs name in `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact erf-based GELU (`"gelu"` in transformers).
    Gelu,
    /// The tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    GeluTanh,
    Relu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(Error::Unsupported(format!(
                    "hidden_act {other:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, tanh)"
                )))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
            Activation::Tanh => "tanh",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default)]
    classifier_dropout: Option<f64>,
    #[serde(default)]
    id2label: Option<std::collections::BTreeMap<String, String>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}

/// The parts of `config.json` the encoder uses, validated.
#[derive(Debug, Clone)]
pub struct BertConfig {
    pub model_type: String,
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    /// Class labels of a sequence-classification checkpoint, in index order.
    pub labels: Vec<String>,
    /// Dropout rates used when fine-tuning (inference never drops).
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    /// BertForSequenceClassification's dropout before the classifier (`hidden_dropout` when unset).
    pub classifier_dropout: f64,
}

/// Model types whose weights follow BERT's layout closely enough for this encoder.
/// (RoBERTa-style models offset their position ids and are not accepted yet.)
const BERT_LIKE: &[&str] = &["bert"];

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidInput(reason) => Error::bad_file(path, reason),
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
        let model_type = raw.model_type.unwrap_or_else(|| "bert".into());
        if !BERT_LIKE.contains(&model_type.as_str()) {
            return Err(Error::Unsupported(format!(
                "model_type {model_type:?}: clinsearch's encoder runs BERT-family checkpoints"
            )));
        }
        if let Some(kind) = raw.position_embedding_type.as_deref() {
            if kind != "absolute" {
                return Err(Error::Unsupported(format!(
                    "position_embedding_type {kind:?}"
                )));
            }
        }
        if raw.hidden_size == 0
            || raw.num_attention_heads == 0
            || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(Error::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        let mut labels: Vec<(usize, String)> = raw
            .id2label
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| k.parse().ok().map(|k| (k, v)))
            .collect();
        labels.sort();
        let labels: Vec<String> = labels.into_iter().map(|(_, v)| v).collect();
        let _ = raw.num_labels;
        Ok(BertConfig {
            model_type,
            architectures: raw.architectures.unwrap_or_default(),
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act: Activation::parse(&raw.hidden_act)?,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            labels,
            hidden_dropout: raw.hidden_dropout_prob,
            attention_dropout: raw.attention_probs_dropout_prob,
            classifier_dropout: raw.classifier_dropout.unwrap_or(raw.hidden_dropout_prob),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How token vectors become one text vector.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the token vectors under the attention mask (sentence-transformers' default).
    Mean,
    /// The `[CLS]` token's last hidden state.
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(Error::InvalidInput(format!(
                "pooling {other:?} (expected mean or cls)"
            ))),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        })
    }
}

/// Reads `1_Pooling/config.json` of a sentence-transformers folder, if there is one.
pub fn sentence_transformers_pooling(dir: &Path) -> Result<Option<Pooling>> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e))?;
    let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    if flag("pooling_mode_cls_token") {
        Ok(Some(Pooling::Cls))
    } else if flag("pooling_mode_mean_tokens") {
        Ok(Some(Pooling::Mean))
    } else {
        Err(Error::Unsupported(format!(
            "{}: only mean and CLS pooling are implemented",
            path.display()
        )))
    }
}

/// `max_seq_length` from `sentence_bert_config.json`, the length sentence-transformers
/// truncates to (256 for all-MiniLM-L6-v2, below its 512 positions).
pub fn sentence_transformers_max_len(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("max_seq_length")?.as_u64().map(|n| n as usize)
}

/// Whether a sentence-transformers folder ends with a `Normalize` module.
pub fn sentence_transformers_normalizes(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("modules.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mods = v.as_array()?;
    Some(mods.iter().any(|m| {
        m.get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.ends_with("Normalize"))
    }))
}

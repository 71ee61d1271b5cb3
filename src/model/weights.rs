//! Finding and loading a checkpoint's tensors, whatever format and key layout it uses.
//!
//! Everything is normalised to one naming scheme, the bare layout that sentence-transformers
//! saves (`embeddings.word_embeddings.weight`, `encoder.layer.0....`), with the MLM head under
//! `cls.predictions.*`:
//! * `bert.` prefixes (BertForMaskedLM / BertForPreTraining checkpoints) are stripped;
//! * 2019-era LayerNorm names `gamma` / `beta` become `weight` / `bias`, as transformers does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The file layout the weights were found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    Safetensors,
    ShardedSafetensors,
    PytorchBin,
    ShardedPytorchBin,
}

/// File names in the order they are preferred: safetensors is memory-safe and fast to read.
pub const WEIGHT_FILES: &[(&str, WeightFormat)] = &[
    ("model.safetensors", WeightFormat::Safetensors),
    (
        "model.safetensors.index.json",
        WeightFormat::ShardedSafetensors,
    ),
    ("pytorch_model.bin", WeightFormat::PytorchBin),
    (
        "pytorch_model.bin.index.json",
        WeightFormat::ShardedPytorchBin,
    ),
];

/// Finds the weight file (or shard index) of a model folder.
pub fn find_weights(dir: &Path) -> Option<(PathBuf, WeightFormat)> {
    WEIGHT_FILES
        .iter()
        .map(|(name, f)| (dir.join(name), *f))
        .find(|(p, _)| p.is_file())
}

/// The names of the weight files a model needs, given its main weight file (the shards of
/// an index, or the file itself).
pub fn weight_files(main: &Path, format: WeightFormat) -> Result<Vec<PathBuf>> {
    match format {
        WeightFormat::Safetensors | WeightFormat::PytorchBin => Ok(vec![main.to_path_buf()]),
        WeightFormat::ShardedSafetensors | WeightFormat::ShardedPytorchBin => {
            let dir = main.parent().unwrap_or(Path::new("."));
            Ok(shard_names(main)?
                .into_iter()
                .map(|n| dir.join(n))
                .collect())
        }
    }
}

/// Shard file names listed by a `*.index.json` weight map, deduplicated, in order.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    shard_names_from_json(&text).map_err(|reason| Error::bad_file(index, reason))
}

pub fn shard_names_from_json(text: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map in the shard index")?;
    let mut names: Vec<String> = vec![];
    for f in map.values() {
        let f = f.as_str().ok_or("weight_map values must be file names")?;
        if f.contains("..") || f.starts_with('/') {
            return Err(format!("shard name {f:?} leaves the model folder"));
        }
        if !names.iter().any(|n| n == f) {
            names.push(f.to_string());
        }
    }
    Ok(names)
}

/// Maps a checkpoint key to our naming scheme.
pub fn normalize_key(key: &str) -> String {
    let key = key.strip_prefix("bert.").unwrap_or(key);
    let key = if let Some(stem) = key.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = key.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        key.to_string()
    };
    key
}

/// All tensors of a checkpoint, on the CPU, under normalised names (cloning shares them).
#[derive(Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Where they came from, for error messages.
    origin: String,
    pub format: WeightFormat,
}

impl Weights {
    /// Loads the weights of the model folder `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let (main, format) = find_weights(dir).ok_or_else(|| Error::MissingWeights {
            model: dir.display().to_string(),
            what: "weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
                .into(),
        })?;
        let mut raw: Vec<(String, Tensor)> = vec![];
        for file in weight_files(&main, format)? {
            if !file.is_file() {
                return Err(Error::MissingWeights {
                    model: dir.display().to_string(),
                    what: format!("the shard {}", file.display()),
                });
            }
            match format {
                WeightFormat::Safetensors | WeightFormat::ShardedSafetensors => {
                    let map = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| {
                        Error::bad_file(&file, format!("not a valid safetensors file ({e})"))
                    })?;
                    raw.extend(map);
                }
                WeightFormat::PytorchBin | WeightFormat::ShardedPytorchBin => {
                    raw.extend(super::pickle::read_pytorch_checkpoint(&file)?);
                }
            }
        }
        let mut tensors = HashMap::with_capacity(raw.len());
        for (k, t) in raw {
            tensors.insert(normalize_key(&k), t);
        }
        Ok(Weights {
            tensors,
            origin: dir.display().to_string(),
            format,
        })
    }

    /// Builds from tensors already in memory (tests, fine-tuned models).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &str) -> Self {
        Weights {
            tensors: tensors
                .into_iter()
                .map(|(k, v)| (normalize_key(&k), v))
                .collect(),
            origin: origin.to_string(),
            format: WeightFormat::Safetensors,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `name` as stored, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingWeights {
                model: self.origin.clone(),
                what: format!("the tensor {name}"),
            })
    }

    /// The tensor `name`, checked against `shape`, converted to `dtype` on `device`.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingWeights {
                model: self.origin.clone(),
                what: format!("the tensor {name}"),
            })?;
        if t.dims() != shape {
            return Err(Error::BadModelFile {
                path: PathBuf::from(&self.origin),
                reason: format!(
                    "tensor {name} has shape {:?}, config.json implies {shape:?}",
                    t.dims()
                ),
            });
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

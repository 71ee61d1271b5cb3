//! Resolving a model name to a folder on disk: a local path, or a Hugging Face Hub id
//! (`org/name`, optionally `@revision`) downloaded through `hf-hub` into the standard HF cache,
//! the same one Python's `huggingface_hub` uses.
//!
//! Environment, as in Python: `HF_HUB_CACHE` (or `HF_HOME`/hub, or ~/.cache/huggingface/hub),
//! `HF_ENDPOINT` (a mirror, or the mock Hub of our tests), `HF_TOKEN`, and `HF_HUB_OFFLINE`,
//! which hf-hub itself ignores: we implement it as "use the cache or fail".
//!
//! A model already complete in the cache is used without any network request, so a second
//! load works with the network (or the mock server) gone.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::weights::{find_weights, weight_files, WeightFormat, WEIGHT_FILES};
use crate::error::{Error, Result};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub { repo: String, revision: String },
}

/// A model folder ready to load.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The name the user gave.
    pub spec: String,
    pub dir: PathBuf,
    pub revision: Option<String>,
    pub commit: Option<String>,
}

/// Side files fetched when the repository has them.
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Decides whether `spec` is a local folder or a Hub id.
pub fn parse_spec(spec: &str) -> Result<ModelSource> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(Error::ModelNotFound("empty model name".into()));
    }
    let path = Path::new(spec);
    if path.exists() {
        return Ok(ModelSource::Local(path.to_path_buf()));
    }
    let looks_like_path = spec.starts_with('.')
        || spec.starts_with('/')
        || spec.starts_with('~')
        || spec.contains('\\')
        || spec.split('@').next().unwrap_or("").matches('/').count() > 1;
    let (repo, revision) = match spec.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (spec, "main"),
    };
    let valid_id = !repo.is_empty()
        && !revision.is_empty()
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if looks_like_path || !valid_id {
        return Err(Error::ModelNotFound(format!(
            "{spec:?} is neither an existing folder nor a Hub id like org/name[@revision]"
        )));
    }
    Ok(ModelSource::Hub {
        repo: repo.to_string(),
        revision: revision.to_string(),
    })
}

/// The HF hub cache folder, resolved as huggingface_hub does.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// `HF_HUB_OFFLINE` set to a true value.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Resolves a model name to a folder, downloading from the Hub when needed.
pub fn resolve_model(spec: &str) -> Result<ResolvedModel> {
    match parse_spec(spec)? {
        ModelSource::Local(dir) => {
            if !dir.is_dir() {
                return Err(Error::ModelNotFound(format!(
                    "{} is not a folder",
                    dir.display()
                )));
            }
            Ok(ResolvedModel {
                spec: spec.to_string(),
                dir,
                revision: None,
                commit: None,
            })
        }
        ModelSource::Hub { repo, revision } => {
            let (dir, commit) = resolve_hub(&repo, &revision, &hub_cache_dir(), hub_offline())?;
            Ok(ResolvedModel {
                spec: spec.to_string(),
                dir,
                revision: Some(revision),
                commit,
            })
        }
    }
}

/// A snapshot folder of the cache that holds everything the encoder loads.
fn complete_snapshot(cache: &Cache, repo: &Repo) -> Option<PathBuf> {
    let config = cache.repo(repo.clone()).get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    let (main, format) = find_weights(&dir)?;
    let files = weight_files(&main, format).ok()?;
    let has_tokenizer = dir.join("tokenizer.json").is_file() || dir.join("vocab.txt").is_file();
    (has_tokenizer && files.iter().all(|f| f.is_file())).then_some(dir)
}

fn hub_err(repo: &str, revision: &str, what: impl std::fmt::Display) -> Error {
    Error::Hub(format!("{repo}@{revision}: {what}"))
}

/// Downloads (or finds in the cache) the files of `repo` at `revision`.
pub fn resolve_hub(
    repo_id: &str,
    revision: &str,
    cache_dir: &Path,
    offline: bool,
) -> Result<(PathBuf, Option<String>)> {
    let cache = Cache::new(cache_dir.to_path_buf());
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    if let Some(dir) = complete_snapshot(&cache, &repo) {
        let commit = dir.file_name().map(|c| c.to_string_lossy().into_owned());
        return Ok((dir, commit));
    }
    if offline {
        return Err(hub_err(
            repo_id,
            revision,
            format!(
                "not (completely) in the cache at {} and HF_HUB_OFFLINE is set",
                cache_dir.display()
            ),
        ));
    }
    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_progress(std::io::stderr().is_terminal())
        .with_retries(2);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| hub_err(repo_id, revision, e))?;
    let api_repo = api.repo(repo.clone());
    let info = api_repo.info().map_err(|e| {
        hub_err(
            repo_id,
            revision,
            format!("cannot list the repository ({e})"),
        )
    })?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let has = |f: &str| listed.contains(&f);
    if !has("config.json") {
        return Err(Error::MissingWeights {
            model: format!("{repo_id}@{revision}"),
            what: "config.json".into(),
        });
    }
    let weights = WEIGHT_FILES
        .iter()
        .copied()
        .find(|(f, _)| has(f))
        .ok_or_else(|| Error::MissingWeights {
            model: format!("{repo_id}@{revision}"),
            what: "PyTorch weights (model.safetensors or pytorch_model.bin)".into(),
        })?;
    if !has("tokenizer.json") && !has("vocab.txt") {
        return Err(Error::MissingWeights {
            model: format!("{repo_id}@{revision}"),
            what: "a tokenizer (tokenizer.json or vocab.txt)".into(),
        });
    }
    let fetch = |f: &str| -> Result<PathBuf> {
        api_repo
            .get(f)
            .map_err(|e| hub_err(repo_id, revision, format!("cannot download {f} ({e})")))
    };
    let config = fetch("config.json")?;
    for f in OPTIONAL_FILES.iter().filter(|f| has(f)) {
        fetch(f)?;
    }
    let main = fetch(weights.0)?;
    if matches!(
        weights.1,
        WeightFormat::ShardedSafetensors | WeightFormat::ShardedPytorchBin
    ) {
        for shard in super::weights::shard_names(&main)? {
            fetch(&shard)?;
        }
    }
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_err(repo_id, revision, "bad cache path"))?;
    Ok((dir, Some(info.sha)))
}

//! The server's configuration, in one struct, from three layers: a TOML file, then the
//! environment (`CLINSEARCH_*`), then command-line flags; a later layer wins field by field.
//!
//! Defaults are the safe ones: loopback only, and a server reachable from other machines
//! refuses to start without an API key (notes are protected health information).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{KeyEntry, KeyRing};
use crate::error::{Error, Result};
use crate::model::{EncoderOptions, Pooling, WindowConfig};

pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// One layer of settings: every field optional. The file, the environment and the flags are
/// each parsed into one of these and laid over each other.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub addr: Option<String>,
    pub data: Option<PathBuf>,
    pub model: Option<String>,
    pub pooling: Option<String>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub batch_size: Option<usize>,
    /// Largest request body, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Bearer token with read and write access.
    pub api_key: Option<String>,
    /// Bearer token with read access only (search, documents, embed, fill-mask).
    pub read_api_key: Option<String>,
    /// Most queries embedded in one forward pass by the batching worker.
    pub query_batch: Option<usize>,
    /// HTTP worker threads.
    pub workers: Option<usize>,
    /// hnsw search breadth.
    pub ef_search: Option<usize>,
    /// A folder made by `clinsearch finetune classify`, served at `POST /api/classify`.
    pub classifier: Option<String>,
    /// A folder made by `clinsearch finetune ner`, served at `POST /api/tag`.
    pub tagger: Option<String>,
    /// A model with an MLM head answering `/api/fill-mask` (search keeps `model`).
    pub mlm_model: Option<String>,
    /// Named keys (`[[keys]]` tables: name, role, sha256, optional filter). File only.
    pub keys: Option<Vec<KeyEntry>>,
    /// The host name browsers use to reach this server when it is not a loopback name
    /// (checked against the `Host` header: DNS rebinding).
    pub public_name: Option<String>,
    /// Record query text in the audit log instead of only its SHA-256.
    pub audit_query_text: Option<bool>,
    /// Bounds on the work one request, one principal and the server may ask for.
    pub limits: Option<Limits>,
    /// A TSV of abbreviations laid over the shipped dictionary (see `clinical::abbrev`).
    pub abbreviations: Option<PathBuf>,
}

/// Bounds on work, each answered with a clear 4xx when exceeded (`[limits]` in the file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Windows (model passes of one window each) in one `/api/embed` or `/api/documents`
    /// request, all texts together: 413 `too_many_windows` above it.
    pub max_windows_per_request: usize,
    /// `offset + k` of a search: 400 above it.
    pub max_offset_k: usize,
    /// Candidates a `group_by=patient` search may read (it reads 5 x (offset + k)).
    pub max_group_depth: usize,
    /// Running evaluation and ingest jobs per principal (each kind): 429 above it.
    pub max_jobs_per_principal: usize,
    /// Running evaluation and ingest jobs in all (each kind): 429 above it.
    pub max_jobs: usize,
    /// Query embeddings waiting for the batching worker: 429 above it.
    pub max_queued_queries: usize,
    /// Errors a job keeps in its error list (the rest are counted).
    pub max_job_errors: usize,
    /// Rows one cohort export (`/api/search/export`) may hold (at most 10,000).
    pub max_export_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_windows_per_request: 2048,
            max_offset_k: 1000,
            max_group_depth: 5000,
            max_jobs_per_principal: 2,
            max_jobs: 4,
            max_queued_queries: 512,
            max_job_errors: 100,
            max_export_rows: 10_000,
        }
    }
}

impl Layer {
    /// `self` with every field `over` sets replaced.
    pub fn under(self, over: Layer) -> Layer {
        Layer {
            addr: over.addr.or(self.addr),
            data: over.data.or(self.data),
            model: over.model.or(self.model),
            pooling: over.pooling.or(self.pooling),
            device: over.device.or(self.device),
            dtype: over.dtype.or(self.dtype),
            batch_size: over.batch_size.or(self.batch_size),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            api_key: over.api_key.or(self.api_key),
            read_api_key: over.read_api_key.or(self.read_api_key),
            query_batch: over.query_batch.or(self.query_batch),
            workers: over.workers.or(self.workers),
            ef_search: over.ef_search.or(self.ef_search),
            classifier: over.classifier.or(self.classifier),
            tagger: over.tagger.or(self.tagger),
            mlm_model: over.mlm_model.or(self.mlm_model),
            keys: over.keys.or(self.keys),
            public_name: over.public_name.or(self.public_name),
            audit_query_text: over.audit_query_text.or(self.audit_query_text),
            limits: over.limits.or(self.limits),
            abbreviations: over.abbreviations.or(self.abbreviations),
        }
    }

    /// Reads a TOML file of the same fields.
    pub fn from_file(path: &Path) -> Result<Layer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text)
            .map_err(|e| Error::InvalidInput(format!("{}: {}", path.display(), e.message())))
    }

    /// The `CLINSEARCH_*` variables of `env` (a function so tests need not touch the process
    /// environment).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Layer> {
        let num = |name: &str| -> Result<Option<usize>> {
            env(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::InvalidInput(format!("{name}={v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        Ok(Layer {
            addr: env("CLINSEARCH_ADDR"),
            data: env("CLINSEARCH_DATA").map(PathBuf::from),
            model: env("CLINSEARCH_MODEL"),
            pooling: env("CLINSEARCH_POOLING"),
            device: env("CLINSEARCH_DEVICE"),
            dtype: env("CLINSEARCH_DTYPE"),
            batch_size: num("CLINSEARCH_BATCH_SIZE")?,
            max_body_bytes: num("CLINSEARCH_MAX_BODY_BYTES")?,
            api_key: env("CLINSEARCH_API_KEY"),
            read_api_key: env("CLINSEARCH_READ_API_KEY"),
            query_batch: num("CLINSEARCH_QUERY_BATCH")?,
            workers: num("CLINSEARCH_WORKERS")?,
            ef_search: num("CLINSEARCH_EF_SEARCH")?,
            classifier: env("CLINSEARCH_CLASSIFIER"),
            tagger: env("CLINSEARCH_TAGGER"),
            mlm_model: env("CLINSEARCH_MLM_MODEL"),
            keys: None,
            public_name: env("CLINSEARCH_PUBLIC_NAME"),
            audit_query_text: env("CLINSEARCH_AUDIT_QUERY_TEXT")
                .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" => Ok(true),
                    "0" | "false" | "no" | "" => Ok(false),
                    _ => Err(Error::InvalidInput(format!(
                        "CLINSEARCH_AUDIT_QUERY_TEXT={v:?}: use true or false"
                    ))),
                })
                .transpose()?,
            limits: None,
            abbreviations: env("CLINSEARCH_ABBREVIATIONS").map(PathBuf::from),
        })
    }
}

/// The resolved configuration.
#[derive(Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub model: String,
    pub pooling: Option<Pooling>,
    pub device: String,
    pub dtype: String,
    pub batch_size: usize,
    pub max_body_bytes: usize,
    pub api_key: Option<String>,
    pub read_api_key: Option<String>,
    pub query_batch: usize,
    pub workers: usize,
    /// hnsw search breadth; None: the data directory's recorded `ef_search`.
    pub ef_search: Option<usize>,
    pub classifier: Option<String>,
    pub tagger: Option<String>,
    pub mlm_model: Option<String>,
    pub keys: Vec<KeyEntry>,
    /// The file the configuration came from: keys are re-read from it when it changes.
    pub config_file: Option<PathBuf>,
    pub public_name: Option<String>,
    pub audit_query_text: bool,
    pub limits: Limits,
    pub abbreviations: Option<PathBuf>,
}

/// Keys are never printed.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |k: &Option<String>| k.as_ref().map(|_| "<redacted>");
        f.debug_struct("ServerConfig")
            .field("addr", &self.addr)
            .field("data", &self.data)
            .field("model", &self.model)
            .field("pooling", &self.pooling)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("batch_size", &self.batch_size)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("api_key", &redact(&self.api_key))
            .field("read_api_key", &redact(&self.read_api_key))
            .field("query_batch", &self.query_batch)
            .field("workers", &self.workers)
            .field("ef_search", &self.ef_search)
            .field("classifier", &self.classifier)
            .field("tagger", &self.tagger)
            .field("mlm_model", &self.mlm_model)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| (k.name.as_str(), k.role.as_str()))
                    .collect::<Vec<_>>(),
            )
            .field("config_file", &self.config_file)
            .field("public_name", &self.public_name)
            .field("audit_query_text", &self.audit_query_text)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ServerConfig {
    /// Resolves the layers (file < environment < flags) and checks the result.
    pub fn resolve(file: Option<&Path>, env: Layer, flags: Layer) -> Result<ServerConfig> {
        let base = match file {
            Some(p) => Layer::from_file(p)?,
            None => Layer::default(),
        };
        let mut cfg = Self::from_layer(base.under(env).under(flags))?;
        cfg.config_file = file.map(Path::to_path_buf);
        Ok(cfg)
    }

    pub fn from_layer(l: Layer) -> Result<ServerConfig> {
        let addr_text = l.addr.unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let addr: SocketAddr = addr_text.parse().map_err(|_| {
            Error::InvalidInput(format!(
                "addr {addr_text:?} is not an IP address with a port (e.g. 127.0.0.1:8080)"
            ))
        })?;
        let nonempty = |k: Option<String>| k.filter(|k| !k.trim().is_empty());
        let cfg = ServerConfig {
            addr,
            data: l.data.unwrap_or_else(|| PathBuf::from("data")),
            model: l
                .model
                .unwrap_or_else(|| crate::cli::DEFAULT_MODEL.to_string()),
            pooling: l
                .pooling
                .as_deref()
                .map(str::parse::<Pooling>)
                .transpose()?,
            device: l.device.unwrap_or_else(|| "cpu".into()),
            dtype: l.dtype.unwrap_or_else(|| "f32".into()),
            batch_size: l.batch_size.unwrap_or(32).max(1),
            max_body_bytes: l.max_body_bytes.unwrap_or(32 << 20),
            api_key: nonempty(l.api_key),
            read_api_key: nonempty(l.read_api_key),
            query_batch: l.query_batch.unwrap_or(32).clamp(1, 256),
            workers: l.workers.unwrap_or(2).clamp(1, 64),
            ef_search: l
                .ef_search
                .map(|e| e.clamp(8, crate::index::vector_settings::MAX_EF_SEARCH)),
            classifier: nonempty(l.classifier),
            tagger: nonempty(l.tagger),
            mlm_model: nonempty(l.mlm_model),
            keys: l.keys.unwrap_or_default(),
            config_file: None,
            public_name: nonempty(l.public_name).map(|n| n.trim().to_ascii_lowercase()),
            audit_query_text: l.audit_query_text.unwrap_or(false),
            limits: {
                let mut limits = l.limits.unwrap_or_default();
                limits.max_export_rows = limits.max_export_rows.clamp(1, 10_000);
                limits
            },
            abbreviations: l.abbreviations.filter(|p| !p.as_os_str().is_empty()),
        };
        // Any key at all turns authentication on for every protected route; a bad entry
        // stops the server from starting.
        let ring = cfg.key_ring()?;
        if !cfg.addr.ip().is_loopback() && ring.is_empty() {
            return Err(Error::InvalidInput(format!(
                "refusing to serve clinical notes on {} without authentication: add a key (clinsearch keys new NAME --role admin --config FILE, or CLINSEARCH_API_KEY), or bind to 127.0.0.1",
                cfg.addr
            )));
        }
        Ok(cfg)
    }

    /// The keys of this configuration, checked.
    pub fn key_ring(&self) -> Result<KeyRing> {
        KeyRing::new(
            &self.keys,
            self.api_key.as_deref(),
            self.read_api_key.as_deref(),
        )
    }

    pub fn encoder_options(&self) -> Result<EncoderOptions> {
        Ok(EncoderOptions {
            pooling: self.pooling,
            normalize: Some(true),
            window: WindowConfig {
                size: None,
                stride: None,
                max_windows: Some(256),
                context: None,
            },
            batch_size: self.batch_size,
            device: crate::model::parse_device(&self.device)?,
            dtype: crate::model::parse_precision(&self.dtype)?.0,
            int8: crate::model::parse_precision(&self.dtype)?.1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "addr = \"127.0.0.1:9000\"\nworkers = 3\nquery_batch = 8\n",
        )
        .unwrap();
        let env =
            Layer::from_env(|k| (k == "CLINSEARCH_WORKERS").then(|| "5".to_string())).unwrap();
        let flags = Layer {
            query_batch: Some(16),
            ..Default::default()
        };
        let c = ServerConfig::resolve(Some(&f), env, flags).unwrap();
        assert_eq!(c.addr.port(), 9000);
        assert_eq!(c.workers, 5);
        assert_eq!(c.query_batch, 16);
    }

    #[test]
    fn loopback_is_the_default_and_other_addresses_need_a_key() {
        let c = ServerConfig::from_layer(Layer::default()).unwrap();
        assert!(c.addr.ip().is_loopback());
        let open = Layer {
            addr: Some("0.0.0.0:8080".into()),
            ..Default::default()
        };
        let e = ServerConfig::from_layer(open.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without authentication"), "{e}");
        let keyed = Layer {
            api_key: Some("s3cret".into()),
            ..open
        };
        let c = ServerConfig::from_layer(keyed).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "adress = \"127.0.0.1:1\"\n").unwrap();
        let e = ServerConfig::resolve(Some(&f), Layer::default(), Layer::default()).unwrap_err();
        assert!(e.to_string().contains("adress"), "{e}");
    }
}

//! One error type for the library. The CLI and the server wrap it with `anyhow` at the edges
//! (and map it to HTTP status codes in one place), so every variant says whose mistake it is:
//! the user's input (`InvalidInput`, `ModelNotFound`, `MissingWeights`...) or a failure of ours.

use std::path::PathBuf;

/// Library-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller gave input we cannot use (empty text, bad parameter...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Something the caller named by name (a stored query set) does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// A model folder or Hub id that does not resolve to a usable checkpoint.
    #[error("model not found: {0}")]
    ModelNotFound(String),

    /// The checkpoint is readable but lacks something we need (a tensor, a head, a file).
    #[error("the model at {model} is missing {what}")]
    MissingWeights { model: String, what: String },

    /// A model file that exists but cannot be parsed.
    #[error("cannot read {path}: {reason}")]
    BadModelFile { path: PathBuf, reason: String },

    /// `config.json` asks for something this encoder does not implement.
    #[error("unsupported model configuration: {0}")]
    Unsupported(String),

    /// Downloading from the Hugging Face Hub failed.
    #[error("Hugging Face Hub: {0}")]
    Hub(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The sled store failed (disk full, corruption...).
    #[error("store: {0}")]
    Store(String),

    /// A derived index (tantivy, hnsw) failed; it can be rebuilt with `clinsearch reindex`.
    #[error("index: {0}")]
    Index(String),

    /// A failure injected by a test (`failpoints` builds only).
    #[error("injected failure at {0}")]
    Injected(String),

    /// An index could not apply stored notes; they are durable and the engine catches the
    /// index up in the background (HTTP 503, `index_degraded`).
    #[error("{0}")]
    Degraded(String),

    /// A queue is full: the caller should retry shortly (HTTP 429).
    #[error("busy: {0}")]
    Busy(String),

    /// The data directory was built with another model.
    #[error("{0}")]
    ModelMismatch(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::BadModelFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<tantivy::TantivyError> for Error {
    fn from(e: tantivy::TantivyError) -> Self {
        Error::Index(e.to_string())
    }
}

//! clinsearch: semantic search for clinical documents.
//!
//! The library is split by concern; `main.rs` only parses arguments and calls [`cli`].
//! * [`model`]: BERT encoders on candle: loading, embedding, fill-mask.
//! * [`note`]: the note and its metadata.
//! * [`clinical`]: clinical language: abbreviations (query expansion both ways).
//! * [`store`]: sled, the source of truth.
//! * [`index`]: BM25 (tantivy) and vectors (a compact HNSW graph of our own), derived from the store.
//! * [`engine`]: keeps store and indexes consistent (catch-up, rebuild, checkpoints).
//! * [`ingest`]: files -> notes -> embedded windows -> engine, pipelined.
//! * [`search`]: BM25, semantic and hybrid rankings with filters, fusion and snippets.
//! * [`server`]: the HTTP API and the embedded browser UI (actix-web).
//! * [`eval`]: judged queries through each mode, trec_eval metrics, significance, run files.
//! * [`ner`]: named-entity tagging (token classifier, windows, entity spans, seqeval metrics).
//! * [`train`]: fine-tuning (classification, token classification, contrastive retrieval) in the HF layout.
//! * [`config`]: the server's configuration (file < environment < flags).
//! * [`auth`]: named keys (principals) with roles and document-level restrictions.
//! * [`audit`]: the access audit: append-only, hash-chained JSON lines; verify; reports.

pub mod audit;
pub mod auth;
pub mod cli;
mod cli_access;
mod cli_clinical;
mod cli_export;
mod cli_train;
mod cli_vectors;
pub mod clinical;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod failpoint;
pub mod index;
pub mod ingest;
pub mod model;
pub mod ner;
pub mod note;
pub mod search;
pub mod server;
pub mod store;
pub mod train;

pub use error::{Error, Result};

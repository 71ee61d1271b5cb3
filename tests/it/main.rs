//! Integration tests, compiled into one binary to keep link time down.

mod browser;
mod clinical;
mod common;
mod compat;
mod crash;
pub(crate) mod encoder;
mod eval;
mod export;
mod faults;
#[cfg(any(feature = "cuda", feature = "metal"))]
mod gpu;
mod hub;
mod ingest;
mod mlm;
mod ner;
mod sample_corpus;
mod schemathesis;
mod security;
mod server;
mod shards;
pub(crate) mod train;
mod vectors;

//! Integration tests, compiled into one binary to keep link time down.

mod browser;
mod common;
mod crash;
mod encoder;
mod eval;
mod hub;
mod ingest;
mod sample_corpus;
mod server;
mod train;

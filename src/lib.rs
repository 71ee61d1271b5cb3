//! clinsearch: semantic search for clinical documents.
//!
//! The library is split by concern; `main.rs` only parses arguments and calls [`cli`].
//! * [`model`]: BERT encoders on candle: loading, embedding, fill-mask.

pub mod cli;
pub mod error;
pub mod model;

pub use error::{Error, Result};

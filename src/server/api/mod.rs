//! The JSON API, one file per resource: `status` (health, stats, facets, the OpenAPI
//! description, metrics), `search`, `documents`, `models` (embed, fill-mask, classify),
//! `annotate` (assertion status),
//! `ingest` (upload jobs) and `eval` (evaluation jobs). Routes and their permissions are in
//! [`super::routes`]. Handlers validate, then hand blocking work (sled, tantivy, candle) to
//! the blocking pool; query embeddings go through the batching worker.
//! Each handler carries its `#[utoipa::path]`: the OpenAPI description is derived from
//! these and from the handlers' types (`super::openapi`).

mod annotate;
mod compat;
mod documents;
mod eval;
mod export;
mod ingest;
mod models;
mod search;
mod status;
pub mod whole;

pub use annotate::*;
pub use compat::*;
pub use documents::*;
pub use eval::*;
pub use export::*;
pub use ingest::*;
pub use models::*;
pub use search::*;
pub use status::*;

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::{self};
use actix_web::HttpResponse;

use super::routes::Caller;
use super::{disclose, disclose_query, ApiError, AppState};
use crate::error::Error;
use crate::index::Filter;
use crate::note::Note;
use crate::search::{SearchRequest, SearchResponse, Searcher};

type ApiResult = Result<HttpResponse, ApiError>;
type State = web::Data<AppState>;

/// Most notes in one `POST /api/documents` (larger loads go through `/api/ingest`).
pub const MAX_NOTES_PER_REQUEST: usize = 1000;
/// Most texts in one `POST /api/embed`.
pub const MAX_EMBED_TEXTS: usize = 256;

/// The JSON extractor's failures in the API's error shape.
pub fn json_error(e: actix_web::error::JsonPayloadError, limit: usize) -> ApiError {
    use actix_web::error::JsonPayloadError as J;
    match e {
        J::Overflow { .. } | J::OverflowKnownLength { .. } => ApiError::too_large(limit),
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ),
        J::Deserialize(d) => {
            // A body's own check (`try_from`) names the parameter first: `texts: ...`.
            let text = d.to_string();
            let message = text.split(" at line ").next().unwrap_or(&text);
            match message.split_once(": ") {
                Some((param, _))
                    if d.is_data()
                        && !param.is_empty()
                        && param.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
                {
                    ApiError {
                        param: Some(param.to_string()),
                        ..ApiError::bad_request("invalid_parameter", message.to_string())
                    }
                }
                _ => ApiError::bad_request("invalid_json", format!("invalid JSON body: {d}")),
            }
        }
        other => ApiError::bad_request("invalid_json", other.to_string()),
    }
}

/// Refuses a request whose texts would take more model windows than the configuration allows.
fn check_windows(state: &State, windows: usize) -> Result<(), ApiError> {
    let max = state.config.limits.max_windows_per_request;
    if windows > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_windows",
            format!(
                "these texts make {windows} windows of the model; one request may ask for at most {max} (split it, or use /api/ingest for files)"
            ),
        ));
    }
    Ok(())
}

/// Jobs are their owner's; admins see everyone's.
fn sees_all(caller: &Caller) -> bool {
    caller.0.role == crate::auth::Role::Admin
}

/// The texts of a body that takes one `text` or several `texts` (exactly one of the two,
/// between 1 and [`MAX_EMBED_TEXTS`] texts).
fn one_or_many(text: Option<String>, texts: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let texts = match (text, texts) {
        (Some(t), None) => vec![t],
        (None, Some(ts)) => ts,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "text: give exactly one of text or texts",
            ))
        }
    };
    if texts.is_empty() || texts.len() > MAX_EMBED_TEXTS {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("texts: give between 1 and {MAX_EMBED_TEXTS} texts"),
        ));
    }
    Ok(texts)
}

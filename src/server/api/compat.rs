//! Embedding endpoints in the formats other tools already speak: OpenAI's
//! `POST /v1/embeddings` (the `openai` client, LangChain's and LlamaIndex's OpenAI
//! embeddings) and text-embeddings-inference's `POST /embed`, `POST /tokenize` and
//! `POST /` (huggingface_hub's `InferenceClient(model=URL).feature_extraction` posts to the
//! base URL itself).
//!
//! Each input is one vector of its first window, as `/api/embed` gives without `windows`,
//! through the query-batching worker; any `model` name is accepted and the served model
//! answers (as text-embeddings-inference does), named in the reply. Errors come in each
//! API's own shape (OpenAI: `{"error": {"message", "type", "param", "code"}}`; TEI:
//! `{"error", "error_type"}`), so their clients raise their usual exceptions. The same keys,
//! roles, limits and audit apply as everywhere (the route table).

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;

/// Most inputs in one request (OpenAI's own limit is 2,048).
pub const MAX_COMPAT_INPUTS: usize = 2048;

/// An error in OpenAI's shape.
fn openai_error(
    status: StatusCode,
    message: impl Into<String>,
    param: Option<&str>,
    code: &str,
) -> HttpResponse {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    HttpResponse::build(status).json(OpenAiErrorBody {
        error: OpenAiErrorDetail {
            message: message.into(),
            kind: kind.into(),
            param: param.map(str::to_string),
            code: code.into(),
        },
    })
}

fn openai_from(e: ApiError) -> HttpResponse {
    let mut r = openai_error(e.status, e.message.clone(), e.param.as_deref(), e.code);
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(s),
        );
    }
    r
}

/// An error in text-embeddings-inference's shape.
fn tei_error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    let kind = match status.as_u16() {
        413 | 422 | 400 => "Validation",
        429 => "Overloaded",
        401 | 403 => "Unauthorized",
        _ => "Backend",
    };
    HttpResponse::build(status).json(TeiErrorBody {
        error: message.into(),
        error_type: kind.into(),
    })
}

fn tei_from(e: ApiError) -> HttpResponse {
    let status = if e.status == StatusCode::BAD_REQUEST {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        e.status
    };
    tei_error(status, e.message)
}

/// An input text: not blank, at most 1,000,000 characters.
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(pattern = "\\S", max_length = 1000000)]
pub struct InputText(String);

/// A token id of the served model's vocabulary (the description states its size).
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
pub struct TokenId(#[serde(deserialize_with = "whole::int")] u32);

/// Token ids of one input (at least one: `server::openapi` states it, as it states the
/// bounds of the lists below, which utoipa cannot attach to unnamed fields).
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
pub struct TokenIds(Vec<TokenId>);

/// OpenAI's `input`: a string, strings, token ids, or arrays of token ids.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiInput {
    One(InputText),
    Many(Vec<InputText>),
    Ids(TokenIds),
    ManyIds(Vec<TokenIds>),
}

/// OpenAI's embeddings request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiBody {
    input: OpenAiInput,
    /// Required by OpenAI's API; any name is accepted (the served model answers).
    #[allow(dead_code)]
    model: String,
    /// Read by the handler, so that a wrong value names this parameter as OpenAI does.
    #[schema(value_type = Option<EncodingFormat>)]
    encoding_format: Option<String>,
    /// Only the served model's own dimension (the description states it).
    #[serde(default, deserialize_with = "whole::opt_int")]
    dimensions: Option<usize>,
    /// OpenAI's end-user id: accepted and not used (never logged).
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// A vector: floats, or with `encoding_format: base64` the little-endian f32 bytes in base64.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    pub embedding: OpenAiVector,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// OpenAI's embeddings reply.
#[derive(Serialize, ToSchema)]
pub struct OpenAiList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    /// The served model (whatever the request named).
    pub model: String,
    pub usage: OpenAiUsage,
}

/// OpenAI's error shape.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// invalid_request_error, authentication_error, permission_error, rate_limit_error,
    /// server_error.
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: String,
}

/// text-embeddings-inference's error shape.
#[derive(Serialize, ToSchema)]
pub struct TeiErrorBody {
    pub error: String,
    /// Validation, Overloaded, Unauthorized or Backend.
    pub error_type: String,
}

/// One input made ready for the model.
struct Prepared {
    seq: Vec<u32>,
    /// The input's text (for the audit's query hash); token inputs have none.
    text: Option<String>,
    /// Its tokens before truncation to one window.
    tokens: usize,
}

/// Embeds prepared inputs through the batching worker, `max_batch` at a time so that a large
/// request does not fill the queue that searches share.
async fn embed_all(
    state: &State,
    inputs: &[Prepared],
    normalize: bool,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let step = state.config.query_batch.max(1);
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(step) {
        // Queued together, so they share forward passes.
        let pending = chunk
            .iter()
            .map(|p| {
                state
                    .embedder
                    .submit(p.seq.clone(), normalize, p.text.as_deref().unwrap_or(""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for p in pending {
            out.push(p.await?);
        }
    }
    Ok(out)
}

fn base64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// OpenAI's embeddings API: any model name is accepted and the served model answers (named
/// in the reply), through the query-batching worker.
#[utoipa::path(post, path = "/v1/embeddings", tag = "compatible", request_body = OpenAiBody,
    responses(
        (status = 200, description = "One vector per input.", body = OpenAiList),
        (status = 400, description = "Invalid input (OpenAI's error shape).", body = OpenAiErrorBody),
        (status = 413, description = "Over the body limit or the windows per request.", body = OpenAiErrorBody),
        (status = 429, description = "The query queue is full.", body = OpenAiErrorBody),
        (status = 503, description = "An index is being healed.", body = OpenAiErrorBody),
    ))]
pub async fn openai_embeddings(state: State, http: HttpRequest, body: Bytes) -> HttpResponse {
    match openai_embeddings_inner(&state, &http, &body).await {
        Ok(r) => r,
        Err(e) => openai_from(e),
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::bad_request("invalid_parameter", message);
    e.param = Some(param.to_string());
    e
}

async fn openai_embeddings_inner(
    state: &State,
    http: &HttpRequest,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let body: OpenAiBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("invalid body: {e} (expected {{\"input\": string | [string] | [int] | [[int]], \"model\": string}})"),
        )
    })?;
    let enc = state.encoder.clone();
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!("encoding_format {other:?}: use \"float\" or \"base64\""),
            ))
        }
    };
    if let Some(d) = body.dimensions {
        if d != enc.dim() {
            return Err(invalid(
                "dimensions",
                format!("dimensions {d}: the served model {} gives {} dimensions and cannot shorten them", enc.info().id, enc.dim()),
            ));
        }
    }
    let prepared: Vec<Prepared> = match body.input {
        OpenAiInput::One(t) => vec![prepare_text(&enc, t.0, 0)?],
        OpenAiInput::Many(ts) => {
            check_count(ts.len())?;
            ts.into_iter()
                .enumerate()
                .map(|(i, t)| prepare_text(&enc, t.0, i))
                .collect::<Result<_, _>>()?
        }
        OpenAiInput::Ids(ids) => vec![prepare_ids(&enc, &ids.ids(), 0)?],
        OpenAiInput::ManyIds(all) => {
            check_count(all.len())?;
            all.iter()
                .enumerate()
                .map(|(i, ids)| prepare_ids(&enc, &ids.ids(), i))
                .collect::<Result<_, _>>()?
        }
    };
    disclose_texts(http, &prepared);
    let vectors = embed_all(state, &prepared, enc.info().normalize).await?;
    let tokens: usize = prepared.iter().map(|p| p.seq.len()).sum();
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: if base64 {
                OpenAiVector::Base64(base64_f32(&v))
            } else {
                OpenAiVector::Float(v)
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(OpenAiList {
        object: "list",
        data,
        model: enc.info().id.clone(),
        usage: OpenAiUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

fn check_count(n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(invalid("input", "input: give at least one text"));
    }
    if n > MAX_COMPAT_INPUTS {
        return Err(invalid(
            "input",
            format!("input: at most {MAX_COMPAT_INPUTS} inputs per request"),
        ));
    }
    Ok(())
}

fn prepare_text(enc: &crate::model::Encoder, text: String, i: usize) -> Result<Prepared, ApiError> {
    if text.trim().is_empty() {
        return Err(invalid("input", format!("input {i} is empty")));
    }
    if text.chars().count() > 1_000_000 {
        return Err(invalid(
            "input",
            format!("input {i} is over 1,000,000 characters"),
        ));
    }
    let ids = enc.tokenizer().encode(&text)?.ids;
    if ids.is_empty() {
        return Err(invalid("input", format!("input {i} has no tokens")));
    }
    Ok(Prepared {
        seq: enc.sequence_of_ids(&ids),
        text: Some(text),
        tokens: ids.len(),
    })
}

fn prepare_ids(enc: &crate::model::Encoder, ids: &[u32], i: usize) -> Result<Prepared, ApiError> {
    if ids.is_empty() {
        return Err(invalid("input", format!("input {i} has no tokens")));
    }
    let vocab = enc.tokenizer().vocab_size() as u32;
    if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
        return Err(invalid(
            "input",
            format!("input {i}: token id {bad} is outside the model's vocabulary of {vocab}"),
        ));
    }
    Ok(Prepared {
        seq: enc.sequence_of_ids(ids),
        text: None,
        tokens: ids.len(),
    })
}

/// The audit records a hash of the texts (or the texts, when configured), as for
/// `/api/embed`.
fn disclose_texts(http: &HttpRequest, prepared: &[Prepared]) {
    let texts: Vec<&str> = prepared.iter().filter_map(|p| p.text.as_deref()).collect();
    disclose_query(http, &serde_json::to_string(&texts).unwrap_or_default());
}

impl TokenIds {
    fn ids(&self) -> Vec<u32> {
        self.0.iter().map(|t| t.0).collect()
    }
}

/// TEI's `inputs`: a string or strings.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TeiInputs {
    One(InputText),
    Many(Vec<InputText>),
}

impl TeiInputs {
    fn into_vec(self) -> Vec<String> {
        match self {
            TeiInputs::One(t) => vec![t.0],
            TeiInputs::Many(ts) => ts.into_iter().map(|t| t.0).collect(),
        }
    }
}

/// `/tokenize`'s `inputs`: a string or strings, any (an empty one has only the special
/// tokens).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TokenizeInputs {
    One(String),
    Many(Vec<String>),
}

/// Only `right` (any case) is supported.
#[derive(Deserialize, ToSchema)]
pub enum TruncationDirection {
    #[serde(alias = "right", alias = "RIGHT")]
    Right,
}

fn yes() -> bool {
    true
}

/// text-embeddings-inference's embed request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiEmbedBody {
    inputs: TeiInputs,
    #[serde(default = "yes")]
    normalize: bool,
    /// Cut inputs longer than the model reads; without it they are refused (413), as TEI
    /// does by default.
    #[serde(default)]
    truncate: Option<bool>,
    #[allow(dead_code)]
    truncation_direction: Option<TruncationDirection>,
    /// The served model has no prompts: only null.
    #[schema(value_type = Option<()>)]
    prompt_name: Option<String>,
    /// Only the served model's own dimension (the description states it).
    #[serde(default, deserialize_with = "whole::opt_int")]
    dimensions: Option<usize>,
}

/// text-embeddings-inference's embed: one vector per input (its first window), through the
/// query-batching worker.
#[utoipa::path(post, path = "/embed", tag = "compatible", request_body = TeiEmbedBody,
    responses(
        (status = 200, description = "One vector per input.", body = Vec<Vec<f32>>),
        (status = 413, description = "An input is longer than the model reads (without truncate), or the body is over the limit.", body = TeiErrorBody),
        (status = 422, description = "Invalid input (TEI's error shape).", body = TeiErrorBody),
        (status = 429, description = "The query queue is full.", body = TeiErrorBody),
        (status = 503, description = "An index is being healed.", body = TeiErrorBody),
    ))]
pub async fn tei_embed(state: State, http: HttpRequest, body: Bytes) -> HttpResponse {
    tei_embed_any(state, http, body).await
}

/// The same as `POST /embed` (huggingface_hub's `InferenceClient(model=URL)` posts to the
/// base URL itself; `GET /` stays the UI).
#[utoipa::path(post, path = "/", tag = "compatible", request_body = TeiEmbedBody,
    responses(
        (status = 200, description = "One vector per input.", body = Vec<Vec<f32>>),
        (status = 413, description = "An input is longer than the model reads (without truncate), or the body is over the limit.", body = TeiErrorBody),
        (status = 422, description = "Invalid input (TEI's error shape).", body = TeiErrorBody),
        (status = 429, description = "The query queue is full.", body = TeiErrorBody),
        (status = 503, description = "An index is being healed.", body = TeiErrorBody),
    ))]
pub async fn tei_embed_root(state: State, http: HttpRequest, body: Bytes) -> HttpResponse {
    tei_embed_any(state, http, body).await
}

async fn tei_embed_any(state: State, http: HttpRequest, body: Bytes) -> HttpResponse {
    match tei_embed_inner(&state, &http, &body).await {
        Ok(r) => r,
        Err(e) => tei_from(e),
    }
}

async fn tei_embed_inner(
    state: &State,
    http: &HttpRequest,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    let body: TeiEmbedBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("invalid body: {e} (expected {{\"inputs\": string | [string], \"normalize\"?, \"truncate\"?}})"),
        )
    })?;
    let enc = state.encoder.clone();
    if let Some(p) = &body.prompt_name {
        return Err(invalid(
            "prompt_name",
            format!("prompt_name {p:?}: the served model has no prompts"),
        ));
    }
    if let Some(d) = body.dimensions {
        if d != enc.dim() {
            return Err(invalid(
                "dimensions",
                format!("dimensions {d}: the served model gives {}", enc.dim()),
            ));
        }
    }
    let texts = body.inputs.into_vec();
    check_count(texts.len()).map_err(|mut e| {
        e.param = Some("inputs".into());
        e.message = e.message.replace("input:", "inputs:");
        e
    })?;
    let max = enc.max_input_tokens();
    let mut prepared = Vec::with_capacity(texts.len());
    for (i, t) in texts.into_iter().enumerate() {
        let p = prepare_text(&enc, t, i)?;
        if !body.truncate.unwrap_or(false) {
            let n = p.tokens;
            if n > max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_tokens",
                    format!("Input validation error: input {i} has {n} tokens; the model reads at most {max}: send \"truncate\": true to cut it"),
                ));
            }
        }
        prepared.push(p);
    }
    disclose_texts(http, &prepared);
    let vectors = embed_all(state, &prepared, body.normalize).await?;
    Ok(HttpResponse::Ok().json(vectors))
}

/// text-embeddings-inference's tokenize request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiTokenizeBody {
    inputs: TokenizeInputs,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    /// Accepted as TEI does; inputs are tokenised whole either way.
    #[allow(dead_code)]
    prompt_name: Option<String>,
}

/// One token of an input.
#[derive(Serialize, ToSchema)]
pub struct TeiToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    /// Byte offsets in the input (null for the special tokens).
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// `POST /tokenize`: the model's tokens of each input, with byte offsets (`start`, `stop`;
/// null for the special tokens), as text-embeddings-inference answers.
#[utoipa::path(post, path = "/tokenize", tag = "compatible", request_body = TeiTokenizeBody,
    responses(
        (status = 200, description = "Each input's tokens.", body = Vec<Vec<TeiToken>>),
        (status = 413, description = "The body is over the limit.", body = TeiErrorBody),
        (status = 422, description = "Invalid input (TEI's error shape).", body = TeiErrorBody),
        (status = 429, description = "Too many requests.", body = TeiErrorBody),
        (status = 503, description = "An index is being healed.", body = TeiErrorBody),
    ))]
pub async fn tei_tokenize(state: State, http: HttpRequest, body: Bytes) -> HttpResponse {
    let run = || -> Result<HttpResponse, ApiError> {
        let body: TeiTokenizeBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("invalid body: {e} (expected {{\"inputs\": string | [string]}})"),
            )
        })?;
        let texts = match body.inputs {
            TokenizeInputs::One(t) => vec![t],
            TokenizeInputs::Many(ts) => ts,
        };
        check_count(texts.len())?;
        disclose_query(&http, &serde_json::to_string(&texts).unwrap_or_default());
        let tok = state.encoder.tokenizer();
        let special = |id: u32| TeiToken {
            id,
            text: tok.id_to_token(id).unwrap_or_default(),
            special: true,
            start: None,
            stop: None,
        };
        let mut out = vec![];
        for t in &texts {
            let tokens = tok.encode(t)?;
            let mut row = vec![];
            if body.add_special_tokens {
                row.push(special(tok.cls_id));
            }
            for (id, (a, b)) in tokens.ids.iter().zip(&tokens.offsets) {
                row.push(TeiToken {
                    id: *id,
                    text: t.get(*a..*b).unwrap_or_default().to_string(),
                    special: false,
                    start: Some(*a),
                    stop: Some(*b),
                });
            }
            if body.add_special_tokens {
                row.push(special(tok.sep_id));
            }
            out.push(row);
        }
        Ok(HttpResponse::Ok().json(out))
    };
    run().unwrap_or_else(tei_from)
}

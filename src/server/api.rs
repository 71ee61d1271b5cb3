//! The JSON API. Handlers validate, then hand blocking work (sled, tantivy, candle) to the
//! blocking pool; query embeddings go through the batching worker.
//! The OpenAPI description (`openapi.json`) documents every route registered here; a test
//! keeps the two in step.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::Caller;
use super::{disclose, disclose_query, ApiError, AppState};
use crate::error::Error;
use crate::index::Filter;
use crate::ingest::source::note_from_json;
use crate::note::Note;
use crate::search::{SearchRequest, SearchResponse, Searcher};
use crate::store::EmbeddedNote;

type ApiResult = Result<HttpResponse, ApiError>;
type State = web::Data<AppState>;

/// Most notes in one `POST /api/documents` (larger loads go through `/api/ingest`).
pub const MAX_NOTES_PER_REQUEST: usize = 1000;
/// Most texts in one `POST /api/embed`.
pub const MAX_EMBED_TEXTS: usize = 256;

pub const OPENAPI: &str = include_str!("openapi.json");

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
            ApiError::bad_request("invalid_json", format!("invalid JSON body: {d}"))
        }
        other => ApiError::bad_request("invalid_json", other.to_string()),
    }
}

pub async fn health(state: State) -> ApiResult {
    if let Some(reason) = state.engine.degraded() {
        // 503 so that load balancers and probes see it; the reason names the index.
        return Ok(HttpResponse::ServiceUnavailable().json(json!({
            "status": "degraded",
            "reason": reason,
            "notes": state.engine.bm25.num_docs(),
            "model": state.encoder.info().id,
        })));
    }
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        // The index's count: the store's is a scan, and a health probe must be cheap.
        "notes": state.engine.bm25.num_docs(),
        "model": state.encoder.info().id,
    })))
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub async fn stats(state: State) -> ApiResult {
    let st = state.clone();
    let v = web::block(move || -> Result<Value, Error> {
        let e = &st.engine;
        let info = st.encoder.info();
        Ok(json!({
            "notes": e.store.note_count(),
            "chunks": e.store.chunk_count(),
            "model": {
                "id": info.id,
                "dim": info.hidden_size,
                "pooling": info.pooling,
                "normalize": info.normalize,
                "window_size": info.window_size,
                "stride": info.stride,
                "fill_mask": st.encoder.has_mlm_head(),
                "classifier": st.classifier.as_ref().map(|c| json!({
                    "dir": c.dir,
                    "labels": c.labels,
                })),
                "device": info.device,
                "dtype": info.dtype,
            },
            "data_model": e.identity()?,
            "bm25": {
                "docs": e.bm25.num_docs(),
                "stemming": e.bm25.stems(),
                "bytes": dir_bytes(&e.dir.join("bm25")),
            },
            "vectors": {
                "points": e.vectors.points(),
                "live": e.vectors.len(),
                "bytes": dir_bytes(&e.dir.join("vectors")),
            },
            "store": { "bytes": e.store.size_on_disk(), "last_seq": e.store.last_seq()? },
            "uptime_s": st.started.elapsed().as_secs(),
        }))
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

/// Values of the note type and specialty filters with their counts (only the notes the
/// caller may see are counted).
pub async fn facets(state: State, caller: Caller) -> ApiResult {
    let st = state.clone();
    let scope = caller.0.scope(&Filter::default());
    let v = web::block(move || -> Result<Value, Error> {
        let list = |f: &str| -> Result<Value, Error> {
            Ok(st
                .engine
                .bm25
                .facet_values_under(f, &scope)?
                .into_iter()
                .map(|(v, n)| json!({"value": v, "count": n}))
                .collect())
        };
        Ok(json!({ "note_type": list("note_type")?, "specialty": list("specialty")? }))
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

// ---------------------------------------------------------------------------------------
// Search

/// `GET /api/search?q=...&mode=...`
pub async fn search_get(
    state: State,
    http: HttpRequest,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> ApiResult {
    let req = SearchRequest::from_params(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    run_search(state, &http, caller, req).await
}

/// `POST /api/search` with the same parameters as a JSON object; filters may also be nested
/// under `"filter"`.
pub async fn search_post(
    state: State,
    http: HttpRequest,
    caller: Caller,
    body: web::Json<Value>,
) -> ApiResult {
    let pairs = flatten_params(&body)?;
    let req = SearchRequest::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    run_search(state, &http, caller, req).await
}

fn flatten_params(body: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object of search parameters",
        ));
    };
    let mut out = vec![];
    fn scalar(k: &str, v: &Value) -> Result<Option<String>, ApiError> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            _ => Err(ApiError {
                param: Some(k.to_string()),
                ..ApiError::bad_request(
                    "invalid_parameter",
                    format!("{k}: must be a string or a number"),
                )
            }),
        }
    }
    for (k, v) in map {
        if (k == "filter" || k == "filters") && v.is_object() {
            for (fk, fv) in v.as_object().into_iter().flatten() {
                if let Some(s) = scalar(fk, fv)? {
                    out.push((fk.clone(), s));
                }
            }
        } else if let Some(s) = scalar(k, v)? {
            out.push((k.clone(), s));
        }
    }
    Ok(out)
}

/// Embeds the query on the batching worker (when the mode needs it) and ranks.
pub async fn execute_search(state: &State, req: SearchRequest) -> Result<SearchResponse, ApiError> {
    let t = Instant::now();
    let qv = if req.mode.needs_vector() {
        Some(state.embedder.embed(&req.q).await?)
    } else {
        None
    };
    let embed_ms = t.elapsed().as_secs_f64() * 1e3;
    let st = state.clone();
    let mut resp = web::block(move || {
        let mut s = Searcher::new(&st.engine);
        s.ef = st.config.ef_search;
        s.search(&req, qv.as_deref())
    })
    .await??;
    resp.timings.embed_ms = embed_ms;
    Ok(resp)
}

/// The bounds of the configuration on one search: `offset + k`, and the candidates a search
/// grouped by patient reads.
fn check_search_limits(state: &State, req: &SearchRequest) -> Result<(), ApiError> {
    let l = &state.config.limits;
    let need = req.offset + req.k;
    let param = |p: &str, m: String| ApiError {
        param: Some(p.to_string()),
        ..ApiError::bad_request("invalid_parameter", m)
    };
    if need > l.max_offset_k {
        return Err(param(
            "offset",
            format!(
                "offset + k is {need}; this server allows at most {}",
                l.max_offset_k
            ),
        ));
    }
    if req.group_by == crate::search::GroupBy::Patient && need * 5 > l.max_group_depth {
        return Err(param(
            "group_by",
            format!(
                "grouping by patient reads 5 x (offset + k) = {} candidates; this server allows at most {} (ask for a smaller page)",
                need * 5,
                l.max_group_depth
            ),
        ));
    }
    Ok(())
}

async fn run_search(
    state: State,
    http: &HttpRequest,
    caller: Caller,
    mut req: SearchRequest,
) -> ApiResult {
    let t = Instant::now();
    check_search_limits(&state, &req)?;
    disclose_query(http, &req.q);
    // The key's restriction goes inside both retrievers, as if other notes did not exist.
    let asked = req.filter.clone();
    req.filter = caller.0.scope(&req.filter);
    let mut resp = execute_search(&state, req).await?;
    resp.filter = asked;
    for r in &resp.rankings {
        for h in &r.hits {
            disclose(http, &h.id, h.patient_id.as_deref());
            if let Some(g) = &h.group {
                for n in &g.note_ids {
                    disclose(http, n, Some(&g.patient_id));
                }
            }
        }
    }
    let mut v = serde_json::to_value(&resp).map_err(|e| Error::Index(e.to_string()))?;
    v["took_ms"] = json!(t.elapsed().as_secs_f64() * 1e3);
    Ok(HttpResponse::Ok().json(v))
}

// ---------------------------------------------------------------------------------------
// Documents

/// Splits a body into note objects: one object, an array of objects, or NDJSON (one object
/// per line). Each item is parsed on its own so one bad note does not sink the others.
pub fn parse_note_body(body: &[u8]) -> Result<Vec<Result<Note, String>>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("the body is not UTF-8: {e}"))
    })?;
    let trimmed = text.trim_start();
    let items: Vec<Result<Value, String>> = if trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(a)) => a.into_iter().map(Ok).collect(),
            Ok(_) => unreachable!("starts with ["),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "invalid_json",
                    format!("invalid JSON array: {e}"),
                ))
            }
        }
    } else if trimmed.starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![Ok(v)],
            // More than one value: NDJSON, one note per line.
            Err(_) => text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    serde_json::from_str::<Value>(l)
                        .map_err(|e| format!("line {}: invalid JSON: {e}", i + 1))
                })
                .collect(),
        }
    } else if trimmed.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the body holds no notes",
        ));
    } else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "expected a JSON object, an array of objects, or NDJSON (one object per line)",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the body holds no notes",
        ));
    }
    if items.len() > MAX_NOTES_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_notes",
            format!(
                "{} notes in one request; the limit is {MAX_NOTES_PER_REQUEST} (use /api/ingest for files)",
                items.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    Ok(items
        .into_iter()
        .map(|item| {
            let v = item?;
            if !v.is_object() {
                return Err("not a JSON object".to_string());
            }
            let note = note_from_json(&v)?;
            let note = note.validate().map_err(|e| match e {
                Error::InvalidInput(m) => m,
                other => other.to_string(),
            })?;
            if !seen.insert(note.id.clone()) {
                return Err(format!("duplicate id {:?} in this request", note.id));
            }
            Ok(note)
        })
        .collect())
}

/// `POST /api/documents`: stores notes (replacing notes with the same id) and replies with
/// the status of each.
pub async fn documents_post(
    state: State,
    http: HttpRequest,
    caller: Caller,
    body: Bytes,
) -> ApiResult {
    let mut parsed = parse_note_body(&body)?;
    // A restricted key may store only notes it could read back.
    for r in parsed.iter_mut() {
        if let Ok(n) = r {
            if !caller.0.may_see(n) {
                *r = Err("outside what this key may read (its filter)".to_string());
            }
        }
    }
    let windows: usize = {
        let notes: Vec<&Note> = parsed.iter().filter_map(|r| r.as_ref().ok()).collect();
        crate::ingest::count_windows(&state.encoder, &notes)?
    };
    check_windows(&state, windows)?;
    for n in parsed.iter().flatten() {
        disclose(&http, &n.id, n.patient_id.as_deref());
    }
    let st = state.clone();
    let results = web::block(move || -> Result<Vec<Value>, Error> {
        let mut results: Vec<Value> = Vec::with_capacity(parsed.len());
        let mut valid: Vec<(usize, Note)> = vec![];
        for (i, r) in parsed.into_iter().enumerate() {
            match r {
                Ok(n) => {
                    valid.push((i, n));
                    results.push(Value::Null);
                }
                Err(e) => results.push(json!({ "index": i, "status": "rejected", "error": e })),
            }
        }
        let notes: Vec<&Note> = valid.iter().map(|(_, n)| n).collect();
        let windows = crate::ingest::embed_notes(&st.encoder, &notes)?;
        let mut batch = vec![];
        for ((i, note), w) in valid.into_iter().zip(windows) {
            match w {
                Ok(windows) => {
                    let e = EmbeddedNote::new(note, windows);
                    results[i] = json!({
                        "index": i, "id": e.note.id, "status": "stored", "chunks": e.windows.len(),
                        "windows_capped": e.windows_capped,
                    });
                    batch.push(e);
                }
                Err(e) => {
                    results[i] = json!({ "index": i, "id": note.id, "status": "rejected", "error": e.to_string() })
                }
            }
        }
        if !batch.is_empty() {
            st.engine.apply(&batch, &[])?;
            let chunks: usize = batch.iter().map(|n| n.windows.len()).sum();
            st.metrics
                .chunks_ingested
                .fetch_add(chunks as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(results)
    })
    .await??;
    let stored = results.iter().filter(|r| r["status"] == "stored").count();
    let rejected = results.len() - stored;
    use std::sync::atomic::Ordering::Relaxed;
    state
        .metrics
        .notes_ingested
        .fetch_add(stored as u64, Relaxed);
    state
        .metrics
        .notes_rejected
        .fetch_add(rejected as u64, Relaxed);
    let body = json!({ "stored": stored, "rejected": rejected, "results": results });
    if stored == 0 {
        let mut b = ApiError::bad_request(
            "invalid_notes",
            format!("none of the {rejected} notes could be stored"),
        )
        .body();
        b["results"] = body["results"].clone();
        return Ok(HttpResponse::BadRequest().json(b));
    }
    Ok(HttpResponse::Ok().json(body))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocQuery {
    /// A query to mark in the note: BM25 term matches and each chunk's cosine to it.
    q: Option<String>,
}

/// Char offset of each byte offset of `text` (for the browser, which counts characters).
fn char_offset(text: &str, byte: usize) -> usize {
    text.get(..byte).map_or(0, |s| s.chars().count())
}

pub async fn document_get(
    state: State,
    http: HttpRequest,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<DocQuery>,
) -> ApiResult {
    let id = id.into_inner();
    let q = query.into_inner().q.filter(|q| !q.trim().is_empty());
    if let Some(q) = &q {
        disclose_query(&http, q);
    }
    let principal = caller.0;
    let asked_id = id.clone();
    if let Some(q) = &q {
        if q.len() > crate::search::MAX_QUERY_BYTES {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "q: the query is too long",
            ));
        }
    }
    let qv = match &q {
        Some(q) => Some(state.embedder.embed(q).await?),
        None => None,
    };
    let st = state.clone();
    let v = web::block(move || -> Result<Option<Value>, Error> {
        let e = &st.engine;
        let Some((stored, chunks)) = e
            .store
            .get_with_chunks(&id)?
            .filter(|(s, _)| principal.may_see(&s.note))
        else {
            // Outside the key's restriction is the same as absent: 404, nothing disclosed.
            return Ok(None);
        };
        let note = &stored.note;
        let text = note.text.as_str();
        let mut chunk_json = vec![];
        let mut best: Option<(u32, f32)> = None;
        for c in &chunks {
            let score = qv.as_ref().map(|v| crate::search::cosine(&c.vector, v));
            if let Some(s) = score {
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((c.index, s));
                }
            }
            chunk_json.push(json!({
                "index": c.index, "char_start": c.char_start, "char_end": c.char_end, "score": score,
            }));
        }
        // BM25 term matches over the whole note, as character spans.
        let mut terms = vec![];
        if let Some(q) = &q {
            let (fragment, ranges) = e.bm25.snippet(q, text, text.chars().count() + 1)?;
            if let Some(base) = text.find(&fragment).filter(|_| !fragment.is_empty()) {
                for r in ranges {
                    terms.push(json!([char_offset(text, base + r.start), char_offset(text, base + r.end)]));
                }
            }
        }
        // Other notes of the same patient, newest first.
        let mut same_patient = vec![];
        if let Some(p) = &note.patient_id {
            let f = principal.scope(&Filter {
                patient_id: Some(p.clone()),
                ..Default::default()
            });
            if let (_, Some(ids)) = e.bm25.filter_ids(&f, 500)? {
                for other in ids.iter().filter(|o| **o != note.id) {
                    if let Some(n) = e.store.get(other)? {
                        let n = n.note;
                        same_patient.push(json!({
                            "id": n.id, "title": n.title, "date": n.date, "note_type": n.note_type,
                            "specialty": n.specialty,
                        }));
                    }
                }
            }
            same_patient.sort_by(|a, b| b["date"].as_str().cmp(&a["date"].as_str()));
        }
        Ok(Some(json!({
            "note": note,
            "chunks": chunk_json,
            "best_chunk": best.map(|(i, _)| i),
            "terms": terms,
            "windows_capped": stored.windows_capped,
            "same_patient": same_patient,
        })))
    })
    .await??;
    match v {
        Some(v) => {
            disclose(&http, &asked_id, v["note"]["patient_id"].as_str());
            for other in v["same_patient"].as_array().into_iter().flatten() {
                if let Some(o) = other["id"].as_str() {
                    disclose(&http, o, v["note"]["patient_id"].as_str());
                }
            }
            Ok(HttpResponse::Ok().json(v))
        }
        None => Err(ApiError::not_found("no note with this id")),
    }
}

pub async fn document_delete(
    state: State,
    http: HttpRequest,
    caller: Caller,
    id: web::Path<String>,
) -> ApiResult {
    let id = id.into_inner();
    let st = state.clone();
    let key = id.clone();
    let principal = caller.0;
    let (n, patient) = web::block(move || -> Result<(usize, Option<String>), Error> {
        // A restricted key cannot see, so cannot delete, notes outside its filter.
        let Some(stored) = st
            .engine
            .store
            .get(&key)?
            .filter(|s| principal.may_see(&s.note))
        else {
            return Ok((0, None));
        };
        let patient = stored.note.patient_id.clone();
        Ok((st.engine.delete(&[key])?, patient))
    })
    .await??;
    disclose(&http, &id, patient.as_deref());
    if n == 0 {
        return Err(ApiError::not_found("no note with this id"));
    }
    state
        .metrics
        .notes_deleted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(HttpResponse::Ok().json(json!({ "deleted": id })))
}

// ---------------------------------------------------------------------------------------
// Model endpoints

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    texts: Vec<String>,
    /// One vector per overlapping window instead of one per text.
    #[serde(default)]
    windows: bool,
}

pub async fn embed(state: State, http: HttpRequest, body: web::Json<EmbedBody>) -> ApiResult {
    let EmbedBody { texts, windows } = body.into_inner();
    disclose_query(&http, &serde_json::to_string(&texts).unwrap_or_default());
    if texts.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "texts: give at least one text",
        ));
    }
    if texts.len() > MAX_EMBED_TEXTS {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("texts: at most {MAX_EMBED_TEXTS} per request"),
        ));
    }
    if windows {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        check_windows(&state, state.encoder.count_windows(&refs)?)?;
    }
    let st = state.clone();
    let out = web::block(move || -> Result<Value, Error> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let info = st.encoder.info();
        let mut v = json!({ "model": info.id, "dim": st.encoder.dim(), "pooling": info.pooling, "normalized": info.normalize });
        if windows {
            v["windows"] = serde_json::to_value(st.encoder.embed_windows(&refs)?).map_err(|e| Error::Index(e.to_string()))?;
        } else {
            v["embeddings"] = serde_json::to_value(st.encoder.embed(&refs)?).map_err(|e| Error::Index(e.to_string()))?;
        }
        Ok(v)
    })
    .await??;
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillMaskBody {
    text: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    5
}

pub async fn fill_mask(
    state: State,
    http: HttpRequest,
    body: web::Json<FillMaskBody>,
) -> ApiResult {
    if !state.encoder.has_mlm_head() {
        return Err(ApiError::bad_request(
            "no_mlm_head",
            format!(
                "the model {} has no masked-language-model head: serve a checkpoint with one (e.g. a BertForMaskedLM) to use fill-mask",
                state.encoder.info().id
            ),
        ));
    }
    let FillMaskBody { text, top_k } = body.into_inner();
    disclose_query(&http, &text);
    if !(1..=100).contains(&top_k) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "top_k: must be between 1 and 100",
        ));
    }
    if text.len() > 100_000 {
        return Err(ApiError::bad_request("invalid_parameter", "text: too long"));
    }
    let st = state.clone();
    let masks = web::block(move || st.encoder.fill_mask(&text, top_k)).await??;
    Ok(HttpResponse::Ok().json(json!({ "model": state.encoder.info().id, "masks": masks })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    /// One text, or several with `texts`.
    text: Option<String>,
    texts: Option<Vec<String>>,
    #[serde(default = "default_classify_top_k")]
    top_k: usize,
}

fn default_classify_top_k() -> usize {
    3
}

/// `POST /api/classify`: the configured fine-tuned classifier's labels for one or more texts.
pub async fn classify(state: State, http: HttpRequest, body: web::Json<ClassifyBody>) -> ApiResult {
    let Some(clf) = state.classifier.clone() else {
        return Err(ApiError::bad_request(
            "no_classifier",
            "no classifier is configured: fine-tune one with `clinsearch finetune classify` and serve it with --classifier DIR",
        ));
    };
    let ClassifyBody { text, texts, top_k } = body.into_inner();
    match (&text, &texts) {
        (Some(t), _) => disclose_query(&http, t),
        (None, Some(ts)) => disclose_query(&http, &serde_json::to_string(ts).unwrap_or_default()),
        _ => {}
    }
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
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("texts: text {} is empty", i + 1),
        ));
    }
    if !(1..=100).contains(&top_k) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "top_k: must be between 1 and 100",
        ));
    }
    let c = clf.clone();
    let preds = web::block(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        c.predict(&refs, top_k)
    })
    .await??;
    Ok(HttpResponse::Ok().json(json!({
        "model": clf.dir,
        "labels": clf.labels,
        "predictions": preds,
    })))
}

// ---------------------------------------------------------------------------------------
// Ingest jobs

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    format: Option<String>,
    filename: Option<String>,
    text_col: Option<String>,
    id_col: Option<String>,
    title_col: Option<String>,
}

/// `POST /api/ingest?format=jsonl|csv|txt&filename=...`: the raw file as the body.
pub async fn ingest_start(
    state: State,
    caller: Caller,
    query: web::Query<IngestQuery>,
    body: Bytes,
) -> ApiResult {
    let q = query.into_inner();
    if caller.0.restrict.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a key with a filter cannot upload files (each note must be checked against the filter): post notes to /api/documents",
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("empty_body", "the upload is empty"));
    }
    let format = super::jobs::format_of(q.filename.as_deref(), q.format.as_deref())
        .map_err(|m| ApiError::bad_request("invalid_parameter", format!("format: {m}")))?;
    let name = super::jobs::upload_name(q.filename.as_deref(), format);
    let mut mapping = crate::ingest::CsvMapping::default();
    if let Some(c) = q.text_col.filter(|c| !c.is_empty()) {
        mapping.text_col = c;
    }
    mapping.id_col = q.id_col.filter(|c| !c.is_empty());
    mapping.title_col = q.title_col.filter(|c| !c.is_empty());
    let st = state.clone();
    let metrics_state = state.clone();
    let on_done: Arc<dyn Fn(usize, usize, usize) + Send + Sync> =
        Arc::new(move |notes, chunks, errors| {
            use std::sync::atomic::Ordering::Relaxed;
            metrics_state
                .metrics
                .notes_ingested
                .fetch_add(notes as u64, Relaxed);
            metrics_state
                .metrics
                .chunks_ingested
                .fetch_add(chunks as u64, Relaxed);
            metrics_state
                .metrics
                .notes_rejected
                .fetch_add(errors as u64, Relaxed);
        });
    let owner = caller.0.name.clone();
    let limits = state.config.limits.clone();
    let status = web::block(move || {
        st.jobs.start(
            st.engine.clone(),
            st.encoder.clone(),
            on_done,
            &owner,
            &limits,
            &name,
            format,
            mapping,
            &body,
        )
    })
    .await??;
    Ok(HttpResponse::Accepted().json(status))
}

/// Jobs are their owner's; admins see everyone's.
fn sees_all(caller: &Caller) -> bool {
    caller.0.role == crate::auth::Role::Admin
}

pub async fn ingest_status(state: State, caller: Caller, job: web::Path<String>) -> ApiResult {
    match state
        .jobs
        .status(&job)
        .filter(|s| sees_all(&caller) || s.owner == caller.0.name)
    {
        Some(s) => Ok(HttpResponse::Ok().json(s)),
        None => Err(ApiError::not_found("no ingest job with this id")),
    }
}

pub async fn ingest_list(state: State, caller: Caller) -> ApiResult {
    let jobs: Vec<_> = state
        .jobs
        .list()
        .into_iter()
        .filter(|s| sees_all(&caller) || s.owner == caller.0.name)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs })))
}

// ---------------------------------------------------------------------------------------
// Evaluation

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalBody {
    /// A query set stored in the data directory (`clinsearch eval --save-set NAME`).
    set: Option<String>,
    /// Queries: `[{"id", "text"}]`, or the text of a BEIR queries.jsonl / `qid<TAB>text` file.
    queries: Option<Value>,
    /// Judgments: `{"qid": {"docid": grade}}`, or the text of a BEIR qrels TSV / TREC qrels.
    qrels: Option<Value>,
    modes: Option<Vec<String>>,
    ks: Option<Vec<usize>>,
    fusion: Option<String>,
    rrf_k: Option<f32>,
    alpha: Option<f32>,
    /// Reply with the report when done (200) instead of a job to poll (202).
    #[serde(default)]
    wait: bool,
}

fn eval_inputs(body: &EvalBody, data: &std::path::Path) -> Result<crate::eval::QuerySet, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_parameter", m);
    if let Some(name) = &body.set {
        if body.queries.is_some() || body.qrels.is_some() {
            return Err(invalid("give either set or queries and qrels".into()));
        }
        return Ok(crate::eval::load_set(data, name)?);
    }
    let (Some(q), Some(r)) = (&body.queries, &body.qrels) else {
        return Err(invalid("give set, or queries and qrels".into()));
    };
    let queries = match q {
        Value::String(text) => crate::eval::parse_queries(text, std::path::Path::new("queries"))?,
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let id = v.get("id").or_else(|| v.get("_id")).and_then(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .or_else(|| x.as_i64().map(|n| n.to_string()))
                });
                let text = v.get("text").and_then(|x| x.as_str());
                match (id, text) {
                    (Some(id), Some(t)) => Ok((id, t.to_string())),
                    _ => Err(invalid(format!("queries[{i}]: needs \"id\" and \"text\""))),
                }
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                "queries: an array of {id, text} or the text of a queries file".into(),
            ))
        }
    };
    let qrels = match r {
        Value::String(text) => crate::eval::parse_qrels(text, std::path::Path::new("qrels"))?,
        Value::Object(map) => {
            let mut out = std::collections::HashMap::new();
            for (q, docs) in map {
                let docs = docs
                    .as_object()
                    .ok_or_else(|| invalid(format!("qrels.{q}: an object of docid: grade")))?;
                let mut j = std::collections::HashMap::new();
                for (d, g) in docs {
                    let g = g.as_i64().ok_or_else(|| {
                        invalid(format!("qrels.{q}.{d}: the grade must be a whole number"))
                    })?;
                    j.insert(d.clone(), g as i32);
                }
                out.insert(q.clone(), j);
            }
            out
        }
        _ => {
            return Err(invalid(
                "qrels: an object {qid: {docid: grade}} or the text of a qrels file".into(),
            ))
        }
    };
    Ok(crate::eval::QuerySet::from_parts(queries, qrels)?)
}

/// `POST /api/eval`: evaluates a stored or posted query set; a job to poll, or the report.
pub async fn eval_start(
    state: State,
    http: HttpRequest,
    caller: Caller,
    body: web::Json<EvalBody>,
) -> ApiResult {
    let body = body.into_inner();
    let principal = caller.0.clone();
    let principal_view = principal.clone();
    let set = eval_inputs(&body, &state.engine.dir)?;
    let invalid = |m: String| ApiError::bad_request("invalid_parameter", m);
    let mut opts = crate::eval::EvalOptions::default();
    if let Some(m) = &body.modes {
        opts.modes =
            crate::eval::parse_modes(&m.join(",")).map_err(|e| invalid(format!("modes: {e}")))?;
    }
    if let Some(ks) = &body.ks {
        let text: Vec<String> = ks.iter().map(|k| k.to_string()).collect();
        opts.ks =
            crate::eval::parse_ks(&text.join(",")).map_err(|e| invalid(format!("ks: {e}")))?;
    }
    opts.fusion = match body.fusion.as_deref().unwrap_or("rrf") {
        "rrf" => {
            let k = body.rrf_k.unwrap_or(60.0);
            if !(k.is_finite() && k > 0.0) {
                return Err(invalid("rrf_k: must be above 0".into()));
            }
            crate::search::Fusion::Rrf { k }
        }
        "weighted" => {
            let a = body.alpha.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&a) {
                return Err(invalid("alpha: must be between 0 and 1".into()));
            }
            crate::search::Fusion::Weighted { alpha: a }
        }
        other => {
            return Err(invalid(format!(
                "fusion: unknown {other:?}: use rrf or weighted"
            )))
        }
    };
    opts.ef = state.config.ef_search;
    // A restricted key evaluates over the notes it may see, as if the others did not exist.
    opts.restrict = principal.restrict.clone();
    let st = state.clone();
    let total = set.queries.len();
    let run = move |done: &std::sync::atomic::AtomicUsize| -> Result<Value, Error> {
        let enc = st.encoder.clone();
        let embed = move |t: &[&str]| enc.embed(t);
        let (report, _) = crate::eval::evaluate(&st.engine, &embed, &set, &opts, &|d, _| {
            done.store(d, std::sync::atomic::Ordering::SeqCst)
        })?;
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Index(e.to_string()))?;
        // Titles of every note the report names, for the UI.
        let mut titles = serde_json::Map::new();
        for q in &report.per_query {
            let docs = q
                .relevant
                .iter()
                .map(|(d, _)| d)
                .chain(q.modes.values().flat_map(|m| m.top.iter().map(|(d, _)| d)));
            for d in docs {
                if !titles.contains_key(d) {
                    // Notes outside the key's view are not named (no title, as if absent).
                    let title = st
                        .engine
                        .store
                        .get(d)?
                        .filter(|n| principal_view.may_see(&n.note))
                        .map(|n| n.note.title.unwrap_or_else(|| d.clone()));
                    titles.insert(d.clone(), json!(title));
                }
            }
        }
        v["titles"] = Value::Object(titles);
        Ok(v)
    };
    let slot = state.evals.reserve(&principal.name, &state.config.limits)?;
    if body.wait {
        let report = web::block(move || {
            let _slot = slot;
            run(&std::sync::atomic::AtomicUsize::new(0))
        })
        .await??;
        disclose_report(&http, &report);
        return Ok(HttpResponse::Ok().json(report));
    }
    let id = state.evals.start(slot, total, run)?;
    Ok(HttpResponse::Accepted().json(state.evals.status(&id)))
}

/// Every note an evaluation report names (its rankings and judged notes).
fn disclose_report(http: &HttpRequest, report: &Value) {
    if let Some(titles) = report["titles"].as_object() {
        for id in titles.keys() {
            disclose(http, id, None);
        }
    }
}

pub async fn eval_status(
    state: State,
    http: HttpRequest,
    caller: Caller,
    job: web::Path<String>,
) -> ApiResult {
    match state
        .evals
        .status(&job)
        .filter(|v| sees_all(&caller) || v["owner"] == caller.0.name.as_str())
    {
        Some(v) => {
            disclose_report(&http, &v["report"]);
            Ok(HttpResponse::Ok().json(v))
        }
        None => Err(ApiError::not_found("no evaluation job with this id")),
    }
}

pub async fn eval_sets(state: State) -> ApiResult {
    let sets: Vec<Value> = crate::eval::list_sets(&state.engine.dir)
        .into_iter()
        .map(|(name, n)| json!({"name": name, "queries": n}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sets": sets })))
}

// ---------------------------------------------------------------------------------------
// Metrics

pub async fn metrics(state: State) -> ApiResult {
    let st = state.clone();
    let text = web::block(move || {
        use std::sync::atomic::Ordering::Relaxed;
        let e = &st.engine;
        let b = &st.embedder.stats;
        let extra: Vec<(&str, &str, &str, f64)> = vec![
            (
                "clinsearch_degraded",
                "1 while an index is behind the store and being healed (see /api/health).",
                "gauge",
                if e.degraded().is_some() { 1.0 } else { 0.0 },
            ),
            (
                "clinsearch_notes",
                "Notes stored.",
                "gauge",
                e.store.note_count() as f64,
            ),
            (
                "clinsearch_chunks",
                "Chunks (embedded windows) stored.",
                "gauge",
                e.store.chunk_count() as f64,
            ),
            (
                "clinsearch_bm25_docs",
                "Documents in the BM25 index.",
                "gauge",
                e.bm25.num_docs() as f64,
            ),
            (
                "clinsearch_vector_points",
                "Points in the vector graph, dead ones included.",
                "gauge",
                e.vectors.points() as f64,
            ),
            (
                "clinsearch_vector_live",
                "Live vectors.",
                "gauge",
                e.vectors.len() as f64,
            ),
            (
                "clinsearch_store_bytes",
                "Size of the sled store on disk.",
                "gauge",
                e.store.size_on_disk() as f64,
            ),
            (
                "clinsearch_bm25_bytes",
                "Size of the BM25 index on disk.",
                "gauge",
                dir_bytes(&e.dir.join("bm25")) as f64,
            ),
            (
                "clinsearch_vector_bytes",
                "Size of the vector index dump on disk.",
                "gauge",
                dir_bytes(&e.dir.join("vectors")) as f64,
            ),
            (
                "clinsearch_query_embed_batches_total",
                "Forward passes of the query embedding worker.",
                "counter",
                b.batches.load(Relaxed) as f64,
            ),
            (
                "clinsearch_query_embed_queries_total",
                "Queries embedded by the worker.",
                "counter",
                b.queries.load(Relaxed) as f64,
            ),
            (
                "clinsearch_query_embed_busy_seconds_total",
                "Time the worker spent in forward passes.",
                "counter",
                b.busy_us.load(Relaxed) as f64 / 1e6,
            ),
            (
                "clinsearch_query_embed_largest_batch",
                "Largest batch of queries embedded together.",
                "gauge",
                b.largest.load(Relaxed) as f64,
            ),
        ];
        st.metrics.render(&extra)
    })
    .await?;
    Ok(super::text(text, "text/plain; version=0.0.4"))
}

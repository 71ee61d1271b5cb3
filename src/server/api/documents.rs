//! `POST /api/documents` (through the one write path, [`crate::ingest::batch`]), `GET` and `DELETE /api/documents/{id}`.

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::server::error::ErrorBody;

use super::*;

/// Splits a body into note objects: one object, an array of objects, or NDJSON (one object
/// per line). Each item is parsed on its own so one bad note does not sink the others;
/// validation is the write path's ([`crate::ingest::batch::Checker`]).
pub fn parse_note_body(body: &[u8]) -> Result<Vec<crate::ingest::Item>, ApiError> {
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
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let origin = crate::ingest::batch::request_origin(i);
            match item {
                Ok(v) if v.is_object() => crate::ingest::source::record_from_json(&v, origin),
                Ok(_) => Err(crate::ingest::RecordError {
                    origin,
                    reason: "not a JSON object".to_string(),
                }),
                Err(reason) => Err(crate::ingest::RecordError { origin, reason }),
            }
        })
        .collect())
}

/// A note to store, as `ingest::source::note_from_json` reads it: `text` (or `body`),
/// `id` (or `_id`; derived from the content when absent), the metadata fields, a nested
/// `metadata` object flattened into them, and any other scalar field kept as metadata
/// (other values are ignored). Never deserialised itself: it describes that reader, and a
/// test feeds it every documented field.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NoteInput {
    /// The user's id (derived from the content when absent).
    #[schema(value_type = Option<NoteId>)]
    id: Option<String>,
    /// Must hold something other than white space.
    #[schema(pattern = "\\S")]
    text: String,
    #[schema(value_type = Option<Scalar>)]
    title: Option<String>,
    #[schema(value_type = Option<Scalar>)]
    patient_id: Option<String>,
    /// Discharge summary, progress note, radiology report...
    #[schema(value_type = Option<Scalar>)]
    note_type: Option<String>,
    #[schema(value_type = Option<Scalar>)]
    specialty: Option<String>,
    /// `YYYY-MM-DD` (a time after it is dropped).
    #[schema(format = Date)]
    date: Option<String>,
    /// More metadata, flattened into the note's (BEIR's `metadata`).
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Vectors embedded elsewhere, by the served model: the note's chunks, each a character
    /// span of `text` with its vector. The note is stored with them as given, not embedded.
    /// Not with `vector`.
    #[schema(min_items = 1)]
    chunks: Option<Vec<ChunkInput>>,
    /// One vector for the whole text (a note of one chunk), embedded elsewhere by the served
    /// model. Not with `chunks`.
    vector: Option<Vec<f32>>,
}

/// A chunk of a note with its precomputed vector.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ChunkInput {
    /// First character of the chunk in `text` (counted in Unicode scalar values, from 0).
    char_start: u64,
    /// One past its last character; at most the text's length, above `char_start`.
    char_end: u64,
    /// Finite numbers, not all zero, as many as the served model's dimension.
    vector: Vec<f32>,
}

/// A string, or a number or boolean read as its text.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Scalar {
    Text(String),
    Number(f64),
    Flag(bool),
}

/// A note id: at most 512 characters without control characters (`Note::validate`), or a
/// number or boolean read as its text.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum NoteId {
    Text(NoteIdText),
    Number(f64),
    Flag(bool),
}

#[derive(Serialize, ToSchema)]
#[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", max_length = 512)]
pub struct NoteIdText(String);

/// `stored` or `rejected`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoteStatus {
    Stored,
    Rejected,
}

/// What happened to one note of the request.
#[derive(Serialize, ToSchema)]
pub struct NoteResult {
    /// Its position in the request (from 0).
    pub index: usize,
    /// Absent when the note could not be read far enough to have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub status: NoteStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    /// The window cap left the note's tail unembedded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows_capped: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StoredReply {
    pub stored: usize,
    pub rejected: usize,
    pub results: Vec<NoteResult>,
}

/// 400 when no note could be stored: the error, and why each note was refused.
#[derive(Serialize, ToSchema)]
pub struct RejectedReply {
    pub error: crate::server::error::ErrorDetail,
    /// Each note's outcome (absent when the body held no notes to read).
    #[schema(required = false)]
    pub results: Vec<NoteResult>,
}

/// `POST /api/documents`: stores notes (replacing notes with the same id) and replies with
/// the status of each.
#[utoipa::path(post, path = "/api/documents", tag = "documents",
    request_body(description = "One note, an array of notes, or NDJSON (one note per line): at most 1000.",
        content((NoteInput = "application/json"), (Vec<NoteInput> = "application/json"), (String = "application/x-ndjson"))),
    responses(
        (status = 200, description = "At least one note was stored; each note's outcome.", body = StoredReply,
            links(("GetDocumentById" = (operation_id = "document_get", parameters(("id" = "$response.body#/results/0/id")))),
                  ("DeleteDocumentById" = (operation_id = "document_delete", parameters(("id" = "$response.body#/results/0/id")))))),
        (status = 400, description = "No note could be stored (or the body is not notes).", body = RejectedReply),
        (status = 413, description = "Over 1000 notes, over the body limit, or more windows than max_windows_per_request.", body = ErrorBody),
    ))]
pub async fn documents_post(
    state: State,
    http: HttpRequest,
    caller: Caller,
    body: Bytes,
) -> ApiResult {
    use crate::ingest::{batch, Outcome, RecordError};
    let mut checker = batch::Checker::default();
    let mut checked: Vec<crate::ingest::Item> = parse_note_body(&body)?
        .into_iter()
        .map(|item| checker.check(item))
        .collect();
    // A restricted key may store only notes it could read back.
    for r in checked.iter_mut() {
        if let Ok(rec) = r {
            if !caller.0.may_see(&rec.note) {
                *r = Err(RecordError {
                    origin: rec.origin.clone(),
                    reason: "outside what this key may read (its filter)".to_string(),
                });
            }
        }
    }
    let windows: usize = {
        // Notes that bring their vectors cost no embedding.
        let notes: Vec<&Note> = checked
            .iter()
            .flatten()
            .filter(|r| r.chunks.is_none())
            .map(|r| &r.note)
            .collect();
        crate::ingest::count_windows(&state.encoder, &notes)?
    };
    check_windows(&state, windows)?;
    let ids: Vec<Option<String>> = checked
        .iter()
        .map(|r| r.as_ref().ok().map(|r| r.note.id.clone()))
        .collect();
    for r in checked.iter().flatten() {
        disclose(&http, &r.note.id, r.note.patient_id.as_deref());
    }
    let st = state.clone();
    let prepared = web::block(move || -> Result<batch::Prepared, Error> {
        let prepared = batch::prepare(&st.encoder, st.tagger.as_deref(), checked)?;
        batch::commit(&st.engine, &prepared, &mut batch::Acks::default())?;
        Ok(prepared)
    })
    .await??;
    let chunks: usize = prepared.notes.iter().map(|n| n.windows.len()).sum();
    let results: Vec<NoteResult> = prepared
        .outcomes
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(index, (o, id))| match o {
            Outcome::Stored { id, chunks, capped } => NoteResult {
                index,
                id: Some(id.clone()),
                status: NoteStatus::Stored,
                chunks: Some(*chunks),
                windows_capped: Some(*capped),
                error: None,
            },
            Outcome::Rejected(e) => NoteResult {
                index,
                id,
                status: NoteStatus::Rejected,
                chunks: None,
                windows_capped: None,
                error: Some(e.reason.clone()),
            },
        })
        .collect();
    let stored = results
        .iter()
        .filter(|r| matches!(r.status, NoteStatus::Stored))
        .count();
    let rejected = results.len() - stored;
    use std::sync::atomic::Ordering::Relaxed;
    state
        .metrics
        .chunks_ingested
        .fetch_add(chunks as u64, Relaxed);
    state
        .metrics
        .notes_ingested
        .fetch_add(stored as u64, Relaxed);
    state
        .metrics
        .notes_rejected
        .fetch_add(rejected as u64, Relaxed);
    if stored == 0 {
        return Ok(HttpResponse::BadRequest().json(RejectedReply {
            error: crate::server::error::ErrorDetail {
                code: "invalid_notes".into(),
                message: format!("none of the {rejected} notes could be stored"),
                param: None,
            },
            results,
        }));
    }
    Ok(HttpResponse::Ok().json(StoredReply {
        stored,
        rejected,
        results,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DocQuery {
    /// A query to mark in the note: BM25 term matches and each chunk's cosine to it.
    #[param(max_length = 2048)]
    q: Option<String>,
    /// How `q` is read, as the search that led here read it (see `/api/search`).
    #[param(value_type = Option<DocSyntax>)]
    syntax: Option<String>,
    /// Whether `q`'s abbreviations were expanded (see `/api/search`).
    #[param(value_type = Option<bool>)]
    expand: Option<String>,
    /// Words of `q` not expanded, comma-separated.
    #[param(max_length = 256)]
    expand_skip: Option<String>,
}

/// `syntax` of `GET /api/documents/{id}`: the search parameter's values, which
/// `server::openapi` states from the search table.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DocSyntax(String);

/// One chunk (embedded window) of a note.
#[derive(Serialize, ToSchema)]
pub struct ChunkView {
    pub index: u32,
    pub char_start: usize,
    pub char_end: usize,
    /// Cosine to `q` (null without `q`).
    pub score: Option<f32>,
}

/// Another note of the same patient.
#[derive(Serialize, ToSchema)]
pub struct NoteRef {
    pub id: String,
    pub title: Option<String>,
    pub date: Option<String>,
    pub note_type: Option<String>,
    pub specialty: Option<String>,
}

/// A note as the reader shows it.
#[derive(Serialize, ToSchema)]
pub struct NoteView {
    pub note: Note,
    pub chunks: Vec<ChunkView>,
    /// The chunk closest to `q` (null without `q`).
    pub best_chunk: Option<u32>,
    /// BM25 term matches of `q` as `[start, end)` character spans.
    pub terms: Vec<[usize; 2]>,
    pub windows_capped: bool,
    pub assertions: Vec<crate::clinical::assertion::Assertion>,
    pub entities: Vec<crate::store::StoredEntity>,
    /// The patient's other notes, newest first.
    pub same_patient: Vec<NoteRef>,
}

/// Char offset of each byte offset of `text` (for the browser, which counts characters).
fn char_offset(text: &str, byte: usize) -> usize {
    text.get(..byte).map_or(0, |s| s.chars().count())
}

/// A note with its chunks; with `q`, BM25 term spans and each chunk's cosine to it.
#[utoipa::path(get, path = "/api/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "The note's id."), DocQuery),
    responses(
        (status = 200, description = "The note.", body = NoteView),
        (status = 404, description = "No note with this id (or none the key may read).", body = ErrorBody),
    ))]
pub async fn document_get(
    state: State,
    http: HttpRequest,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<DocQuery>,
) -> ApiResult {
    let id = id.into_inner();
    let dq = query.into_inner();
    let q = dq.q.clone().filter(|q| !q.trim().is_empty());
    if let Some(q) = &q {
        disclose_query(&http, q);
    }
    let principal = caller.0;
    let asked_id = id.clone();
    crate::search::spec::check_url_params([("q", dq.q.as_deref().unwrap_or(""))])
        .map_err(ApiError::from)?;
    // The parameters are checked whether or not there is a query to read with them.
    let mut params: Vec<(&str, &str)> = vec![("q", q.as_deref().unwrap_or("x")), ("mode", "bm25")];
    for (name, v) in [
        ("syntax", &dq.syntax),
        ("expand", &dq.expand),
        ("expand_skip", &dq.expand_skip),
    ] {
        if let Some(v) = v {
            params.push((name, v.as_str()));
        }
    }
    let checked = SearchRequest::from_params(params).map_err(ApiError::from)?;
    // The query is read exactly as the search that led here read it.
    let req = q.as_ref().map(|_| checked);
    let qv = match &req {
        Some(r) => Some(state.embedder.embed(&r.embedding_text()).await?),
        None => None,
    };
    let st = state.clone();
    let v = web::block(move || -> Result<Option<NoteView>, Error> {
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
            chunk_json.push(ChunkView {
                index: c.index,
                char_start: c.char_start,
                char_end: c.char_end,
                score,
            });
        }
        // BM25 term matches over the whole note, as character spans.
        let mut terms = vec![];
        if let Some(req) = &req {
            let mut searcher = Searcher::new(e);
            searcher.abbreviations = st.abbreviations.clone();
            let (tq, _) = searcher.expanded_query(req)?;
            let (fragment, ranges) = e.bm25.snippet(&tq, text, text.chars().count() + 1)?;
            if let Some(base) = text.find(&fragment).filter(|_| !fragment.is_empty()) {
                for r in ranges {
                    terms.push([
                        char_offset(text, base + r.start),
                        char_offset(text, base + r.end),
                    ]);
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
                        same_patient.push(NoteRef {
                            id: n.id,
                            title: n.title,
                            date: n.date,
                            note_type: n.note_type,
                            specialty: n.specialty,
                        });
                    }
                }
            }
            same_patient.sort_by(|a, b| b.date.cmp(&a.date));
        }
        Ok(Some(NoteView {
            note: note.clone(),
            chunks: chunk_json,
            best_chunk: best.map(|(i, _)| i),
            terms,
            windows_capped: stored.windows_capped,
            assertions: stored.annotation().assertions,
            entities: stored.entities.clone(),
            same_patient,
        }))
    })
    .await??;
    match v {
        Some(v) => {
            disclose(&http, &asked_id, v.note.patient_id.as_deref());
            for other in &v.same_patient {
                disclose(&http, &other.id, v.note.patient_id.as_deref());
            }
            Ok(HttpResponse::Ok().json(v))
        }
        None => Err(ApiError::not_found("no note with this id")),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// The id of the note deleted.
    pub deleted: String,
}

/// Deletes a note everywhere (store, BM25 and vectors).
#[utoipa::path(delete, path = "/api/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "The note's id.")),
    responses(
        (status = 200, description = "Deleted.", body = Deleted),
        (status = 404, description = "No note with this id (or none the key may read).", body = ErrorBody),
    ))]
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
    Ok(HttpResponse::Ok().json(Deleted { deleted: id }))
}

//! `POST /api/documents` (through the one write path, [`crate::ingest::batch`]), `GET` and `DELETE /api/documents/{id}`.

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

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
            let note = item.and_then(|v| {
                if v.is_object() {
                    note_from_json(&v)
                } else {
                    Err("not a JSON object".to_string())
                }
            });
            match note {
                Ok(note) => Ok(crate::ingest::Record { note, origin }),
                Err(reason) => Err(crate::ingest::RecordError { origin, reason }),
            }
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
        let notes: Vec<&Note> = checked.iter().flatten().map(|r| &r.note).collect();
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
    let results: Vec<Value> = prepared
        .outcomes
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (o, id))| match o {
            Outcome::Stored { id, chunks, capped } => json!({
                "index": i, "id": id, "status": "stored", "chunks": chunks,
                "windows_capped": capped,
            }),
            Outcome::Rejected(e) => match id {
                Some(id) => {
                    json!({ "index": i, "id": id, "status": "rejected", "error": e.reason })
                }
                None => json!({ "index": i, "status": "rejected", "error": e.reason }),
            },
        })
        .collect();
    let stored = results.iter().filter(|r| r["status"] == "stored").count();
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocQuery {
    /// A query to mark in the note: BM25 term matches and each chunk's cosine to it.
    q: Option<String>,
    /// Read as the search read it (see `SearchRequest`).
    syntax: Option<String>,
    expand: Option<String>,
    expand_skip: Option<String>,
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
    let dq = query.into_inner();
    let q = dq.q.clone().filter(|q| !q.trim().is_empty());
    if let Some(q) = &q {
        disclose_query(&http, q);
    }
    let principal = caller.0;
    let asked_id = id.clone();
    // The query is read exactly as the search that led here read it.
    let req = match &q {
        Some(q) => {
            let mut params: Vec<(&str, &str)> = vec![("q", q.as_str()), ("mode", "bm25")];
            for (name, v) in [
                ("syntax", &dq.syntax),
                ("expand", &dq.expand),
                ("expand_skip", &dq.expand_skip),
            ] {
                if let Some(v) = v {
                    params.push((name, v.as_str()));
                }
            }
            Some(SearchRequest::from_params(params).map_err(ApiError::from)?)
        }
        None => None,
    };
    let qv = match &req {
        Some(r) => Some(state.embedder.embed(&r.embedding_text()).await?),
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
        if let Some(req) = &req {
            let mut searcher = Searcher::new(e);
            searcher.abbreviations = st.abbreviations.clone();
            let (tq, _) = searcher.expanded_query(req)?;
            let (fragment, ranges) = e.bm25.snippet(&tq, text, text.chars().count() + 1)?;
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
            "assertions": stored.annotation().assertions,
            "entities": stored.entities,
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

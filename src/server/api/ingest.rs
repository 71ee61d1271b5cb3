//! Upload jobs: `POST /api/ingest` starts one on the whole file; `GET` lists them or reports one.

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    /// jsonl, csv or txt (default: from the file name's extension).
    #[param(value_type = Option<UploadFormat>)]
    format: Option<String>,
    /// The file's name (reported in errors as `filename:line`).
    filename: Option<String>,
    /// CSV: the column of the note text (default `text`).
    text_col: Option<String>,
    /// CSV: the column of the note id.
    id_col: Option<String>,
    /// CSV: the column of the title.
    title_col: Option<String>,
}

/// The format of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum UploadFormat {
    Jsonl,
    Csv,
    Txt,
}

/// Jobs this key may see: its own (admins: everyone's), newest first.
#[derive(Serialize, ToSchema)]
pub struct IngestJobs {
    pub jobs: Vec<crate::server::jobs::JobStatus>,
}

/// `POST /api/ingest?format=jsonl|csv|txt&filename=...`: the raw file as the body, ingested
/// in the background.
#[utoipa::path(post, path = "/api/ingest", tag = "ingest", params(IngestQuery),
    request_body(content = Vec<u8>, description = "The file (JSONL, CSV or text).", content_type = "application/octet-stream"),
    responses(
        (status = 202, description = "The job, started.", body = crate::server::jobs::JobStatus,
            links(("GetIngestJob" = (operation_id = "ingest_status", parameters(("job" = "$response.body#/id")))))),
    ))]
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
    let format = crate::server::jobs::format_of(q.filename.as_deref(), q.format.as_deref())
        .map_err(|m| ApiError::bad_request("invalid_parameter", format!("format: {m}")))?;
    let name = crate::server::jobs::upload_name(q.filename.as_deref(), format);
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
            st.tagger.clone(),
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

#[utoipa::path(get, path = "/api/ingest/{job}", tag = "ingest",
    params(("job" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = crate::server::jobs::JobStatus),
        (status = 404, description = "No such job (or not this key's).", body = crate::server::error::ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/ingest", tag = "ingest",
    responses((status = 200, description = "Recent jobs.", body = IngestJobs)))]
pub async fn ingest_list(state: State, caller: Caller) -> ApiResult {
    let jobs: Vec<_> = state
        .jobs
        .list()
        .into_iter()
        .filter(|s| sees_all(&caller) || s.owner == caller.0.name)
        .collect();
    Ok(HttpResponse::Ok().json(IngestJobs { jobs }))
}

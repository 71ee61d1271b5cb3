//! `GET|POST /api/search/export`: a search's every hit (up to `max_export_rows`) as CSV or
//! JSON Lines, one row per note or per patient (`search::export`).
//!
//! Two passes, so that the audit line (written before the reply leaves) names every note
//! the export contains, and the rows still stream: the first ranks the hits keeping only
//! their ids and patients; the reply's body is then written by a second pass, page by page,
//! keeping only the notes the first pass found (a note stored in between is left out, so
//! the export never holds a note the audit does not name).

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;

use super::*;
use crate::search::export::{self, ExportFormat};
use crate::search::{spec, GroupBy};

/// The parameters a search page has and an export refuses (it takes every hit).
const PAGING: &[&str] = &["k", "limit", "offset"];

/// An export's own parameters, besides the search's.
pub const EXPORT_PARAMS: &[spec::Param] = &[
    spec::Param {
        name: "format",
        kind: spec::Kind::Choice(&["csv", "jsonl", "ndjson"]),
        doc: "csv (default) or jsonl (JSON Lines; ndjson is the same).",
        filter: false,
    },
    spec::Param {
        name: "max_rows",
        // The server's max_export_rows bounds it (the description states the configured one).
        kind: spec::Kind::Int {
            min: 1,
            max: usize::MAX,
        },
        doc: "Most rows (default and most: the server's max_export_rows).",
        filter: false,
    },
];

/// Cohort export: every hit of a search (its parameters without a page, up to max_rows) as
/// CSV or JSON Lines, one row per note or, with group_by=patient, per patient; streamed.
#[utoipa::path(get, path = "/api/search/export", tag = "search",
    responses((status = 200, description = "The rows; X-Export-Rows counts them.",
        headers(("x-export-rows" = u64, description = "Rows in the body")),
        content((String = "text/csv"), (String = "application/x-ndjson")))))]
pub async fn export_get(
    state: State,
    http: HttpRequest,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> ApiResult {
    spec::check_url_params(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    run_export(state, &http, caller, query.into_inner()).await
}

#[utoipa::path(post, path = "/api/search/export", tag = "search",
    request_body(content = Object, description = "The search and export parameters as a JSON object."),
    responses((status = 200, description = "The rows; X-Export-Rows counts them.",
        headers(("x-export-rows" = u64, description = "Rows in the body")),
        content((String = "text/csv"), (String = "application/x-ndjson")))))]
pub async fn export_post(
    state: State,
    http: HttpRequest,
    caller: Caller,
    body: web::Json<Value>,
) -> ApiResult {
    let pairs = spec::typed_pairs(&body, EXPORT_PARAMS)?;
    run_export(state, &http, caller, pairs).await
}

fn param_error(param: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError {
        param: Some(param.to_string()),
        ..ApiError::bad_request("invalid_parameter", format!("{param}: {e}"))
    }
}

async fn run_export(
    state: State,
    http: &HttpRequest,
    caller: Caller,
    pairs: Vec<(String, String)>,
) -> ApiResult {
    let cap = state.config.limits.max_export_rows;
    let mut format = ExportFormat::Csv;
    let mut max_rows = cap;
    let mut search = vec![];
    for (k, v) in pairs {
        match k.as_str() {
            "format" => format = v.parse().map_err(|e| param_error("format", e))?,
            "max_rows" => {
                max_rows = v
                    .trim()
                    .parse()
                    .map_err(|_| param_error("max_rows", format!("{v:?} is not a whole number")))?
            }
            p if PAGING.contains(&p) => {
                return Err(param_error(
                    p,
                    "an export takes every hit (up to max_rows): k and offset do not apply",
                ))
            }
            _ => search.push((k, v)),
        }
    }
    let mut req = SearchRequest::from_params(search.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    if max_rows == 0 || max_rows > cap {
        return Err(param_error(
            "max_rows",
            format!("between 1 and {cap} (the configured max_export_rows)"),
        ));
    }
    export::check(&req, max_rows, cap).map_err(|e| param_error("mode", e))?;
    req.check()?;
    disclose_query(http, &req.q);
    req.filter = caller.0.scope(&req.filter);
    let qv = if req.mode.needs_vector() {
        Some(state.embedder.embed(&req.embedding_text()).await?)
    } else {
        None
    };

    // Pass 1: which notes (and patients) the export holds; the audit names them all.
    let (st, r, v) = (state.clone(), req.clone(), qv.clone());
    let cohort =
        web::block(move || export::find(&searcher(&st), &r, v.as_deref(), max_rows)).await??;
    crate::server::disclose_all(http, &cohort.notes, &cohort.patients);

    // Pass 2: the rows, streamed as they are ranked.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let rows = cohort.hits.len();
    let name = match req.group_by {
        GroupBy::Patient => "cohort-patients",
        GroupBy::Note => "cohort-notes",
    };
    let st = state.clone();
    std::thread::Builder::new()
        .name("export".into())
        .spawn(move || {
            let mut send = |text: String| tx.blocking_send(Ok(Bytes::from(text))).is_ok();
            let s = searcher(&st);
            let result = export::write_rows(
                &s,
                &req,
                qv.as_deref(),
                max_rows,
                &cohort,
                format,
                &mut send,
            );
            if let Err(e) = result {
                // The status line has gone; all that is left is to cut the body short.
                tracing::error!("export failed after its first rows: {e}");
                let _ = tx.blocking_send(Err(std::io::Error::other("the export failed")));
            }
        })
        .map_err(|e| Error::io("export thread", e))?;
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}.{}\"", format.extension()),
        ))
        .insert_header(("x-export-rows", rows.to_string()))
        .streaming(Chunks(rx)))
}

fn searcher(st: &AppState) -> Searcher<'_> {
    let mut s = Searcher::new(&st.engine);
    s.abbreviations = st.abbreviations.clone();
    s.ef = st.ef_search();
    s
}

/// The rows as the reply's body.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

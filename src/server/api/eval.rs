//! Evaluation jobs over saved or uploaded query sets.

use actix_web::http::StatusCode;
use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::*;

/// A stored set by name, or posted queries and judgments.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"set": "sample", "modes": ["bm25", "hybrid"], "ks": [10], "wait": false}))]
pub struct EvalBody {
    /// A query set stored in the data directory (`clinsearch eval --save-set NAME`).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    set: Option<String>,
    /// Queries: `[{"id", "text"}]`, or the text of a BEIR queries.jsonl / `qid<TAB>text` file.
    #[schema(value_type = Option<Object>)]
    queries: Option<Value>,
    /// Judgments: `{"qid": {"docid": grade}}`, or the text of a BEIR qrels TSV / TREC qrels.
    #[schema(value_type = Option<Object>)]
    qrels: Option<Value>,
    /// Modes to evaluate (bm25, semantic, hybrid; default all three).
    modes: Option<Vec<String>>,
    /// Cut-offs of the metrics (default 10 and 100).
    #[serde(default, deserialize_with = "whole::opt_vec_int")]
    #[schema(min_items = 1)]
    ks: Option<Vec<usize>>,
    /// The hybrid fusion (as /api/search's).
    fusion: Option<String>,
    #[schema(exclusive_minimum = 0.0, maximum = 1000000.0)]
    rrf_k: Option<f32>,
    #[schema(minimum = 0.0, maximum = 1.0)]
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
/// Evaluates BM25, semantic and hybrid on judged queries: a job to poll (202), or with
/// `wait` the report (200).
#[utoipa::path(post, path = "/api/eval", tag = "eval", request_body = EvalBody,
    responses(
        (status = 200, description = "The report (with wait).", body = Object),
        (status = 404, description = "No stored query set of this name.", body = crate::server::error::ErrorBody),
        (status = 202, description = "The job, started.", body = crate::server::jobs::EvalStatus,
            links(("GetEvalJob" = (operation_id = "eval_status", parameters(("job" = "$response.body#/id")))))),
    ))]
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
    opts.fusion = match (&body.fusion, body.rrf_k, body.alpha) {
        (None, None, None) => crate::search::Fusion::default(),
        (f, k, a) => crate::search::Fusion::from_parts(
            f.as_deref().unwrap_or("rrf"),
            k.unwrap_or(60.0),
            a.unwrap_or(0.5),
        )
        .map_err(invalid)?,
    };
    opts.ef = Some(state.ef_search());
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

/// Progress of an evaluation or tuning job; the report when done.
#[utoipa::path(get, path = "/api/eval/{job}", tag = "eval",
    params(("job" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = crate::server::jobs::EvalStatus),
        (status = 404, description = "No such job (or not this key's).", body = crate::server::error::ErrorBody),
    ))]
pub async fn eval_status(
    state: State,
    http: HttpRequest,
    caller: Caller,
    job: web::Path<String>,
) -> ApiResult {
    match state
        .evals
        .status(&job)
        .filter(|v| sees_all(&caller) || v.owner == caller.0.name)
    {
        Some(v) => {
            if let Some(r) = &v.report {
                disclose_report(&http, r);
            }
            Ok(HttpResponse::Ok().json(v))
        }
        None => Err(ApiError::not_found("no evaluation job with this id")),
    }
}

#[derive(Serialize, ToSchema)]
pub struct QuerySetInfo {
    pub name: String,
    pub queries: usize,
}

#[derive(Serialize, ToSchema)]
pub struct QuerySets {
    pub sets: Vec<QuerySetInfo>,
}

/// Query sets stored in the data directory.
#[utoipa::path(get, path = "/api/eval/sets", tag = "eval",
    responses((status = 200, description = "The sets.", body = QuerySets)))]
pub async fn eval_sets(state: State) -> ApiResult {
    let sets = crate::eval::list_sets(&state.engine.dir)
        .into_iter()
        .map(|(name, queries)| QuerySetInfo { name, queries })
        .collect();
    Ok(HttpResponse::Ok().json(QuerySets { sets }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"set": "sample", "store": false, "wait": false}))]
pub struct TuneBody {
    /// The stored query set to tune on.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    set: String,
    /// Store the choice as the collection's default fusion (false: report only).
    #[serde(default = "yes")]
    store: bool,
    /// Reply with the result when done (200) instead of a job to poll (202).
    #[serde(default)]
    wait: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/tune`: chooses the hybrid fusion on a stored judged set by cross-validation (as
/// `clinsearch tune`), and stores it as the collection's default unless `store` is false.
/// The result names no notes: figures, the choice and each fold's choice.
#[utoipa::path(post, path = "/api/tune", tag = "eval", request_body = TuneBody,
    responses(
        (status = 200, description = "The choice (with wait).", body = Object),
        (status = 404, description = "No stored query set of this name.", body = crate::server::error::ErrorBody),
        (status = 409, description = "The stored set has too few judged queries to cross-validate on (`set_too_small`).", body = crate::server::error::ErrorBody),
        (status = 202, description = "The job, started.", body = crate::server::jobs::EvalStatus),
    ))]
pub async fn tune_start(state: State, caller: Caller, body: web::Json<TuneBody>) -> ApiResult {
    let body = body.into_inner();
    let principal = caller.0.clone();
    // The stored default applies to every key: it is chosen on the whole collection.
    if principal.restrict.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a key restricted to part of the collection cannot tune the whole collection's fusion",
        ));
    }
    let set = crate::eval::load_set(&state.engine.dir, &body.set)?;
    // The stored set, not the request, is what falls short: refused before any work.
    if set.queries.len() < crate::eval::tune::MIN_QUERIES {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "set_too_small",
            crate::eval::tune::too_few(set.queries.len()),
        ));
    }
    let st = state.clone();
    let total = set.queries.len() * crate::eval::tune::NOTE_SCORES.len();
    let run = move |done: &std::sync::atomic::AtomicUsize| -> Result<Value, Error> {
        let enc = st.encoder.clone();
        let embed = move |t: &[&str]| enc.embed(t);
        let opts = crate::eval::EvalOptions {
            ef: Some(st.ef_search()),
            ..Default::default()
        };
        let runs = crate::eval::tune::collect_runs(&st.engine, &embed, &set, &opts, &|d, _| {
            done.store(d, std::sync::atomic::Ordering::SeqCst)
        })?;
        let tuned = crate::eval::tune::tune(&body.set, &set, &runs)?;
        if body.store {
            st.engine.set_tuned(&tuned)?;
        }
        let mut v = serde_json::to_value(&tuned).map_err(|e| Error::Index(e.to_string()))?;
        v["kind"] = json!("tune");
        v["stored"] = json!(body.store);
        v["folds"] = json!(crate::eval::tune::FOLDS);
        Ok(v)
    };
    let slot = state.evals.reserve(&principal.name, &state.config.limits)?;
    if body.wait {
        let v = web::block(move || {
            let _slot = slot;
            run(&std::sync::atomic::AtomicUsize::new(0))
        })
        .await??;
        return Ok(HttpResponse::Ok().json(v));
    }
    let id = state.evals.start(slot, total, run)?;
    Ok(HttpResponse::Accepted().json(state.evals.status(&id)))
}

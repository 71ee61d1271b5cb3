//! `GET`/`POST /api/search`: parameters checked, the query embedded on the batching worker, the search run on the blocking pool, and what was shown disclosed to the audit.

use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::*;

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

pub(super) fn flatten_params(body: &Value) -> Result<Vec<(String, String)>, ApiError> {
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
        } else if let Value::Array(items) = v {
            // A repeatable parameter (entity): each item as if given again.
            for item in items {
                if let Some(s) = scalar(k, item)? {
                    out.push((k.clone(), s));
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
        Some(state.embedder.embed(&req.embedding_text()).await?)
    } else {
        None
    };
    let embed_ms = t.elapsed().as_secs_f64() * 1e3;
    let st = state.clone();
    let mut resp = web::block(move || {
        let mut s = Searcher::new(&st.engine);
        s.abbreviations = st.abbreviations.clone();
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

//! `GET`/`POST /api/search`: parameters checked, the query embedded on the batching worker, the search run on the blocking pool, and what was shown disclosed to the audit.

use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::Value;

use super::*;

/// A search's answer and how long the server took.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SearchReply {
    #[serde(flatten)]
    pub response: SearchResponse,
    pub took_ms: f64,
}

/// Search: BM25, semantic, hybrid, or the three side by side (the parameters: the search
/// table, `search::spec`).
#[utoipa::path(get, path = "/api/search", tag = "search",
    responses((status = 200, description = "The rankings.", body = SearchReply)))]
pub async fn search_get(
    state: State,
    http: HttpRequest,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> ApiResult {
    crate::search::spec::check_url_params(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let req = SearchRequest::from_params(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    run_search(state, &http, caller, req).await
}

/// `POST /api/search` with the same parameters as a JSON object, each of its JSON type
/// (`search::spec`); filters may also be nested under `"filter"`.
#[utoipa::path(post, path = "/api/search", tag = "search",
    request_body(content = Object, description = "The search parameters as a JSON object."),
    responses((status = 200, description = "The rankings.", body = SearchReply)))]
pub async fn search_post(
    state: State,
    http: HttpRequest,
    caller: Caller,
    body: web::Json<Value>,
) -> ApiResult {
    let pairs = crate::search::spec::typed_pairs(&body, &[])?;
    let req = SearchRequest::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    run_search(state, &http, caller, req).await
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
        s.ef = st.ef_search();
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
    let (notes, patients) = resp.disclosed();
    crate::server::disclose_all(http, &notes, &patients);
    Ok(HttpResponse::Ok().json(SearchReply {
        response: resp,
        took_ms: t.elapsed().as_secs_f64() * 1e3,
    }))
}

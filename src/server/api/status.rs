//! Health, statistics, facets, the OpenAPI description and Prometheus metrics.

use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::*;

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
            "tuned_fusion": e.tuned_fusion(),
            "tagger": st.tagger.as_ref().map(|t| json!({"model": t.spec, "types": t.types()})),
            "model": {
                "id": info.id,
                "dim": info.hidden_size,
                "pooling": info.pooling,
                "normalize": info.normalize,
                "window_size": info.window_size,
                "stride": info.stride,
                "window_context": info.window_context,
                // Fill-mask is answered (by this model or by the served MLM model).
                "fill_mask": st.fill_mask.served().is_some(),
                "fill_mask_model": st.fill_mask.served().map(|m| m.spec.clone()),
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

/// Hits of a query counted for the entity facets.
pub const FACET_DEPTH: usize = 500;

/// Values of the note type and specialty filters with their counts (only the notes the
/// caller may see are counted), and the most frequent entities of each type with their note
/// and patient counts: among the top [`FACET_DEPTH`] hits of `q` (with the search
/// parameters and filters of `/api/search`) when given, else among every note passing the
/// filters.
pub async fn facets(
    state: State,
    http: HttpRequest,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> ApiResult {
    let has_q = query.iter().any(|(k, _)| k == "q" || k == "query");
    let mut params: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !has_q {
        // Filters only: parsed as a search's, with a placeholder query never run.
        params.push(("q", "facets"));
    }
    let mut req = SearchRequest::from_params(params)?;
    let affirmed_only = req.assertion == crate::search::Assertion::Affirmed;
    req.filter = caller.0.scope(&req.filter);
    req.filter.entities_affirmed |= affirmed_only;
    let hits: Option<Vec<String>> = if has_q {
        disclose_query(&http, &req.q);
        req.k = FACET_DEPTH;
        req.offset = 0;
        req.details = false;
        if req.mode == crate::search::Mode::Compare {
            req.mode = crate::search::Mode::Hybrid;
        }
        let mode = req.mode;
        let resp = execute_search(&state, req.clone()).await?;
        Some(
            resp.ranking(mode)
                .map(|r| r.hits.iter().map(|h| h.id.clone()).collect())
                .unwrap_or_default(),
        )
    } else {
        None
    };
    let st = state.clone();
    let scope = req.filter.clone();
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
        let store = &st.engine.store;
        let entities = match &hits {
            Some(ids) => crate::search::facets::count(
                ids.iter().filter_map(|id| store.get(id).transpose()),
                affirmed_only,
            )?,
            // Streamed: one note decoded at a time.
            None => crate::search::facets::count(
                store
                    .notes()
                    .filter(|n| n.as_ref().map_or(true, |n| scope.admits_stored(n))),
                affirmed_only,
            )?,
        };
        Ok(json!({
            "note_type": list("note_type")?,
            "specialty": list("specialty")?,
            "entities": entities,
            "counted": hits.as_ref().map_or("filter", |_| "hits"),
        }))
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

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
    Ok(crate::server::text(text, "text/plain; version=0.0.4"))
}

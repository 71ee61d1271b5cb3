//! Health, statistics, facets, the OpenAPI description and Prometheus metrics.

use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::*;

/// `ok`, or `degraded` while an index is behind the store and being healed.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Ok,
    Degraded,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: HealthState,
    /// Which index is behind, and why (degraded only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Notes in the BM25 index (the store's count is a scan; a probe must be cheap).
    pub notes: u64,
    /// The embedding model's id.
    pub model: String,
}

/// Liveness, without a key: 503 while an index is being healed, so that load balancers see it.
#[utoipa::path(get, path = "/api/health", tag = "status",
    responses(
        (status = 200, description = "Serving.", body = Health),
        (status = 503, description = "An index is behind the store and being healed; searches may miss notes.", body = Health),
    ))]
pub async fn health(state: State) -> ApiResult {
    let reason = state.engine.degraded();
    let body = Health {
        status: if reason.is_some() {
            HealthState::Degraded
        } else {
            HealthState::Ok
        },
        notes: state.engine.bm25.num_docs(),
        model: state.encoder.info().id.clone(),
        reason: reason.map(|r| r.to_string()),
    };
    Ok(if body.reason.is_some() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
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

#[derive(Serialize, ToSchema)]
pub struct Stats {
    pub notes: usize,
    /// Embedded windows.
    pub chunks: usize,
    /// The fusion `POST /api/tune` stored for this collection (null: the default).
    pub tuned_fusion: Option<crate::eval::tune::FusionChoice>,
    /// The tagger served with `--tagger` (null: none).
    pub tagger: Option<TaggerStats>,
    pub model: ModelStats,
    /// The model identity the data directory was built with (null: not recorded yet).
    #[schema(value_type = Option<Object>)]
    pub data_model: Option<Value>,
    pub bm25: Bm25Stats,
    pub vectors: VectorStats,
    pub store: StoreStats,
    pub uptime_s: u64,
}

#[derive(Serialize, ToSchema)]
pub struct TaggerStats {
    pub model: String,
    /// Entity types it finds.
    pub types: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelStats {
    pub id: String,
    pub dim: usize,
    pub pooling: crate::model::Pooling,
    pub normalize: bool,
    pub window_size: usize,
    pub stride: usize,
    pub window_context: crate::model::WindowContext,
    /// Fill-mask is answered (by this model or by the served MLM model).
    pub fill_mask: bool,
    pub fill_mask_model: Option<String>,
    pub classifier: Option<ClassifierStats>,
    pub device: String,
    pub dtype: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClassifierStats {
    #[schema(value_type = String)]
    pub dir: std::path::PathBuf,
    pub labels: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Bm25Stats {
    pub docs: u64,
    pub stemming: bool,
    pub bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct VectorStats {
    /// Points in the graph, dead ones included.
    pub points: usize,
    pub live: usize,
    pub bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StoreStats {
    pub bytes: u64,
    pub last_seq: u64,
}

/// Notes, chunks, model and index sizes.
#[utoipa::path(get, path = "/api/stats", tag = "status",
    responses((status = 200, description = "The collection and the served models.", body = Stats)))]
pub async fn stats(state: State) -> ApiResult {
    let st = state.clone();
    let v = web::block(move || -> Result<Stats, Error> {
        let e = &st.engine;
        let info = st.encoder.info();
        Ok(Stats {
            notes: e.store.note_count(),
            chunks: e.store.chunk_count(),
            tuned_fusion: e.tuned_fusion(),
            tagger: st.tagger.as_ref().map(|t| TaggerStats {
                model: t.spec.clone(),
                types: t.types(),
            }),
            model: ModelStats {
                id: info.id.clone(),
                dim: info.hidden_size,
                pooling: info.pooling,
                normalize: info.normalize,
                window_size: info.window_size,
                stride: info.stride,
                window_context: info.window_context,
                fill_mask: st.fill_mask.served().is_some(),
                fill_mask_model: st.fill_mask.served().map(|m| m.spec.clone()),
                classifier: st.classifier.as_ref().map(|c| ClassifierStats {
                    dir: c.dir.clone(),
                    labels: c.labels.clone(),
                }),
                device: info.device.clone(),
                dtype: info.dtype.clone(),
            },
            data_model: e
                .identity()?
                .map(|m| serde_json::to_value(m).unwrap_or_default()),
            bm25: Bm25Stats {
                docs: e.bm25.num_docs(),
                stemming: e.bm25.stems(),
                bytes: dir_bytes(&e.dir.join("bm25")),
            },
            vectors: VectorStats {
                points: e.vectors.points(),
                live: e.vectors.len(),
                bytes: dir_bytes(&e.dir.join("vectors")),
            },
            store: StoreStats {
                bytes: e.store.size_on_disk(),
                last_seq: e.store.last_seq()?,
            },
            uptime_s: st.started.elapsed().as_secs(),
        })
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

/// Hits of a query counted for the entity facets.
pub const FACET_DEPTH: usize = 500;

#[derive(Serialize, ToSchema)]
pub struct FacetValue {
    /// Lowercased, as indexed (the filters match case-insensitively).
    pub value: String,
    pub count: u64,
}

/// What the entity counts are over.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Counted {
    /// The top hits of `q`.
    Hits,
    /// Every note passing the filters.
    Filter,
}

#[derive(Serialize, ToSchema)]
pub struct Facets {
    pub note_type: Vec<FacetValue>,
    pub specialty: Vec<FacetValue>,
    /// Per entity type, its most frequent values with note and patient counts.
    pub entities: std::collections::BTreeMap<String, Vec<crate::search::facets::EntityCount>>,
    pub counted: Counted,
}

/// Values of the note type and specialty filters with their counts (only the notes the
/// caller may see are counted), and the most frequent entities of each type with their note
/// and patient counts: among the top [`FACET_DEPTH`] hits of `q` (with the search
/// parameters and filters of `/api/search`) when given, else among every note passing the
/// filters.
#[utoipa::path(get, path = "/api/facets", tag = "search",
    // The parameters: the search table's (`server::openapi`).
    responses((status = 200, description = "Filter values and entity counts.", body = Facets)))]
pub async fn facets(
    state: State,
    http: HttpRequest,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> ApiResult {
    crate::search::spec::check_url_params(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
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
    let v = web::block(move || -> Result<Facets, Error> {
        let list = |f: &str| -> Result<Vec<FacetValue>, Error> {
            Ok(st
                .engine
                .bm25
                .facet_values_under(f, &scope)?
                .into_iter()
                .map(|(value, count)| FacetValue { value, count })
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
        Ok(Facets {
            note_type: list("note_type")?,
            specialty: list("specialty")?,
            entities,
            counted: if hits.is_some() {
                Counted::Hits
            } else {
                Counted::Filter
            },
        })
    })
    .await??;
    Ok(HttpResponse::Ok().json(v))
}

/// This document: derived from the handlers' types (`server::openapi`), with each
/// operation's role and audit action from the route table.
#[utoipa::path(get, path = "/api/openapi.json", tag = "status",
    responses((status = 200, description = "The OpenAPI description of this server.", body = Object)))]
pub async fn openapi(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// Prometheus metrics: requests and latency per endpoint, ingest counters, index sizes and
/// the query embedding worker's batches.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text exposition format.", body = String,
        content_type = "text/plain; version=0.0.4")))]
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

//! The HTTP service: the JSON API under `/api`, Prometheus metrics at `/metrics`, and the
//! browser UI (the files of `web/`, compiled into the binary) at `/`.
//!
//! Two layers of middleware:
//! * per route, after routing ([`routes`]): the access check the route table declares;
//! * around everything ([`guard`]): a request id, security headers, the API's JSON error
//!   shape for the framework's own errors (unknown route, wrong method, body too large),
//!   metrics by route pattern (never the raw path or query string, which may carry patient
//!   identifiers), and the access audit, written before the reply leaves.

pub mod access;
pub mod api;
pub mod assets;
pub mod batcher;
pub mod browser;
pub mod error;
pub mod fill_mask;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod routes;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, ResponseError};

use crate::audit::AuditLog;
use crate::auth::{LiveKeys, Principal};
use crate::config::ServerConfig;
use crate::engine::{Engine, OpenOptions};
use crate::error::Result;
use crate::model::Encoder;
use crate::store::ModelIdentity;

pub use error::ApiError;

/// Everything a request handler needs, shared by the worker threads.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub encoder: Arc<Encoder>,
    pub embedder: batcher::QueryEmbedder,
    pub metrics: metrics::Metrics,
    pub jobs: jobs::Jobs,
    pub evals: jobs::EvalJobs,
    pub config: ServerConfig,
    pub keys: LiveKeys,
    /// The access audit of this data directory (`DATA/audit/`).
    pub audit: AuditLog,
    pub started: Instant,
    /// The fine-tuned classifier behind `POST /api/classify`, when one is configured.
    pub classifier: Option<Arc<crate::train::classify::Classifier>>,
    /// The fine-tuned tagger behind `POST /api/tag`, when one is configured.
    pub tagger: Option<Arc<crate::ner::TokenClassifier>>,
    /// Abbreviations for query expansion: the shipped dictionary, with the configured file
    /// laid over it.
    pub abbreviations: Arc<crate::clinical::abbrev::Dictionary>,
    /// The model answering fill-mask, and the jobs that adapt one on the stored notes.
    pub fill_mask: Arc<fill_mask::FillMask>,
    /// The OpenAPI description as this configuration serves it (`openapi::document`).
    pub openapi: web::Bytes,
}

impl AppState {
    /// hnsw search breadth: the configuration's, else the data directory's recorded one.
    pub fn ef_search(&self) -> usize {
        self.config
            .ef_search
            .unwrap_or_else(|| self.engine.vectors.settings().ef_search)
    }

    /// Opens the audit log of the engine's data directory and starts the query embedding
    /// worker. Fails on a configuration whose keys do not check out.
    pub fn new(engine: Arc<Engine>, encoder: Arc<Encoder>, config: ServerConfig) -> Result<Self> {
        let embedder = batcher::QueryEmbedder::start(
            encoder.clone(),
            config.query_batch,
            config.limits.max_queued_queries,
        );
        let keys = LiveKeys::new(
            config.key_ring()?,
            config.config_file.clone(),
            config.api_key.clone(),
            config.read_api_key.clone(),
        );
        let audit = AuditLog::open(&engine.dir.join("audit"))?;
        // A missing or malformed file stops the start, naming the file and line.
        let abbreviations =
            crate::clinical::abbrev::Dictionary::load(config.abbreviations.as_deref())?;
        let fill_mask = Arc::new(fill_mask::FillMask::resolve(
            config.mlm_model.as_deref(),
            &engine.dir,
            &encoder,
            &config.encoder_options()?,
        )?);
        crate::engine::spawn_healer(&engine);
        let served = openapi::Served {
            dim: encoder.dim(),
            vocab: encoder.tokenizer().vocab_size(),
        };
        let openapi = web::Bytes::from(openapi::document(&config.limits, served).to_string());
        Ok(AppState {
            engine,
            encoder,
            embedder,
            metrics: metrics::Metrics::default(),
            jobs: jobs::Jobs::default(),
            evals: jobs::EvalJobs::default(),
            config,
            keys,
            audit,
            started: Instant::now(),
            classifier: None,
            tagger: None,
            abbreviations,
            fill_mask,
            openapi,
        })
    }

    /// Serves `tagger` at `POST /api/tag`.
    pub fn with_tagger(mut self, tagger: crate::ner::TokenClassifier) -> Self {
        self.tagger = Some(Arc::new(tagger));
        self
    }

    /// Serves `classifier` at `POST /api/classify`.
    pub fn with_classifier(mut self, classifier: crate::train::classify::Classifier) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }
}

/// What a handler tells the audit about its reply: the notes it returned or read (with
/// their patients) and the query text it was given. Kept in the request's extensions.
#[derive(Debug, Default, Clone)]
pub struct Disclosed {
    pub note_ids: Vec<String>,
    pub patient_ids: Vec<String>,
    pub query: Option<String>,
}

/// Records that the reply to `req` shows `note` (of `patient`).
pub fn disclose(req: &HttpRequest, note: &str, patient: Option<&str>) {
    let mut ext = req.extensions_mut();
    if ext.get::<Disclosed>().is_none() {
        ext.insert(Disclosed::default());
    }
    let d = ext.get_mut::<Disclosed>().expect("inserted above");
    if !d.note_ids.iter().any(|n| n == note) {
        d.note_ids.push(note.to_string());
    }
    if let Some(p) = patient {
        if !d.patient_ids.iter().any(|x| x == p) {
            d.patient_ids.push(p.to_string());
        }
    }
}

/// Records that the reply to `req` shows `notes` of `patients` (a list, not pairs: the
/// audit line keeps the two apart).
pub fn disclose_all(req: &HttpRequest, notes: &[String], patients: &[String]) {
    for n in notes {
        disclose(req, n, None);
    }
    let mut ext = req.extensions_mut();
    let d = ext.get_mut::<Disclosed>();
    let d = match d {
        Some(d) => d,
        None => {
            ext.insert(Disclosed::default());
            ext.get_mut::<Disclosed>().expect("inserted above")
        }
    };
    for p in patients {
        if !d.patient_ids.contains(p) {
            d.patient_ids.push(p.clone());
        }
    }
}

/// Records the query (or input text) of `req`, hashed in the audit unless the configuration
/// asks for the text.
pub fn disclose_query(req: &HttpRequest, text: &str) {
    let mut ext = req.extensions_mut();
    if ext.get::<Disclosed>().is_none() {
        ext.insert(Disclosed::default());
    }
    ext.get_mut::<Disclosed>().expect("inserted above").query = Some(text.to_string());
}

/// This request's id (also sent back as `X-Request-Id` and written to the audit).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn new_request_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let p = PREFIX.get_or_init(|| fastrand::u32(..));
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{p:08x}-{n:08x}")
}

async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> std::result::Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let request_id = new_request_id();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let res = next.call(req).await?.map_into_boxed_body();
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut res = if (status.is_client_error() || status.is_server_error()) && !is_json {
        // The framework's own errors (no route, wrong method, body too large) in our shape.
        // The path is not echoed: it may carry a patient identifier.
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such endpoint".to_string()),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                format!(
                    "{} is not supported on this endpoint",
                    metrics::method_label(&method)
                ),
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                format!(
                    "the request body is over the limit of {} bytes",
                    state.as_ref().map_or(0, |s| s.config.max_body_bytes)
                ),
            ),
            s => (
                if s.is_client_error() {
                    "bad_request"
                } else {
                    "internal"
                },
                res.response()
                    .error()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| s.canonical_reason().unwrap_or("error").to_string()),
            ),
        };
        let e = ApiError::new(status, code, message);
        res.into_response(e.error_response())
    } else {
        res
    };
    if let Some(state) = &state {
        if let Some(draft) = audit_draft(state, &res, request_id.clone()) {
            if let Err(e) = state.audit.append(draft).await {
                tracing::error!(request_id = %request_id, "refusing to reply unaudited: {e}");
                let e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the access audit could not be written, so nothing is served; see the server log",
                );
                res = res.into_response(e.error_response());
            }
        }
        record(state, &res, &method, started);
    }
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        // Replies may carry notes: no browser or proxy keeps a copy.
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        h.insert(header::HeaderName::from_static("x-request-id"), v);
    }
    Ok(res)
}

/// The audit event of a request, when it reached an audited route or was refused on a
/// protected one.
fn audit_draft(
    state: &AppState,
    res: &ServiceResponse<BoxBody>,
    request_id: String,
) -> Option<crate::audit::Draft> {
    let req = res.request();
    let ext = req.extensions();
    let checked = ext.get::<routes::Checked>()?;
    let denied = ext.get::<routes::Denied>();
    let action = if denied.is_some() {
        "denied"
    } else {
        checked.action?
    };
    let principal: Option<&Principal> = match denied {
        Some(d) => d.principal.as_ref(),
        None => ext.get::<Principal>(),
    };
    let disclosed = ext.get::<Disclosed>().cloned().unwrap_or_default();
    let (query_sha256, query_text) = match &disclosed.query {
        Some(q) => (
            Some(crate::auth::sha256_hex(q.as_bytes())),
            state.config.audit_query_text.then(|| q.clone()),
        ),
        None => (None, None),
    };
    Some(crate::audit::Draft {
        request_id,
        principal: principal.map(|p| p.name.clone()),
        role: principal.map(|p| p.role.as_str().to_string()),
        client: req.peer_addr().map(|a| a.to_string()),
        action,
        status: res.status().as_u16(),
        note_ids: disclosed.note_ids,
        patient_ids: disclosed.patient_ids,
        query_sha256,
        query_text,
    })
}

fn record(
    state: &AppState,
    res: &ServiceResponse<BoxBody>,
    method: &actix_web::http::Method,
    t: Instant,
) {
    let endpoint = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let secs = t.elapsed().as_secs_f64();
    let method = metrics::method_label(method);
    state
        .metrics
        .observe(&endpoint, method, res.status().as_u16(), secs);
    // Operational log by route pattern and status only: never note text, query strings or
    // note ids (those belong to the audit store).
    tracing::debug!(
        method = method,
        endpoint = %endpoint,
        status = res.status().as_u16(),
        ms = secs * 1e3,
        "request"
    );
}

/// The application: routes, limits, error shapes and the middleware.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.config.max_body_bytes;
    App::new()
        .app_data(state)
        .app_data(web::PayloadConfig::new(limit))
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(move |e, _| api::json_error(e, limit).into()),
        )
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| {
                ApiError::bad_request("invalid_parameter", e.to_string()).into()
            }),
        )
        .app_data(
            web::PathConfig::default().error_handler(|e, _| {
                ApiError::bad_request("invalid_parameter", e.to_string()).into()
            }),
        )
        .configure(|cfg| {
            let table = routes::table();
            routes::check(&table).expect("the route table declares every permission");
            routes::register(cfg, table)
        })
        .wrap(from_fn(guard))
}

/// Loads the model, opens the data directory and serves until interrupted; checkpoints the
/// vector index on the way out.
pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    tracing::info!("configuration: {config:?}");
    crate::engine::require_existing(&config.data)?;
    let mut opts = config.encoder_options()?;
    // The directory's own window, stride and pooling: serve exactly what was ingested.
    crate::engine::fill_profile(&config.data, &mut opts)?;
    let encoder = Encoder::load(&config.model, &opts)
        .with_context(|| format!("loading model {}", config.model))?;
    let identity = ModelIdentity::from_info(encoder.info());
    let engine = Engine::open(&config.data, Some(&identity), &OpenOptions::default())
        .with_context(|| format!("opening data directory {}", config.data.display()))?;
    // The first forward pass allocates; do it before the first user waits for it.
    let _ = encoder.embed(&["warm up"]);
    let engine = Arc::new(engine);
    let addr = config.addr;
    let workers = config.workers;
    let classifier = match &config.classifier {
        Some(spec) => Some(
            crate::train::classify::Classifier::load(spec, &opts.device)
                .with_context(|| format!("loading classifier {spec}"))?,
        ),
        None => None,
    };
    // The configured tagger, else the one the data directory was ingested with: notes
    // added through the API are tagged as the others were.
    let tagger = crate::ner::for_data_dir(&config.data, config.tagger.as_deref(), &opts.device)
        .context("loading the tagger")?;
    if let (Some(t), Some(_)) = (&tagger, &config.tagger) {
        crate::ner::record(&config.data, t)?;
    }
    // An undeclared route stops the server here, before it listens.
    routes::check(&routes::table())?;
    let mut state = AppState::new(engine.clone(), Arc::new(encoder), config)?;
    if let Some(c) = classifier {
        state = state.with_classifier(c);
    }
    if let Some(t) = tagger {
        state = state.with_tagger(t);
    }
    let state = web::Data::new(state);
    let st = state.clone();
    actix_web::rt::System::new().block_on(async move {
        let server = actix_web::HttpServer::new(move || app(st.clone()))
            .workers(workers)
            .bind(addr)
            .with_context(|| format!("binding {addr}"))?;
        for a in server.addrs() {
            eprintln!("clinsearch serving on http://{a}/");
        }
        server.run().await.context("serving")
    })?;
    state.jobs.wait_all();
    engine.checkpoint().context("saving the vector index")?;
    Ok(())
}

/// Starts a server on `addr` in a background thread (for tests and benchmarks); returns the
/// bound address and a handle that stops it.
pub fn spawn(
    state: web::Data<AppState>,
    addr: &str,
) -> Result<(std::net::SocketAddr, actix_web::dev::ServerHandle)> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| crate::error::Error::io(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| crate::error::Error::io(addr, e))?;
    let workers = state.config.workers;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = actix_web::HttpServer::new(move || app(state.clone()))
                .workers(workers)
                .listen(listener)
                .expect("listen")
                .run();
            let _ = tx.send(server.handle());
            let _ = server.await;
        })
    });
    let handle = rx
        .recv()
        .map_err(|_| crate::error::Error::Index("server thread failed to start".into()))?;
    Ok((bound, handle))
}

/// A plain-text response helper for /metrics.
pub(crate) fn text(body: String, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .body(body)
}

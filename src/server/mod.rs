//! The HTTP service: the JSON API under `/api`, Prometheus metrics at `/metrics`, and the
//! browser UI (the files of `web/`, compiled into the binary) at `/`.
//!
//! One middleware wraps every request: it checks the API key (when keys are configured),
//! records the request in the metrics and the audit log by route pattern (never the raw path
//! or query string, which may carry patient identifiers), and turns the framework's own
//! error pages (unknown route, body too large) into the API's JSON error shape.

pub mod api;
pub mod assets;
pub mod batcher;
pub mod error;
pub mod jobs;
pub mod metrics;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, ResponseError};

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
    pub started: Instant,
    /// The fine-tuned classifier behind `POST /api/classify`, when one is configured.
    pub classifier: Option<Arc<crate::train::classify::Classifier>>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, encoder: Arc<Encoder>, config: ServerConfig) -> Self {
        let embedder = batcher::QueryEmbedder::start(encoder.clone(), config.query_batch);
        AppState {
            engine,
            encoder,
            embedder,
            metrics: metrics::Metrics::default(),
            jobs: jobs::Jobs::default(),
            evals: jobs::EvalJobs::default(),
            config,
            started: Instant::now(),
            classifier: None,
        }
    }

    /// Serves `classifier` at `POST /api/classify`.
    pub fn with_classifier(mut self, classifier: crate::train::classify::Classifier) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }
}

/// What a caller may do, from the key it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Read,
    Write,
}

/// Whether a request changes stored notes.
fn is_write(method: &Method, path: &str) -> bool {
    (path.starts_with("/api/documents") && (method == Method::POST || method == Method::DELETE))
        || (path.starts_with("/api/ingest") && method == Method::POST)
}

/// Whether a path is open without a key: the UI's files, the health probe and the API
/// description carry no patient data.
fn is_public(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/metrics")
        || path == "/api/health"
        || path == "/api/openapi.json"
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

fn role_of(config: &ServerConfig, req: &ServiceRequest) -> Role {
    let Some(key) = &config.api_key else {
        // No keys configured: the config layer only allows this on loopback.
        return Role::Write;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    match presented {
        Some(p) if same_secret(p, key) => Role::Write,
        Some(p)
            if config
                .read_api_key
                .as_deref()
                .is_some_and(|r| same_secret(p, r)) =>
        {
            Role::Read
        }
        _ => Role::None,
    }
}

async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> std::result::Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().clone();
    let path = req.path().to_string();
    let mut role = Role::Write;
    if let Some(state) = &state {
        if !is_public(&path) {
            role = role_of(&state.config, &req);
            let denied = match role {
                Role::None => Some(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "an API key is required: send Authorization: Bearer <key>",
                )),
                Role::Read if is_write(&method, &path) => Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this key may read but not change notes",
                )),
                _ => None,
            };
            if let Some(e) = denied {
                let res = req.into_response(e.error_response());
                record(state, &res, &method, role, started);
                return Ok(res);
            }
        }
    }
    let res = next.call(req).await?.map_into_boxed_body();
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let res = if (status.is_client_error() || status.is_server_error()) && !is_json {
        // The framework's own errors (no route, wrong method, body too large) in our shape.
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", format!("no such endpoint: {method} {path}")),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                format!("{method} is not supported on {path}"),
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
        record(state, &res, &method, role, started);
    }
    Ok(res)
}

fn record(
    state: &AppState,
    res: &ServiceResponse<BoxBody>,
    method: &Method,
    role: Role,
    t: Instant,
) {
    let endpoint = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let secs = t.elapsed().as_secs_f64();
    state
        .metrics
        .observe(&endpoint, method.as_str(), res.status().as_u16(), secs);
    // The audit trail: who did what, by route pattern; never note text or query strings.
    tracing::info!(
        target: "clinsearch::audit",
        method = %method,
        endpoint = %endpoint,
        status = res.status().as_u16(),
        role = ?role,
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
        .configure(api::routes)
        .configure(assets::routes)
        .wrap(from_fn(guard))
}

/// Loads the model, opens the data directory and serves until interrupted; checkpoints the
/// vector index on the way out.
pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    tracing::info!("configuration: {config:?}");
    let opts = config.encoder_options()?;
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
    let mut state = AppState::new(engine.clone(), Arc::new(encoder), config);
    if let Some(c) = classifier {
        state = state.with_classifier(c);
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

//! Every route of the server, declared once with the permission it needs and the audit
//! action it records, and the check that enforces it.
//!
//! The check runs *after* routing, as middleware on each route: it knows the route that
//! actix matched (on the percent-decoded path) and its method, so no spelling of a path
//! (`/%61pi/documents/x`, `//api/documents/x`, `/api/documents/x;y`) reaches a handler
//! without the check that route declares. A route is registered only from this table, and a
//! table entry without a declared permission stops the server from starting.
//!
//! Deny by default: a handler that needs the caller takes the [`Caller`] extractor, which
//! fails the request when no check ran for it.

use std::future::{ready, Ready};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, ResponseError};

use super::{access, api, assets, ApiError, AppState};
use crate::auth::{Principal, Role};

/// What a route needs from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Carries no patient data: the UI's files, the health probe, the API description.
    Public,
    Needs(Role),
}

/// One route: method, pattern, permission, audit action, handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Option<Access>,
    /// The audit action; None for routes that return no patient data (stats, job progress).
    pub action: Option<&'static str>,
    /// Takes file uploads (CSV, text) besides JSON: the content types the browser check allows.
    pub uploads: bool,
    /// Changes nothing and is called by other programs: without keys, a JSON body suffices
    /// (no `Origin` asked; see `browser::check`).
    pub json_only: bool,
    /// The browser UI's page or files: not API, so not in the OpenAPI description.
    pub ui: bool,
    handler: fn(actix_web::Route) -> actix_web::Route,
}

fn route(
    method: Method,
    path: &'static str,
    handler: fn(actix_web::Route) -> actix_web::Route,
) -> Route {
    Route {
        method,
        path,
        access: None,
        action: None,
        uploads: false,
        json_only: false,
        ui: false,
        handler,
    }
}

impl Route {
    fn public(mut self) -> Self {
        self.access = Some(Access::Public);
        self
    }
    fn needs(mut self, role: Role) -> Self {
        self.access = Some(Access::Needs(role));
        self
    }
    fn audited(mut self, action: &'static str) -> Self {
        debug_assert!(crate::audit::ACTIONS.contains(&action));
        self.action = Some(action);
        self
    }
    fn uploads(mut self) -> Self {
        self.uploads = true;
        self
    }
    fn json_only(mut self) -> Self {
        self.json_only = true;
        self
    }
    fn ui(mut self) -> Self {
        self.ui = true;
        self
    }
}

/// The table. Reading it answers "who may do what" for the whole server.
pub fn table() -> Vec<Route> {
    use Method as M;
    use Role::*;
    vec![
        route(M::GET, "/", |r| r.to(assets::index)).public().ui(),
        route(M::GET, "/assets/{file}", |r| r.to(assets::asset))
            .public()
            .ui(),
        route(M::GET, "/favicon.ico", |r| r.to(assets::favicon))
            .public()
            .ui(),
        route(M::GET, "/api/health", |r| r.to(api::health)).public(),
        route(M::GET, "/api/openapi.json", |r| r.to(api::openapi)).public(),
        route(M::GET, "/api/whoami", |r| r.to(access::whoami)).needs(Read),
        route(M::GET, "/api/stats", |r| r.to(api::stats)).needs(Read),
        route(M::GET, "/api/facets", |r| r.to(api::facets))
            .needs(Read)
            .audited("facets"),
        route(M::GET, "/api/search", |r| r.to(api::search_get))
            .needs(Read)
            .audited("search"),
        route(M::POST, "/api/search", |r| r.to(api::search_post))
            .needs(Read)
            .audited("search"),
        route(M::GET, "/api/search/export", |r| r.to(api::export_get))
            .needs(Read)
            .audited("export"),
        route(M::POST, "/api/search/export", |r| r.to(api::export_post))
            .needs(Read)
            .audited("export"),
        route(M::POST, "/api/documents", |r| r.to(api::documents_post))
            .needs(Write)
            .audited("ingest"),
        route(M::GET, "/api/documents/{id}", |r| r.to(api::document_get))
            .needs(Read)
            .audited("read_note"),
        route(M::DELETE, "/api/documents/{id}", |r| {
            r.to(api::document_delete)
        })
        .needs(Write)
        .audited("delete"),
        route(M::POST, "/api/embed", |r| r.to(api::embed))
            .needs(Read)
            .audited("embed"),
        route(M::POST, "/api/fill-mask", |r| r.to(api::fill_mask))
            .needs(Read)
            .audited("fill_mask"),
        route(M::GET, "/api/fill-mask/model", |r| {
            r.to(api::fill_mask_model)
        })
        .needs(Read),
        route(M::POST, "/api/fill-mask/adapt", |r| r.to(api::adapt_start))
            .needs(Write)
            .audited("adapt"),
        route(M::GET, "/api/fill-mask/adapt/{job}", |r| {
            r.to(api::adapt_status)
        })
        .needs(Write),
        route(M::POST, "/api/classify", |r| r.to(api::classify))
            .needs(Read)
            .audited("classify"),
        route(M::POST, "/api/tag", |r| r.to(api::tag))
            .needs(Read)
            .audited("tag"),
        route(M::POST, "/api/annotate", |r| r.to(api::annotate))
            .needs(Read)
            .audited("annotate"),
        route(M::POST, "/api/ingest", |r| r.to(api::ingest_start))
            .needs(Write)
            .audited("ingest")
            .uploads(),
        route(M::GET, "/api/ingest", |r| r.to(api::ingest_list)).needs(Write),
        route(M::GET, "/api/ingest/{job}", |r| r.to(api::ingest_status)).needs(Write),
        route(M::POST, "/api/eval", |r| r.to(api::eval_start))
            .needs(Read)
            .audited("eval"),
        route(M::GET, "/api/eval/sets", |r| r.to(api::eval_sets)).needs(Read),
        route(M::POST, "/api/tune", |r| r.to(api::tune_start))
            .needs(Admin)
            .audited("eval"),
        route(M::GET, "/api/eval/{job}", |r| r.to(api::eval_status))
            .needs(Read)
            .audited("eval"),
        route(M::GET, "/api/audit", |r| r.to(access::audit))
            .needs(Admin)
            .audited("audit"),
        route(M::GET, "/metrics", |r| r.to(api::metrics)).needs(Read),
        // Embedding endpoints in OpenAI's and text-embeddings-inference's formats.
        route(M::POST, "/v1/embeddings", |r| r.to(api::openai_embeddings))
            .needs(Read)
            .audited("embed")
            .json_only(),
        route(M::POST, "/embed", |r| r.to(api::tei_embed))
            .needs(Read)
            .audited("embed")
            .json_only(),
        route(M::POST, "/", |r| r.to(api::tei_embed_root))
            .needs(Read)
            .audited("embed")
            .json_only(),
        route(M::POST, "/tokenize", |r| r.to(api::tei_tokenize))
            .needs(Read)
            .audited("embed")
            .json_only(),
    ]
}

/// Checks a table: every route declares its permission, and no method and pattern is
/// declared twice (the second would never be reached, and its permission would mislead).
pub fn check(table: &[Route]) -> crate::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for r in table {
        if r.access.is_none() {
            return Err(crate::Error::InvalidInput(format!(
                "route {} {} declares no permission: every route must say public, read, write or admin",
                r.method, r.path
            )));
        }
        if !seen.insert((r.method.clone(), r.path)) {
            return Err(crate::Error::InvalidInput(format!(
                "route {} {} is declared twice",
                r.method, r.path
            )));
        }
    }
    Ok(())
}

/// Registers a checked table: one resource per pattern (so a known path with a method it does
/// not serve answers 405, not 404), each route wrapped in the check of its own entry.
pub fn register(cfg: &mut web::ServiceConfig, table: Vec<Route>) {
    let mut by_path: Vec<(&'static str, Vec<Route>)> = vec![];
    for r in table {
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, rs)) => rs.push(r),
            None => by_path.push((r.path, vec![r])),
        }
    }
    for (path, routes) in by_path {
        let mut res = web::resource(path);
        // Any other method: 405 with the methods this path has (RFC 9110 asks for `Allow`).
        let allow = routes
            .iter()
            .map(|r| r.method.as_str().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        res = res.default_service(web::to(move |req: HttpRequest| {
            let allow = allow.clone();
            async move { method_not_allowed(req.method(), &allow) }
        }));
        for r in routes {
            let spec = Checked {
                access: r.access.expect("checked: every route declares access"),
                action: r.action,
                uploads: r.uploads,
                json_only: r.json_only,
            };
            let wrapped = (r.handler)(web::method(r.method.clone())).wrap(from_fn(
                move |req: ServiceRequest, next: Next<BoxBody>| authorize(spec, req, next),
            ));
            res = res.route(wrapped);
        }
        cfg.service(res);
    }
}

/// 405 in the API's error shape, with `Allow`.
fn method_not_allowed(method: &Method, allow: &str) -> actix_web::HttpResponse {
    // The method is echoed only when it is a token of plain letters (never request text).
    let name = method.as_str();
    let shown = if name.len() <= 16 && name.bytes().all(|b| b.is_ascii_alphabetic()) {
        name
    } else {
        "this method"
    };
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{shown} is not supported on this endpoint; it takes {allow}"),
    )
    .error_response();
    if let Ok(v) = header::HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// What the check of a matched route knows; left in the request for the audit.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub access: Access,
    pub action: Option<&'static str>,
    pub uploads: bool,
    pub json_only: bool,
}

/// Set when the check refused the request (the audit records it as `denied`).
#[derive(Debug, Clone)]
pub struct Denied {
    pub principal: Option<Principal>,
}

fn presented_key(req: &ServiceRequest) -> Option<String> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string());
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

async fn authorize(
    spec: Checked,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    req.extensions_mut().insert(spec);
    let Access::Needs(needed) = spec.access else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(deny(req, None, ApiError::internal("no application state")));
    };
    let keys = state.keys.current();
    let principal = if keys.is_empty() {
        // No keys: loopback only (the configuration refuses anything else). The caller is a
        // user of this machine, or a web page that user has open: the browser checks stop
        // the second.
        if let Err(e) = super::browser::check(&req, &state.config, spec.uploads, spec.json_only) {
            return Ok(deny(req, None, e));
        }
        Principal::local()
    } else {
        if let Err(e) = super::browser::check_host(&req, &state.config, true) {
            return Ok(deny(req, None, e));
        }
        match presented_key(&req) {
            None => {
                return Ok(deny(
                    req,
                    None,
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "an API key is required: send Authorization: Bearer <key>",
                    ),
                ))
            }
            Some(k) => match keys.authenticate(&k) {
                Some(p) => p,
                None => {
                    return Ok(deny(
                        req,
                        None,
                        ApiError::new(
                            StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "this API key is not valid (unknown or revoked)",
                        ),
                    ))
                }
            },
        }
    };
    if principal.role < needed {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the key {:?} has the role {}; this needs {}",
                principal.name,
                principal.role.as_str(),
                needed.as_str()
            ),
        );
        return Ok(deny(req, Some(principal), e));
    }
    req.extensions_mut().insert(principal);
    Ok(next.call(req).await?.map_into_boxed_body())
}

fn deny(
    req: ServiceRequest,
    principal: Option<Principal>,
    e: ApiError,
) -> ServiceResponse<BoxBody> {
    req.extensions_mut().insert(Denied { principal });
    req.into_response(e.error_response())
}

/// The authenticated caller of a protected route. Extracting it where no check ran (a route
/// registered outside the table) fails the request: deny by default.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .map(Caller)
                .ok_or_else(|| {
                    tracing::error!("a handler asked for the caller where no access check ran");
                    ApiError::internal("this route has no access check")
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_declares_every_route_once() {
        check(&table()).unwrap();
    }

    #[test]
    fn a_route_without_a_declared_permission_does_not_start() {
        let mut t = table();
        t.push(route(Method::GET, "/api/secret", |r| r.to(api::health)));
        let e = check(&t).unwrap_err().to_string();
        assert!(e.contains("GET /api/secret declares no permission"), "{e}");
        let mut t = table();
        t.push(route(Method::GET, "/api/search", |r| r.to(api::health)).public());
        assert!(check(&t)
            .unwrap_err()
            .to_string()
            .contains("declared twice"));
    }

    #[test]
    fn routes_with_patient_data_are_never_public() {
        for r in table() {
            if r.action.is_some() || r.path.starts_with("/api/documents") {
                assert_ne!(r.access, Some(Access::Public), "{} {}", r.method, r.path);
            }
        }
    }
}

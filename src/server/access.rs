//! Who the caller is (`GET /api/whoami`, for the UI) and the access audit report
//! (`GET /api/audit`, admins only): "who accessed patient P, when, with what action".

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::routes::Caller;
use super::{ApiError, AppState};

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's name (`local` on a server without keys).
    pub principal: String,
    pub role: String,
    /// Whether the key is restricted to part of the notes (a filter).
    pub restricted: bool,
}

/// `GET /api/whoami`: the principal, its role and whether it is restricted.
#[utoipa::path(get, path = "/api/whoami", tag = "access",
    responses((status = 200, description = "The caller.", body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> HttpResponse {
    let p = caller.0;
    HttpResponse::Ok().json(WhoAmI {
        principal: p.name,
        role: p.role.as_str().to_string(),
        restricted: p.restrict.is_some(),
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Events that disclosed this patient's notes.
    patient: Option<String>,
    /// Events of this key.
    principal: Option<String>,
    /// Events that disclosed this note.
    note: Option<String>,
    /// Events of this action.
    #[param(value_type = Option<AuditAction>)]
    action: Option<String>,
    /// From this time on (RFC 3339, or a YYYY-MM-DD day).
    since: Option<String>,
    /// Up to this time.
    until: Option<String>,
    /// Most events returned, the newest (default 1,000, at most 10,000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// An audited action (`audit::ACTIONS`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = AuditAction)]
pub struct AuditAction(String);

#[derive(Serialize, ToSchema)]
pub struct AuditReport {
    /// Events matching every filter (more than `events` holds when over the limit).
    pub matched: usize,
    /// Oldest first.
    pub events: Vec<crate::audit::Event>,
}

/// `GET /api/audit?patient=&principal=&note=&action=&since=&until=&limit=`: who accessed
/// what, when (admins).
#[utoipa::path(get, path = "/api/audit", tag = "access", params(AuditParams),
    responses((status = 200, description = "The matching events.", body = AuditReport)))]
pub async fn audit(
    state: web::Data<AppState>,
    q: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError {
            param: Some("limit".into()),
            ..ApiError::bad_request("invalid_parameter", "limit: between 1 and 10000")
        });
    }
    let query = crate::audit::Query {
        patient: q.patient,
        principal: q.principal,
        note: q.note,
        action: q.action,
        since: q.since,
        until: q.until,
    }
    .normalized()?;
    let dir = state.audit.dir().to_path_buf();
    let (events, matched) = web::block(move || crate::audit::search(&dir, &query, limit)).await??;
    Ok(HttpResponse::Ok().json(AuditReport { matched, events }))
}

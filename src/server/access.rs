//! Who the caller is (`GET /api/whoami`, for the UI) and the access audit report
//! (`GET /api/audit`, admins only): "who accessed patient P, when, with what action".

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::routes::Caller;
use super::{ApiError, AppState};

/// `GET /api/whoami`: the principal, its role and whether it is restricted.
pub async fn whoami(caller: Caller) -> HttpResponse {
    let p = caller.0;
    HttpResponse::Ok().json(json!({
        "principal": p.name,
        "role": p.role.as_str(),
        "restricted": p.restrict.is_some(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    patient: Option<String>,
    principal: Option<String>,
    note: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Most events returned, the newest (default 1,000, at most 10,000).
    limit: Option<usize>,
}

/// `GET /api/audit?patient=&principal=&note=&action=&since=&until=&limit=`.
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
    Ok(HttpResponse::Ok().json(json!({ "matched": matched, "events": events })))
}

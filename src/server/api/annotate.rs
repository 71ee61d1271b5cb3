//! `POST /api/annotate`: sentences and assertion scopes (negated, possible, historical,
//! family, hypothetical) of one text or several, as character offsets.

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateBody {
    /// One text, or several with `texts`.
    text: Option<String>,
    texts: Option<Vec<String>>,
}

/// Most characters annotated in one request, all texts together.
pub const MAX_ANNOTATE_CHARS: usize = 1 << 20;

pub async fn annotate(http: HttpRequest, body: web::Json<AnnotateBody>) -> ApiResult {
    let AnnotateBody { text, texts } = body.into_inner();
    let single = text.is_some();
    let texts = one_or_many(text, texts)?;
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    if chars > MAX_ANNOTATE_CHARS {
        return Err(ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{chars} characters in one request; the limit is {MAX_ANNOTATE_CHARS}"),
        ));
    }
    // The texts may be note text: the audit records their hash, as for a query.
    disclose_query(&http, &serde_json::to_string(&texts).unwrap_or_default());
    let results = web::block(move || {
        texts
            .iter()
            .map(|t| {
                let a = crate::clinical::assertion::annotate(t);
                json!({ "sentences": a.sentences, "assertions": a.assertions })
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let body = if single {
        results.into_iter().next().unwrap_or_default()
    } else {
        json!({ "results": results })
    };
    Ok(HttpResponse::Ok().json(body))
}

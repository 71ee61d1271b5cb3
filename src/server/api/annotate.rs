//! `POST /api/annotate`: sentences and assertion scopes (negated, possible, historical,
//! family, hypothetical) of one text or several, as character offsets.

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;

/// One text, or several with `texts` (exactly one of the two).
#[derive(Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields, try_from = "AnnotateRaw")]
pub enum AnnotateBody {
    One {
        #[schema(max_length = 1048576)]
        text: String,
    },
    Many {
        #[schema(min_items = 1, max_items = 256)]
        texts: Vec<String>,
    },
}

/// The body as sent, so that both or neither of `text` and `texts` is said to be wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateRaw {
    text: Option<String>,
    texts: Option<Vec<String>>,
}

impl TryFrom<AnnotateRaw> for AnnotateBody {
    type Error = String;
    fn try_from(raw: AnnotateRaw) -> Result<Self, String> {
        match (raw.text, raw.texts) {
            (Some(text), None) => Ok(AnnotateBody::One { text }),
            (None, Some(texts)) => Ok(AnnotateBody::Many { texts }),
            _ => Err("text: give exactly one of text or texts".into()),
        }
    }
}

/// Several texts' annotations, in order.
#[derive(Serialize, ToSchema)]
pub struct Annotations {
    pub results: Vec<crate::clinical::assertion::Annotation>,
}

/// One text's annotation, or several texts' (as asked).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnnotateReply {
    One(crate::clinical::assertion::Annotation),
    Many(Annotations),
}

/// Most characters annotated in one request, all texts together.
pub const MAX_ANNOTATE_CHARS: usize = 1 << 20;

/// Sentences and assertion scopes (negated, possible, historical, family, hypothetical) of
/// one text or several, as character offsets.
#[utoipa::path(post, path = "/api/annotate", tag = "clinical", request_body = AnnotateBody,
    responses(
        (status = 200, description = "The annotations.", body = AnnotateReply),
        (status = 413, description = "Over 1,048,576 characters in all.", body = crate::server::error::ErrorBody),
    ))]
pub async fn annotate(http: HttpRequest, body: web::Json<AnnotateBody>) -> ApiResult {
    let (text, texts) = match body.into_inner() {
        AnnotateBody::One { text } => (Some(text), None),
        AnnotateBody::Many { texts } => (None, Some(texts)),
    };
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
            .map(|t| crate::clinical::assertion::annotate(t))
            .collect::<Vec<_>>()
    })
    .await?;
    let body = if single {
        AnnotateReply::One(results.into_iter().next().unwrap_or_default())
    } else {
        AnnotateReply::Many(Annotations { results })
    };
    Ok(HttpResponse::Ok().json(body))
}

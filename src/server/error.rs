//! API errors: every failure leaves the server as `{"error": {"code", "message"}}` with a
//! stable `code`, and the user's mistakes (4xx) are kept apart from ours (5xx). The mapping
//! from library errors to HTTP statuses lives here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: clients branch on it, messages may change.
    pub code: &'static str,
    pub message: String,
    /// The request parameter at fault, when there is one.
    pub param: Option<String>,
    /// Seconds to wait before retrying (sent as `Retry-After` with 429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// A failure of ours; the message says no more than that (details go to the log).
    pub fn internal(what: &str) -> Self {
        tracing::error!("internal error: {what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request; see its log",
        )
    }

    /// 429: a queue or a per-principal limit is full; retry after `secs`.
    pub fn too_many_requests(code: &'static str, message: impl Into<String>, secs: u64) -> Self {
        ApiError {
            retry_after: Some(secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                param: self.param.clone(),
            },
        })
        .expect("an error serialises")
    }
}

/// Every error of the API (the OpenAI and TEI routes aside): `{"error": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: invalid_parameter, invalid_input, invalid_json,
    /// invalid_utf8, invalid_notes, empty_body, too_many_notes, too_many_windows,
    /// unsupported_media_type, no_mlm_head, no_classifier, no_tagger, unsupported, not_found,
    /// method_not_allowed, payload_too_large, unauthorized, forbidden, cross_site, overloaded,
    /// too_many_jobs, index_degraded, internal...
    pub code: String,
    pub message: String,
    /// The request parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            b.insert_header((actix_web::http::header::RETRY_AFTER, s.to_string()));
        }
        b.json(self.body())
    }
}

impl From<crate::search::ParamError> for ApiError {
    fn from(e: crate::search::ParamError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            message: e.to_string(),
            param: Some(e.param),
            retry_after: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidInput(m) => ApiError::bad_request("invalid_input", m),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::Tokenizer(m) => ApiError::bad_request("invalid_input", m),
            Error::Unsupported(m) => ApiError::bad_request("unsupported", m),
            Error::Busy(m) => ApiError::too_many_requests("overloaded", m, 1),
            Error::Degraded(m) => {
                tracing::error!("index degraded: {m}");
                ApiError {
                    retry_after: Some(2),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "index_degraded", m)
                }
            }
            other => {
                // Our failure, not the user's: log it (no note text reaches these messages).
                tracing::error!("internal error: {other}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server failed to complete the request; see its log",
                )
            }
        }
    }
}

/// The blocking pool answers this when the task panicked (or the pool is gone): our failure,
/// reported as such, with the panic itself in the log.
impl From<actix_web::error::BlockingError> for ApiError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        ApiError::internal("a blocking task of the request panicked")
    }
}

//! The browser as an attacker. A server without keys trusts whoever reaches it on loopback,
//! and any web page the user has open can reach loopback: it can send simple cross-origin
//! requests (form posts, `fetch` with `no-cors`) and, after a DNS rebinding, requests that
//! look same-origin to the browser but carry the attacker's host name.
//!
//! So, without keys: the `Host` header must be a loopback name (or the configured public
//! name), and a state-changing request (any method but GET, HEAD and OPTIONS) must come from
//! this origin (`Origin`, else `Referer`) with a JSON body (or, on upload routes, a declared
//! file type) — types a cross-origin form cannot send without a CORS preflight, which this
//! server never grants. Each refusal is a 403 with a JSON error.

use actix_web::dev::ServiceRequest;
use actix_web::http::{header, Method, StatusCode};

use super::ApiError;
use crate::config::ServerConfig;

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`), lowercased.
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return format!("[{}]", rest.split(']').next().unwrap_or(""));
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => a,
    }
}

fn is_loopback_name(h: &str) -> bool {
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "[::1]"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `Host` must name this server: a loopback name, the configured public name, or (with keys,
/// `strict` false) anything when no public name is configured. Requests without a `Host`
/// (HTTP/1.0) did not come from a browser.
pub fn check_host(
    req: &ServiceRequest,
    config: &ServerConfig,
    keyed: bool,
) -> Result<(), ApiError> {
    let Some(host) = req.headers().get(header::HOST) else {
        return Ok(());
    };
    let Ok(host) = host.to_str() else {
        return Err(forbidden("bad_host", "the Host header is not readable"));
    };
    let name = host_name(host);
    let public = config.public_name.as_deref();
    if is_loopback_name(&name) || public == Some(name.as_str()) {
        return Ok(());
    }
    // With keys and no public name, the server may be reached under any name: the key is
    // what protects it (a rebound page has no key).
    if keyed && public.is_none() {
        return Ok(());
    }
    Err(forbidden(
        "bad_host",
        "the Host header names another site (set public_name in the configuration to serve under this name)",
    ))
}

/// The origin (`scheme://host[:port]`) of a URL, lowercased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
}

/// All the checks for a server without keys. `json_only`: a route that changes nothing and
/// is called by other programs (the OpenAI and TEI embedding endpoints): the JSON content type
/// alone stops a cross-site page (it cannot send one without the CORS preflight this server
/// never grants), so `Origin` is not asked of clients that never send one.
pub fn check(
    req: &ServiceRequest,
    config: &ServerConfig,
    uploads: bool,
    json_only: bool,
) -> Result<(), ApiError> {
    check_host(req, config, false)?;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let h = req.headers();
    if !json_only {
        same_origin(req)?;
    }
    if *req.method() == Method::DELETE {
        return Ok(());
    }
    content_type(h, uploads)
}

/// `Origin` (else `Referer`) names this server.
fn same_origin(req: &ServiceRequest) -> Result<(), ApiError> {
    let h = req.headers();
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let from = h
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
        .and_then(origin_of)
        .or_else(|| {
            h.get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(origin_of)
        });
    let same = from
        .as_deref()
        .is_some_and(|o| o == format!("http://{host}") || o == format!("https://{host}"));
    if !same {
        return Err(forbidden(
            "cross_origin",
            "a request that changes state must come from this server's own pages: send Origin with this server's address (e.g. Origin: http://127.0.0.1:8080), or configure an API key",
        ));
    }
    Ok(())
}

/// A JSON body (or, on upload routes, a declared file type); DELETE has no body.
fn content_type(h: &actix_web::http::header::HeaderMap, uploads: bool) -> Result<(), ApiError> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = ct == "application/json"
        || ct == "application/x-ndjson"
        || (ct.starts_with("application/") && ct.ends_with("+json"));
    let upload = uploads
        && matches!(
            ct.as_str(),
            "text/csv" | "text/plain" | "application/octet-stream" | "text/tab-separated-values"
        );
    if json || upload {
        Ok(())
    } else {
        Err(forbidden(
            "bad_content_type",
            if uploads {
                "send the body as application/json, application/x-ndjson, text/csv, text/plain or application/octet-stream"
            } else {
                "send the body as application/json"
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_read_with_or_without_ports() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert!(is_loopback_name("127.1.2.3"));
        assert!(is_loopback_name("app.localhost"));
        assert!(!is_loopback_name("evil.example"));
        assert!(!is_loopback_name("127.0.0.1.evil.example"));
        assert_eq!(
            origin_of("http://127.0.0.1:8080/#/search").as_deref(),
            Some("http://127.0.0.1:8080")
        );
    }
}

//! The browser UI: the files of `web/`, compiled into the binary so that one file is the whole
//! product (no separate static folder to deploy or to go out of step with the API).

use actix_web::{web, HttpResponse};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
];

const INDEX: &str = include_str!("../../web/index.html");

/// A file of the UI by name (`index.html` included): its content type and text. The Python
/// package's sharded router serves the same files.
pub fn file(name: &str) -> Option<(&'static str, &'static str)> {
    if name == "index.html" {
        return Some(("text/html; charset=utf-8", INDEX));
    }
    ASSETS
        .iter()
        .find(|a| a.path == name)
        .map(|a| (a.content_type, a.body))
}

/// The headers every UI file is sent with (the router sends them too).
pub const HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

pub async fn favicon() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// A strict policy: the UI loads only its own script and style and talks only to this origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn secure(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    for &(name, value) in HEADERS {
        b.insert_header((name, value));
    }
    b
}

pub async fn index() -> HttpResponse {
    secure(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .body(INDEX)
}

pub async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.path == file.as_str()) {
        Some(a) => secure(HttpResponse::Ok())
            .content_type(a.content_type)
            .body(a.body),
        None => HttpResponse::NotFound()
            .content_type("application/json")
            .body(r#"{"error":{"code":"not_found","message":"no such file"}}"#),
    }
}

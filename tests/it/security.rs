//! Access control, tested by attacking it: every spelling of every protected path with each
//! kind of key, the browser as an attacker, document-level restrictions, bounded work, and
//! the access audit (what it records, that it is written before the reply, that it detects
//! tampering), in process and through the real binary.

use std::path::Path;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};

use clinsearch::auth::{sha256_hex, KeyEntry, Role};
use clinsearch::config::{Layer, Limits};
use clinsearch::index::Filter;
use clinsearch::server;

use crate::common::*;
use crate::server::{same_origin, seeded_state};

const READ: &str = "key-of-alice";
const WRITE: &str = "key-of-wendy";
const ADMIN: &str = "key-of-ada";
const ONCOLOGY: &str = "key-of-olga";

fn entry(name: &str, role: Role, key: &str, filter: Option<Filter>) -> KeyEntry {
    KeyEntry {
        name: name.into(),
        role,
        sha256: sha256_hex(key.as_bytes()),
        filter,
    }
}

fn keyed_layer() -> Layer {
    Layer {
        keys: Some(vec![
            entry("alice", Role::Read, READ, None),
            entry("wendy", Role::Write, WRITE, None),
            entry("ada", Role::Admin, ADMIN, None),
            entry(
                "olga",
                Role::Write,
                ONCOLOGY,
                Some(Filter {
                    specialty: Some("Oncology".into()),
                    ..Default::default()
                }),
            ),
        ]),
        ..Default::default()
    }
}

const NOTES: &str = r#"[
 {"id": "N1", "patient_id": "P1", "specialty": "Oncology", "note_type": "progress", "date": "2024-01-02", "text": "Chemotherapy cycle two for breast cancer; heart sounds normal."},
 {"id": "N2", "patient_id": "P1", "specialty": "Cardiology", "note_type": "consult", "date": "2024-02-03", "text": "Heart failure with reduced ejection fraction; started carvedilol."},
 {"id": "N3", "patient_id": "P2", "specialty": "Cardiology", "note_type": "progress", "date": "2024-03-04", "text": "Atrial fibrillation, heart rate controlled on metoprolol."},
 {"id": "N4", "patient_id": "P3", "specialty": "Oncology", "note_type": "consult", "date": "2024-04-05", "text": "Lymphoma staging; heart echo before anthracyclines."}
]"#;

/// Status and JSON body, with the request sent exactly as built (no helpful headers).
async fn raw(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    req: actix_http::Request,
) -> (StatusCode, Value, actix_web::http::header::HeaderMap) {
    let res = test::call_service(app, req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = test::read_body(res).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, v, headers)
}

fn bearer(req: TestRequest, key: Option<&str>) -> TestRequest {
    match key {
        Some(k) => req.insert_header(("authorization", format!("Bearer {k}"))),
        None => req,
    }
}

/// Every spelling of `path` an attacker might try: each character percent-encoded (both
/// cases of hex), the whole path encoded, case changes, doubled and trailing slashes, dot
/// segments, `;` parameters, an encoded slash, and a very long path.
fn spellings(path: &str) -> Vec<String> {
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (path, String::new()),
    };
    let mut out = vec![p.to_string()];
    for (i, c) in p.char_indices() {
        if c == '/' {
            continue;
        }
        for enc in [format!("%{:02X}", c as u32), format!("%{:02x}", c as u32)] {
            out.push(format!("{}{enc}{}", &p[..i], &p[i + c.len_utf8()..]));
        }
    }
    out.push(
        p.split('/')
            .map(|seg| seg.bytes().map(|b| format!("%{b:02x}")).collect::<String>())
            .collect::<Vec<_>>()
            .join("/"),
    );
    out.push(p.to_uppercase());
    out.push(p.replacen("/api", "/Api", 1));
    out.push(format!("/{p}"));
    out.push(p.replacen("/api/", "/api//", 1));
    out.push(format!("{p}/"));
    out.push(p.replacen("/api/", "/api/./", 1));
    out.push(p.replacen("/api/", "/api/x/../", 1));
    out.push(p.replacen("/api/", "/api/%2e/", 1));
    out.push(p.replacen("/api/", "/api;x=1/", 1));
    out.push(format!("{p};x=1"));
    out.push(p.replacen("/api/", "/api%2f", 1));
    out.push(p.replacen("/api/", "/api%2F", 1));
    out.push(format!("{p}{}", "/x".repeat(4000)));
    out.into_iter().map(|s| s + &query).collect()
}

#[test]
fn spellings_cover_each_character_and_the_tricks() {
    let s = spellings("/api/documents/N1");
    assert!(s.contains(&"/%61pi/documents/N1".to_string()));
    assert!(s.contains(&"/api/%64ocuments/N1".to_string()));
    assert!(s.contains(&"//api/documents/N1".to_string()));
    assert!(s.len() > 40, "{}", s.len());
}

/// The protected resources: method, path, the role it needs, and a body for writes.
fn resources() -> Vec<(Method, &'static str, Role, Option<&'static str>)> {
    vec![
        (Method::GET, "/api/documents/N1", Role::Read, None),
        (
            Method::GET,
            "/api/search?q=heart&mode=bm25",
            Role::Read,
            None,
        ),
        (
            Method::POST,
            "/api/search",
            Role::Read,
            Some(r#"{"q": "heart", "mode": "bm25"}"#),
        ),
        (Method::GET, "/api/facets", Role::Read, None),
        (Method::GET, "/metrics", Role::Read, None),
        (
            Method::POST,
            "/api/documents",
            Role::Write,
            Some(r#"{"id": "EVIL", "text": "planted note"}"#),
        ),
        (Method::DELETE, "/api/documents/N1", Role::Write, None),
        (
            Method::POST,
            "/api/ingest?format=jsonl",
            Role::Write,
            Some(r#"{"id": "EVIL2", "text": "planted by upload"}"#),
        ),
        (Method::GET, "/api/audit", Role::Admin, None),
        (
            Method::POST,
            "/api/tag",
            Role::Read,
            Some(r#"{"text": "heart failure"}"#),
        ),
        (
            Method::POST,
            "/api/fill-mask/adapt",
            Role::Write,
            Some(r#"{"max_steps": 1}"#),
        ),
        (
            Method::GET,
            "/api/fill-mask/adapt/adapt-1",
            Role::Write,
            None,
        ),
        (
            Method::POST,
            "/v1/embeddings",
            Role::Read,
            Some(r#"{"model": "m", "input": "heart"}"#),
        ),
        (
            Method::POST,
            "/embed",
            Role::Read,
            Some(r#"{"inputs": "heart"}"#),
        ),
        (
            Method::POST,
            "/tokenize",
            Role::Read,
            Some(r#"{"inputs": "heart"}"#),
        ),
        (
            Method::POST,
            "/api/tune",
            Role::Admin,
            Some(r#"{"set": "sample", "wait": true}"#),
        ),
    ]
}

fn role_rank(key: Option<&str>) -> Option<Role> {
    match key {
        Some(READ) => Some(Role::Read),
        Some(WRITE) => Some(Role::Write),
        Some(ADMIN) => Some(Role::Admin),
        _ => None,
    }
}

#[actix_web::test]
async fn attack_suite_no_spelling_method_or_key_reaches_a_resource_the_key_may_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), keyed_layer(), None);
    let app = test::init_service(server::app(state.clone())).await;
    let (s, v, _) = raw(
        &app,
        bearer(TestRequest::post().uri("/api/documents"), Some(ADMIN))
            .insert_header(("content-type", "application/json"))
            .set_payload(NOTES)
            .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before: Vec<Value> = {
        let mut out = vec![];
        for id in ["N1", "N2", "N3", "N4"] {
            let (s, v, _) = raw(
                &app,
                bearer(
                    TestRequest::get().uri(&format!("/api/documents/{id}")),
                    Some(ADMIN),
                )
                .to_request(),
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            out.push(v["note"].clone());
        }
        out
    };
    let methods = |declared: &Method| {
        vec![
            declared.clone(),
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::PATCH,
            Method::from_bytes(b"FOO").unwrap(),
            Method::from_bytes(b"get").unwrap(),
        ]
    };
    let mut tried = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (declared, path, needs, body) in resources() {
        for key in [None, Some("not-a-key"), Some(READ), Some(WRITE)] {
            let allowed = role_rank(key).is_some_and(|r| r >= needs);
            if allowed {
                continue;
            }
            for spelled in spellings(path) {
                for m in methods(&declared) {
                    let mut req =
                        bearer(TestRequest::default().method(m.clone()).uri(&spelled), key);
                    if let Some(b) = body {
                        req = req
                            .insert_header(("content-type", "application/json"))
                            .set_payload(b);
                    }
                    let (s, v, _) = raw(&app, req.to_request()).await;
                    tried += 1;
                    *statuses.entry(s.as_u16()).or_default() += 1;
                    assert!(
                        !s.is_success(),
                        "{m} {spelled} with {key:?} answered {s}: {v}"
                    );
                    assert!(s.is_client_error(), "{m} {spelled} with {key:?}: {s} {v}");
                    if s == StatusCode::NOT_FOUND || s == StatusCode::METHOD_NOT_ALLOWED {
                        assert!(
                            v["error"]["code"].is_string(),
                            "{m} {spelled}: not JSON: {v}"
                        );
                    }
                }
            }
        }
    }
    assert!(tried > 2000, "{tried}");
    // The checks themselves answered (not only the router): 401 and 403 both occur.
    assert!(statuses[&401] > 100 && statuses[&403] > 100, "{statuses:?}");
    // Nothing was stored, changed or deleted.
    assert_eq!(state.engine.store.note_count(), 4);
    for (i, id) in ["N1", "N2", "N3", "N4"].iter().enumerate() {
        let (s, v, _) = raw(
            &app,
            bearer(
                TestRequest::get().uri(&format!("/api/documents/{id}")),
                Some(ADMIN),
            )
            .to_request(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["note"], before[i]);
    }
    for id in ["EVIL", "EVIL2"] {
        assert!(state.engine.store.get(id).unwrap().is_none());
    }
    assert!(state.jobs.list().is_empty(), "no upload job was started");
    assert!(
        state.fill_mask.latest().is_none(),
        "no adapt job was started"
    );
}

#[actix_web::test]
async fn the_right_key_still_works_through_the_decoded_spelling_and_unknown_methods_are_405() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), keyed_layer(), None);
    let app = test::init_service(server::app(state)).await;
    raw(
        &app,
        bearer(TestRequest::post().uri("/api/documents"), Some(WRITE))
            .set_payload(NOTES)
            .to_request(),
    )
    .await;
    // The router decodes %61 to "a": the read key gets the note, the check ran on the route.
    let (s, v, h) = raw(
        &app,
        bearer(TestRequest::get().uri("/%61pi/documents/N1"), Some(READ)).to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert!(h.get("x-request-id").is_some());
    // The read key may not delete through any spelling.
    let (s, v, _) = raw(
        &app,
        bearer(TestRequest::delete().uri("/api/%64ocuments/N1"), Some(READ)).to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "forbidden");
    let (s, v, _) = raw(
        &app,
        bearer(
            TestRequest::default()
                .method(Method::from_bytes(b"BREW").unwrap())
                .uri("/api/search?q=x"),
            Some(READ),
        )
        .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");
    let (s, v, _) = raw(
        &app,
        TestRequest::get().uri("/api/nothing-here").to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    assert!(
        !v.to_string().contains("nothing-here"),
        "paths are not echoed: {v}"
    );
    // Metric labels come from a closed set.
    let (_, m, _) = raw(
        &app,
        bearer(TestRequest::get().uri("/metrics"), Some(READ)).to_request(),
    )
    .await;
    let m = m.as_str().unwrap();
    assert!(m.contains("method=\"other\""), "{m}");
    assert!(!m.contains("BREW"), "{m}");
}

#[actix_web::test]
async fn without_keys_the_browser_checks_stop_cross_site_writes_and_rebound_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let app = test::init_service(server::app(state.clone())).await;
    let note = r#"{"id": "X", "text": "a note"}"#;
    let post = |origin: Option<&str>, host: &str, ct: Option<&str>| {
        let mut r = TestRequest::post()
            .uri("/api/documents")
            .insert_header(("host", host.to_string()))
            .set_payload(note);
        if let Some(o) = origin {
            r = r.insert_header(("origin", o.to_string()));
        }
        if let Some(c) = ct {
            r = r.insert_header(("content-type", c.to_string()));
        }
        r.to_request()
    };
    let json = Some("application/json");
    for (origin, host, ct, code) in [
        (None, "127.0.0.1:8080", json, "cross_origin"),
        (
            Some("http://evil.example"),
            "127.0.0.1:8080",
            json,
            "cross_origin",
        ),
        (Some("null"), "127.0.0.1:8080", json, "cross_origin"),
        (
            Some("http://127.0.0.1:9999"),
            "127.0.0.1:8080",
            json,
            "cross_origin",
        ),
        (
            Some("http://127.0.0.1:8080"),
            "127.0.0.1:8080",
            Some("text/plain"),
            "bad_content_type",
        ),
        (
            Some("http://127.0.0.1:8080"),
            "127.0.0.1:8080",
            Some("application/x-www-form-urlencoded"),
            "bad_content_type",
        ),
        (
            Some("http://127.0.0.1:8080"),
            "127.0.0.1:8080",
            None,
            "bad_content_type",
        ),
        // DNS rebinding: the page's own origin, but the attacker's host name.
        (
            Some("http://evil.example:8080"),
            "evil.example:8080",
            json,
            "bad_host",
        ),
    ] {
        let (s, v, _) = raw(&app, post(origin, host, ct)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{origin:?} {host} {ct:?}: {v}");
        assert_eq!(v["error"]["code"], code, "{origin:?} {host} {ct:?}");
    }
    assert_eq!(state.engine.store.note_count(), 0);
    // Rebound reads are refused too; a Referer stands in for a missing Origin.
    let (s, _, _) = raw(
        &app,
        TestRequest::get()
            .uri("/api/search?q=a")
            .insert_header(("host", "evil.example"))
            .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = raw(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .insert_header(("host", "localhost:8080"))
            .insert_header(("referer", "http://localhost:8080/#/ingest"))
            .insert_header(("content-type", "application/json"))
            .set_payload(note)
            .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // What the UI sends works: same origin, JSON; and a CSV upload with its declared type.
    let (s, v, _) = raw(
        &app,
        post(Some("http://127.0.0.1:8080"), "127.0.0.1:8080", json),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v, _) = raw(
        &app,
        TestRequest::post()
            .uri("/api/ingest?filename=n.csv")
            .insert_header(("host", "127.0.0.1:8080"))
            .insert_header(("origin", "http://127.0.0.1:8080"))
            .insert_header(("content-type", "text/csv"))
            .set_payload("id,text\nC1,a csv note\n")
            .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
}

#[actix_web::test]
async fn a_restricted_key_sees_only_its_notes_in_every_retriever_read_facet_and_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), keyed_layer(), None);
    let app = test::init_service(server::app(state)).await;
    raw(
        &app,
        bearer(TestRequest::post().uri("/api/documents"), Some(WRITE))
            .set_payload(NOTES)
            .to_request(),
    )
    .await;
    let get = |uri: String, key: &'static str| {
        bearer(TestRequest::get().uri(&uri), Some(key)).to_request()
    };
    for mode in ["bm25", "semantic", "hybrid", "compare"] {
        for group in ["note", "patient"] {
            let (s, v, _) = raw(
                &app,
                get(
                    format!("/api/search?q=heart&mode={mode}&k=10&group_by={group}"),
                    ONCOLOGY,
                ),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            for r in v["rankings"].as_array().unwrap() {
                let ids: Vec<&str> = r["hits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["id"].as_str().unwrap())
                    .collect();
                assert!(!ids.is_empty(), "{mode}: {v}");
                assert!(
                    ids.iter().all(|i| *i == "N1" || *i == "N4"),
                    "{mode}/{group}: {ids:?}"
                );
                for h in r["hits"].as_array().unwrap() {
                    if let Some(g) = h["group"]["note_ids"].as_array() {
                        assert!(g.iter().all(|i| i == "N1" || i == "N4"), "{g:?}");
                    }
                }
            }
            // The unrestricted key sees the cardiology notes too.
            let (_, v, _) = raw(
                &app,
                get(format!("/api/search?q=heart&mode={mode}&k=10"), READ),
            )
            .await;
            let all = v.to_string();
            assert!(all.contains("\"N2\"") && all.contains("\"N3\""), "{mode}");
        }
    }
    // Asking for another specialty than the key's finds nothing (the two filters intersect).
    let (_, v, _) = raw(
        &app,
        get(
            "/api/search?q=heart&mode=hybrid&specialty=cardiology".into(),
            ONCOLOGY,
        ),
    )
    .await;
    assert!(
        v["rankings"][0]["hits"].as_array().unwrap().is_empty(),
        "{v}"
    );
    // Reading: a cardiology note does not exist for this key; the patient's other notes are
    // only those the key may see.
    let (s, _, _) = raw(&app, get("/api/documents/N2".into(), ONCOLOGY)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v, _) = raw(&app, get("/api/documents/N1".into(), ONCOLOGY)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["same_patient"].as_array().unwrap().is_empty(), "{v}");
    let (_, v, _) = raw(&app, get("/api/documents/N1".into(), READ)).await;
    assert_eq!(v["same_patient"][0]["id"], "N2");
    // Facets count only the key's notes.
    let (_, v, _) = raw(&app, get("/api/facets".into(), ONCOLOGY)).await;
    assert_eq!(
        v["specialty"],
        json!([{"value": "oncology", "count": 2}]),
        "{v}"
    );
    // Deleting or storing outside the filter: as if absent, and refused.
    let (s, _, _) = raw(
        &app,
        bearer(
            TestRequest::delete().uri("/api/documents/N3"),
            Some(ONCOLOGY),
        )
        .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v, _) = raw(
        &app,
        bearer(TestRequest::post().uri("/api/documents"), Some(ONCOLOGY))
            .set_payload(r#"{"id": "N9", "specialty": "Cardiology", "text": "not mine"}"#)
            .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Evaluation runs over the key's notes only, and names no other note.
    let body = json!({"queries": [{"id": "q1", "text": "heart"}], "qrels": {"q1": {"N2": 1, "N1": 1}}, "wait": true});
    let (s, v, _) = raw(
        &app,
        bearer(TestRequest::post().uri("/api/eval"), Some(ONCOLOGY))
            .set_json(&body)
            .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (mode, run) in v["per_query"][0]["modes"].as_object().unwrap() {
        let top = run["top"].to_string();
        assert!(
            !top.contains("\"N2\"") && !top.contains("\"N3\""),
            "{mode}: {top}"
        );
        assert!(
            run["relevant_ranks"]["N2"].is_null(),
            "the judged cardiology note is never found"
        );
    }
    assert!(
        v["titles"].get("N2").is_none_or(|t| t.is_null()),
        "{}",
        v["titles"]
    );
}

#[actix_web::test]
async fn bounded_work_is_answered_with_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let layer = Layer {
        limits: Some(Limits {
            max_windows_per_request: 20,
            max_offset_k: 50,
            max_group_depth: 100,
            max_jobs_per_principal: 0,
            ..Limits::default()
        }),
        ..Default::default()
    };
    let state = seeded_state(dir.path(), layer, None);
    let app = test::init_service(server::app(state.clone())).await;
    let long = "the patient reports chest pain and shortness of breath ".repeat(40);
    let (s, v, _) = raw(
        &app,
        same_origin(
            TestRequest::post()
                .uri("/api/embed")
                .set_json(json!({"texts": [long.clone(), long.clone()], "windows": true}))
                .to_request(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "too_many_windows");
    let (s, v, _) = raw(
        &app,
        same_origin(
            TestRequest::post()
                .uri("/api/documents")
                .set_json(json!([{"id": "L1", "text": long.clone()}, {"id": "L2", "text": long}]))
                .to_request(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(state.engine.store.note_count(), 0);
    let (s, v, _) = raw(
        &app,
        same_origin(
            TestRequest::get()
                .uri("/api/search?q=a&k=40&offset=20")
                .to_request(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "offset");
    let (s, v, _) = raw(
        &app,
        same_origin(
            TestRequest::get()
                .uri("/api/search?q=a&k=30&group_by=patient")
                .to_request(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "group_by");
    let body = json!({"queries": [{"id": "q", "text": "a"}], "qrels": {"q": {"d": 1}}});
    let (s, v, h) = raw(
        &app,
        same_origin(
            TestRequest::post()
                .uri("/api/eval")
                .set_json(&body)
                .to_request(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "too_many_jobs");
    assert!(h.get("retry-after").is_some());
}

#[test]
fn job_slots_are_bounded_per_principal_and_in_all_and_given_back() {
    let slots = clinsearch::server::jobs::Slots::default();
    let a1 = slots.reserve("eval", "alice", 1, 2).unwrap();
    assert_eq!(
        slots.reserve("eval", "alice", 1, 2).err().unwrap().status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let b1 = slots.reserve("eval", "bob", 1, 2).unwrap();
    assert!(
        slots.reserve("eval", "carol", 1, 2).is_err(),
        "the server's total"
    );
    drop(a1);
    let _a2 = slots.reserve("eval", "alice", 1, 2).unwrap();
    drop(b1);
    slots.reserve("eval", "carol", 1, 2).unwrap();
}

#[actix_web::test]
async fn a_full_query_queue_answers_429_and_recovers() {
    let enc = std::sync::Arc::new(crate::ingest::tiny_encoder());
    let q = clinsearch::server::batcher::QueryEmbedder::start(enc, 4, 2);
    let futs: Vec<_> = (0..20)
        .map(|i| {
            let q = q.clone();
            async move { q.embed(&format!("query {i}")).await }
        })
        .collect();
    let results = crate::server::futures_join(futs).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(clinsearch::Error::Busy(_))))
        .count();
    assert!(busy >= 10, "{busy} of 20 refused");
    assert!(results.iter().filter(|r| r.is_ok()).count() >= 2);
    assert!(q.embed("later").await.is_ok());
}

fn audit_lines(data: &Path) -> Vec<Value> {
    let (events, _) =
        clinsearch::audit::search(&data.join("audit"), &Default::default(), 100_000).unwrap();
    events
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

#[actix_web::test]
async fn every_access_to_patient_data_is_audited_with_who_what_and_which_patient() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), keyed_layer(), None);
    let app = test::init_service(server::app(state)).await;
    raw(
        &app,
        bearer(TestRequest::post().uri("/api/documents"), Some(WRITE))
            .set_payload(NOTES)
            .to_request(),
    )
    .await;
    raw(
        &app,
        bearer(
            TestRequest::get().uri("/api/search?q=carvedilol&mode=bm25"),
            Some(READ),
        )
        .to_request(),
    )
    .await;
    raw(
        &app,
        bearer(TestRequest::get().uri("/api/documents/N3"), Some(READ)).to_request(),
    )
    .await;
    raw(
        &app,
        bearer(TestRequest::delete().uri("/api/documents/N3"), Some(READ)).to_request(),
    )
    .await;
    raw(
        &app,
        bearer(TestRequest::get().uri("/api/audit"), Some("guess")).to_request(),
    )
    .await;
    raw(
        &app,
        bearer(TestRequest::get().uri("/api/health"), None).to_request(),
    )
    .await;
    let ev = audit_lines(dir.path());
    let actions: Vec<&str> = ev.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["ingest", "search", "read_note", "denied", "denied"],
        "{ev:#?}"
    );
    for field in [
        "time",
        "request_id",
        "principal",
        "role",
        "client",
        "action",
        "status",
        "note_ids",
        "patient_ids",
        "query_sha256",
        "prev_sha256",
    ] {
        assert!(ev[1].get(field).is_some(), "{field} missing: {}", ev[1]);
    }
    assert_eq!(ev[0]["principal"], "wendy");
    assert_eq!(ev[0]["note_ids"], json!(["N1", "N2", "N3", "N4"]));
    let search = &ev[1];
    assert_eq!(search["principal"], "alice");
    assert_eq!(search["role"], "read");
    assert_eq!(search["status"], 200);
    assert_eq!(search["note_ids"], json!(["N2"]));
    assert_eq!(search["patient_ids"], json!(["P1"]));
    assert_eq!(search["query_sha256"], sha256_hex(b"carvedilol"));
    assert!(search.get("query_text").is_none());
    assert!(
        search["time"].as_str().unwrap().ends_with('Z')
            && search["time"].as_str().unwrap().len() == 24
    );
    assert_eq!(ev[2]["note_ids"], json!(["N3"]));
    assert_eq!(ev[2]["patient_ids"], json!(["P2"]));
    assert_eq!(
        ev[3]["principal"], "alice",
        "a refused key's principal is named"
    );
    assert_eq!(ev[3]["status"], 403);
    assert!(
        ev[4]["principal"].is_null(),
        "an unknown key names no principal"
    );
    assert_eq!(ev[4]["status"], 401);
    // Note text never reaches the audit.
    let text = std::fs::read_dir(dir.path().join("audit"))
        .unwrap()
        .flatten()
        .map(|f| std::fs::read_to_string(f.path()).unwrap())
        .collect::<String>();
    for words in ["carvedilol", "Atrial fibrillation", "Chemotherapy"] {
        assert!(!text.contains(words), "{words} in the audit");
    }
    // The admin's report: who read patient P2's notes.
    let (s, v, _) = raw(
        &app,
        bearer(
            TestRequest::get().uri("/api/audit?patient=P2&action=read_note"),
            Some(ADMIN),
        )
        .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["matched"], 1);
    assert_eq!(v["events"][0]["principal"], "alice");
    let (s, _, _) = raw(
        &app,
        bearer(TestRequest::get().uri("/api/audit"), Some(WRITE)).to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = raw(
        &app,
        bearer(
            TestRequest::get().uri("/api/audit?since=yesterday"),
            Some(ADMIN),
        )
        .to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        clinsearch::audit::verify(&dir.path().join("audit"))
            .unwrap()
            .broken,
        None
    );
}

#[actix_web::test]
async fn query_text_is_audited_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(
        dir.path(),
        Layer {
            audit_query_text: Some(true),
            ..Default::default()
        },
        None,
    );
    let app = test::init_service(server::app(state)).await;
    raw(
        &app,
        same_origin(
            TestRequest::get()
                .uri("/api/search?q=metoprolol&mode=bm25")
                .to_request(),
        ),
    )
    .await;
    let ev = audit_lines(dir.path());
    assert_eq!(ev[0]["query_text"], "metoprolol");
    assert_eq!(ev[0]["principal"], "local");
}

#[actix_web::test]
async fn when_the_audit_cannot_be_written_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), keyed_layer(), None);
    let app = test::init_service(server::app(state)).await;
    raw(
        &app,
        bearer(TestRequest::post().uri("/api/documents"), Some(WRITE))
            .set_payload(NOTES)
            .to_request(),
    )
    .await;
    let audit_dir = dir.path().join("audit");
    fail::cfg(
        "audit-append",
        &format!("return(error@{})", audit_dir.display()),
    )
    .unwrap();
    let (s, v, _) = raw(
        &app,
        bearer(TestRequest::get().uri("/api/documents/N1"), Some(READ)).to_request(),
    )
    .await;
    let health = raw(&app, TestRequest::get().uri("/api/health").to_request())
        .await
        .0;
    fail::remove("audit-append");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "audit_unavailable");
    assert!(
        !v.to_string().contains("Chemotherapy"),
        "the note was not served"
    );
    assert_eq!(
        health,
        StatusCode::OK,
        "routes without patient data are not audited"
    );
    // Once the disk recovers, requests are served and audited again; the chain is intact.
    let (s, _, _) = raw(
        &app,
        bearer(TestRequest::get().uri("/api/documents/N1"), Some(READ)).to_request(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(clinsearch::audit::verify(&audit_dir).unwrap().broken, None);
    let reads = audit_lines(dir.path())
        .iter()
        .filter(|e| e["action"] == "read_note")
        .count();
    assert_eq!(reads, 1, "the refused read left no line");
}

/// The real binary: keys made with `keys new` in a config file, a search and a note read by
/// alice, the audit report naming both, tampering caught by `audit verify`, and a revoked
/// key refused by the running server.
#[test]
fn the_binary_audits_alice_and_verify_catches_an_edited_line() {
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("clinsearch.toml");
    let model = fixture("tiny-mlm-uncased");
    let key_of = |name: &str, role: &str| -> String {
        let out = run_ok(
            std::process::Command::new(bin)
                .args(["keys", "new", name, "--role", role, "--config"])
                .arg(&config),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let alice = key_of("alice", "read");
    let _ada = key_of("ada", "admin");
    assert!(alice.len() >= 40);
    let listed = run_ok(
        std::process::Command::new(bin)
            .args(["keys", "list", "--config"])
            .arg(&config),
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("alice")
            && listed.contains("ada")
            && !listed.contains(&sha256_hex(alice.as_bytes())),
        "{listed}"
    );
    let notes = dir.path().join("notes.jsonl");
    let jsonl: Vec<String> = serde_json::from_str::<Vec<Value>>(NOTES)
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    std::fs::write(&notes, jsonl.join("\n")).unwrap();
    run_ok(
        std::process::Command::new(bin)
            .args(["ingest", "--quiet", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg(&notes),
    );
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = served_addr(&mut child);
    let child = Kill(child);
    let get = |path: &str, key: &str| {
        ureq::get(&format!("http://{addr}{path}"))
            .header("Authorization", &format!("Bearer {key}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap()
    };
    assert_eq!(
        get("/api/search?q=carvedilol&mode=bm25", &alice).status(),
        200
    );
    assert_eq!(get("/api/documents/N3", &alice).status(), 200);
    assert_eq!(get("/api/documents/N3", "wrong").status(), 401);
    // Revoked: the running server re-reads its keys within seconds.
    run_ok(
        std::process::Command::new(bin)
            .args(["keys", "revoke", "alice", "--config"])
            .arg(&config),
    );
    let t = std::time::Instant::now();
    loop {
        let s = get("/api/documents/N3", &alice).status();
        if s == 401 {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 15,
            "the revoked key still works: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    drop(child);
    let report = |args: &[&str]| {
        let out = run_ok(
            std::process::Command::new(bin)
                .arg("audit")
                .arg("--data")
                .arg(&data)
                .args(args)
                .arg("--json"),
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let p1 = report(&["--patient", "P1"]);
    assert!(
        p1.iter().any(|e| e["principal"] == "alice"
            && e["action"] == "search"
            && e["note_ids"] == json!(["N2"])),
        "{p1:#?}"
    );
    // Alice's reads of patient P2 (the first, then those until the revocation took effect).
    let p2 = report(&["--patient", "P2", "--principal", "alice"]);
    assert!(!p2.is_empty(), "{p2:#?}");
    for e in &p2 {
        assert_eq!(e["action"], "read_note");
        assert_eq!(e["status"], 200);
        assert_eq!(e["note_ids"], json!(["N3"]));
    }
    let denied = report(&["--action", "denied"]);
    assert!(
        denied
            .iter()
            .any(|e| e["status"] == 401 && e["principal"].is_null()),
        "{denied:#?}"
    );
    let table = run_ok(
        std::process::Command::new(bin)
            .arg("audit")
            .arg("--data")
            .arg(&data)
            .args(["--patient", "P2"]),
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("alice") && table.contains("read_note") && table.contains("N3"),
        "{table}"
    );
    let verify = || {
        std::process::Command::new(bin)
            .args(["audit", "verify", "--data"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Tamper: alice's note read rewritten as someone else's.
    let file = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let n = text
        .lines()
        .position(|l| l.contains("\"read_note\""))
        .unwrap();
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == n {
                l.replacen("alice", "mallory", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();
    let bad = verify();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(&format!(":{}:", n + 2)) && err.contains(&format!("line {}", n + 1)),
        "{err}"
    );
}

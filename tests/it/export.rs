//! Cohort export (`/api/search/export`, `clinsearch export`): every hit of a search in the
//! ranking's order across pages, both formats, both groupings, a restricted key's scope, the
//! audit naming every exported note, and bad parameters.

use std::collections::{BTreeMap, HashSet};

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};

use clinsearch::auth::{sha256_hex, KeyEntry, Role};
use clinsearch::config::Layer;
use clinsearch::index::Filter;
use clinsearch::server;

use crate::common::*;
use crate::server::{call, get, same_origin, seeded_state, shared};

/// The body and headers of an export (not JSON: read as text).
async fn export(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    req: TestRequest,
) -> (StatusCode, String, Option<String>) {
    let res = test::call_service(app, same_origin(req.to_request())).await;
    let status = res.status();
    let rows = res
        .headers()
        .get("x-export-rows")
        .map(|v| v.to_str().unwrap().to_string());
    let body = test::read_body(res).await;
    (status, String::from_utf8(body.to_vec()).unwrap(), rows)
}

fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            headers
                .iter()
                .zip(rec.unwrap().iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn jsonl_rows(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The full ranking of a search as the search API pages it (k = 1000).
async fn ranking(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    query: &str,
) -> Vec<Value> {
    let k = if query.contains("&k=") { "" } else { "&k=1000" };
    let (s, v) = call(app, get(&format!("/api/search?{query}{k}"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["rankings"][0]["hits"].as_array().unwrap().clone()
}

#[actix_web::test]
async fn every_hit_is_exported_in_ranking_order_across_pages_in_both_formats() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    // "mg" is in 226 of the 324 notes: more BM25 matches than one export page (200).
    let want = ranking(&app, "q=mg&mode=bm25").await;
    assert!(want.len() > 200, "{} matches", want.len());
    let (s, text, rows) = export(&app, get("/api/search/export?q=mg&mode=bm25&format=csv")).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let got = csv_rows(&text);
    assert_eq!(rows.as_deref(), Some(got.len().to_string().as_str()));
    assert_eq!(got.len(), want.len(), "every BM25 match, not one page");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g["note_id"], w["id"].as_str().unwrap(), "row {i}");
        assert_eq!(g["rank"], (i + 1).to_string());
        assert_eq!(g["patient_id"], w["patient_id"].as_str().unwrap_or(""));
        assert_eq!(g["date"], w["date"].as_str().unwrap_or(""));
        assert_eq!(g["bm25_rank"], w["bm25"]["rank"].to_string());
        assert!(!g["snippet"].is_empty());
    }

    // Hybrid as JSON Lines (a ranking over every note), capped by max_rows; POST takes JSON.
    // A fused ranking depends on how deep each retriever is read: an export of N rows reads
    // N, as a search page of k = N does.
    let want = ranking(&app, "q=chest%20pain&mode=hybrid&k=250").await;
    // k is a page's size: an export takes every hit, and says so rather than ignore it.
    let (s, text, _) = export(
        &app,
        TestRequest::post()
            .uri("/api/search/export")
            .set_json(json!({"q": "chest pain", "mode": "hybrid", "format": "jsonl", "k": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("\"param\":\"k\""), "{text}");
    let (s, text, _) = export(
        &app,
        TestRequest::post().uri("/api/search/export").set_json(
            json!({"q": "chest pain", "mode": "hybrid", "format": "jsonl", "max_rows": 250}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let got = jsonl_rows(&text);
    assert_eq!(got.len(), 250.min(want.len()));
    let ids: Vec<&str> = got.iter().map(|r| r["note_id"].as_str().unwrap()).collect();
    let want_ids: Vec<&str> = want
        .iter()
        .take(250)
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want_ids);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no note twice"
    );
    for r in &got {
        assert!(r["fused_score"].is_number(), "{r}");
        assert!(r.get("semantic_rank").is_some() && r.get("bm25_score").is_some());
    }
}

#[actix_web::test]
async fn grouped_by_patient_one_row_per_patient_with_counts_and_dates() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, text, _) = export(
        &app,
        get("/api/search/export?q=pain&mode=bm25&group_by=patient&format=jsonl"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let rows = jsonl_rows(&text);
    let patients: HashSet<&str> = rows
        .iter()
        .map(|r| r["patient_id"].as_str().unwrap())
        .collect();
    assert_eq!(patients.len(), rows.len(), "one row per patient");
    // Against the notes: each patient's matching notes, and their first and last dates.
    let notes = ranking(&app, "q=pain&mode=bm25").await;
    let mut by_patient: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in &notes {
        by_patient
            .entry(n["patient_id"].as_str().unwrap())
            .or_default()
            .push(n["date"].as_str().unwrap_or(""));
    }
    assert_eq!(patients.len(), by_patient.len());
    for r in &rows {
        let mut dates = by_patient[r["patient_id"].as_str().unwrap()].clone();
        dates.sort();
        assert_eq!(r["matching_notes"], dates.len(), "{r}");
        assert_eq!(r["first_date"], dates[0], "{r}");
        assert_eq!(r["last_date"], *dates.last().unwrap(), "{r}");
    }
    let (_, text, _) = export(
        &app,
        get("/api/search/export?q=pain&mode=bm25&group_by=patient&format=csv"),
    )
    .await;
    let csv = csv_rows(&text);
    assert_eq!(csv.len(), rows.len());
    assert_eq!(
        text.lines().next().unwrap(),
        "rank,patient_id,matching_notes,first_date,last_date,best_note_id,best_note_date,score,snippet"
    );
}

#[actix_web::test]
async fn bad_export_parameters_are_400_with_the_parameter_named() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    for (q, param) in [
        ("q=pain&format=xml", "format"),
        ("q=pain&max_rows=0", "max_rows"),
        ("q=pain&max_rows=10001", "max_rows"),
        ("q=pain&max_rows=lots", "max_rows"),
        ("q=pain&mode=compare", "mode"),
        ("q=", "q"),
        ("q=pain&bogus=1", "bogus"),
    ] {
        let (s, v) = call(&app, get(&format!("/api/search/export?{q}"))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(v["error"]["param"], param, "{q}: {v}");
    }
}

/// A key restricted to Oncology exports only Oncology notes; the audit line of the export
/// names every exported note and its patient.
#[actix_web::test]
async fn a_restricted_key_exports_only_its_notes_and_the_audit_names_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let layer = Layer {
        keys: Some(vec![
            KeyEntry {
                name: "olga".into(),
                role: Role::Read,
                sha256: sha256_hex(b"key-of-olga"),
                filter: Some(Filter {
                    specialty: Some("Oncology".into()),
                    ..Default::default()
                }),
            },
            KeyEntry {
                name: "ada".into(),
                role: Role::Admin,
                sha256: sha256_hex(b"key-of-ada"),
                filter: None,
            },
        ]),
        ..Default::default()
    };
    let notes = repo_root().join("sample_corpus/notes.jsonl");
    let state = seeded_state(dir.path(), layer, Some(&notes));
    let app = test::init_service(server::app(state.clone())).await;
    let as_key = |key: &str, uri: &str| {
        TestRequest::get()
            .uri(uri)
            .insert_header(("authorization", format!("Bearer {key}")))
    };
    let (s, text, _) = export(
        &app,
        as_key(
            "key-of-olga",
            "/api/search/export?q=with&mode=bm25&format=jsonl",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let rows = jsonl_rows(&text);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["specialty"] == "Oncology"), "{text}");
    let (_, all, _) = export(
        &app,
        as_key(
            "key-of-ada",
            "/api/search/export?q=with&mode=bm25&format=jsonl",
        ),
    )
    .await;
    assert!(jsonl_rows(&all).len() > rows.len());

    let (events, _) =
        clinsearch::audit::search(&dir.path().join("audit"), &Default::default(), 1000).unwrap();
    let exports: Vec<_> = events.iter().filter(|e| e.action == "export").collect();
    assert_eq!(exports.len(), 2);
    let olga = exports
        .iter()
        .find(|e| e.principal.as_deref() == Some("olga"))
        .unwrap();
    let ids: HashSet<&str> = rows
        .iter()
        .map(|r| r["note_id"].as_str().unwrap())
        .collect();
    let audited: HashSet<&str> = olga.note_ids.iter().map(String::as_str).collect();
    assert_eq!(ids, audited, "the audit names exactly the exported notes");
    for r in &rows {
        if let Some(p) = r["patient_id"].as_str() {
            assert!(olga.patient_ids.iter().any(|x| x == p), "{p}");
        }
    }
    // Without a key: 401, nothing exported.
    let res = test::call_service(
        &app,
        TestRequest::get()
            .uri("/api/search/export?q=patient")
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// `clinsearch export` writes the same rows as the API and records the export in the audit.
#[test]
fn the_cli_exports_both_formats_and_audits_the_export() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notes = repo_root().join("sample_corpus/notes.jsonl");
    run_ok(
        Command::new(bin)
            .args([
                "ingest", "--quiet", "--window", "24", "--stride", "4", "--model",
            ])
            .arg(fixture("tiny-mlm-uncased"))
            .arg("--data")
            .arg(&data)
            .arg(&notes),
    );
    let out = dir.path().join("cohort.jsonl");
    let run = run_ok(
        Command::new(bin)
            .args([
                "export", "--q", "mg", "--mode", "bm25", "--format", "jsonl", "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&out),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    let rows = jsonl_rows(&std::fs::read_to_string(&out).unwrap());
    assert!(rows.len() > 200, "{}", rows.len());
    assert!(
        stderr.contains(&format!("exported {} notes", rows.len())),
        "{stderr}"
    );
    // Hybrid to standard output as CSV, grouped by patient, filtered.
    let run = run_ok(
        Command::new(bin)
            .args([
                "export",
                "--q",
                "chest pain",
                "--group-by",
                "patient",
                "--specialty",
                "Cardiology",
                "--model",
            ])
            .arg(fixture("tiny-mlm-uncased"))
            .arg("--data")
            .arg(&data),
    );
    let csv = csv_rows(&String::from_utf8_lossy(&run.stdout));
    assert!(!csv.is_empty());
    let patients: HashSet<&String> = csv.iter().map(|r| &r["patient_id"]).collect();
    assert_eq!(patients.len(), csv.len());
    let (events, _) =
        clinsearch::audit::search(&data.join("audit"), &Default::default(), 1000).unwrap();
    let exports: Vec<_> = events.iter().filter(|e| e.action == "export").collect();
    assert_eq!(exports.len(), 2);
    assert!(exports[0].principal.as_deref().unwrap().starts_with("cli:"));
    assert_eq!(exports[0].note_ids.len(), rows.len());
    // Bad input: a clear message and a failure status.
    let bad = Command::new(bin)
        .args(["export", "--q", "pain", "--mode", "compare", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mode=compare"));
}

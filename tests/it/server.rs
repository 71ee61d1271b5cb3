//! The HTTP API, in process (actix's test service): search modes, fusion, filters, grouping,
//! documents, errors, access control, metrics, ingest jobs; a randomised property test of
//! the search handler; and the real binary serving on loopback.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use actix_web::web;
use serde_json::{json, Value};

use clinsearch::config::{Layer, ServerConfig};
use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::index::Filter;
use clinsearch::ingest::{self, source, CsvMapping, Format, IngestOptions};
use clinsearch::search::{Mode, SearchRequest, Searcher};
use clinsearch::server::{self, AppState};
use clinsearch::store::ModelIdentity;

use crate::common::*;
use crate::ingest::{tiny_encoder, tiny_options};

/// A data directory holding sample_corpus/ embedded with the tiny fixture model, and the
/// server state over it, built once and shared by the read-only tests.
pub struct Shared {
    pub _dir: tempfile::TempDir,
    pub state: web::Data<AppState>,
}

pub fn seeded_state(dir: &Path, layer: Layer, notes: Option<&Path>) -> web::Data<AppState> {
    seeded_state_with(dir, &fixture("tiny-mlm-uncased"), layer, notes)
}

/// [`seeded_state`] with the model of the folder `model` (mean pooling).
pub fn seeded_state_with(
    dir: &Path,
    model: &Path,
    layer: Layer,
    notes: Option<&Path>,
) -> web::Data<AppState> {
    let enc = load(model, tiny_options());
    let engine = Engine::open(
        dir,
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    if let Some(path) = notes {
        let report = ingest::run(
            &engine,
            &enc,
            vec![source::read(path, Format::Jsonl, &CsvMapping::default())],
            None,
            &IngestOptions::default(),
        )
        .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    let config = ServerConfig::from_layer(Layer {
        data: Some(dir.to_path_buf()),
        model: Some(model.display().to_string()),
        ..layer
    })
    .unwrap();
    web::Data::new(AppState::new(Arc::new(engine), Arc::new(enc), config).unwrap())
}

/// sample_corpus/ ingested into `dir` with the tiny model, and its query set stored as
/// "sample".
pub fn sample_state(dir: &Path) -> web::Data<AppState> {
    let root = repo_root().join("sample_corpus");
    let state = seeded_state(dir, Layer::default(), Some(&root.join("notes.jsonl")));
    clinsearch::eval::save_set(
        dir,
        "sample",
        &root.join("queries.jsonl"),
        &root.join("qrels.tsv"),
    )
    .unwrap();
    state
}

pub fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let state = sample_state(dir.path());
        Shared { _dir: dir, state }
    })
}

pub async fn call(
    app: &impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    req: TestRequest,
) -> (StatusCode, Value) {
    let res = test::call_service(app, same_origin(req.to_request())).await;
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = test::read_body(res).await;
    let v = if ct.starts_with("application/json") {
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {:?}", String::from_utf8_lossy(&body)))
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    };
    (status, v)
}

/// What the UI's own requests carry: this server's Host, and for a request that changes
/// state its Origin and a JSON content type (the browser checks of a server without keys;
/// the attack tests send requests without them).
pub fn same_origin(mut req: actix_http::Request) -> actix_http::Request {
    use actix_web::http::header::{self, HeaderValue};
    let h = req.headers_mut();
    if !h.contains_key(header::HOST) {
        h.insert(header::HOST, HeaderValue::from_static("localhost:8080"));
    }
    if !h.contains_key(header::ORIGIN) {
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:8080"),
        );
    }
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    req
}

pub fn get(uri: &str) -> TestRequest {
    TestRequest::get().uri(uri)
}

pub fn hits(v: &Value, mode: &str) -> Vec<Value> {
    v["rankings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} ranking in {v}"))["hits"]
        .as_array()
        .unwrap()
        .clone()
}

pub fn ids(hits: &[Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

#[actix_web::test]
async fn compare_returns_three_rankings_and_every_hit_carries_both_signals() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, v) = call(
        &app,
        get("/api/search?q=chest%20pain%20troponin&mode=compare&k=5"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for mode in ["bm25", "semantic", "hybrid"] {
        let h = hits(&v, mode);
        assert_eq!(h.len(), 5, "{mode}");
        for (i, hit) in h.iter().enumerate() {
            assert_eq!(hit["rank"], i + 1);
            // Both retrievers' scores are on every hit (BM25 score present when the note
            // matches a term; the cosine always, since the query is embedded).
            assert!(hit["semantic"]["score"].is_number(), "{hit}");
            assert!(hit["best_chunk"]["char_end"].as_u64().unwrap() > 0);
            assert!(!hit["snippet"].as_array().unwrap().is_empty());
        }
    }
    // BM25 ranks are the BM25 column's order; semantic ranks the semantic column's.
    for (i, hit) in hits(&v, "bm25").iter().enumerate() {
        assert_eq!(hit["bm25"]["rank"], i + 1);
        assert!(hit["snippet"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["hl"] == true));
    }
    for (i, hit) in hits(&v, "semantic").iter().enumerate() {
        assert_eq!(hit["semantic"]["rank"], i + 1);
        assert!(hit["window"]["segments"].is_array());
    }
    // Semantic scores are non-increasing down the semantic column.
    let sem: Vec<f64> = hits(&v, "semantic")
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(sem.windows(2).all(|w| w[0] >= w[1]), "{sem:?}");
}

#[actix_web::test]
async fn hybrid_rrf_scores_are_the_sum_of_reciprocal_ranks() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, v) = call(
        &app,
        get("/api/search?q=shortness%20of%20breath&mode=hybrid&k=10&rrf_k=20"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let h = hits(&v, "hybrid");
    assert_eq!(h.len(), 10);
    for hit in &h {
        let part = |sig: &Value| sig["rank"].as_f64().map_or(0.0, |r| 1.0 / (20.0 + r));
        let expect = part(&hit["bm25"]) + part(&hit["semantic"]);
        let fused = hit["fused"].as_f64().unwrap();
        assert!((fused - expect).abs() < 1e-6, "{fused} vs {expect}: {hit}");
    }
    let fused: Vec<f64> = h.iter().map(|x| x["fused"].as_f64().unwrap()).collect();
    assert!(fused.windows(2).all(|w| w[0] >= w[1]));
}

/// Every fusion explains its fused score: each retriever's share is in the hit and the two
/// add up to it; weighted RRF at alpha 0.5 is plain RRF.
#[actix_web::test]
async fn every_fusion_explains_each_fused_score_by_its_two_shares() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let mut plain = vec![];
    for params in [
        "fusion=rrf",
        "fusion=rrf&alpha=0.5",
        "fusion=rrf&alpha=0.8",
        "fusion=weighted",
        "fusion=dbsf",
        "fusion=zscore&alpha=0.3",
    ] {
        let (s, v) = call(
            &app,
            get(&format!(
                "/api/search?q=chest%20pain&mode=hybrid&k=10&{params}"
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{params}: {v}");
        let h = hits(&v, "hybrid");
        assert_eq!(h.len(), 10, "{params}");
        for hit in &h {
            let f = hit["fused"].as_f64().unwrap();
            let parts = hit["fusion"]["bm25"].as_f64().unwrap()
                + hit["fusion"]["semantic"].as_f64().unwrap();
            assert!((f - parts).abs() < 1e-5, "{params}: {f} vs {parts}");
        }
        let fused: Vec<f64> = h.iter().map(|x| x["fused"].as_f64().unwrap()).collect();
        assert!(fused.windows(2).all(|w| w[0] >= w[1]), "{params}");
        if params.starts_with("fusion=rrf") && !params.contains("0.8") {
            plain.push(ids(&h));
        }
    }
    assert_eq!(plain[0], plain[1], "weighted RRF at 0.5 is RRF");
    let (_, v) = call(&app, get("/api/search?q=x&fusion=magic")).await;
    assert_eq!(v["error"]["param"], "fusion");
}

#[actix_web::test]
async fn weighted_fusion_at_the_extremes_reproduces_each_retriever() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let q = "q=insulin%20glucose&k=5";
    let (_, cmp) = call(&app, get(&format!("/api/search?{q}&mode=compare"))).await;
    let (_, a1) = call(
        &app,
        get(&format!(
            "/api/search?{q}&mode=hybrid&fusion=weighted&alpha=1"
        )),
    )
    .await;
    let (_, a0) = call(
        &app,
        get(&format!(
            "/api/search?{q}&mode=hybrid&fusion=weighted&alpha=0"
        )),
    )
    .await;
    assert_eq!(ids(&hits(&a1, "hybrid")), ids(&hits(&cmp, "semantic")));
    assert_eq!(ids(&hits(&a0, "hybrid")), ids(&hits(&cmp, "bm25")));
    assert_eq!(a1["fusion"], json!({"method": "weighted", "alpha": 1.0}));
}

#[actix_web::test]
async fn a_selective_filter_still_fills_the_page_in_both_retrievers() {
    let state = shared().state.clone();
    let app = test::init_service(server::app(state.clone())).await;
    // Patient P1031 has 10 notes of 324; ask for 8 of them.
    let (s, v) = call(
        &app,
        get("/api/search?q=patient%20follow%20up%20plan&mode=compare&k=8&patient_id=p1031"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sem = hits(&v, "semantic");
    assert_eq!(
        sem.len(),
        8,
        "the vector side must return k hits when k pass the filter"
    );
    for mode in ["bm25", "semantic", "hybrid"] {
        for hit in hits(&v, mode) {
            assert_eq!(hit["patient_id"], "P1031", "{mode}: {hit}");
        }
    }
    // Date and type filters together.
    let (_, v) = call(&app, get("/api/search?q=pain&mode=compare&k=20&note_type=Radiology%20report&date_from=2025-01-01")).await;
    for mode in ["bm25", "semantic", "hybrid"] {
        for hit in hits(&v, mode) {
            assert_eq!(
                hit["note_type"].as_str().unwrap().to_lowercase(),
                "radiology report"
            );
            assert!(hit["date"].as_str().unwrap() >= "2025-01-01", "{hit}");
        }
    }
}

#[test]
fn hnsw_filtered_search_agrees_with_exact_search_on_a_filtered_set() {
    let state = shared().state.clone();
    let enc = tiny_encoder();
    let qv = enc.embed(&["fever and cough"]).unwrap().remove(0);
    let mut req = SearchRequest::new("fever and cough", Mode::Semantic, 10);
    req.filter = Filter {
        note_type: Some("progress note".into()),
        ..Default::default()
    };
    let mut exact = Searcher::new(&state.engine);
    exact.exact_limit = usize::MAX;
    let mut graph = Searcher::new(&state.engine);
    graph.exact_limit = 0;
    graph.ef = 400;
    let a = exact.search(&req, Some(&qv)).unwrap();
    let b = graph.search(&req, Some(&qv)).unwrap();
    let ia: Vec<&str> = a.rankings[0].hits.iter().map(|h| h.id.as_str()).collect();
    let ib: Vec<&str> = b.rankings[0].hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ia.len(), 10);
    let overlap = ia.iter().filter(|i| ib.contains(i)).count();
    assert!(overlap >= 9, "exact {ia:?} vs hnsw {ib:?}");
    for h in &b.rankings[0].hits {
        assert_eq!(h.note_type.as_deref(), Some("progress note"));
    }
}

#[actix_web::test]
async fn grouping_by_patient_gives_one_hit_per_patient() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, v) = call(
        &app,
        get("/api/search?q=hypertension&mode=hybrid&k=10&group_by=patient"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let h = hits(&v, "hybrid");
    assert_eq!(h.len(), 10);
    let patients: HashSet<&str> = h
        .iter()
        .map(|x| x["patient_id"].as_str().unwrap())
        .collect();
    assert_eq!(patients.len(), 10);
    assert!(h.iter().any(|x| x["group"]["count"].as_u64().unwrap() > 1));
    for x in &h {
        assert_eq!(x["group"]["note_ids"][0], x["id"]);
    }
}

#[actix_web::test]
async fn paging_continues_the_same_ranking() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (_, all) = call(&app, get("/api/search?q=blood%20pressure&mode=hybrid&k=10")).await;
    let (_, p2) = call(
        &app,
        get("/api/search?q=blood%20pressure&mode=hybrid&k=5&offset=5"),
    )
    .await;
    assert_eq!(
        ids(&hits(&p2, "hybrid")),
        ids(&hits(&all, "hybrid"))[5..].to_vec()
    );
    assert_eq!(hits(&p2, "hybrid")[0]["rank"], 6);
}

#[actix_web::test]
async fn post_search_takes_json_with_nested_filters() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let req = TestRequest::post().uri("/api/search").set_json(
        json!({"q": "cough", "mode": "bm25", "k": 3, "filter": {"specialty": "Pulmonology"}}),
    );
    let (s, v) = call(&app, req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for hit in hits(&v, "bm25") {
        assert_eq!(hit["specialty"], "Pulmonology");
        assert!(
            hit["semantic"]["score"].is_null(),
            "bm25 mode does not embed the query"
        );
    }
}

#[actix_web::test]
async fn bad_parameters_are_400_with_a_stable_code_and_the_parameter_named() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    for (uri, param) in [
        ("/api/search", "q"),
        ("/api/search?q=", "q"),
        ("/api/search?q=x&k=0", "k"),
        ("/api/search?q=x&k=abc", "k"),
        ("/api/search?q=x&mode=magic", "mode"),
        ("/api/search?q=x&alpha=2", "alpha"),
        ("/api/search?q=x&date_from=31/12/2024", "date_from"),
        ("/api/search?q=x&specialtyy=cardiology", "specialtyy"),
    ] {
        let (s, v) = call(&app, get(uri)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["error"]["code"], "invalid_parameter", "{uri}");
        assert_eq!(v["error"]["param"], param, "{uri}");
    }
    let (s, v) = call(&app, get("/api/nothing-here")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    let (s, v) = call(&app, TestRequest::put().uri("/api/search")).await;
    assert!(
        s == StatusCode::NOT_FOUND || s == StatusCode::METHOD_NOT_ALLOWED,
        "{s}"
    );
    assert!(v["error"]["code"].is_string());
    let bad_json = TestRequest::post()
        .uri("/api/search")
        .insert_header(("content-type", "application/json"))
        .set_payload("{\"q\": ");
    let (s, v) = call(&app, bad_json).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_json");
    let (s, v) = call(&app, get("/api/documents/no-such-note")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
}

/// Random query strings and parameter combinations: never a 5xx, never a non-JSON reply,
/// and every 200 has the rankings its mode promises.
#[actix_web::test]
async fn property_random_queries_and_parameters_never_fail_the_server() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let words = [
        "chest",
        "pain",
        "AND",
        "OR",
        "NOT",
        "\"",
        "(",
        ")",
        "*",
        ":",
        "title:",
        "text:x",
        "~2",
        "^3",
        "-",
        "+",
        "[MASK]",
        "é",
        "日本",
        "🙂",
        "\\",
        "/",
        "%",
        "&",
        "=",
        "?",
        "\u{0}",
        "NaN",
        "{}",
        "SpO2",
        "98%",
        "2024-01-01",
        "a".repeat(300).leak(),
        "[",
        "]",
        "'",
        "<script>",
    ];
    let modes = ["bm25", "semantic", "hybrid", "compare", "", "x"];
    let params = [
        "k",
        "offset",
        "note_type",
        "specialty",
        "patient_id",
        "date_from",
        "date_to",
        "fusion",
        "alpha",
        "rrf_k",
        "group_by",
        "snippet_chars",
    ];
    let values = [
        "0",
        "1",
        "5",
        "1000",
        "1001",
        "-1",
        "abc",
        "",
        "0.5",
        "2024-02-30",
        "2024-01-01",
        "patient",
        "note",
        "rrf",
        "weighted",
        "1e9",
        "inf",
        "Cardiology",
        "P1031",
    ];
    for i in 0..300 {
        let n = rng.usize(0..6);
        let q: String = (0..n)
            .map(|_| words[rng.usize(..words.len())])
            .collect::<Vec<_>>()
            .join(if rng.bool() { " " } else { "" });
        let mut body = serde_json::Map::new();
        body.insert("q".into(), json!(q));
        let mode = modes[rng.usize(..modes.len())];
        if !mode.is_empty() {
            body.insert("mode".into(), json!(mode));
        }
        for _ in 0..rng.usize(0..4) {
            body.insert(
                params[rng.usize(..params.len())].into(),
                json!(values[rng.usize(..values.len())]),
            );
        }
        let req = TestRequest::post()
            .uri("/api/search")
            .set_json(Value::Object(body.clone()));
        let (s, v) = call(&app, req).await;
        assert!(
            s == StatusCode::OK || s == StatusCode::BAD_REQUEST,
            "case {i}: {s} for {body:?}: {v}"
        );
        if s == StatusCode::OK {
            let want = if v["mode"] == "compare" { 3 } else { 1 };
            assert_eq!(v["rankings"].as_array().unwrap().len(), want, "case {i}");
        } else {
            assert!(v["error"]["code"].is_string(), "case {i}: {v}");
        }
    }
}

#[actix_web::test]
async fn documents_can_be_added_read_replaced_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let app = test::init_service(server::app(state.clone())).await;
    // One object.
    let one = json!({"id": "n1", "title": "Clinic note", "text": "Follow-up for warfarin dosing; INR 2.4.", "patient_id": "P9", "date": "2024-03-01"});
    let (s, v) = call(
        &app,
        TestRequest::post().uri("/api/documents").set_json(&one),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stored"], 1);
    // An array with one bad note: the good ones are stored, the bad one is explained.
    let arr = json!([
        {"id": "n2", "text": "Warfarin held before colonoscopy.", "patient_id": "P9", "date": "2024-04-01"},
        {"id": "n3", "text": "   "},
        {"id": "n4", "text": "Bad date", "date": "2024-13-45"},
    ]);
    let (s, v) = call(
        &app,
        TestRequest::post().uri("/api/documents").set_json(&arr),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stored"], 1);
    assert_eq!(v["rejected"], 2);
    assert_eq!(v["results"][1]["status"], "rejected");
    assert!(
        v["results"][2]["error"].as_str().unwrap().contains("date"),
        "{v}"
    );
    // NDJSON.
    let nd = "{\"id\": \"n5\", \"text\": \"INR subtherapeutic at 1.4.\"}\n{\"id\": \"n6\", \"text\": \"Bridging with enoxaparin.\"}\n";
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .insert_header(("content-type", "application/x-ndjson"))
            .set_payload(nd),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stored"], 2);
    // Read, with the query marked and the patient's other notes listed.
    let (s, v) = call(&app, get("/api/documents/n1?q=warfarin")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["note"]["text"], one["text"]);
    assert_eq!(v["same_patient"][0]["id"], "n2");
    let t = v["terms"][0].as_array().unwrap();
    let text: Vec<char> = one["text"].as_str().unwrap().chars().collect();
    let marked: String = text[t[0].as_u64().unwrap() as usize..t[1].as_u64().unwrap() as usize]
        .iter()
        .collect();
    assert_eq!(marked.to_lowercase(), "warfarin");
    assert!(v["chunks"][0]["score"].is_number());
    // Replace: same id, new text; the old text is no longer found.
    let (s, _) = call(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .set_json(json!({"id": "n1", "text": "Apixaban started instead."})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = call(&app, get("/api/search?q=apixaban&mode=bm25")).await;
    assert_eq!(ids(&hits(&v, "bm25")), vec!["n1"]);
    let (_, v) = call(&app, get("/api/search?q=dosing&mode=bm25")).await;
    assert!(hits(&v, "bm25").is_empty());
    // Delete everywhere; a second delete is a 404.
    let (s, _) = call(&app, TestRequest::delete().uri("/api/documents/n1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(state.engine.presence("n1").unwrap(), (false, false, false));
    let (s, v) = call(&app, TestRequest::delete().uri("/api/documents/n1")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    // Nothing valid at all: 400 with the per-note reasons.
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .set_json(json!([{"text": ""}])),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_notes");
    assert_eq!(v["results"][0]["status"], "rejected");
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .insert_header(("content-type", "application/json"))
            .set_payload("not json"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_json");
}

#[actix_web::test]
async fn a_body_over_the_limit_is_413_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(
        dir.path(),
        Layer {
            max_body_bytes: Some(2048),
            ..Default::default()
        },
        None,
    );
    let app = test::init_service(server::app(state.clone())).await;
    let big = json!({"id": "big", "text": "word ".repeat(1000)});
    let (s, v) = call(
        &app,
        TestRequest::post().uri("/api/documents").set_json(&big),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/search")
            .set_json(json!({"q": "x".repeat(4000)})),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(state.engine.store.note_count(), 0);
}

#[actix_web::test]
async fn api_keys_guard_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(
        dir.path(),
        Layer {
            api_key: Some("writer-key".into()),
            read_api_key: Some("reader-key".into()),
            ..Default::default()
        },
        None,
    );
    let app = test::init_service(server::app(state)).await;
    let (s, _) = call(&app, get("/api/health")).await;
    assert_eq!(s, StatusCode::OK, "the health probe is public");
    let (s, v) = call(&app, get("/api/search?q=x&mode=bm25")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, _) = call(&app, get("/metrics")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &app,
        get("/api/search?q=x&mode=bm25").insert_header(("authorization", "Bearer wrong")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &app,
        get("/api/search?q=x&mode=bm25").insert_header(("authorization", "Bearer reader-key")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let note = json!({"id": "a", "text": "note"});
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .insert_header(("authorization", "Bearer reader-key"))
            .set_json(&note),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["error"]["code"], "forbidden");
    let (s, _) = call(
        &app,
        TestRequest::post()
            .uri("/api/documents")
            .insert_header(("x-api-key", "writer-key"))
            .set_json(&note),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // The UI's files are public (they hold no patient data); the UI asks for the key.
    let (s, _) = call(&app, get("/")).await;
    assert_eq!(s, StatusCode::OK);
}

#[actix_web::test]
async fn metrics_count_requests_by_route_without_query_text() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    call(&app, get("/api/search?q=secretpatientname&mode=bm25")).await;
    call(&app, get("/api/documents/P1000-01")).await;
    let (s, v) = call(&app, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("clinsearch_http_requests_total{endpoint=\"/api/search\",method=\"GET\",status=\"200\"}"), "{text}");
    assert!(text.contains(
        "clinsearch_http_request_duration_seconds_bucket{endpoint=\"/api/documents/{id}\""
    ));
    assert!(text.contains("clinsearch_notes 324"));
    assert!(text.contains("clinsearch_query_embed_queries_total"));
    assert!(!text.contains("secretpatientname") && !text.contains("P1000-01"));
}

#[actix_web::test]
async fn stats_embed_and_fill_mask() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, v) = call(&app, get("/api/stats")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["notes"], 324);
    assert!(v["bm25"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["model"]["fill_mask"], true);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/embed")
            .set_json(json!({"texts": ["chest pain", "fever"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let enc = tiny_encoder();
    let want = enc.embed(&["chest pain"]).unwrap().remove(0);
    let got: Vec<f32> = floats(&v["embeddings"][0]);
    assert!(max_abs_diff(&got, &want) < 1e-6);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/embed")
            .set_json(json!({"texts": []})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/fill-mask")
            .set_json(json!({"text": "the patient has [MASK] pain", "top_k": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["masks"][0]["candidates"].as_array().unwrap().len(), 3);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/fill-mask")
            .set_json(json!({"text": "no mask here"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(&app, get("/api/facets")).await;
    assert_eq!(s, StatusCode::OK);
    let types = v["note_type"].as_array().unwrap();
    assert_eq!(types.len(), 11, "{v}");
    assert_eq!(
        types
            .iter()
            .map(|t| t["count"].as_u64().unwrap())
            .sum::<u64>(),
        324
    );
    let (_, spec) = call(&app, get("/api/openapi.json")).await;
    assert_eq!(spec["openapi"], "3.1.0");
}

#[actix_web::test]
async fn fill_mask_without_an_mlm_head_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let enc = load(&fixture("tiny-st-sharded"), Default::default());
    assert!(!enc.has_mlm_head());
    let engine = Engine::open(
        dir.path(),
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    let config = ServerConfig::from_layer(Layer {
        data: Some(dir.path().into()),
        ..Default::default()
    })
    .unwrap();
    let state = web::Data::new(AppState::new(Arc::new(engine), Arc::new(enc), config).unwrap());
    let app = test::init_service(server::app(state)).await;
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/fill-mask")
            .set_json(json!({"text": "a [MASK] b"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "no_mlm_head");
}

/// `POST /api/classify` serves a classifier made by `finetune classify`; a read-only key may
/// use it, and a server without one says how to get one.
#[actix_web::test]
async fn classify_serves_the_fine_tuned_classifier() {
    use clinsearch::train::classify::{self, Classifier, ClassifyArgs};
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    let rows: String = [
        ("atrial fibrillation on warfarin", "cardiology"),
        ("copd on albuterol", "pulmonology"),
        ("chest pain ecg normal", "cardiology"),
        ("asthma with cough albuterol", "pulmonology"),
        ("heart failure chf on metoprolol", "cardiology"),
        ("pneumonia chest xray lung", "pulmonology"),
    ]
    .iter()
    .map(|(t, l)| format!("{}\n", json!({"text": t, "label": l})))
    .collect();
    std::fs::write(&train, rows).unwrap();
    let out = dir.path().join("clf");
    let args = ClassifyArgs {
        base: fixture("tiny-mlm-uncased").display().to_string(),
        train,
        dev: None,
        text_field: "text".into(),
        label_field: "label".into(),
        out: out.clone(),
        resume: None,
        device: candle_core::Device::Cpu,
        options: clinsearch::train::TrainOptions {
            epochs: 2,
            batch_size: 3,
            lr: 1e-2,
            ..Default::default()
        },
    };
    classify::finetune(&args, &mut |_| {}).unwrap();
    let clf = Classifier::load(&out.display().to_string(), &candle_core::Device::Cpu).unwrap();
    let want = clf.predict(&["afib on warfarin"], 2).unwrap();

    let enc = tiny_encoder();
    let data = dir.path().join("data");
    let engine = Engine::open(
        &data,
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    let config = ServerConfig::from_layer(Layer {
        data: Some(data),
        api_key: Some("writer".into()),
        read_api_key: Some("reader".into()),
        ..Default::default()
    })
    .unwrap();
    let state = AppState::new(Arc::new(engine), Arc::new(enc), config)
        .unwrap()
        .with_classifier(clf);
    let app = test::init_service(server::app(web::Data::new(state))).await;
    let post = |body: Value| {
        TestRequest::post()
            .uri("/api/classify")
            .insert_header(("authorization", "Bearer reader"))
            .set_json(body)
    };
    let (s, v) = call(&app, post(json!({"text": "afib on warfarin", "top_k": 2}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!(["cardiology", "pulmonology"]));
    let p = &v["predictions"][0];
    assert_eq!(p["label"], want[0].label.as_str());
    assert!((p["score"].as_f64().unwrap() - want[0].score as f64).abs() < 1e-6);
    assert_eq!(p["top"].as_array().unwrap().len(), 2);
    let (s, v) = call(&app, post(json!({"texts": ["copd", "chest pain"]}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["predictions"].as_array().unwrap().len(), 2);
    for (body, param) in [
        (json!({"text": "a", "texts": ["b"]}), "text"),
        (json!({"texts": []}), "texts"),
        (json!({"texts": ["ok", "  "]}), "texts"),
        (json!({"text": "a", "top_k": 0}), "top_k"),
    ] {
        let (s, v) = call(&app, post(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(param),
            "{v}"
        );
    }
    let (s, v) = call(&app, post(json!({"txt": "a"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = call(
        &app,
        TestRequest::post()
            .uri("/api/classify")
            .set_json(json!({"text": "afib"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // No classifier configured.
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/classify")
            .set_json(json!({"text": "afib"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "no_classifier");
}

#[actix_web::test]
async fn an_uploaded_file_is_ingested_in_the_background_with_errors_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let app = test::init_service(server::app(state.clone())).await;
    let body = "{\"id\": \"u1\", \"text\": \"Metoprolol increased for rate control.\"}\n{\"id\": \"u2\", \"text\": \"\"}\n{\"id\": \"u3\", \"text\": \"Digoxin level checked.\"}\n";
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/ingest?filename=ward%20notes.jsonl")
            .set_payload(body),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let job = v["id"].as_str().unwrap().to_string();
    let mut status = v;
    for _ in 0..200 {
        if status["state"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        status = call(&app, get(&format!("/api/ingest/{job}"))).await.1;
    }
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["stored"], 2);
    assert_eq!(status["total"], 3);
    let err = status["errors"][0].as_str().unwrap();
    assert!(err.starts_with("wardnotes.jsonl:2:"), "{err}");
    assert!(state.engine.presence("u3").unwrap() == (true, true, true));
    // The upload itself does not linger in the data directory.
    let uploads = dir.path().join("uploads");
    assert!(std::fs::read_dir(&uploads).map_or(true, |mut d| d.next().is_none()));
    let (s, _) = call(&app, get("/api/ingest/job-999")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/ingest?format=xml")
            .set_payload("x"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[actix_web::test]
async fn concurrent_query_embeddings_share_forward_passes_and_match_single_ones() {
    let state = shared().state.clone();
    let texts: Vec<String> = (0..24)
        .map(|i| format!("query number {i} about chest pain"))
        .collect();
    let before = state
        .embedder
        .stats
        .batches
        .load(std::sync::atomic::Ordering::SeqCst);
    let futs: Vec<_> = texts.iter().map(|t| state.embedder.embed(t)).collect();
    let got = futures_join(futs).await;
    let batches = state
        .embedder
        .stats
        .batches
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    let enc = tiny_encoder();
    for (t, v) in texts.iter().zip(&got) {
        let want = enc.embed(&[t.as_str()]).unwrap().remove(0);
        assert!(max_abs_diff(v.as_ref().unwrap(), &want) < 1e-5, "{t}");
    }
    assert!(
        batches < texts.len() as u64,
        "24 concurrent queries took {batches} forward passes"
    );
}

/// Polls all futures together (a minimal join_all).
pub async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// The real binary: refuses to expose notes beyond loopback without a key, serves on
/// loopback, and shuts down cleanly on SIGTERM.
#[test]
fn the_binary_serves_on_loopback_and_refuses_open_addresses_without_a_key() {
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-mlm-uncased");
    let out = std::process::Command::new(bin)
        .args([
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--model",
            model.to_str().unwrap(),
            "--data",
        ])
        .arg(dir.path())
        .env_remove("CLINSEARCH_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication"), "{err}");

    let mut child = std::process::Command::new(bin)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--model",
            model.to_str().unwrap(),
            "--data",
        ])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = served_addr(&mut child);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let health: Value = ureq::get(&format!("http://{addr}/api/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let res = ureq::post(&format!("http://{addr}/api/documents"))
        .header("Origin", &format!("http://{addr}"))
        .send_json(json!({"id": "x1", "text": "Served note."}))
        .unwrap();
    assert_eq!(res.status(), 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The data survived the shutdown.
    let engine = Engine::open(dir.path(), None, &OpenOptions::default()).unwrap();
    assert_eq!(engine.presence("x1").unwrap(), (true, true, true));
}

#[actix_web::test]
async fn evaluation_runs_on_a_stored_set_or_posted_judgments() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let (s, v) = call(&app, get("/api/eval/sets")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["sets"][0], json!({"name": "sample", "queries": 45}));
    // Synchronous: the report itself.
    let (s, r) = call(
        &app,
        TestRequest::post()
            .uri("/api/eval")
            .set_json(json!({"set": "sample", "wait": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["queries"], 45);
    assert_eq!(r["summaries"].as_array().unwrap().len(), 3);
    assert_eq!(r["pairs"].as_array().unwrap().len(), 3);
    let q = &r["per_query"][0];
    assert!(q["modes"]["hybrid"]["top"].as_array().unwrap().len() <= 20);
    let first = q["modes"]["bm25"]["top"][0][0].as_str().unwrap();
    assert!(
        r["titles"][first].is_string(),
        "titles of the notes the report names"
    );
    // The same through a job, with posted queries and judgments; progress reaches the total.
    let body = json!({
        "queries": [{"id": "a", "text": "heart attack"}, {"id": "b", "text": "lung infection with fever"}],
        "qrels": {"a": {"P1000-01": 2}, "b": {"P1001-01": 1}},
        "modes": ["bm25", "hybrid"], "ks": [5, 10],
    });
    let (s, job) = call(&app, TestRequest::post().uri("/api/eval").set_json(&body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let mut st = job;
    for _ in 0..200 {
        if st["state"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
        st = call(&app, get(&format!("/api/eval/{id}"))).await.1;
    }
    assert_eq!(st["state"], "done", "{st}");
    assert_eq!(st["done"], 2);
    assert_eq!(st["report"]["ks"], json!([5, 10]));
    assert_eq!(st["report"]["summaries"].as_array().unwrap().len(), 2);
    // A set that does not exist is 404; mistakes are 400s with the reason.
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/eval")
            .set_json(json!({"set": "nope"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no stored query set"));
    for (bad, needle) in [
        (json!({"set": "../etc"}), "set name"),
        (
            json!({"queries": "q1\tx\n"}),
            "give set, or queries and qrels",
        ),
        (
            json!({"queries": "q1\tx\n", "qrels": "q9 0 d 1\n"}),
            "no query has judgments",
        ),
        (json!({"set": "sample", "modes": ["compare"]}), "modes"),
        (json!({"set": "sample", "ks": [0]}), "ks"),
        (json!({"set": "sample", "colour": 1}), "unknown field"),
    ] {
        let (s, v) = call(&app, TestRequest::post().uri("/api/eval").set_json(&bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{bad}: {v}"
        );
    }
    let (s, _) = call(&app, get("/api/eval/eval-999")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// `note_score=first` ranks notes by their first window's cosine (what the note view shows
/// for chunk 0), `max` (the default) by their best window's.
#[actix_web::test]
async fn note_scores_rank_by_the_window_they_name() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    for (how, pick) in [("first", true), ("max", false)] {
        let (s, v) = call(
            &app,
            get(&format!(
                "/api/search?q=chest%20pain%20with%20troponin&mode=semantic&k=10&note_score={how}"
            )),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut scores = vec![];
        for h in hits(&v, "semantic") {
            let id = h["id"].as_str().unwrap();
            let (_, d) = call(
                &app,
                get(&format!(
                    "/api/documents/{id}?q=chest%20pain%20with%20troponin"
                )),
            )
            .await;
            let chunks = d["chunks"].as_array().unwrap();
            let cos: Vec<f64> = chunks
                .iter()
                .map(|c| c["score"].as_f64().unwrap())
                .collect();
            scores.push(if pick {
                cos[0]
            } else {
                cos.iter().cloned().fold(f64::MIN, f64::max)
            });
        }
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1] - 1e-5),
            "{how}: {scores:?}"
        );
    }
    let (s, v) = call(&app, get("/api/search?q=x&note_score=mean")).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("note_score"))
    );
}

/// `bm25_k1` and `bm25_b` change BM25's scores as the formula says (with b = 0 a note's length
/// no longer matters, with a lower k1 repeated words count less), and values outside BM25's
/// ranges are refused naming the parameter.
#[actix_web::test]
async fn bm25_parameters_change_the_keyword_scores_and_are_checked() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let top = |v: &serde_json::Value| -> Vec<(String, f64)> {
        hits(v, "bm25")
            .iter()
            .map(|h| {
                (
                    h["id"].as_str().unwrap().to_string(),
                    h["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let q = "/api/search?q=troponin%20chest%20pain&mode=bm25&k=10";
    let (s, default) = call(&app, get(q)).await;
    assert_eq!(s, StatusCode::OK, "{default}");
    let (_, same) = call(&app, get(&format!("{q}&bm25_k1=1.2&bm25_b=0.75"))).await;
    assert_eq!(top(&default), top(&same), "1.2 / 0.75 is the default");
    let (s, lucene) = call(&app, get(&format!("{q}&bm25_k1=0.9&bm25_b=0.4"))).await;
    assert_eq!(s, StatusCode::OK, "{lucene}");
    let (d, l) = (top(&default), top(&lucene));
    assert!(!l.is_empty());
    assert!(
        d.iter().zip(&l).any(|(a, b)| (a.1 - b.1).abs() > 1e-4),
        "other values give other scores: {d:?} {l:?}"
    );
    for bad in ["bm25_k1=-1", "bm25_b=1.5", "bm25_k1=much"] {
        let (s, v) = call(&app, get(&format!("{q}&{bad}"))).await;
        let param = bad.split('=').next().unwrap();
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (StatusCode::BAD_REQUEST, Some(param)),
            "{bad}: {v}"
        );
    }
}

/// A method a path does not take is 405 with `Allow` naming those it does (what HTTP asks,
/// and what API testers check), for every path of the route table, TRACE included.
#[actix_web::test]
async fn an_undeclared_method_is_405_with_allow() {
    let app = test::init_service(server::app(shared().state.clone())).await;
    let mut by_path: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for r in server::routes::table() {
        by_path
            .entry(r.path)
            .or_default()
            .push(r.method.as_str().to_string());
    }
    for (path, methods) in by_path {
        let uri = path
            .replace("{id}", "N1")
            .replace("{job}", "job-1")
            .replace("{file}", "app.js");
        for m in ["TRACE", "PUT", "PATCH"] {
            if methods.iter().any(|x| x == m) {
                continue;
            }
            let req = TestRequest::default()
                .method(actix_web::http::Method::from_bytes(m.as_bytes()).unwrap())
                .uri(&uri)
                .to_request();
            let res = test::call_service(&app, same_origin(req)).await;
            assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{m} {uri}");
            let allow = res
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(allow, Some(methods.join(", ")), "{m} {uri}");
            let v: Value = serde_json::from_slice(&test::read_body(res).await).unwrap();
            assert_eq!(v["error"]["code"], "method_not_allowed", "{m} {uri}");
        }
    }
}

//! The embedding endpoints other tools speak: OpenAI's `/v1/embeddings` and
//! text-embeddings-inference's `/embed`, `/tokenize` and `POST /`, driven by the real clients
//! (`openai`, `huggingface_hub`) against the server on loopback, then their shapes, errors,
//! limits, keys and audit in process.

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};

use clinsearch::auth::{sha256_hex, KeyEntry, Role};
use clinsearch::config::Layer;
use clinsearch::server;

use crate::common::*;
use crate::server::{call, seeded_state};

const TEXTS: [&str; 3] = [
    "chest pain radiating to the left arm",
    "denies shortness of breath",
    "atrial fibrillation on warfarin",
];

fn cos(a: &[f32], b: &[f32]) -> f32 {
    cosine(a, b)
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

/// Runs tests/compat_clients.py against `url`; None (with a message) without the clients.
fn clients(url: &str, key: Option<&str>) -> Option<Value> {
    if !python_has(
        "openai, huggingface_hub",
        "the OpenAI and TEI client tests",
        "pip install openai huggingface_hub",
    ) {
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/compat_clients.py"))
        .arg(url)
        .arg(key.unwrap_or("-"))
        .args(TEXTS)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The official clients, with and without keys, get `/api/embed`'s vectors.
#[test]
fn the_openai_and_huggingface_hub_clients_get_the_vectors_of_api_embed() {
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let layer = if keyed {
            Layer {
                keys: Some(vec![KeyEntry {
                    name: "reader".into(),
                    role: Role::Read,
                    sha256: sha256_hex(b"key-of-reader"),
                    filter: None,
                }]),
                ..Default::default()
            }
        } else {
            Layer::default()
        };
        let state = seeded_state(dir.path(), layer, None);
        let want = state.encoder.embed(&TEXTS).unwrap();
        let alone = state.encoder.embed(&TEXTS[..1]).unwrap();
        let id = state.encoder.info().id.clone();
        let (addr, handle) = server::spawn(state, "127.0.0.1:0").unwrap();
        let key = keyed.then_some("key-of-reader");
        let Some(got) = clients(&format!("http://{addr}"), key) else {
            return;
        };
        actix_web::rt::System::new().block_on(handle.stop(true));
        for (name, vs) in [
            ("openai float", vectors(&got["openai_float"])),
            ("huggingface_hub", {
                // feature_extraction gives [1, dim] per text.
                got["hf"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| floats(&v[0]))
                    .collect()
            }),
        ] {
            assert_eq!(vs.len(), TEXTS.len(), "{name}");
            for (g, w) in vs.iter().zip(&want) {
                assert!(cos(g, w) > 1.0 - 1e-6, "{name}: cosine {}", cos(g, w));
                assert!(max_abs_diff(g, w) < 1e-6, "{name}");
            }
        }
        // The client's default (base64, decoded by the client) is the same vector.
        let b64 = vectors(&got["openai_default"]);
        // Against the text embedded alone, as the request embeds it (a batch of three pads
        // to the longest, which may move a component by an ulp).
        assert!(
            max_abs_diff(&b64[0], &alone[0]) == 0.0,
            "base64 is exact: {}",
            max_abs_diff(&b64[0], &alone[0])
        );
        assert_eq!(
            got["openai_model"],
            id.as_str(),
            "the reply names the served model"
        );
        let usage = &got["openai_usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() >= 15, "{usage}");
        assert_eq!(usage["prompt_tokens"], usage["total_tokens"]);
        let e = &got["openai_dimensions_error"];
        assert_eq!(
            (e["status"].as_u64(), e["param"].as_str()),
            (Some(400), Some("dimensions")),
            "{e}"
        );
        if keyed {
            assert_eq!(got["openai_wrong_key"], 401);
        }
    }
}

#[actix_web::test]
async fn openai_shapes_inputs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let enc = state.encoder.clone();
    let app = test::init_service(server::app(state.clone())).await;
    let post = |body: Value| TestRequest::post().uri("/v1/embeddings").set_json(body);

    // Token ids are embedded as the tokenizer's ids of the same text would be.
    let ids = enc.tokenizer().encode(TEXTS[0]).unwrap().ids;
    let (s, v) = call(
        &app,
        post(json!({"model": "m", "input": [ids.clone(), ids]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let want = enc.embed(&[TEXTS[0]]).unwrap().remove(0);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][1]["object"], "embedding");
    assert!(max_abs_diff(&floats(&v["data"][1]["embedding"]), &want) < 1e-6);

    for (body, param) in [
        (json!({"model": "m", "input": []}), Some("input")),
        (json!({"model": "m", "input": ""}), Some("input")),
        (json!({"model": "m", "input": [[]]}), Some("input")),
        (json!({"model": "m", "input": [[999999]]}), Some("input")),
        (
            json!({"model": "m", "input": "x", "encoding_format": "hex"}),
            Some("encoding_format"),
        ),
        (
            json!({"model": "m", "input": "x", "dimensions": 3}),
            Some("dimensions"),
        ),
        (json!({"input": "x"}), None),
        (json!({"model": "m", "input": 5}), None),
        (json!({"model": "m", "input": "x", "temperature": 1}), None),
    ] {
        let (s, v) = call(&app, post(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], "invalid_request_error", "{body}: {v}");
        assert!(e["message"].as_str().unwrap().len() > 10, "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{body}: {v}");
        }
    }
    let many: Vec<String> = (0..2049).map(|i| format!("note {i}")).collect();
    let (s, v) = call(&app, post(json!({"model": "m", "input": many}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A larger request goes through the batching worker in passes and keeps its order.
    let texts: Vec<String> = (0..70)
        .map(|i| format!("patient {i} with chest pain"))
        .collect();
    let (s, v) = call(&app, post(json!({"model": "m", "input": texts}))).await;
    assert_eq!(s, StatusCode::OK);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = enc.embed(&refs).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert!(
            max_abs_diff(&floats(&v["data"][i]["embedding"]), w) < 1e-6,
            "input {i}"
        );
    }
}

#[actix_web::test]
async fn tei_embed_tokenize_and_the_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let enc = state.encoder.clone();
    let app = test::init_service(server::app(state.clone())).await;
    let want = enc.embed(&TEXTS).unwrap();

    for uri in ["/embed", "/"] {
        let (s, v) = call(
            &app,
            TestRequest::post()
                .uri(uri)
                .set_json(json!({"inputs": TEXTS})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        for (g, w) in vectors(&v).iter().zip(&want) {
            assert!(max_abs_diff(g, w) < 1e-6, "{uri}");
        }
        let (s, v) = call(
            &app,
            TestRequest::post()
                .uri(uri)
                .set_json(json!({"inputs": TEXTS[1]})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(vectors(&v).len(), 1, "one input, one row");
    }
    // GET / is still the UI.
    let res = test::call_service(
        &app,
        crate::server::same_origin(TestRequest::get().uri("/").to_request()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    // normalize=false: the raw pooled vector, whose direction is the normalised one's.
    let (_, v) = call(
        &app,
        TestRequest::post()
            .uri("/embed")
            .set_json(json!({"inputs": TEXTS[0], "normalize": false})),
    )
    .await;
    let raw = floats(&v[0]);
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "not normalised: {norm}");
    assert!(cos(&raw, &want[0]) > 1.0 - 1e-6);

    // Longer than the model reads: 413 unless truncate.
    let long = "chest pain ".repeat(400);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/embed")
            .set_json(json!({"inputs": long})),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error_type"], "Validation");
    assert!(v["error"].as_str().unwrap().contains("truncate"), "{v}");
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/embed")
            .set_json(json!({"inputs": long, "truncate": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for body in [
        json!({"inputs": []}),
        json!({"inputs": ""}),
        json!({"input": "x"}),
        json!({"inputs": "x", "truncation_direction": "Left"}),
    ] {
        let (s, v) = call(
            &app,
            TestRequest::post().uri("/embed").set_json(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error_type"], "Validation", "{v}");
    }

    // /tokenize: the model's ids with offsets into the text, specials marked.
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/tokenize")
            .set_json(json!({"inputs": [TEXTS[0]]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let row = v[0].as_array().unwrap();
    let ids = enc.tokenizer().encode(TEXTS[0]).unwrap().ids;
    assert_eq!(row.len(), ids.len() + 2);
    assert_eq!(
        (row[0]["special"].clone(), row[0]["text"].clone()),
        (json!(true), json!("[CLS]"))
    );
    assert_eq!(row[1]["id"], ids[0]);
    assert_eq!(row[1]["text"], "chest");
    assert_eq!(
        (row[1]["start"].clone(), row[1]["stop"].clone()),
        (json!(0), json!(5))
    );
    let (_, v) = call(
        &app,
        TestRequest::post()
            .uri("/tokenize")
            .set_json(json!({"inputs": TEXTS[0], "add_special_tokens": false})),
    )
    .await;
    assert_eq!(v[0].as_array().unwrap().len(), ids.len());
}

/// Without keys the endpoints take a JSON body without `Origin` (other programs send none);
/// a cross-site form (not JSON) is still refused, `/api/embed` still asks for `Origin`,
/// and each call is audited as `embed`.
#[actix_web::test]
async fn without_keys_programs_may_call_them_but_cross_site_forms_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let app = test::init_service(server::app(state.clone())).await;
    let bare = |uri: &str, ct: &str, body: &str| {
        TestRequest::post()
            .uri(uri)
            .insert_header(("host", "127.0.0.1:8080"))
            .insert_header(("content-type", ct))
            .set_payload(body.to_string())
            .to_request()
    };
    for uri in ["/v1/embeddings", "/embed", "/", "/tokenize"] {
        let body = if uri == "/v1/embeddings" {
            r#"{"model": "m", "input": "chest pain"}"#
        } else {
            r#"{"inputs": "chest pain"}"#
        };
        let res = test::call_service(&app, bare(uri, "application/json", body)).await;
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
        let res = test::call_service(&app, bare(uri, "text/plain", body)).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{uri}: a form post");
    }
    let res = test::call_service(
        &app,
        bare("/api/embed", "application/json", r#"{"texts": ["x"]}"#),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (events, _) =
        clinsearch::audit::search(&dir.path().join("audit"), &Default::default(), 1000).unwrap();
    let embeds = events
        .iter()
        .filter(|e| e.action == "embed" && e.status == 200)
        .count();
    assert_eq!(embeds, 4, "one audited embed per successful call");
}

/// With keys, the base URL's POST (TEI's embed) needs one like every other route, while GET /
/// (the UI's page) stays public.
#[actix_web::test]
async fn with_keys_the_base_url_embeds_only_for_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let layer = Layer {
        keys: Some(vec![KeyEntry {
            name: "reader".into(),
            role: Role::Read,
            sha256: sha256_hex(b"key-of-reader"),
            filter: None,
        }]),
        ..Default::default()
    };
    let state = seeded_state(dir.path(), layer, None);
    let app = test::init_service(server::app(state)).await;
    let post = |key: Option<&str>| {
        let mut r = TestRequest::post()
            .uri("/")
            .insert_header(("content-type", "application/json"))
            .set_payload(r#"{"inputs": "chest pain"}"#);
        if let Some(k) = key {
            r = r.insert_header(("authorization", format!("Bearer {k}")));
        }
        r.to_request()
    };
    for (key, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
        (Some("key-of-reader"), StatusCode::OK),
    ] {
        let res = test::call_service(&app, post(key)).await;
        assert_eq!(res.status(), want, "{key:?}");
    }
    let res = test::call_service(&app, TestRequest::get().uri("/").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
}

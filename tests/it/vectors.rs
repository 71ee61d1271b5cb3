//! Precomputed vectors in and out (`ingest --vectors`, `--npy`, `export-vectors`,
//! `POST /api/documents` with vectors), and the vector index's settings: int8 quantisation
//! with exact rescoring, recorded in the data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use clinsearch::config::Layer;
use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::index::{Quantization, VectorChoice};
use serde_json::{json, Value};

use crate::common::*;
use crate::server::{call, seeded_state};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clinsearch"))
}

/// `clinsearch ARGS...` with the tiny model and the small windows of the tests.
fn with_tiny(args: &[&str]) -> Command {
    let mut c = bin();
    c.args(args)
        .args(["--window", "24", "--stride", "4", "--model"])
        .arg(fixture("tiny-mlm-uncased"));
    c
}

fn ingest(data: &Path, extra: &[&str], input: &Path) -> std::process::Output {
    let mut c = with_tiny(&["ingest", "--quiet"]);
    c.args(extra).arg("--data").arg(data).arg(input);
    c.output().unwrap()
}

fn export(data: &Path, out: &Path, npy: Option<&Path>) {
    let mut c = bin();
    c.args(["export-vectors", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out);
    if let Some(n) = npy {
        c.arg("--npy").arg(n);
    }
    run_ok(&mut c);
}

/// A stored chunk: byte span, character span, and the vector's bits.
type ChunkBits = (usize, usize, usize, usize, Vec<u32>);

/// Every stored note with its chunks (spans and vectors), in id order.
fn contents(data: &Path) -> Vec<(clinsearch::note::Note, Vec<ChunkBits>)> {
    let engine = Engine::open(data, None, &OpenOptions::default()).unwrap();
    engine
        .store
        .notes()
        .map(|n| {
            let n = n.unwrap();
            let chunks = engine
                .store
                .chunks_of(&n)
                .unwrap()
                .into_iter()
                .map(|c| {
                    let bits = c.vector.iter().map(|x| x.to_bits()).collect();
                    (c.start, c.end, c.char_start, c.char_end, bits)
                })
                .collect();
            (n.note, chunks)
        })
        .collect()
}

fn note_count(data: &Path) -> usize {
    Engine::open(data, None, &OpenOptions::default())
        .unwrap()
        .store
        .note_count()
}

#[test]
fn exported_vectors_import_without_embedding_and_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let notes = repo_root().join("sample_corpus/notes.jsonl");
    let a = t.join("a");
    let out = ingest(&a, &[], &notes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = contents(&a);
    assert!(original.len() > 200);

    // JSONL with the vectors in the lines.
    let a_jsonl = t.join("a.jsonl");
    export(&a, &a_jsonl, None);
    // Every note left the store: the access audit names them (as `export` does).
    let audit: String = std::fs::read_dir(a.join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    let line = audit
        .lines()
        .find(|l| l.contains("\"export\""))
        .expect("an export line");
    assert!(
        line.contains(&format!("\"{}\"", original[0].0.id)),
        "{line}"
    );
    let b = t.join("b");
    let out = ingest(&b, &["--vectors"], &a_jsonl);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(contents(&b) == original, "the imported store differs");
    let b_jsonl = t.join("b.jsonl");
    export(&b, &b_jsonl, None);
    assert!(
        std::fs::read(&a_jsonl).unwrap() == std::fs::read(&b_jsonl).unwrap(),
        "export -> import -> export changed the file"
    );

    // JSONL chunk map plus a NumPy matrix, read back by NumPy itself.
    let (c_jsonl, c_npy) = (t.join("c.jsonl"), t.join("c.npy"));
    export(&a, &c_jsonl, Some(&c_npy));
    let chunks: usize = original.iter().map(|(_, c)| c.len()).sum();
    if python_has("numpy", "the NumPy reading check", "pip install numpy") {
        let f64_npy = t.join("c64.npy");
        let py = format!(
            "import numpy as np; m = np.load({:?}); assert m.dtype == np.float32, m.dtype; print(m.shape[0], m.shape[1]); np.save({:?}, m.astype(np.float64))",
            c_npy.display().to_string(),
            f64_npy.display().to_string()
        );
        let out = run_ok(Command::new("python3").args(["-c", &py]));
        let shape = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dim = original[0].1[0].4.len();
        assert_eq!(shape, format!("{chunks} {dim}"));
        // A float64 matrix written by NumPy imports to the same store.
        let e = t.join("e");
        let mut c = with_tiny(&["ingest", "--quiet"]);
        c.arg("--npy")
            .arg(&f64_npy)
            .arg("--data")
            .arg(&e)
            .arg(&c_jsonl);
        run_ok(&mut c);
        assert!(contents(&e) == original, "the float64 import differs");
    }
    let d = t.join("d");
    let mut c = with_tiny(&["ingest", "--quiet"]);
    c.arg("--npy")
        .arg(&c_npy)
        .arg("--data")
        .arg(&d)
        .arg(&c_jsonl);
    run_ok(&mut c);
    assert!(contents(&d) == original, "the .npy import differs");
    let d_jsonl = t.join("d.jsonl");
    export(&d, &d_jsonl, None);
    assert!(std::fs::read(&a_jsonl).unwrap() == std::fs::read(&d_jsonl).unwrap());

    // The imported directory searches as the original does.
    let search = |data: &Path, mode: &str| {
        let out = t.join("hits.jsonl");
        let mut c = with_tiny(&[
            "export",
            "--mode",
            mode,
            "--format",
            "jsonl",
            "--max-rows",
            "10",
        ]);
        c.args(["--q", "chest pain radiating to the left arm", "--data"])
            .arg(data)
            .arg("--out")
            .arg(&out);
        run_ok(&mut c);
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["note_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    // The same notes stored in another order (the export is in id order) and in other
    // batches: the graphs differ, and BM25's order among close scores moved too (its
    // statistics follow the index's segments; noticed, not changed here). The top 10 hold
    // the same notes.
    let (ba, bb) = (search(&a, "bm25"), search(&b, "bm25"));
    let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set(&ba), set(&bb), "{ba:?} vs {bb:?}");
    let (ha, hb) = (search(&a, "hybrid"), search(&b, "hybrid"));
    assert!(
        ha.iter().filter(|id| hb.contains(id)).count() >= 9,
        "{ha:?} vs {hb:?}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn fails_with(out: std::process::Output, want: &[&str]) {
    assert!(!out.status.success(), "it succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    for w in want {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

#[test]
fn bad_vector_files_are_refused_naming_file_and_line_and_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dim = crate::ingest::tiny_encoder().dim();
    let v = |x: f32| -> Value { json!(vec![x; dim]) };
    let note = |id: &str, vector: Value| {
        json!({"id": id, "text": "Chest pain at rest.", "vector": vector}).to_string()
    };

    // A header naming another dimension, model or window: refused before anything is stored.
    for (name, header, want) in [
        (
            "dim",
            json!({"clinsearch_vectors": 1, "dim": dim + 1}),
            format!("{} dimensions", dim + 1),
        ),
        (
            "model",
            json!({"clinsearch_vectors": 1, "dim": dim, "model": "org/another-model"}),
            "org/another-model".to_string(),
        ),
    ] {
        let f = write(
            t,
            &format!("{name}.jsonl"),
            &format!("{header}\n{}\n", note("n1", v(0.1))),
        );
        let data = t.join(format!("data-{name}"));
        fails_with(
            ingest(&data, &["--vectors"], &f),
            &[&format!("{name}.jsonl:1:"), &want, "nothing was stored"],
        );
        assert_eq!(note_count(&data), 0);
    }
    // A header exported from a directory built with other windows.
    let src = t.join("src");
    run_ok(&mut {
        let mut c = bin();
        c.args([
            "ingest", "--quiet", "--window", "32", "--stride", "4", "--model",
        ])
        .arg(fixture("tiny-mlm-uncased"))
        .arg("--data")
        .arg(&src)
        .arg(write(
            t,
            "one.jsonl",
            "{\"id\": \"x\", \"text\": \"Cough and fever.\"}\n",
        ));
        c
    });
    let other = t.join("other.jsonl");
    export(&src, &other, None);
    let data = t.join("data-window");
    fails_with(
        ingest(&data, &["--vectors"], &other),
        &["other.jsonl:1:", "window: file 32, data directory 24"],
    );
    assert_eq!(note_count(&data), 0);

    // Bad lines: the wrong dimension, a span outside the text, no vectors under --vectors.
    let bad = [
        note("ok1", v(0.1)),
        json!({"id": "short", "text": "Cough.", "vector": vec![0.1; dim - 1]}).to_string(),
        json!({"id": "span", "text": "Cough.", "chunks": [{"char_start": 2, "char_end": 60, "vector": v(0.1)}]}).to_string(),
        json!({"id": "none", "text": "Cough."}).to_string(),
        json!({"id": "nan", "text": "Cough.", "vector": "not a list"}).to_string(),
        json!({"id": "zero", "text": "Cough.", "vector": v(0.0)}).to_string(),
    ]
    .join("\n");
    let f = write(t, "bad.jsonl", &bad);
    let data = t.join("data-bad");
    // Records refused while reading (no vectors) stop an abort run first.
    fails_with(
        ingest(&data, &["--vectors"], &f),
        &["bad.jsonl:4: no vectors"],
    );
    assert_eq!(note_count(&data), 0, "abort stores nothing of the batch");
    let out = ingest(&data, &["--vectors", "--on-error", "skip", "--json"], &f);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let err = err.join("\n");
    let dim_err = format!(
        "bad.jsonl:2: invalid input: chunks[0]: the vector has {} dimensions",
        dim - 1
    );
    for w in [
        dim_err.as_str(),
        "bad.jsonl:3: invalid input: chunks[0]: the span 2..60",
        "bad.jsonl:4: no vectors",
        "bad.jsonl:5: \"vector\" must be an array",
        "bad.jsonl:6: invalid input: chunks[0]: the vector is all zeros",
    ] {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
    assert_eq!(note_count(&data), 1);

    // NumPy: not a matrix, the wrong dimension, a row past the end.
    let map = write(
        t,
        "map.jsonl",
        &format!(
            "{}\n{}\n",
            json!({"id": "m1", "text": "Cough."}),
            json!({"id": "m2", "text": "Fever.", "chunks": [{"char_start": 0, "char_end": 6, "row": 9}]})
        ),
    );
    let data = t.join("data-npy");
    let npy = |name: &str, rows: usize, d: usize| {
        let p = t.join(name);
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {d}), }}");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + dict.len() + 1) % 64;
        b.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend(std::iter::repeat_n(b' ', pad));
        b.push(b'\n');
        for _ in 0..rows * d {
            b.extend_from_slice(&0.5f32.to_le_bytes());
        }
        std::fs::write(&p, b).unwrap();
        p
    };
    let run_npy = |m: &Path, extra: &[&str]| {
        let mut c = with_tiny(&["ingest", "--quiet"]);
        c.arg("--npy")
            .arg(m)
            .args(extra)
            .arg("--data")
            .arg(&data)
            .arg(&map);
        c.output().unwrap()
    };
    fails_with(
        run_npy(&write(t, "text.npy", "hello"), &[]),
        &["text.npy", "not a NumPy"],
    );
    fails_with(
        run_npy(&npy("wide.npy", 2, dim + 3), &[]),
        &[
            "wide.npy",
            &format!("{} dimensions", dim + 3),
            "nothing was stored",
        ],
    );
    fails_with(
        run_npy(&npy("two.npy", 2, dim), &[]),
        &[
            "map.jsonl:2:",
            "row 9 does not exist (the matrix has 2 rows)",
        ],
    );
    assert_eq!(note_count(&data), 0);
    let out = run_npy(&npy("two.npy", 2, dim), &["--on-error", "skip"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 rows of") && err.contains("used by no stored note"),
        "{err}"
    );
    assert_eq!(note_count(&data), 1);
}

#[actix_web::test]
async fn the_api_stores_notes_with_their_vectors_and_refuses_wrong_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let enc = state.encoder.clone();
    let app = test::init_service(clinsearch::server::app(state.clone())).await;
    // The vector of one text, stored with a note about something else: a semantic search for
    // the first text must find the note by that vector.
    let v = enc
        .embed(&["anticoagulation with warfarin"])
        .unwrap()
        .remove(0);
    let body = json!([
        {"id": "v1", "text": "Lorem ipsum dolor sit amet.", "chunks": [{"char_start": 0, "char_end": 11, "vector": v}]},
        {"id": "e1", "text": "Embedded here as usual: cough and fever."},
    ]);
    let (s, r) = call(
        &app,
        TestRequest::post().uri("/api/documents").set_json(&body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["stored"], 2);
    assert_eq!(r["results"][0]["chunks"], 1);
    let (s, r) = call(
        &app,
        TestRequest::get().uri("/api/search?q=anticoagulation%20with%20warfarin&mode=semantic&k=1"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rankings"][0]["hits"][0]["id"], "v1", "{r}");
    let stored = state.engine.store.get("v1").unwrap().unwrap();
    let chunk = state.engine.store.chunks_of(&stored).unwrap().remove(0);
    assert_eq!((chunk.char_start, chunk.char_end, chunk.end), (0, 11, 11));
    // The wrong dimension, or both forms at once: 400 naming the note's problem.
    let bad = json!({"id": "v2", "text": "x y z", "vector": [0.5, 0.5]});
    let (s, r) = call(
        &app,
        TestRequest::post().uri("/api/documents").set_json(&bad),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert!(
        r["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("2 dimensions"),
        "{r}"
    );
    let both = json!({"id": "v3", "text": "x", "vector": v, "chunks": []});
    let (s, r) = call(
        &app,
        TestRequest::post().uri("/api/documents").set_json(&both),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert!(
        r["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not both"),
        "{r}"
    );
    assert!(state.engine.store.get("v2").unwrap().is_none());
}

/// Recall@10 of the vector index (rescored as searches use it) against exact search over
/// the stored vectors, for `queries`.
fn recall_at_10(engine: &Engine, queries: &[Vec<f32>]) -> f64 {
    let all: Vec<(u64, Vec<f32>)> = engine
        .store
        .chunks()
        .map(|c| {
            let c = c.unwrap();
            (c.id, c.vector)
        })
        .collect();
    let mut found = 0;
    for q in queries {
        let mut exact: Vec<(f32, u64)> = all
            .iter()
            .map(|(id, v)| (clinsearch::search::cosine(v, q), *id))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let truth: Vec<u64> = exact.iter().take(10).map(|x| x.1).collect();
        let got = engine
            .vectors
            .search_rescored(&engine.store, q, 10, 256, None)
            .unwrap();
        found += got.iter().filter(|h| truth.contains(&h.chunk_id)).count();
    }
    found as f64 / (10 * queries.len()) as f64
}

#[test]
fn int8_vectors_with_exact_rescoring_keep_recall_and_the_choice_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let notes = repo_root().join("sample_corpus/notes.jsonl");
    let out = ingest(&data, &["--quantization", "int8", "--hnsw-m", "16"], &notes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enc = crate::ingest::tiny_encoder();
    let texts: Vec<String> =
        std::fs::read_to_string(repo_root().join("sample_corpus/queries.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let queries = enc.embed(&refs).unwrap();
    assert!(queries.len() >= 20);
    let int8_recall = {
        let engine = Engine::open(&data, None, &OpenOptions::default()).unwrap();
        let s = engine.vectors.settings();
        assert_eq!((s.quantization, s.m), (Quantization::Int8, 16), "recorded");
        assert!(engine.vectors.len() > 1000, "{}", engine.vectors.len());
        recall_at_10(&engine, &queries)
    };
    // Asking an existing directory for other settings is refused; reindex changes them.
    let err = Engine::open(
        &data,
        None,
        &OpenOptions {
            vectors: VectorChoice {
                quantization: Some(Quantization::F32),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("int8") && err.contains("reindex"), "{err}");
    let mut c = bin();
    c.args(["reindex", "--quantization", "f32", "--data"])
        .arg(&data);
    let out = run_ok(&mut c);
    assert!(String::from_utf8_lossy(&out.stdout).contains("f32 vectors, M 16"));
    let engine = Engine::open(&data, None, &OpenOptions::default()).unwrap();
    assert_eq!(engine.vectors.settings().quantization, Quantization::F32);
    let f32_recall = recall_at_10(&engine, &queries);
    eprintln!("recall@10 against exact: int8 {int8_recall:.3}, f32 {f32_recall:.3}");
    assert!(int8_recall >= 0.95, "int8 recall@10 {int8_recall}");
    assert!(f32_recall >= 0.95, "f32 recall@10 {f32_recall}");
    // Quantised, then rescored: no worse than the f32 graph (it looks at twice the candidates).
    assert!(
        int8_recall >= f32_recall - 0.01,
        "int8 {int8_recall} vs f32 {f32_recall}"
    );
}

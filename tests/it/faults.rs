//! Reliability under faults: failures injected (the `failpoints` test build) at every write
//! step, as errors and as panics. For each: the request gets a clear error with a stable
//! code, nothing is half-visible, the engine says it is degraded and heals itself without a
//! restart, and afterwards every acknowledged note is found by both retrievers. Plus vector
//! rebuilds that never show a partial graph, the supervised query worker, and re-embedding
//! killed at random points.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};

use clinsearch::config::Layer;
use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::server;
use clinsearch::store::ModelIdentity;

use crate::common::*;
use crate::ingest::tiny_encoder;
use crate::server::{same_origin, seeded_state};

/// One test at a time may configure failpoints: each point is global to the process (the
/// `@DIR` scope keeps other tests' data directories out of it, not other fault tests).
///
/// Held across awaits on purpose: each actix test runs its own single-threaded runtime, so
/// the guard never blocks another task of the same runtime.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|p| p.into_inner())
}

fn notes(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "id": format!("{prefix}{i}"),
                    "patient_id": format!("P{i}"),
                    "text": format!("{prefix} note {i}: chest pain radiating to the left arm, troponin pending"),
                })
            })
            .collect(),
    )
}

/// Every id's presence agrees across store, BM25 and the graph; the acknowledged ones are in
/// all three.
fn assert_consistent(engine: &Engine, ids: &[String], acked: &[String]) {
    for id in ids {
        let p = engine.presence(id).unwrap();
        assert!(
            p.0 == p.1 && p.1 == p.2,
            "{id} is half-visible: {p:?} (graph points {}, live {}, listed {})",
            engine.vectors.points(),
            engine.vectors.len(),
            engine.vectors.contains_note(id)
        );
    }
    for id in acked {
        assert_eq!(
            engine.presence(id).unwrap(),
            (true, true, true),
            "acknowledged {id}"
        );
    }
    assert_eq!(engine.bm25.num_docs() as usize, engine.store.note_count());
    assert_eq!(engine.vectors.len(), engine.store.chunk_count());
}

fn wait_healthy(engine: &Engine) {
    let t = Instant::now();
    while let Some(reason) = engine.degraded() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never healed: {reason}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[actix_web::test]
#[allow(clippy::await_holding_lock)]
async fn a_failure_at_any_write_step_is_a_clear_error_and_heals_without_a_restart() {
    let _serial = serial();
    for point in [
        "store-apply",
        "store-flush",
        "bm25-apply",
        "bm25-commit",
        "hnsw-insert",
    ] {
        for action in ["error", "panic"] {
            let dir = tempfile::tempdir().unwrap();
            let state = seeded_state(dir.path(), Layer::default(), None);
            let app = test::init_service(server::app(state.clone())).await;
            let post = |body: Value| {
                same_origin(
                    TestRequest::post()
                        .uri("/api/documents")
                        .set_json(body)
                        .to_request(),
                )
            };
            let res = test::call_service(&app, post(notes("a", 5))).await;
            assert_eq!(res.status(), StatusCode::OK);
            let scope = format!("return({action}@{})", dir.path().display());
            fail::cfg(point, &scope).unwrap();
            let res = test::call_service(&app, post(notes("b", 5))).await;
            let status = res.status();
            let body: Value = test::read_body_json(res).await;
            let code = body["error"]["code"].as_str().unwrap_or("").to_string();
            let case = format!("{point}/{action}");
            eprintln!("case {case}: {status} {code}");
            match point {
                // Nothing stored (or not durably): our failure, not the user's.
                "store-apply" | "store-flush" => {
                    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{case}: {body}");
                    assert_eq!(code, "internal", "{case}");
                }
                // Stored durably; the index is behind and says so.
                _ => {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {body}");
                    assert_eq!(code, "index_degraded", "{case}");
                }
            }
            if point != "store-apply" {
                // Degraded while the failure lasts, visible to probes and metrics.
                let h =
                    test::call_service(&app, TestRequest::get().uri("/api/health").to_request())
                        .await;
                assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE, "{case}");
                let h: Value = test::read_body_json(h).await;
                assert_eq!(h["status"], "degraded", "{case}");
                assert!(h["reason"].as_str().unwrap().len() > 5, "{case}: {h}");
                let m = test::call_service(
                    &app,
                    same_origin(TestRequest::get().uri("/metrics").to_request()),
                )
                .await;
                let m = String::from_utf8(test::read_body(m).await.to_vec()).unwrap();
                assert!(m.contains("clinsearch_degraded 1"), "{case}");
                // Searches keep answering meanwhile, from the indexes as they were.
                let s = test::call_service(
                    &app,
                    same_origin(
                        TestRequest::get()
                            .uri("/api/search?q=chest&mode=hybrid")
                            .to_request(),
                    ),
                )
                .await;
                assert_eq!(s.status(), StatusCode::OK, "{case}");
            }
            fail::remove(point);
            wait_healthy(&state.engine);
            let h =
                test::call_service(&app, TestRequest::get().uri("/api/health").to_request()).await;
            assert_eq!(h.status(), StatusCode::OK, "{case}");
            let ids: Vec<String> = (0..5)
                .flat_map(|i| [format!("a{i}"), format!("b{i}")])
                .collect();
            let acked: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
            assert_consistent(&state.engine, &ids, &acked);
            if point != "store-apply" {
                // The batch reached the store, so healing made it searchable everywhere.
                for i in 0..5 {
                    assert_eq!(
                        state.engine.presence(&format!("b{i}")).unwrap(),
                        (true, true, true),
                        "{case}"
                    );
                }
            }
            // Writes work again, and a retry of the failed batch is simply a replacement.
            let res = test::call_service(&app, post(notes("b", 5))).await;
            assert_eq!(res.status(), StatusCode::OK, "{case}");
            assert_consistent(&state.engine, &ids, &ids);
        }
    }
}

#[test]
fn a_failed_checkpoint_loses_nothing_and_the_next_one_succeeds() {
    let _serial = serial();
    let enc = tiny_encoder();
    let identity = ModelIdentity::from_info(enc.info());
    for point in ["hnsw-dump", "manifest-swap", "oplog-prune"] {
        for action in ["error", "panic"] {
            let dir = tempfile::tempdir().unwrap();
            let engine =
                Engine::open(dir.path(), Some(&identity), &OpenOptions::default()).unwrap();
            let batch: Vec<_> = (0..20)
                .map(|i| {
                    let note = clinsearch::note::Note::new(
                        format!("n{i}"),
                        format!("note {i} about dyspnea and edema"),
                    );
                    let w = enc.embed_windows(&[&note.text]).unwrap().remove(0);
                    clinsearch::store::EmbeddedNote::new(note, w)
                })
                .collect();
            engine.apply(&batch[..10], &[]).unwrap();
            engine.checkpoint().unwrap();
            engine.apply(&batch[10..], &[]).unwrap();
            fail::cfg(point, &format!("return({action}@{})", dir.path().display())).unwrap();
            let e = engine.checkpoint().unwrap_err().to_string();
            fail::remove(point);
            assert!(
                e.contains(point) || e.contains("panicked"),
                "{point}/{action}: {e}"
            );
            let ids: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
            assert_consistent(&engine, &ids, &ids);
            drop(engine);
            // Reopened from whatever the failed checkpoint left: everything is there.
            let engine =
                Engine::open(dir.path(), Some(&identity), &OpenOptions::default()).unwrap();
            assert_consistent(&engine, &ids, &ids);
            engine.checkpoint().unwrap();
            drop(engine);
            let engine =
                Engine::open(dir.path(), Some(&identity), &OpenOptions::default()).unwrap();
            assert_consistent(&engine, &ids, &ids);
        }
    }
}

#[test]
fn searches_during_a_vector_rebuild_see_the_whole_old_graph_never_a_partial_one() {
    let enc = tiny_encoder();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(
            dir.path(),
            Some(&ModelIdentity::from_info(enc.info())),
            &OpenOptions::default(),
        )
        .unwrap(),
    );
    let batch: Vec<_> = (0..300)
        .map(|i| {
            let note = clinsearch::note::Note::new(
                format!("n{i}"),
                format!("note {i}: fever, cough and {} days of malaise", i % 13),
            );
            let w = enc.embed_windows(&[&note.text]).unwrap().remove(0);
            clinsearch::store::EmbeddedNote::new(note, w)
        })
        .collect();
    engine.apply(&batch, &[]).unwrap();
    let q = enc.embed(&["fever and cough"]).unwrap().remove(0);
    let chunks = engine.store.chunk_count();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let searcher = {
        let (engine, stop, q) = (engine.clone(), stop.clone(), q.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let hits = engine.vectors.search(&q, 50, 64, None);
                assert_eq!(hits.len(), 50, "a search saw a partial graph");
                n += 1;
            }
            n
        })
    };
    for _ in 0..5 {
        engine.vectors.rebuild(&engine.store).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let searches = searcher.join().unwrap();
    assert!(searches > 5, "{searches}");
    assert_eq!(engine.vectors.len(), chunks);
    assert_eq!(engine.vectors.points(), chunks);
}

#[actix_web::test]
#[allow(clippy::await_holding_lock)]
async fn a_panicking_query_embedding_fails_its_request_with_500_and_the_worker_goes_on() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state = seeded_state(dir.path(), Layer::default(), None);
    let app = test::init_service(server::app(state)).await;
    fail::cfg("query-embed", "return(panic@explode the worker)").unwrap();
    let res = test::call_service(
        &app,
        same_origin(
            TestRequest::get()
                .uri("/api/search?q=explode%20the%20worker&mode=semantic")
                .to_request(),
        ),
    )
    .await;
    fail::remove("query-embed");
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = test::read_body_json(res).await;
    assert_eq!(v["error"]["code"], "internal", "{v}");
    for q in ["chest pain", "explode the worker"] {
        let res = test::call_service(
            &app,
            same_origin(
                TestRequest::get()
                    .uri(&format!(
                        "/api/search?q={}&mode=semantic",
                        q.replace(' ', "%20")
                    ))
                    .to_request(),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK, "{q}");
    }
}

fn reembed_cmd(data: &Path, model: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_clinsearch"));
    c.args([
        "reindex",
        "--reembed",
        "--window",
        "24",
        "--stride",
        "4",
        "--model",
    ])
    .arg(model)
    .arg("--data")
    .arg(data)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    c
}

/// SIGKILL at 20 random moments of `reindex --reembed`: after each, the data directory is the
/// original or the re-embedded one, complete, never missing or empty; and a run left to
/// finish swaps in the new model.
#[test]
fn reembed_killed_at_random_points_always_leaves_one_complete_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("notes.jsonl");
    let n = 400;
    let lines: Vec<String> = (0..n)
        .map(|i| json!({"id": format!("r{i}"), "text": format!("note {i}: {} shortness of breath on exertion", "stable vitals ".repeat(i % 6))}).to_string())
        .collect();
    std::fs::write(&src, lines.join("\n")).unwrap();
    let uncased = fixture("tiny-mlm-uncased");
    let cased = fixture("tiny-mlm-cased-zip");
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_clinsearch"))
            .args([
                "ingest", "--quiet", "--window", "24", "--stride", "4", "--model",
            ])
            .arg(&uncased)
            .arg("--data")
            .arg(&data)
            .arg(&src),
    );
    // How long a whole re-embedding takes here, to spread the kills over all of it.
    let probe = tmp.path().join("probe");
    copy_dir(&data, &probe);
    let t = Instant::now();
    assert!(reembed_cmd(&probe, &cased).status().unwrap().success());
    let full = t.elapsed().as_millis() as u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("reembed kill test: seed {seed}, a full run takes {full} ms");
    let (mut old, mut new) = (0, 0);
    for _ in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = 50 + seed % (full + 200);
        let mut child = reembed_cmd(&data, &cased).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(at));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            data.join("sled").is_dir(),
            "the data directory is missing after a kill at {at} ms"
        );
        let engine = Engine::open(&data, None, &OpenOptions::default()).unwrap();
        assert_eq!(engine.store.note_count(), n, "kill at {at} ms");
        assert_eq!(engine.bm25.num_docs() as usize, n, "kill at {at} ms");
        assert_eq!(engine.vectors.note_count(), n, "kill at {at} ms");
        let id = engine.identity().unwrap().unwrap();
        if id.model.contains("cased-zip") {
            new += 1
        } else {
            old += 1
        }
        drop(engine);
        if new > 0 {
            // Back to the first model, so later kills meet the swap again.
            assert!(reembed_cmd(&data, &uncased).status().unwrap().success());
        }
    }
    eprintln!("after the kills: {old} times the original, {new} times the re-embedded copy");
    assert!(old > 0, "no kill landed before the swap");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_data_directory_missing_where_one_existed_is_an_error_not_an_empty_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    {
        let _e = Engine::open(&data, None, &OpenOptions::default()).unwrap();
    }
    std::fs::remove_dir_all(&data).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clinsearch"))
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(fixture("tiny-mlm-uncased"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is missing, but a data directory existed there"),
        "{err}"
    );
    assert!(!data.exists(), "no empty store was created");
}

/// The encoder profile lives in the data directory: a directory ingested with `--window 24
/// --stride 4 --window-context heading` is served and evaluated without repeating them, and
/// a contradicting flag is an error naming both values.
#[test]
fn the_encoder_profile_is_read_from_the_data_directory() {
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = fixture("tiny-mlm-uncased");
    let root = repo_root().join("sample_corpus");
    run_ok(
        std::process::Command::new(bin)
            .args([
                "ingest",
                "--quiet",
                "--window",
                "24",
                "--stride",
                "4",
                "--window-context",
                "heading",
                "--model",
            ])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg(root.join("notes.jsonl")),
    );
    let out = run_ok(
        std::process::Command::new(bin)
            .args(["eval", "--json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--queries")
            .arg(root.join("queries.jsonl"))
            .arg("--qrels")
            .arg(root.join("qrels.tsv")),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ndcg"),
        "evaluated with the stored profile"
    );
    let out = std::process::Command::new(bin)
        .args(["ingest", "--quiet", "--window", "32", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg(root.join("notes.jsonl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("window 32 contradicts") && err.contains("window 24"),
        "{err}"
    );
    let out = std::process::Command::new(bin)
        .args(["ingest", "--quiet", "--window-context", "title", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg(root.join("notes.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("window context title contradicts")
            && err.contains("window context heading"),
        "{err}"
    );
    let stats = run_ok(
        std::process::Command::new(bin)
            .args(["stats", "--data"])
            .arg(&data),
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        stats["model"]["context"], "heading",
        "stats shows the window context"
    );
    // The server starts on it with no encoder flags at all.
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = vec![];
    let served = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("clinsearch serving on") => break true,
            Some(Ok(l)) => seen.push(l),
            _ => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "the server did not start: {seen:?}");
}

/// A small tmpfs, unmounted when dropped; None (with a message) where this process may not
/// mount (not root, or a container without the capability).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mb: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Disk full: ingest into a small tmpfs until ENOSPC. A clear error, every acknowledged note
/// intact, reads keep working, and once space is freed ingest succeeds again (the engine
/// heals what the full disk interrupted) and a reopened directory holds everything.
#[test]
fn a_full_disk_is_a_clear_error_loses_nothing_and_recovers_when_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("small"), 24) else {
        eprintln!("SKIPPED: the disk-full test needs to mount a tmpfs (root with CAP_SYS_ADMIN)");
        return;
    };
    let enc = tiny_encoder();
    let identity = ModelIdentity::from_info(enc.info());
    let data = fs.0.join("data");
    // Ballast: most of the space, freed later.
    let ballast = fs.0.join("ballast");
    let free_mb = 24 - 8;
    std::fs::write(&ballast, vec![0u8; free_mb << 20]).unwrap();
    let engine = Engine::open(&data, Some(&identity), &OpenOptions::default()).unwrap();
    let text =
        "Patient with chest pain, dyspnea on exertion and bilateral ankle edema. ".repeat(12);
    // Embedded once; each note gets its own copy nudged apart (the test is about the disk,
    // and distinct vectors keep the graph check exact).
    let windows = enc.embed_windows(&[&text]).unwrap().remove(0);
    let make = |i: usize| {
        let note = clinsearch::note::Note::new(format!("d{i}"), format!("{i}: {text}"));
        let mut w = windows.clone();
        for (j, win) in w.iter_mut().enumerate() {
            let d = win.vector.len();
            win.vector[(i * 7 + j) % d] += 0.5;
            win.vector[(i * 13 + j * 3 + 1) % d] -= 0.25;
            let n = win.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            win.vector.iter_mut().for_each(|x| *x /= n);
        }
        clinsearch::store::EmbeddedNote::new(note, w)
    };
    let mut acked = vec![];
    let mut failure = None;
    let mut i = 0;
    for _ in 0..2000 {
        let batch: Vec<_> = (i..i + 10).map(make).collect();
        match engine.apply(&batch, &[]) {
            Ok(_) => acked.extend((i..i + 10).map(|j| format!("d{j}"))),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
        i += 10;
    }
    let failure = failure.expect("the tmpfs never filled up");
    eprintln!("full after {} notes: {failure}", acked.len());
    // sled's own error names ENOSPC; an index that fails first (tantivy reports a dead
    // worker thread) is named a full disk by the engine.
    assert!(
        failure.to_lowercase().contains("no space")
            || failure.contains("os error 28")
            || failure.contains("is full"),
        "not a clear disk-full error: {failure}"
    );
    assert!(
        acked.len() >= 10,
        "the disk filled before anything was stored"
    );
    // Reads keep working on a full disk.
    for id in acked.iter().step_by(7) {
        assert!(engine.store.get(id).unwrap().is_some(), "{id}");
    }
    assert!(engine.bm25.num_docs() > 0);
    // Space freed. An index that hit the full disk is healed in place; sled, once a write
    // of its own failed, keeps failing until the directory is reopened (sled 0.34 does not
    // recover from an I/O error in-process): the engine reports that as degraded, and after
    // a reopen (a restart of the server) ingest goes on with nothing acknowledged lost.
    std::fs::remove_file(&ballast).unwrap();
    let more: Vec<_> = (100_000..100_010).map(make).collect();
    let in_place = (0..10).any(|_| {
        let ok = engine.apply(&more, &[]).is_ok();
        if !ok {
            assert!(
                engine.degraded().is_some(),
                "a failing store must show in health"
            );
            let _ = engine.heal();
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    eprintln!("recovered in place: {in_place}");
    let engine = if in_place {
        engine
    } else {
        drop(engine);
        let e = Engine::open(&data, Some(&identity), &OpenOptions::default()).unwrap();
        assert_consistent(&e, &acked, &acked);
        e.apply(&more, &[]).unwrap();
        e
    };
    acked.extend((100_000..100_010).map(|j| format!("d{j}")));
    assert_eq!(engine.degraded(), None);
    assert_consistent(&engine, &acked, &acked);
    engine.checkpoint().unwrap();
    drop(engine);
    let engine = Engine::open(&data, Some(&identity), &OpenOptions::default()).unwrap();
    assert_consistent(&engine, &acked, &acked);
}

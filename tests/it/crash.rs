//! Crash safety, for real: the `clinsearch` binary ingests a few thousand notes and is killed
//! with SIGKILL at random moments spread over the whole run, and once inside its final
//! checkpoint (vector dump, manifest swap, log pruning; a test-only failpoint stretches it to
//! 1.5 s so the kill lands there); after each kill the data directory must hold every
//! acknowledged note in sled, BM25 and the vector graph (each chunk found by searching the
//! graph for its own vector), and no note in only some of them. Re-running the same ingest
//! converges to exactly the source set.

use std::process::{Command, Stdio};
use std::time::Duration;

use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::store::ModelIdentity;

use crate::common::*;
use crate::ingest::tiny_encoder;

const NOTES: usize = 1500;

fn ingest_cmd(data: &std::path::Path, file: &std::path::Path, acks: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clinsearch"));
    cmd.args([
        "ingest",
        "--quiet",
        "--batch",
        "32",
        "--window",
        "24",
        "--stride",
        "4",
        "--max-windows",
        "16",
    ])
    .arg("--model")
    .arg(fixture("tiny-mlm-uncased"))
    .arg("--data")
    .arg(data)
    .arg("--acks")
    .arg(acks)
    .arg(file)
    .env_remove("CLINSEARCH_MODEL")
    .env("FAILPOINTS", "checkpoint-delay=return(sleep=1500)")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

#[test]
fn ingest_then_kill_then_reopen_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("notes.jsonl");
    let acks = tmp.path().join("acks.txt");
    let mut src = String::new();
    let words = [
        "fever",
        "cough",
        "chest pain",
        "dyspnea",
        "edema",
        "rash",
        "syncope",
        "nausea",
    ];
    for i in 0..NOTES {
        let w = words[i % words.len()];
        let text = format!(
            "Note {i}: patient reports {w} for {} days; plan reviewed with attending. {}",
            i % 11,
            "Vitals stable. ".repeat(i % 5)
        );
        src.push_str(&serde_json::json!({ "id": format!("c{i}"), "text": text, "patient_id": format!("P{}", i % 97) }).to_string());
        src.push('\n');
    }
    std::fs::write(&file, &src).unwrap();
    let ids: Vec<String> = (0..NOTES).map(|i| format!("c{i}")).collect();
    let identity = ModelIdentity::from_info(tiny_encoder().info());

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut kills = 0;
    let mut in_checkpoint = 0;
    let count_acks = || {
        std::fs::read_to_string(&acks)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for round in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before = count_acks();
        let mut child = ingest_cmd(&data, &file, &acks).spawn().unwrap();
        let delay = if round == 2 {
            // Inside the final checkpoint: every batch acknowledged, the process still running.
            let t = std::time::Instant::now();
            while count_acks() < before + NOTES && child.try_wait().unwrap().is_none() {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "the ingest never finished its batches"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
            t.elapsed().as_millis() as u64
        } else {
            // Anywhere in the run, from its first batches to its end.
            let d = 300 + seed % 7000;
            std::thread::sleep(Duration::from_millis(d));
            d
        };
        if child.try_wait().unwrap().is_none() {
            if count_acks() >= before + NOTES {
                in_checkpoint += 1;
            }
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();

        let acked: Vec<String> = std::fs::read_to_string(&acks)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let engine = Engine::open(&data, Some(&identity), &OpenOptions::default()).unwrap();
        let t = std::time::Instant::now();
        let presence: std::collections::HashMap<&String, (bool, bool, bool)> = ids
            .iter()
            .map(|id| (id, engine.presence(id).unwrap()))
            .collect();
        eprintln!(
            "round {round}: kill at {delay} ms, {} acknowledged, checked in {:?}",
            acked.len(),
            t.elapsed()
        );
        for id in &acked {
            let p = presence[id];
            if p != (true, true, true) {
                let stored = engine.store.get(id).unwrap().unwrap();
                let chunks = engine.store.chunks_of(&stored).unwrap();
                let held: Vec<bool> = chunks
                    .iter()
                    .map(|c| engine.vectors.graph_holds(c.id))
                    .collect();
                let found: Vec<bool> = chunks
                    .iter()
                    .map(|c| engine.vectors.graph_finds(c.id, &c.vector))
                    .collect();
                panic!(
                    "acknowledged {id} after a kill at {delay} ms: {p:?}; its chunks {:?} are in the graph: {held:?}, found by searching: {found:?}; points {}, live {}",
                    chunks.iter().map(|c| c.id).collect::<Vec<_>>(),
                    engine.vectors.points(),
                    engine.vectors.len()
                );
            }
        }
        for id in &ids {
            let (s, b, v) = presence[id];
            assert!(
                s == b && b == v,
                "{id} is only partly present: store {s}, bm25 {b}, vectors {v}"
            );
        }
        assert_eq!(engine.bm25.num_docs() as usize, engine.store.note_count());
        assert_eq!(engine.vectors.len(), engine.store.chunk_count());
    }
    assert!(
        kills >= 2,
        "the ingest was killed only {kills} times; make it longer"
    );
    assert!(
        in_checkpoint >= 1,
        "no kill landed inside the final checkpoint"
    );

    // Running the same ingest to the end converges to exactly the source set.
    let out = ingest_cmd(&data, &file, &acks).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine = Engine::open(&data, Some(&identity), &OpenOptions::default()).unwrap();
    assert_eq!(engine.store.note_count(), NOTES);
    assert_eq!(engine.bm25.num_docs() as usize, NOTES);
    assert_eq!(engine.vectors.len(), engine.store.chunk_count());
    for id in &ids {
        assert_eq!(engine.presence(id).unwrap(), (true, true, true), "{id}");
    }
}

/// The real server SIGKILLed while 4 HTTP clients post notes: after a restart every note
/// whose POST was answered 200 is readable and searchable (store, BM25, the vector graph),
/// and no note is half-present.
#[test]
fn server_killed_while_four_clients_post_loses_no_acknowledged_note() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = fixture("tiny-mlm-uncased");
    let start = || {
        let mut child = Command::new(bin)
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = served_addr(&mut child);
        (child, addr)
    };
    let (mut server, addr) = start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let tried = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (acked, tried, stop, addr) = (acked.clone(), tried.clone(), stop.clone(), addr.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                for n in 0..10_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let ids: Vec<String> = (0..4).map(|i| format!("t{c}-{n}-{i}")).collect();
                    let body: Vec<serde_json::Value> = ids
                        .iter()
                        .map(|id| serde_json::json!({"id": id, "patient_id": format!("P{c}"), "text": format!("{id}: chest pain with dyspnea, troponin {n}")}))
                        .collect();
                    tried.lock().unwrap().extend(ids.iter().cloned());
                    let res = agent
                        .post(&format!("http://{addr}/api/documents"))
                        .header("Origin", &format!("http://{addr}"))
                        .send_json(&body);
                    match res {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().extend(ids),
                        Ok(r) => panic!("client {c}: {} before the kill", r.status()),
                        Err(_) => break, // the server is gone
                    }
                }
            })
        })
        .collect();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    seed ^= seed >> 17;
    let at = 1500 + seed % 2500;
    std::thread::sleep(Duration::from_millis(at));
    server.kill().unwrap(); // SIGKILL, in the middle of the clients' posts
    server.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let tried = tried.lock().unwrap().clone();
    eprintln!(
        "server killed at {at} ms: {} notes acknowledged of {} posted",
        acked.len(),
        tried.len()
    );
    assert!(
        acked.len() >= 40,
        "too few posts before the kill ({}) to mean anything",
        acked.len()
    );
    {
        let engine = Engine::open(&data, None, &OpenOptions::default()).unwrap();
        for id in &tried {
            let (s, b, v) = engine.presence(id).unwrap();
            assert!(
                s == b && b == v,
                "{id} half-present: store {s}, bm25 {b}, vectors {v}"
            );
        }
        for id in &acked {
            assert_eq!(
                engine.presence(id).unwrap(),
                (true, true, true),
                "acknowledged {id}"
            );
        }
    }
    // Restarted, the server serves them.
    let (mut server, addr) = start();
    let id = &acked[acked.len() - 1];
    let res = ureq::get(&format!("http://{addr}/api/documents/{id}"))
        .call()
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut res = ureq::get(&format!(
        "http://{addr}/api/search?q={}&mode=bm25&k=5",
        id.replace('-', "%20")
    ))
    .call()
    .unwrap();
    let v: serde_json::Value = res.body_mut().read_json().unwrap();
    assert!(
        v.to_string().contains(&format!("\"{id}\"")),
        "{id} not found by search"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

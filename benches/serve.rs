//! Load benchmark of the query service: the real server on loopback over sample_corpus/ plus
//! all MTSamples notes, embedded with all-MiniLM-L6-v2, queried by 1, 8 and 32 keep-alive
//! HTTP clients in BM25, semantic and hybrid mode. Prints p50/p99 latency and requests/s, and,
//! measured in the same run, the same BM25 queries run directly on tantivy (the named peer):
//! (a) top-10 search alone and (b) top-10 search plus stored-document fetch and a snippet
//! for each hit, the work an API reply contains. The ratios are our overhead.
//!
//! Goals on the 2-core machine: 1 client hybrid p50 <= 15 ms and p99 <= 40 ms (query
//! embedding included); 8 clients hybrid >= 200 req/s with p99 <= 100 ms; BM25 through the
//! API within 1.5x of tantivy.
//!
//! `cargo bench --bench serve`. The data directory is built once into
//! target/bench-serve-data (about 25 minutes of embedding on 2 cores) and reused.
//! BENCH_SECONDS sets the duration of each configuration (default 8).

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web;
use clinsearch::config::{Layer, ServerConfig};
use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::index::Filter;
use clinsearch::ingest::{self, source, CsvMapping, Format, IngestOptions, OnError};
use clinsearch::model::{tune_allocator, Encoder, EncoderOptions, WindowConfig};
use clinsearch::server::{self, AppState};
use clinsearch::store::ModelIdentity;

#[path = "common/http.rs"]
mod http;
use http::{load, percentile, Conn, Run};

/// The same BM25 queries directly on tantivy, single-threaded and with `threads` threads.
fn raw_tantivy(
    engine: &Engine,
    queries: &[String],
    with_docs: bool,
    threads: usize,
    secs: f64,
) -> Run {
    let run_one = |q: &str| {
        let hits = engine.bm25.search(q, 10, &Filter::default()).unwrap();
        if with_docs {
            for (id, _) in &hits {
                // What a reply needs per hit: the stored note and a highlighted snippet.
                let note = engine.store.get(id).unwrap().unwrap();
                std::hint::black_box(
                    engine
                        .bm25
                        .snippet(
                            &clinsearch::index::query::TextQuery::plain(q),
                            &note.note.text,
                            240,
                        )
                        .unwrap(),
                );
            }
        }
        std::hint::black_box(hits);
    };
    for q in queries {
        run_one(q);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut all: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut lat = vec![];
                    let mut i = t * 7;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        run_one(&queries[i % queries.len()]);
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Run {
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        rps: all.len() as f64 / wall,
    }
}

fn build(dir: &Path, enc: &Encoder, root: &Path, csv: &Path) {
    eprintln!(
        "building {} (sample_corpus + MTSamples; embedding takes a while, once)",
        dir.display()
    );
    let tmp = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&tmp);
    {
        let engine = Engine::open(
            &tmp,
            Some(&ModelIdentity::from_info(enc.info())),
            &OpenOptions::default(),
        )
        .unwrap();
        let mapping = CsvMapping {
            text_col: "transcription".into(),
            id_col: Some("note_id".into()),
            title_col: Some("description".into()),
            meta_cols: vec![("medical_specialty".into(), "specialty".into())],
        };
        let sources = vec![
            source::read(
                &root.join("sample_corpus/notes.jsonl"),
                Format::Jsonl,
                &CsvMapping::default(),
            ),
            source::read(csv, Format::Csv, &mapping),
        ];
        let report = ingest::run(
            &engine,
            enc,
            sources,
            None,
            &IngestOptions {
                on_error: OnError::Skip,
                progress: true,
                ..Default::default()
            },
        )
        .unwrap();
        engine.checkpoint().unwrap();
        eprintln!(
            "ingested {} notes, {} chunks in {:.0} s",
            report.notes, report.chunks, report.seconds
        );
    }
    std::fs::rename(&tmp, dir).unwrap();
}

fn main() {
    tune_allocator();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let csv = root.join("../shared/data/mtsamples/mtsamples.csv");
    if !csv.is_file() {
        eprintln!("skipped: {} is absent", csv.display());
        return;
    }
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let model = root.join("models/all-MiniLM-L6-v2");
    let enc = Encoder::load(
        model.to_str().unwrap(),
        &EncoderOptions {
            window: WindowConfig {
                max_windows: Some(256),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("load the model (make model)");
    let dir = root.join("target/bench-serve-data");
    if !dir.join("sled").is_dir() {
        build(&dir, &enc, root, &csv);
    }
    let engine = Arc::new(
        Engine::open(
            &dir,
            Some(&ModelIdentity::from_info(enc.info())),
            &OpenOptions::default(),
        )
        .unwrap(),
    );
    let queries: Vec<String> = std::fs::read_to_string(root.join("sample_corpus/queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let config = ServerConfig::from_layer(Layer {
        data: Some(dir.clone()),
        ..Default::default()
    })
    .unwrap();
    let _ = enc.embed(&["warm up"]);
    let state = web::Data::new(AppState::new(engine.clone(), Arc::new(enc), config).unwrap());
    let (addr, _handle) = server::spawn(state, "127.0.0.1:0").unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "clinsearch serve: {} notes, {} chunks, {} queries (sample_corpus/queries.jsonl), {secs} s per row, {cores} cores, 2 HTTP workers",
        engine.store.note_count(),
        engine.store.chunk_count(),
        queries.len()
    );

    let raw_a1 = raw_tantivy(&engine, &queries, false, 1, secs / 2.0);
    let raw_b1 = raw_tantivy(&engine, &queries, true, 1, secs / 2.0);
    let raw_b2 = raw_tantivy(&engine, &queries, true, cores, secs / 2.0);
    println!(
        "\n{:<34} {:>8} {:>9} {:>9} {:>10}",
        "peer (same run)", "threads", "p50 ms", "p99 ms", "queries/s"
    );
    for (name, t, r) in [
        ("tantivy top-10", 1, &raw_a1),
        ("tantivy top-10 + docs + snippets", 1, &raw_b1),
        ("tantivy top-10 + docs + snippets", cores, &raw_b2),
    ] {
        println!(
            "{name:<34} {t:>8} {:>9.3} {:>9.3} {:>10.0}",
            r.p50, r.p99, r.rps
        );
    }

    println!(
        "\n{:<9} {:>8} {:>9} {:>9} {:>10}  notes",
        "mode", "clients", "p50 ms", "p99 ms", "req/s"
    );
    for mode in ["bm25", "semantic", "hybrid"] {
        for clients in [1, 8, 32] {
            let r = load(addr, &queries, mode, clients, secs);
            let note = match (mode, clients) {
                ("hybrid", 1) => format!(
                    "goal p50 <= 15, p99 <= 40: {}",
                    if r.p50 <= 15.0 && r.p99 <= 40.0 {
                        "met"
                    } else {
                        "missed"
                    }
                ),
                ("hybrid", 8) => format!(
                    "goal >= 200 req/s, p99 <= 100: {}",
                    if r.rps >= 200.0 && r.p99 <= 100.0 {
                        "met"
                    } else {
                        "missed"
                    }
                ),
                ("bm25", 1) => format!(
                    "p50 {:.1}x tantivy top-10, {:.2}x tantivy+docs+snippets",
                    r.p50 / raw_a1.p50,
                    r.p50 / raw_b1.p50
                ),
                ("bm25", 8) => format!(
                    "throughput {:.2}x tantivy+docs+snippets on {cores} threads",
                    r.rps / raw_b2.rps
                ),
                _ => String::new(),
            };
            println!(
                "{mode:<9} {clients:>8} {:>9.2} {:>9.2} {:>10.0}  {note}",
                r.p50, r.p99, r.rps
            );
        }
    }
    let res = batching_counters(addr);
    println!("\nquery embedding worker: {res}");
}

/// The batching counters from /metrics (how many queries shared each forward pass).
fn batching_counters(addr: SocketAddr) -> String {
    let mut c = Conn::new(addr);
    let req = "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n";
    c.reader.get_mut().write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    let mut len = 0;
    loop {
        line.clear();
        c.reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    c.reader.read_exact(&mut body).unwrap();
    let text = String::from_utf8_lossy(&body);
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let batches = get("clinsearch_query_embed_batches_total");
    let queries = get("clinsearch_query_embed_queries_total");
    format!(
        "{queries:.0} queries in {batches:.0} forward passes ({:.2} per pass, largest {:.0})",
        queries / batches.max(1.0),
        get("clinsearch_query_embed_largest_batch")
    )
}

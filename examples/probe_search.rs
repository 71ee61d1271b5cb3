//! Times the stages of hybrid searches (the query vectors embedded beforehand) over a data
//! directory: `cargo run --release --example probe_search -- DATA_DIR`.
use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::model::{Encoder, EncoderOptions};
use clinsearch::search::{Mode, SearchRequest, Searcher};
use std::time::Instant;
fn main() {
    clinsearch::model::tune_allocator();
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench-serve-data".into());
    let enc = Encoder::load("models/all-MiniLM-L6-v2", &EncoderOptions::default()).unwrap();
    let engine = Engine::open(std::path::Path::new(&dir), None, &OpenOptions::default()).unwrap();
    let queries: Vec<String> = std::fs::read_to_string("sample_corpus/queries.jsonl")
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let vecs = enc.embed(&refs).unwrap();
    let s = Searcher::new(&engine);
    for details in [true, false] {
        let (mut b, mut sem, mut fuse, mut hyd, mut tot) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..5 {
            for (q, v) in queries.iter().zip(&vecs) {
                let mut req = SearchRequest::new(q.clone(), Mode::Hybrid, 10);
                req.details = details;
                let t = Instant::now();
                let r = s.search(&req, Some(v)).unwrap();
                tot += t.elapsed().as_secs_f64() * 1e3;
                b += r.timings.bm25_ms;
                sem += r.timings.semantic_ms;
                fuse += r.timings.fuse_ms;
                hyd += r.timings.hydrate_ms;
            }
        }
        let n = (queries.len() * 5) as f64;
        eprintln!("details={details}: total {:.2} ms = bm25 {:.2} + semantic {:.2} + fuse {:.2} + hydrate {:.2}", tot / n, b / n, sem / n, fuse / n, hyd / n);
    }
}

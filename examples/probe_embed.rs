//! Times query embedding: one short query, and batches of short queries.
use clinsearch::model::{Encoder, EncoderOptions};
use std::time::Instant;
fn main() {
    clinsearch::model::tune_allocator();
    // INT8=1: int8 dense layers (--dtype int8).
    let int8 = std::env::var("INT8").is_ok_and(|v| v == "1");
    let opts = EncoderOptions {
        int8,
        ..Default::default()
    };
    let enc = Encoder::load("models/all-MiniLM-L6-v2", &opts).unwrap();
    let qs = [
        "heart attack treated with a stent",
        "lung infection with fever",
        "irregular heartbeat blood thinner",
        "weak heart pumping, fluid overload",
        "kidney stones",
        "smoker with chronic cough",
        "diabetic foot ulcer",
        "post-operative wound infection",
    ];
    for b in [1usize, 2, 4, 8] {
        let batch: Vec<&str> = qs[..b].to_vec();
        let _ = enc.embed(&batch).unwrap();
        let mut times = vec![];
        for _ in 0..30 {
            let t = Instant::now();
            let _ = enc.embed(&batch).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        eprintln!("batch {b}: median {:.2} ms", times[15]);
    }
}

//! Times a batch of 32 texts of about 128 tokens through the encoder (for profiling).
use clinsearch::model::{Encoder, EncoderOptions};
use std::time::Instant;
fn main() {
    clinsearch::model::tune_allocator();
    // INT8=1: int8 dense layers (--dtype int8).
    let int8 = std::env::var("INT8").is_ok_and(|v| v == "1");
    let enc = Encoder::load(
        "models/all-MiniLM-L6-v2",
        &EncoderOptions {
            int8,
            ..Default::default()
        },
    )
    .unwrap();
    let base = "The patient is a 67-year-old male with a history of coronary artery disease, hypertension and type 2 diabetes who presents with two days of progressive shortness of breath, orthopnea and bilateral leg swelling. He was started on intravenous furosemide and his symptoms improved overnight with a net negative fluid balance";
    // REPEAT=n repeats the base text n times (longer sequences).
    let repeat: usize = std::env::var("REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let texts: Vec<String> = (0..32)
        .map(|i| format!("{} (case {i})", vec![base; repeat].join(". ")))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let _ = enc.embed(&refs).unwrap();
    let n = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let t = Instant::now();
    for _ in 0..n {
        let _ = enc.embed(&refs).unwrap();
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    let toks = enc
        .tokenizer()
        .encode(&texts[0])
        .map(|e| e.ids.len())
        .unwrap_or(0);
    eprintln!(
        "{}: batch 32 x ~{toks} tokens: {:.1} ms/batch, {:.1} emb/s",
        enc.info().dtype,
        per * 1e3,
        32.0 / per
    );
}

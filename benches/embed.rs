//! Embedding throughput of the default model on CPU against PyTorch sentence-transformers
//! (2 threads) on the same texts, measured in the same run.
//!
//! `cargo bench --bench embed` (or `make bench`). Texts are MTSamples transcriptions
//! (../shared/data/mtsamples) cut to exactly `seq` tokens by both sides' truncation; without
//! the dataset, synthetic clinical text is used and the table says so. Every figure is the
//! median of `BENCH_REPEATS` (default 3) timed runs after a warm-up.
//!
//! Environment: `BENCH_MODEL` (default models/all-MiniLM-L6-v2), `BENCH_SEQS` ("128,256"),
//! `BENCH_BATCHES` ("1,8,32"), `BENCH_TEXTS` (64), `BENCH_DTYPES` ("f32"), `BENCH_PEER=0`
//! to skip PyTorch.

use std::process::Command;
use std::time::Instant;

use clinsearch::model::{parse_dtype, tune_allocator, Encoder, EncoderOptions, WindowConfig};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn load_texts(n: usize) -> (Vec<String>, &'static str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/mtsamples/mtsamples.csv");
    if let Ok(mut rdr) = csv::Reader::from_path(&path) {
        let texts: Vec<String> = rdr
            .records()
            .filter_map(|r| r.ok())
            .filter_map(|r| r.get(4).map(str::to_string))
            .filter(|t| t.len() > 2500)
            .take(n)
            .collect();
        if texts.len() == n {
            return (texts, "MTSamples transcriptions");
        }
    }
    eprintln!("note: ../shared/data/mtsamples is absent; using synthetic clinical text");
    let base = "Patient is a 67-year-old male with history of CHF, s/p MI in 2019, on metoprolol 25 mg BID \
                and lisinopril 10 mg daily, who presents with worsening shortness of breath and bilateral \
                lower extremity edema. Denies chest pain. BNP 1450, creatinine 1.4. Chest x-ray shows \
                pulmonary vascular congestion without focal consolidation. ";
    (
        (0..n)
            .map(|i| format!("Note {i}. {}", base.repeat(6)))
            .collect(),
        "synthetic clinical text",
    )
}

/// Multiply-adds x2 of one BERT forward over `seq` tokens.
fn flops_per_seq(seq: f64, h: f64, inter: f64, layers: f64) -> f64 {
    layers * (2.0 * seq * (4.0 * h * h + 2.0 * h * inter) + 4.0 * seq * seq * h)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    tune_allocator();
    let model = std::env::var("BENCH_MODEL")
        .unwrap_or_else(|_| format!("{}/models/all-MiniLM-L6-v2", env!("CARGO_MANIFEST_DIR")));
    let seqs: Vec<usize> = env_list("BENCH_SEQS", "128,256")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let batches: Vec<usize> = env_list("BENCH_BATCHES", "1,8,32")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let dtypes = env_list("BENCH_DTYPES", "f32");
    let repeats: usize = std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let n_texts: usize = std::env::var("BENCH_TEXTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let (texts, source) = load_texts(n_texts);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    // Ours.
    let mut rows: Vec<(String, usize, usize, f64)> = vec![];
    let mut dims = (0.0, 0.0, 0.0);
    for dtype in &dtypes {
        for &seq in &seqs {
            for &batch in &batches {
                let opts = EncoderOptions {
                    window: WindowConfig {
                        size: Some(seq),
                        stride: None,
                        max_windows: None,
                    },
                    batch_size: batch,
                    dtype: parse_dtype(dtype).unwrap(),
                    ..Default::default()
                };
                let enc = Encoder::load(&model, &opts).expect("load the model (make model)");
                let info = enc.info();
                dims = (
                    info.hidden_size as f64,
                    (info.hidden_size * 4) as f64,
                    info.num_layers as f64,
                );
                let n = if batch > 1 {
                    refs.len()
                } else {
                    (refs.len() / 4).max(8)
                };
                let sample = &refs[..n];
                enc.embed(&sample[..batch.max(2)]).unwrap(); // warm-up
                let times: Vec<f64> = (0..repeats)
                    .map(|_| {
                        let t = Instant::now();
                        enc.embed(sample).unwrap();
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                rows.push((
                    format!("clinsearch {dtype}"),
                    seq,
                    batch,
                    n as f64 / median(times),
                ));
            }
        }
    }

    // The peer, on the same texts.
    let mut peer: Vec<(usize, usize, f64)> = vec![];
    if std::env::var("BENCH_PEER")
        .map(|v| v != "0")
        .unwrap_or(true)
    {
        let tmp =
            std::env::temp_dir().join(format!("clinsearch-bench-{}.json", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string(&texts).unwrap()).unwrap();
        let script = format!("{}/benches/embed_peer.py", env!("CARGO_MANIFEST_DIR"));
        let join = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let out = Command::new("python3")
            .args([
                &script,
                &model,
                tmp.to_str().unwrap(),
                &join(&seqs),
                &join(&batches),
                &repeats.to_string(),
            ])
            .output();
        let _ = std::fs::remove_file(&tmp);
        match out {
            Ok(o) if o.status.success() => {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                        peer.push((
                            v["seq"].as_u64().unwrap() as usize,
                            v["batch"].as_u64().unwrap() as usize,
                            v["emb_per_s"].as_f64().unwrap(),
                        ));
                    }
                }
            }
            Ok(o) => eprintln!(
                "PyTorch peer failed (pip install torch sentence-transformers): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
            Err(e) => eprintln!("PyTorch peer not run: {e}"),
        }
    }

    println!("\nEmbedding throughput, {source}, model {model}, CPU, median of {repeats} runs");
    println!(
        "{:<22} {:>5} {:>5} {:>10} {:>9} {:>10} {:>8}",
        "variant", "seq", "batch", "tokens/s", "emb/s", "vs torch", "GFLOP/s"
    );
    let (h, inter, layers) = dims;
    for (seq, batch, eps) in &peer {
        println!(
            "{:<22} {:>5} {:>5} {:>10.0} {:>9.1} {:>10} {:>8.1}",
            "pytorch (2 threads)",
            seq,
            batch,
            eps * *seq as f64,
            eps,
            "1.00x",
            eps * flops_per_seq(*seq as f64, h, inter, layers) / 1e9
        );
    }
    for (variant, seq, batch, eps) in &rows {
        let ratio = peer
            .iter()
            .find(|(s, b, _)| s == seq && b == batch)
            .map(|(_, _, p)| format!("{:.2}x", eps / p))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<22} {:>5} {:>5} {:>10.0} {:>9.1} {:>10} {:>8.1}",
            variant,
            seq,
            batch,
            eps * *seq as f64,
            eps,
            ratio,
            eps * flops_per_seq(*seq as f64, h, inter, layers) / 1e9
        );
    }
}

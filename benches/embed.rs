//! Embedding throughput of the default model on CPU against PyTorch sentence-transformers
//! (2 threads) on the same texts, measured in the same run.
//!
//! `cargo bench --bench embed` (or `make bench`). Texts are MTSamples transcriptions
//! (../shared/data/mtsamples) cut to exactly `seq` tokens by both sides' truncation; without
//! the dataset, synthetic clinical text is used and the table says so. The whole comparison
//! runs `BENCH_ROUNDS` times (default 3), ours and the peer alternating (the order swapped
//! every round): on a shared machine whose speed drifts by tens of percent over minutes, a
//! ratio between runs measured in the same round is steadier than one between runs minutes
//! apart. Within a round every figure is the median of `BENCH_REPEATS` (default 3) timed runs
//! after a warm-up; the table prints medians over rounds, and each ratio's range.
//!
//! Environment: `BENCH_MODEL` (default models/all-MiniLM-L6-v2), `BENCH_SEQS` ("128,256"),
//! `BENCH_BATCHES` ("1,8,32"), `BENCH_TEXTS` (64), `BENCH_DTYPES` ("f32,int8"), `BENCH_PEER=0`
//! to skip PyTorch, `BENCH_DEVICE` (cpu; `cuda` in a build with that feature: both sides on
//! the GPU, PyTorch in each dtype asked for, default dtypes f32,f16, no % of peak).
//!
//! Also printed: each reduced-precision variant's cosine to the f32 embeddings of the same
//! texts (minimum and median), one short query's latency, and the machine's f32 peak: the
//! nominal one (threads x 16 lanes x 2 FMA units x 2 flops x the clock /proc/cpuinfo reports)
//! and the one measured with independent AVX-512 FMAs on every thread, against which the
//! "% peak" column is computed.

use std::process::Command;
use std::time::Instant;

use clinsearch::model::{
    parse_device, parse_precision, tune_allocator, Encoder, EncoderOptions, WindowConfig,
};

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
    let device_spec = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = parse_device(&device_spec).expect("BENCH_DEVICE");
    let on_cpu = device.is_cpu();
    let dtypes = env_list("BENCH_DTYPES", if on_cpu { "f32,int8" } else { "f32,f16" });
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

    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let run_peer_enabled = std::env::var("BENCH_PEER")
        .map(|v| v != "0")
        .unwrap_or(true);
    // Per round: our rows and the peer's, measured one after the other (the order swapped
    // every round), so that each round's ratio compares runs minutes apart at most.
    let mut round_rows: Vec<Vec<(String, usize, usize, f64)>> = vec![];
    let mut round_peer: Vec<Vec<(usize, usize, String, f64)>> = vec![];
    let mut reference: std::collections::HashMap<usize, Vec<Vec<f32>>> = Default::default();
    let mut fidelity: Vec<(String, usize, f32, f32)> = vec![];
    let mut latency: Vec<(String, f64)> = vec![];
    let mut dims = (0.0, 0.0, 0.0);
    for round in 0..rounds {
        let ours_first = round % 2 == 0;
        if !ours_first && run_peer_enabled {
            round_peer.push(run_peer(
                &model, &texts, &seqs, &batches, repeats, on_cpu, &dtypes,
            ));
        }
        let first = round == 0;
        let (fid, lat) = (&mut fidelity, &mut latency);
        // Ours.
        let mut rows: Vec<(String, usize, usize, f64)> = vec![];
        for dtype in &dtypes {
            for &seq in &seqs {
                for &batch in &batches {
                    let opts = EncoderOptions {
                        window: WindowConfig {
                            size: Some(seq),
                            stride: None,
                            max_windows: None,
                            context: None,
                        },
                        batch_size: batch,
                        dtype: parse_precision(dtype).unwrap().0,
                        int8: parse_precision(dtype).unwrap().1,
                        device: device.clone(),
                        ..Default::default()
                    };
                    let enc = Encoder::load(&model, &opts).expect("load the model (make model)");
                    if enc.info().dtype != *dtype {
                        eprintln!(
                            "{dtype} is not available on this machine (runs as {}); skipped",
                            enc.info().dtype
                        );
                        continue;
                    }
                    // f32 embeddings per seq: the reference for the other variants' cosines.
                    if first && batch == *batches.last().unwrap() {
                        let vecs = enc.embed(&refs).unwrap();
                        match reference.get(&seq) {
                            None => {
                                reference.insert(seq, vecs);
                            }
                            Some(want) => {
                                let mut cos: Vec<f32> = vecs
                                    .iter()
                                    .zip(want)
                                    .map(|(a, b)| clinsearch::search::cosine(a, b))
                                    .collect();
                                cos.sort_by(|a, b| a.total_cmp(b));
                                fid.push((dtype.clone(), seq, cos[0], cos[cos.len() / 2]));
                            }
                        }
                    }
                    if first && seq == seqs[0] && batch == batches[0] {
                        let q = "chest pain radiating to the left arm with elevated troponin";
                        enc.embed(&[q]).unwrap();
                        let times: Vec<f64> = (0..50)
                            .map(|_| {
                                let t = Instant::now();
                                enc.embed(&[q]).unwrap();
                                t.elapsed().as_secs_f64() * 1e3
                            })
                            .collect();
                        lat.push((dtype.clone(), median(times)));
                    }
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

        round_rows.push(rows);
        if ours_first && run_peer_enabled {
            round_peer.push(run_peer(
                &model, &texts, &seqs, &batches, repeats, on_cpu, &dtypes,
            ));
        }
    }
    // Across rounds: the median of each variant's rates, and the median of its per-round
    // ratios to the peer (with their range).
    let rows: Vec<(String, usize, usize, f64)> = round_rows[0]
        .iter()
        .enumerate()
        .map(|(i, (v, s, b, _))| {
            let rates = round_rows.iter().map(|r| r[i].3).collect();
            (v.clone(), *s, *b, median(rates))
        })
        .collect();
    let peer: Vec<(usize, usize, String, f64)> = match round_peer.first() {
        Some(first) => first
            .iter()
            .enumerate()
            .map(|(i, (s, b, d, _))| {
                let rates = round_peer
                    .iter()
                    .filter_map(|r| r.get(i).map(|x| x.3))
                    .collect();
                (*s, *b, d.clone(), median(rates))
            })
            .collect(),
        None => vec![],
    };
    let measured = if on_cpu {
        let (nominal, measured, threads, mhz) = peak_gflops();
        println!(
            "\nf32 peak: nominal {nominal:.0} GFLOP/s ({threads} threads x 16 lanes x 2 FMA units x 2 flops x {mhz:.0} MHz); measured {measured:.0} GFLOP/s (independent AVX-512 FMAs on {threads} threads)"
        );
        measured
    } else {
        f64::NAN
    };
    let peer_name = |dtype: &str| {
        if on_cpu {
            "pytorch (2 threads)".to_string()
        } else {
            format!("pytorch {device_spec} {dtype}")
        }
    };
    println!(
        "\nEmbedding throughput, {source}, model {model}, {device_spec}: medians over {rounds} rounds (each the median of {repeats} runs; ours and the peer alternate), ratio ranges over rounds"
    );
    println!(
        "{:<22} {:>5} {:>5} {:>10} {:>9} {:>19} {:>8} {:>7}",
        "variant", "seq", "batch", "tokens/s", "emb/s", "vs torch", "GFLOP/s", "% peak"
    );
    let (h, inter, layers) = dims;
    let pct = |gf: f64| {
        if measured.is_finite() {
            format!("{:.0}%", 100.0 * gf / measured)
        } else {
            "-".into()
        }
    };
    for (seq, batch, dtype, eps) in &peer {
        let gf = eps * flops_per_seq(*seq as f64, h, inter, layers) / 1e9;
        println!(
            "{:<22} {:>5} {:>5} {:>10.0} {:>9.1} {:>19} {:>8.1} {:>7}",
            peer_name(dtype),
            seq,
            batch,
            eps * *seq as f64,
            eps,
            "1.00x",
            gf,
            pct(gf)
        );
    }
    for (variant, seq, batch, eps) in &rows {
        // Against PyTorch in the same dtype where it ran one (on a GPU), else its f32.
        let dtype = variant.rsplit(' ').next().unwrap_or("f32");
        let find = |d: &str| {
            peer.iter()
                .find(|(s, b, pd, _)| s == seq && b == batch && pd == d)
        };
        let ratio = match find(dtype).or_else(|| find("f32")) {
            Some((_, _, pd, _)) => {
                let row = rows
                    .iter()
                    .position(|r| &r.0 == variant && r.1 == *seq && r.2 == *batch)
                    .unwrap();
                let per_round: Vec<f64> = round_rows
                    .iter()
                    .zip(&round_peer)
                    .filter_map(|(ours, theirs)| {
                        let p = theirs
                            .iter()
                            .find(|(s, b, d, _)| s == seq && b == batch && d == pd)?;
                        Some(ours[row].3 / p.3)
                    })
                    .collect();
                let lo = per_round.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = per_round.iter().cloned().fold(0.0, f64::max);
                if per_round.len() > 1 {
                    format!("{:.2}x ({lo:.2}-{hi:.2})", median(per_round))
                } else {
                    format!("{:.2}x", median(per_round))
                }
            }
            None => "-".into(),
        };
        let gf = eps * flops_per_seq(*seq as f64, h, inter, layers) / 1e9;
        println!(
            "{:<22} {:>5} {:>5} {:>10.0} {:>9.1} {:>19} {:>8.1} {:>7}",
            variant,
            seq,
            batch,
            eps * *seq as f64,
            eps,
            ratio,
            gf,
            pct(gf)
        );
    }
    println!("(GFLOP/s counts the model's multiply-adds x 2 whatever the precision: for int8 it is an f32-equivalent rate.)");
    for (dtype, seq, min, med) in &fidelity {
        println!(
            "{dtype} vs f32 at seq {seq}: cosine min {min:.5}, median {med:.5} over {} texts",
            refs.len()
        );
    }
    for (dtype, ms) in &latency {
        println!("one short query (10 words), {dtype}: {ms:.2} ms median of 50");
    }
}

/// The f32 peak: nominal from the reported clock, and measured with 12 independent FMA chains
/// per thread on every thread of the pool (AVX-512; 0 without it).
fn peak_gflops() -> (f64, f64, usize, f64) {
    let threads = rayon::current_num_threads();
    let mhz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let nominal = threads as f64 * 16.0 * 2.0 * 2.0 * mhz / 1e3;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            use rayon::prelude::*;
            const ITERS: usize = 50_000_000;
            let mut best = 0f64;
            for _ in 0..3 {
                let t = Instant::now();
                let s: f32 = (0..threads)
                    .into_par_iter()
                    // SAFETY: AVX-512 was detected.
                    .map(|_| unsafe { fma_loop(ITERS) })
                    .sum();
                let secs = t.elapsed().as_secs_f64();
                std::hint::black_box(s);
                best = best.max((threads * ITERS * 12 * 16 * 2) as f64 / secs / 1e9);
            }
            return (nominal, best, threads, mhz);
        }
    }
    (nominal, 0.0, threads, mhz)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 12];
    let x = _mm512_set1_ps(1.000_000_1);
    let y = _mm512_set1_ps(0.999_999);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(x, y, *a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

/// One run of the PyTorch peer (benches/embed_peer.py) on the same texts: (seq, batch,
/// dtype, embeddings/s) per configuration; empty (with a message) when it cannot run.
fn run_peer(
    model: &str,
    texts: &[String],
    seqs: &[usize],
    batches: &[usize],
    repeats: usize,
    on_cpu: bool,
    dtypes: &[String],
) -> Vec<(usize, usize, String, f64)> {
    let mut peer: Vec<(usize, usize, String, f64)> = vec![];
    {
        let tmp =
            std::env::temp_dir().join(format!("clinsearch-bench-{}.json", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string(texts).unwrap()).unwrap();
        let script = format!("{}/benches/embed_peer.py", env!("CARGO_MANIFEST_DIR"));
        let join = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let out = Command::new("python3")
            .args([
                script.as_str(),
                model,
                tmp.to_str().unwrap(),
                &join(seqs),
                &join(batches),
                &repeats.to_string(),
                if on_cpu { "cpu" } else { "cuda" },
                &dtypes.join(","),
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
                            v["dtype"].as_str().unwrap_or("f32").to_string(),
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
    peer
}

//! Soak: the real binary on loopback for SOAK_SECONDS (default 600) under 8 search clients
//! (BM25, semantic and hybrid, with and without filters and grouping), 1 client ingesting
//! and deleting notes, and an evaluation job every minute. It stops by itself.
//!
//! Reports requests, 5xx (goal 0), p50/p99 per mode for each period of the run, the server's
//! resident memory after warm-up against the end (goal: under 10% growth), its open file
//! descriptors and the data directory's size.
//!
//! `cargo bench --bench soak` (or `make soak`). The data directory (sample_corpus/ with the
//! default model) is built once into target/bench-soak-data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// (period, kind of request) -> latencies in ms.
type Latencies = BTreeMap<(u64, String), Vec<f64>>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let model = root.join("models/all-MiniLM-L6-v2");
    if !model.join("config.json").exists() {
        eprintln!("SKIPPED: the soak needs the default model (make model)");
        return;
    }
    let data = root.join("target/bench-soak-data");
    let corpus = root.join("sample_corpus");
    if !data.join("sled").is_dir() {
        eprintln!(
            "building {} (sample_corpus/ with the default model)",
            data.display()
        );
        let ok = Command::new(bin)
            .args(["ingest", "--quiet", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg(corpus.join("notes.jsonl"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "ingest failed");
        let ok = Command::new(bin)
            .args(["eval", "--modes", "bm25", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--queries")
            .arg(corpus.join("queries.jsonl"))
            .arg("--qrels")
            .arg(corpus.join("qrels.tsv"))
            .args(["--save-set", "sample"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "storing the query set failed");
    }
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let warmup = (seconds / 10).clamp(5, 60);
    let period = (seconds / 5).max(10);
    let queries: Vec<String> = std::fs::read_to_string(corpus.join("queries.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Value>(l).ok()?["text"]
                .as_str()
                .map(str::to_string)
        })
        .collect();

    let mut child = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(a) = line.strip_prefix("clinsearch serving on http://") {
            break a.trim_end_matches('/').to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let base = format!("http://{addr}");
    let origin = base.clone();
    let agent = || -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    };

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // (period, mode) -> latencies in ms; status counts.
    let lat: Arc<Mutex<Latencies>> = Default::default();
    let statuses: Arc<Mutex<BTreeMap<(String, u16), u64>>> = Default::default();
    let requests = Arc::new(AtomicU64::new(0));
    let record = {
        let (lat, statuses, requests) = (lat.clone(), statuses.clone(), requests.clone());
        move |what: &str, ms: f64, status: u16| {
            requests.fetch_add(1, Ordering::Relaxed);
            *statuses
                .lock()
                .unwrap()
                .entry((what.to_string(), status))
                .or_default() += 1;
            let p = start.elapsed().as_secs() / period;
            lat.lock()
                .unwrap()
                .entry((p, what.to_string()))
                .or_default()
                .push(ms);
        }
    };
    let mut threads = vec![];
    for c in 0..8u64 {
        let (stop, queries, base, record, a) = (
            stop.clone(),
            queries.clone(),
            base.clone(),
            record.clone(),
            agent(),
        );
        threads.push(std::thread::spawn(move || {
            let filters = [
                "",
                "&specialty=Cardiology",
                "&note_type=discharge%20summary",
                "&group_by=patient",
                "&date_from=2020-01-01",
            ];
            let modes = ["bm25", "semantic", "hybrid"];
            let mut i = c as usize * 7;
            while !stop.load(Ordering::SeqCst) {
                let q = &queries[i % queries.len()];
                let mode = modes[i % 3];
                let f = filters[(i / 3) % filters.len()];
                let t = Instant::now();
                let s = a
                    .get(&format!(
                        "{base}/api/search?q={}&mode={mode}&k=10{f}",
                        encode(q)
                    ))
                    .call()
                    .map(|mut r| {
                        let _ = r.body_mut().read_to_string();
                        r.status().as_u16()
                    })
                    .unwrap_or(599);
                record(mode, t.elapsed().as_secs_f64() * 1e3, s);
                i += 1;
            }
        }));
    }
    {
        let (stop, base, origin, record, a) = (
            stop.clone(),
            base.clone(),
            origin.clone(),
            record.clone(),
            agent(),
        );
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let notes: Vec<Value> = (0..5)
                    .map(|i| json!({"id": format!("soak-{n}-{i}"), "patient_id": format!("S{}", n % 20), "specialty": "Cardiology",
                        "text": format!("Soak note {n}/{i}: chest pain radiating to the jaw, troponin {} ng/L, ECG with ST depression.", n % 97)}))
                    .collect();
                let t = Instant::now();
                let s = a.post(&format!("{base}/api/documents")).header("Origin", &origin).send_json(&notes)
                    .map(|r| r.status().as_u16()).unwrap_or(599);
                record("ingest", t.elapsed().as_secs_f64() * 1e3, s);
                if n >= 10 {
                    for i in 0..5 {
                        let t = Instant::now();
                        let s = a.delete(&format!("{base}/api/documents/soak-{}-{i}", n - 10)).header("Origin", &origin).call()
                            .map(|r| r.status().as_u16()).unwrap_or(599);
                        record("delete", t.elapsed().as_secs_f64() * 1e3, s);
                    }
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    {
        let (stop, base, origin, record, a) = (
            stop.clone(),
            base.clone(),
            origin.clone(),
            record.clone(),
            agent(),
        );
        threads.push(std::thread::spawn(move || {
            let mut next = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    let t = Instant::now();
                    let s = a
                        .post(&format!("{base}/api/eval"))
                        .header("Origin", &origin)
                        .send_json(json!({"set": "sample", "wait": true}))
                        .map(|r| r.status().as_u16())
                        .unwrap_or(599);
                    record("eval", t.elapsed().as_secs_f64() * 1e3, s);
                    next = Instant::now() + Duration::from_secs(60);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    let mut samples = vec![];
    let size_start = dir_bytes(&data) - dir_bytes(&data.join("audit"));
    let audit_start = dir_bytes(&data.join("audit"));
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(5));
        samples.push((start.elapsed().as_secs(), rss_kb(pid), fds(pid)));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let audit_end = dir_bytes(&data.join("audit"));
    let size_end = dir_bytes(&data) - audit_end;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "soak: {seconds} s on {cpu} ({} cores), the real binary on {addr}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let st = statuses.lock().unwrap();
    let five: u64 = st
        .iter()
        .filter(|((_, s), _)| *s >= 500)
        .map(|(_, n)| n)
        .sum();
    println!(
        "requests {}, 5xx {five} (goal 0); by kind and status: {:?}",
        requests.load(Ordering::Relaxed),
        *st
    );
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>9}",
        "period", "what", "requests", "p50 ms", "p99 ms"
    );
    for ((p, what), v) in lat.lock().unwrap().iter_mut() {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{:<8} {:>8} {:>9} {:>9.2} {:>9.2}",
            format!("{}-{}s", p * period, (p + 1) * period),
            what,
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    let warm = samples
        .iter()
        .find(|(t, _, _)| *t >= warmup)
        .map(|s| s.1)
        .unwrap_or(0);
    let end = samples.last().map(|s| s.1).unwrap_or(0);
    let growth = if warm > 0 {
        (end as f64 / warm as f64 - 1.0) * 100.0
    } else {
        f64::NAN
    };
    println!("RSS after {warmup} s warm-up {:.1} MB, at the end {:.1} MB: {growth:+.1}% (goal under 10%)", warm as f64 / 1024.0, end as f64 / 1024.0);
    let f0 = samples
        .iter()
        .find(|(t, _, _)| *t >= warmup)
        .map(|s| s.2)
        .unwrap_or(0);
    println!(
        "open file descriptors after warm-up {f0}, at the end {}",
        samples.last().map_or(0, |s| s.2)
    );
    println!(
        "data directory without the audit {:.1} MB at the start, {:.1} MB at the end",
        size_start as f64 / 1e6,
        size_end as f64 / 1e6
    );
    let n = requests.load(Ordering::Relaxed).max(1);
    println!(
        "access audit {:.1} MB -> {:.1} MB ({:.0} bytes per request)",
        audit_start as f64 / 1e6,
        audit_end as f64 / 1e6,
        (audit_end - audit_start) as f64 / n as f64
    );
}

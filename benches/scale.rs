//! Figures at scale (issue 21): collections of 100,000 and 1,000,000 chunks built through the
//! bulk import path (`clinsearch ingest --npy`, no encoder), then opened and searched by the
//! real server on loopback. Peers in the same run on the same vectors: hnswlib and faiss (PyPI,
//! HNSW with the same M, ef_construction and ef_search) for build time, recall and queries/s,
//! and tantivy alone for BM25.
//!
//! **The vectors.** Real all-MiniLM-L6-v2 vectors of MTSamples windows (the first two 256-token
//! windows of each of the 4,999 notes) and SciFact abstracts (the first window of each of 5,183),
//! about 15,000 in all, embedded once and cached in target/scale-bench/base.jsonl. Chunk j is
//! base vector b (chosen at random) plus Gaussian noise of 0.02 per dimension, re-normalised:
//! cosine about 0.93 to its base, so the collection is clusters of near-duplicates around real
//! points (as templated notes are), and every point is distinct. Its text is the base window's
//! own text, so BM25 runs over real clinical and scientific language; a note is two chunks.
//! The 100 queries are real: 50 SciFact claims and 50 MTSamples descriptions, embedded by the
//! same model (query embedding is included in every latency through the API).
//!
//! Reported per run: import wall time and each stage, peak RSS of the import, data directory
//! size, cold open of `serve` (start to first answered health check), RSS while serving, recall@10
//! of the vector index against exact search, the ef_search trade-off in-process, BM25 / semantic /
//! hybrid p50 and p99 at 1 and 8 clients, and the peers.
//!
//! Goals on a 2-core, 24 GB machine: 1M chunks imported in under 30 minutes; serving RSS
//! under 3 GB with compact vectors; cold open under 15 s; recall@10 >= 0.95; hybrid p50 <= 20 ms
//! and p99 <= 60 ms at 1 client; build time within 1.5x of hnswlib's at equal recall.
//!
//! `cargo bench --bench scale` (or `make bench-scale`). BENCH_RUNS picks the runs as
//! CHUNKS:QUANTIZATION pairs (default `100000:f32,100000:int8,1000000:int8`); BENCH_M,
//! BENCH_EFC and BENCH_EF the graph parameters (default the data directory's defaults);
//! BENCH_SECONDS the duration of each load configuration (default 5); BENCH_PEERS=0 leaves
//! the peers out (the exact top-10 is still computed, for recall).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::index::VectorSettings;
use clinsearch::model::{tune_allocator, Encoder, EncoderOptions, WindowConfig};
use serde_json::{json, Value};

#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/http.rs"]
mod http;

const NOISE: f32 = 0.02;

struct Base {
    texts: Vec<String>,
    specialties: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

/// The real vectors the collection is made from, embedded once and cached.
fn base(work: &Path, enc: &Encoder, data: &Path) -> Base {
    let cache = work.join("base.jsonl");
    if !cache.is_file() {
        let mut items: Vec<(String, String)> = vec![];
        let mut r = csv::Reader::from_path(data.join("mtsamples/mtsamples.csv")).unwrap();
        let h = r.headers().unwrap().clone();
        let col = |n: &str| h.iter().position(|x| x == n).unwrap();
        let (s, t) = (col("medical_specialty"), col("transcription"));
        for rec in r.records() {
            let rec = rec.unwrap();
            if !rec[t].trim().is_empty() {
                items.push((rec[t].trim().to_string(), rec[s].trim().to_string()));
            }
        }
        let mtsamples = items.len();
        for line in std::fs::read_to_string(data.join("scifact/beir/corpus.jsonl"))
            .unwrap()
            .lines()
        {
            let v: Value = serde_json::from_str(line).unwrap();
            let text = format!(
                "{} {}",
                v["title"].as_str().unwrap_or(""),
                v["text"].as_str().unwrap_or("")
            );
            items.push((text, "Research".into()));
        }
        eprintln!(
            "embedding the base windows of {} texts (once; cached in {})",
            items.len(),
            cache.display()
        );
        let t0 = Instant::now();
        let mut out =
            BufWriter::new(std::fs::File::create(cache.with_extension("partial")).unwrap());
        for (i, batch) in items.chunks(64).enumerate() {
            let texts: Vec<&str> = batch.iter().map(|(t, _)| t.as_str()).collect();
            let windows = enc.embed_windows(&texts).unwrap();
            for (j, (ws, (text, spec))) in windows.into_iter().zip(batch).enumerate() {
                let keep = if i * 64 + j < mtsamples { 2 } else { 1 };
                for w in ws.into_iter().take(keep) {
                    let line = json!({"text": &text[w.start..w.end], "specialty": spec, "vector": w.vector});
                    writeln!(out, "{line}").unwrap();
                }
            }
        }
        out.flush().unwrap();
        drop(out);
        std::fs::rename(cache.with_extension("partial"), &cache).unwrap();
        eprintln!("embedded in {:.0}s", t0.elapsed().as_secs_f64());
    }
    let mut b = Base {
        texts: vec![],
        specialties: vec![],
        vectors: vec![],
    };
    for line in BufReader::new(std::fs::File::open(&cache).unwrap()).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        b.texts.push(v["text"].as_str().unwrap().to_string());
        b.specialties
            .push(v["specialty"].as_str().unwrap().to_string());
        b.vectors.push(
            v["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        );
    }
    b
}

/// A small deterministic generator (xorshift64*), with Gaussian draws by Box-Muller.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Writes `chunks` chunks (two per note) as notes.jsonl (the chunk map) and vectors.npy.
fn generate(dir: &Path, base: &Base, chunks: usize) -> (PathBuf, PathBuf) {
    let (notes_path, npy_path) = (dir.join("notes.jsonl"), dir.join("vectors.npy"));
    if notes_path.is_file() && npy_path.is_file() {
        return (notes_path, npy_path);
    }
    let dim = base.vectors[0].len();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut notes = BufWriter::new(std::fs::File::create(&notes_path).unwrap());
    let mut npy = BufWriter::new(std::fs::File::create(&npy_path).unwrap());
    npy.write_all(&clinsearch::ingest::vectors::npy_header(
        chunks as u64,
        dim,
        128,
    ))
    .unwrap();
    for i in 0..chunks.div_ceil(2) {
        let parts = if 2 * i + 1 < chunks { 2 } else { 1 };
        let mut text = String::new();
        let mut map = vec![];
        let mut spec = "";
        for p in 0..parts {
            let b = (rng.next() % base.vectors.len() as u64) as usize;
            if p > 0 {
                text.push_str("\n\n");
            }
            let start = text.chars().count();
            text.push_str(&base.texts[b]);
            map.push(
                json!({"char_start": start, "char_end": text.chars().count(), "row": 2 * i + p}),
            );
            spec = &base.specialties[b];
            let mut v: Vec<f32> = base.vectors[b]
                .iter()
                .map(|x| x + NOISE * rng.gauss())
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
            for x in v {
                npy.write_all(&x.to_le_bytes()).unwrap();
            }
        }
        let date = format!(
            "20{:02}-{:02}-{:02}",
            10 + rng.next() % 15,
            1 + rng.next() % 12,
            1 + rng.next() % 28
        );
        let line = json!({"id": format!("n{i}"), "patient_id": format!("P{}", i % 50_000), "specialty": spec,
                          "date": date, "text": text, "chunks": map});
        writeln!(notes, "{line}").unwrap();
    }
    notes.flush().unwrap();
    npy.flush().unwrap();
    (notes_path, npy_path)
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The largest resident set of any child that ended so far (getrusage), in KiB.
fn children_max_rss_kb() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-parameter.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as u64
}

fn gb(kb: u64) -> f64 {
    kb as f64 / (1024.0 * 1024.0)
}

/// Top-10 of raw tantivy over the same texts: index time and single-thread query latency.
fn raw_tantivy(dir: &Path, notes: &Path, queries: &[String]) -> (f64, f64, f64) {
    use tantivy::collector::TopDocs;
    use tantivy::schema::{Schema, STORED, TEXT};
    let mut sb = Schema::builder();
    let id = sb.add_text_field("id", STORED);
    let text = sb.add_text_field("text", TEXT);
    let schema = sb.build();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let index = tantivy::Index::create_in_dir(dir, schema).unwrap();
    let t0 = Instant::now();
    let mut w: tantivy::IndexWriter = index.writer_with_num_threads(2, 200_000_000).unwrap();
    for line in BufReader::new(std::fs::File::open(notes).unwrap()).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        w.add_document(
            tantivy::doc!(id => v["id"].as_str().unwrap(), text => v["text"].as_str().unwrap()),
        )
        .unwrap();
    }
    w.commit().unwrap();
    let build = t0.elapsed().as_secs_f64();
    let reader = index.reader().unwrap();
    let searcher = reader.searcher();
    let parser = tantivy::query::QueryParser::for_index(&index, vec![text]);
    let mut lat = vec![];
    for round in 0..3 {
        for q in queries {
            let (query, _) = parser.parse_query_lenient(q);
            let t = Instant::now();
            let hits = searcher
                .search(&query, &TopDocs::with_limit(10).order_by_score())
                .unwrap();
            if round > 0 {
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            std::hint::black_box(hits);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (
        build,
        http::percentile(&lat, 0.5),
        http::percentile(&lat, 0.99),
    )
}

fn main() {
    tune_allocator();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("../shared/data");
    if !data.join("mtsamples/mtsamples.csv").is_file()
        || !data.join("scifact/beir/corpus.jsonl").is_file()
    {
        eprintln!("skipped: {} lacks mtsamples/ or scifact/", data.display());
        return;
    }
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let model = root.join("models/all-MiniLM-L6-v2");
    let work = root.join("target/scale-bench");
    std::fs::create_dir_all(&work).unwrap();
    let enc = Encoder::load(
        model.to_str().unwrap(),
        &EncoderOptions {
            window: WindowConfig {
                max_windows: Some(4),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .expect("load the model (make model)");
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let defaults = VectorSettings::DEFAULT;
    let env_num = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (m, efc, ef) = (
        env_num("BENCH_M", defaults.m),
        env_num("BENCH_EFC", defaults.ef_construction),
        env_num("BENCH_EF", defaults.ef_search),
    );
    let runs = std::env::var("BENCH_RUNS")
        .unwrap_or_else(|_| "100000:f32,100000:int8,1000000:int8".into());
    let b = base(&work, &enc, &data);
    let dim = b.vectors[0].len();

    // The queries: 50 SciFact claims, 50 MTSamples descriptions.
    let mut queries: Vec<String> = std::fs::read_to_string(data.join("scifact/beir/queries.jsonl"))
        .unwrap()
        .lines()
        .take(50)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut r = csv::Reader::from_path(data.join("mtsamples/mtsamples.csv")).unwrap();
    let dcol = r
        .headers()
        .unwrap()
        .iter()
        .position(|x| x == "description")
        .unwrap();
    queries.extend(
        r.records()
            .step_by(97)
            .take(50)
            .map(|rec| rec.unwrap()[dcol].trim().to_string()),
    );
    let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let qv = enc.embed(&refs).unwrap();
    let q_npy = work.join("queries.npy");
    {
        let mut f = BufWriter::new(std::fs::File::create(&q_npy).unwrap());
        f.write_all(&clinsearch::ingest::vectors::npy_header(
            qv.len() as u64,
            dim,
            128,
        ))
        .unwrap();
        for v in &qv {
            for x in v {
                f.write_all(&x.to_le_bytes()).unwrap();
            }
        }
    }
    println!("# scale benchmark on {} ({} cores); base: {} real MiniLM vectors; {} queries; M {m}, ef_construction {efc}, ef_search {ef}",
        cpu::cpu_name(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), b.vectors.len(), queries.len());

    for run in runs.split(',') {
        let (n, quant) = run.split_once(':').expect("CHUNKS:QUANTIZATION");
        let n: usize = n.parse().expect("chunks");
        let set_dir = work.join(format!("set-{n}"));
        std::fs::create_dir_all(&set_dir).unwrap();
        let t = Instant::now();
        let (notes, npy) = generate(&set_dir, &b, n);
        eprintln!("{n} chunks generated in {:.0}s", t.elapsed().as_secs_f64());
        let data_dir = set_dir.join(format!("data-{quant}"));
        let _ = std::fs::remove_dir_all(&data_dir);

        // Import through the bulk path.
        let t0 = Instant::now();
        let out = Command::new(bin)
            .args([
                "ingest",
                "--quiet",
                "--json",
                "--batch",
                "500",
                "--quantization",
                quant,
            ])
            .args([
                "--hnsw-m",
                &m.to_string(),
                "--hnsw-ef-construction",
                &efc.to_string(),
                "--hnsw-ef-search",
                &ef.to_string(),
            ])
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data_dir)
            .arg("--npy")
            .arg(&npy)
            .arg(&notes)
            .output()
            .unwrap();
        let import_s = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let import_rss = children_max_rss_kb();
        let size = dir_size(&data_dir);

        // Cold open of serve, load, and its RSS.
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data_dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("serve exited").unwrap();
            if let Some(a) = line.strip_prefix("clinsearch serving on http://") {
                break a.trim_end_matches('/').to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        loop {
            let ok = std::net::TcpStream::connect(addr).is_ok()
                && http::Conn::new(addr).get("/api/health").0 == 200;
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cold_open = t0.elapsed().as_secs_f64();
        let mut lat = vec![];
        for mode in ["bm25", "semantic", "hybrid"] {
            for clients in [1, 8] {
                let r = http::load(addr, &queries, mode, clients, secs);
                lat.push((mode, clients, r.p50, r.p99, r.rps));
            }
        }
        let serve_rss = status_kb(child.id(), "VmRSS:");
        let serve_hwm = status_kb(child.id(), "VmHWM:");
        let _ = child.kill();
        let _ = child.wait();

        // Recall and the ef trade-off, in-process, against the exact top-10 from the peer run.
        let peer = Command::new("python3")
            .arg(root.join("benches/scale_peer.py"))
            .arg("--npy")
            .arg(&npy)
            .arg("--queries")
            .arg(&q_npy)
            .args([
                "--m",
                &m.to_string(),
                "--efc",
                &efc.to_string(),
                "--ef",
                &ef.to_string(),
            ])
            .args([
                "--peers",
                if std::env::var("BENCH_PEERS").as_deref() == Ok("0") {
                    ""
                } else if quant == "f32" || !runs.contains(&format!("{n}:f32")) {
                    "hnswlib,faiss"
                } else {
                    ""
                },
            ])
            .output()
            .unwrap();
        assert!(
            peer.status.success(),
            "the peers (pip install hnswlib faiss-cpu): {}",
            String::from_utf8_lossy(&peer.stderr)
        );
        let peers: Value = serde_json::from_slice(&peer.stdout).unwrap();
        let truth: Vec<Vec<u64>> = serde_json::from_value(peers["exact"].clone()).unwrap();
        let t0 = Instant::now();
        let engine = Engine::open(&data_dir, None, &OpenOptions::default()).unwrap();
        let open_in_process = t0.elapsed().as_secs_f64();
        let mut sweep = vec![];
        for e in [16, 32, 64, 128, 256] {
            let mut found = 0;
            let mut ms = vec![];
            for (q, t) in qv.iter().zip(&truth) {
                let t0 = Instant::now();
                let hits = engine
                    .vectors
                    .search_rescored(&engine.store, q, 10, e, None)
                    .unwrap();
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
                found += hits.iter().filter(|h| t.contains(&h.chunk_id)).count();
            }
            ms.sort_by(|a, b| a.total_cmp(b));
            let total: f64 = ms.iter().sum();
            sweep.push((
                e,
                found as f64 / (10 * truth.len()) as f64,
                http::percentile(&ms, 0.5),
                queries.len() as f64 / (total / 1e3),
            ));
        }
        drop(engine);
        let (tv_build, tv_p50, tv_p99) =
            raw_tantivy(&set_dir.join("raw-tantivy"), &notes, &queries);

        let st = &report["stages"];
        println!(
            "\n## {n} chunks, {quant} vectors ({} notes)",
            report["notes"]
        );
        println!("import: {import_s:.1} s wall ({:.0} chunks/s); stages (s): parse {:.1}, sled {:.1}, tantivy {:.1}, hnsw {:.1}; peak RSS {:.2} GB",
            n as f64 / import_s, st["parse"].as_f64().unwrap(), st["sled"].as_f64().unwrap(), st["tantivy"].as_f64().unwrap(), st["hnsw"].as_f64().unwrap(), gb(import_rss));
        println!(
            "data directory: {:.2} GB ({:.0} bytes per chunk)",
            size as f64 / 1e9,
            size as f64 / n as f64
        );
        println!("cold open of serve: {cold_open:.2} s (in-process open {open_in_process:.2} s); serving RSS {:.2} GB (peak {:.2} GB, {:.0} bytes per chunk)",
            gb(serve_rss), gb(serve_hwm), serve_rss as f64 * 1024.0 / n as f64);
        println!("| mode | clients | p50 ms | p99 ms | req/s |\n|---|---|---|---|---|");
        for (mode, c, p50, p99, rps) in &lat {
            println!("| {mode} | {c} | {p50:.1} | {p99:.1} | {rps:.0} |");
        }
        println!("vector index in-process (1 thread, top-10, rescored as searches are):\n| ef_search | recall@10 | p50 ms | queries/s |\n|---|---|---|---|");
        for (e, rec, p50, qps) in &sweep {
            println!("| {e} | {rec:.3} | {p50:.2} | {qps:.0} |");
        }
        let ours = sweep.iter().find(|s| s.0 == ef).unwrap();
        let hnsw_s = st["hnsw"].as_f64().unwrap();
        for name in ["hnswlib", "faiss"] {
            let p = &peers[name];
            if p.is_null() {
                continue;
            }
            println!("{name} {}: build {:.1} s (ours {hnsw_s:.1} s: {:.2}x), recall@10 {:.3} (ours {:.3}), {:.0} queries/s (ours {:.0}: {:.2}x)",
                p["version"].as_str().unwrap_or("?"), p["build_s"].as_f64().unwrap(), hnsw_s / p["build_s"].as_f64().unwrap(),
                p["recall"].as_f64().unwrap(), ours.1, p["qps"].as_f64().unwrap(), ours.3, ours.3 / p["qps"].as_f64().unwrap());
        }
        let bm25 = lat.iter().find(|l| l.0 == "bm25" && l.1 == 1).unwrap();
        println!("tantivy alone: index {tv_build:.1} s (our tantivy stage {:.1} s), top-10 p50 {tv_p50:.2} ms p99 {tv_p99:.2} ms (our BM25 API p50 {:.1} ms, with query parsing, snippets and HTTP)",
            st["tantivy"].as_f64().unwrap(), bm25.2);
    }
}

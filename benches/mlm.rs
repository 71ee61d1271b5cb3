//! Does domain-adaptive pretraining help? `clinsearch finetune mlm` on MTSamples
//! (../shared/data/mtsamples), then the downstream tasks started from the adapted model
//! against the same runs started from the base, same seeds. Run with `make bench-mlm`
//! (`cargo bench --bench mlm [adapt|demo|classify|retrieval]`, all by default).
//!
//! The note-level split: the retrieval benchmark's held-out notes (20% of the distinct
//! transcriptions, seed 7) and the classification benchmark's test notes are never trained
//! on. The masked-language-model corpus is every other distinct transcription; its dev
//! notes are `MLM_DEV_NOTES` of the retrieval held-out notes, masked with the same seeded
//! masks before and after, so the two figures are comparable.
//!
//! Budget (two CPU cores): adaptation is `MLM_STEPS` (300) steps of `MLM_BATCH` (16) x
//! `MLM_MAX_LEN` (128) tokens, learning rate `MLM_LR` (1e-4), starting from
//! `CLINSEARCH_MODEL` (all-MiniLM-L6-v2, which has no MLM head: a new one is trained).
//! Downstream runs are shortened and say so: classification `CLS_EPOCHS` (1) epoch at
//! `CLS_MAX_LEN` (128) tokens; retrieval tuning `RET_STEPS` (60) steps of `RET_BATCH` (16)
//! pairs at 128 tokens. Each runs once per seed of `SEEDS` (1,2,3) from both starting
//! points; the table gives the mean and the spread (min-max) over seeds.
//!
//! Every run's result is kept in target/bench-mlm/runs/ and reused when the benchmark is
//! run again with the same settings (delete the folder to measure again), so an
//! interrupted run continues where it stopped. The binary is copied at the start, so a
//! rebuild during the run does not change what is measured.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use clinsearch::train::classify::{accuracy_macro_f1, Classifier};
use serde_json::{json, Value};

#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/mtsamples.rs"]
mod mtsamples;
use mtsamples::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Bench {
    bin: PathBuf,
    work: PathBuf,
    model: String,
}

impl Bench {
    fn run(&self, args: &mut Command) -> (String, String) {
        let started = Instant::now();
        eprintln!("$ {:?}", args);
        let out = args.output().expect("run clinsearch");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            panic!("failed: {stderr}");
        }
        eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    fn cmd(&self) -> Command {
        Command::new(&self.bin)
    }

    /// The result cached under `name` with these `settings`, or `f`'s (then cached).
    fn cached(&self, name: &str, settings: &Value, f: impl FnOnce() -> Value) -> Value {
        let path = self.work.join("runs").join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v: Value = serde_json::from_str(&text).unwrap();
            if &v["settings"] == settings {
                eprintln!("{name}: reusing {}", path.display());
                return v["result"].clone();
            }
        }
        let result = f();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json!({"settings": settings, "result": result})).unwrap(),
        )
        .unwrap();
        result
    }
}

fn main() {
    clinsearch::model::tune_allocator();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let csv = root.join("../shared/data/mtsamples/mtsamples.csv");
    if !csv.is_file() {
        eprintln!("skipped: {} is absent", csv.display());
        return;
    }
    let model = std::env::var("CLINSEARCH_MODEL")
        .unwrap_or_else(|_| root.join("models/all-MiniLM-L6-v2").display().to_string());
    let work = root.join("target/bench-mlm");
    std::fs::create_dir_all(&work).unwrap();
    let bin = work.join("clinsearch");
    std::fs::copy(env!("CARGO_BIN_EXE_clinsearch"), &bin).unwrap();
    let b = Bench { bin, work, model };
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |t: &str| which.is_empty() || which.iter().any(|w| w == t);
    println!("CPU: {}", cpu::cpu_name());
    let rows = read_mtsamples(&csv);
    let classes = classification_split(&rows);
    let retrieval = retrieval_split(&rows);
    let adapted = adapt(&b, &rows, &classes, &retrieval);
    if want("demo") {
        demo(&b, &adapted);
    }
    let seeds: Vec<u64> = std::env::var("SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    if want("classify") {
        classify(&b, &classes, &adapted, &seeds);
    }
    if want("retrieval") {
        retrieval_runs(&b, &retrieval, &adapted, &seeds);
    }
}

/// Adapts the base on the MLM corpus (cached); returns the adapted folder.
fn adapt(b: &Bench, rows: &[Row], classes: &ClassSplit, split: &RetrievalSplit) -> PathBuf {
    let dir = b.work.join("adapt");
    std::fs::create_dir_all(&dir).unwrap();
    let held: BTreeSet<String> = split
        .test
        .iter()
        .map(|r| norm(&r.transcription))
        .chain(
            classes
                .test
                .iter()
                .map(|r| norm(r["text"].as_str().unwrap())),
        )
        .collect();
    let mut seen = BTreeSet::new();
    let train: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            let n = norm(&r.transcription);
            !held.contains(&n) && seen.insert(n)
        })
        .collect();
    let n_dev: usize = env_or("MLM_DEV_NOTES", 150);
    let dev: Vec<&Row> = split.test.iter().take(n_dev).copied().collect();
    let text = |r: &&Row| json!({"text": r.transcription});
    write_jsonl(&dir.join("train.jsonl"), train.iter().map(text));
    write_jsonl(&dir.join("dev.jsonl"), dev.iter().map(text));
    let steps: usize = env_or("MLM_STEPS", 300);
    let batch: usize = env_or("MLM_BATCH", 16);
    let lr: f64 = env_or("MLM_LR", 1e-4);
    let max_len: usize = env_or("MLM_MAX_LEN", 128);
    let out = dir.join("model");
    let before = dir.join("model-before");
    let settings = json!({"model": b.model, "steps": steps, "batch": batch, "lr": lr, "max_len": max_len, "train": train.len(), "dev": dev.len()});
    let r = b.cached("adapt", &settings, || {
        let common = |c: &mut Command, out: &Path, steps: usize| {
            c.args(["finetune", "mlm", "--json", "--base", &b.model])
                .arg("--corpus")
                .arg(dir.join("train.jsonl"))
                .arg("--dev")
                .arg(dir.join("dev.jsonl"))
                .args(["--epochs", "1", "--max-steps", &steps.to_string()])
                .args(["--batch-size", &batch.to_string(), "--lr", &lr.to_string()])
                .args(["--max-len", &max_len.to_string(), "--out"])
                .arg(out);
        };
        // The starting point (the base with its new, untrained head), for the demo.
        let mut c = b.cmd();
        common(&mut c, &before, 0);
        b.run(&mut c);
        let started = Instant::now();
        let mut c = b.cmd();
        common(&mut c, &out, steps);
        let (stdout, stderr) = b.run(&mut c);
        let secs = started.elapsed().as_secs_f64();
        let summary = stderr
            .lines()
            .find(|l| l.contains("training tokens/s"))
            .unwrap_or_default()
            .to_string();
        let epoch: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("trainer_state.json")).unwrap())
                .unwrap();
        json!({"seconds": secs, "summary": summary, "epoch": epoch, "state_steps": state["step"]})
    });
    println!(
        "\nadaptation: {} MLM training notes, {} dev notes (retrieval held-out), {steps} steps of {batch} x {max_len} tokens, lr {lr}, from {}",
        train.len(),
        dev.len(),
        b.model
    );
    println!("  {}", r["summary"].as_str().unwrap_or(""));
    println!("  wall time {:.0} s", r["seconds"].as_f64().unwrap());
    out
}

const DEMO: &[&str] = &[
    "The patient was started on [MASK] for atrial fibrillation.",
    "Chest x-ray showed no evidence of [MASK].",
    "He denies any chest [MASK] or shortness of breath.",
    "The patient was taken to the operating [MASK] and placed in the supine position.",
    "She has a history of type 2 diabetes [MASK].",
    "The abdomen is soft and non [MASK].",
];

fn demo(b: &Bench, adapted: &Path) {
    let before = adapted.parent().unwrap().join("model-before");
    println!("\nfill-mask, top 3 (before: the base with its new head untrained; after: adapted)");
    for text in DEMO {
        let top = |m: &Path| -> String {
            let (out, _) = b.run(
                b.cmd()
                    .args(["fill-mask", "--top-k", "3", "--model"])
                    .arg(m)
                    .arg(text),
            );
            let v: Value = serde_json::from_str(&out).unwrap();
            v["masks"][0]["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{} {:.2}",
                        c["token"].as_str().unwrap(),
                        c["score"].as_f64().unwrap()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  {text}\n    before: {}\n    after:  {}",
            top(&before),
            top(adapted)
        );
    }
}

fn mean_spread(xs: &[f64]) -> String {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!("{mean:.3} ({lo:.3}-{hi:.3})")
}

fn classify(b: &Bench, split: &ClassSplit, adapted: &Path, seeds: &[u64]) {
    let dir = b.work.join("classify");
    std::fs::create_dir_all(&dir).unwrap();
    write_jsonl(&dir.join("train.jsonl"), split.train.clone());
    write_jsonl(&dir.join("dev.jsonl"), split.dev.clone());
    let labels: Vec<String> = split.per_class.keys().cloned().collect();
    let gold: Vec<usize> = split
        .test
        .iter()
        .map(|r| {
            labels
                .binary_search(&r["label"].as_str().unwrap().to_string())
                .unwrap()
        })
        .collect();
    let epochs: usize = env_or("CLS_EPOCHS", 1);
    let max_len: usize = env_or("CLS_MAX_LEN", 128);
    let lr: f64 = env_or("CLS_LR", 1e-4);
    let batch: usize = env_or("CLS_BATCH", 16);
    let mut table = vec![];
    for (name, base) in [
        ("base", b.model.clone()),
        ("adapted", adapted.display().to_string()),
    ] {
        let (mut accs, mut f1s, mut secs) = (vec![], vec![], vec![]);
        for &seed in seeds {
            let settings = json!({"base": base, "seed": seed, "epochs": epochs, "max_len": max_len, "lr": lr, "batch": batch, "train": split.train.len()});
            let r = b.cached(&format!("classify-{name}-{seed}"), &settings, || {
                let out = dir.join(format!("model-{name}-{seed}"));
                let started = Instant::now();
                b.run(
                    b.cmd()
                        .args(["finetune", "classify", "--json", "--base", &base])
                        .arg("--train")
                        .arg(dir.join("train.jsonl"))
                        .arg("--dev")
                        .arg(dir.join("dev.jsonl"))
                        .args(["--epochs", &epochs.to_string(), "--seed", &seed.to_string()])
                        .args(["--batch-size", &batch.to_string(), "--lr", &lr.to_string()])
                        .args(["--max-len", &max_len.to_string(), "--out"])
                        .arg(&out),
                );
                let secs = started.elapsed().as_secs_f64();
                let clf = Classifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
                let seqs: Vec<Vec<u32>> = split
                    .test
                    .iter()
                    .map(|r| {
                        clinsearch::train::encode(
                            &clf.tokenizer,
                            r["text"].as_str().unwrap(),
                            max_len,
                        )
                        .unwrap()
                    })
                    .collect();
                let pred: Vec<usize> = clf
                    .probabilities_of(&seqs)
                    .unwrap()
                    .iter()
                    .map(|p| (0..p.len()).max_by(|&a, &c| p[a].total_cmp(&p[c])).unwrap())
                    .collect();
                let (acc, f1) = accuracy_macro_f1(&gold, &pred);
                let _ = std::fs::remove_dir_all(&out);
                json!({"accuracy": acc, "macro_f1": f1, "seconds": secs})
            });
            accs.push(r["accuracy"].as_f64().unwrap());
            f1s.push(r["macro_f1"].as_f64().unwrap());
            secs.push(r["seconds"].as_f64().unwrap());
        }
        table.push((name, accs, f1s, secs));
    }
    println!(
        "\nMTSamples specialty ({} classes; {} train / {} test notes), {epochs} epoch(s) at {max_len} tokens, seeds {seeds:?}: mean (min-max)",
        labels.len(),
        split.train.len(),
        split.test.len()
    );
    println!(
        "{:<10} {:>22} {:>22} {:>10}",
        "start", "accuracy", "macro-F1", "train s"
    );
    for (name, accs, f1s, secs) in &table {
        println!(
            "{name:<10} {:>22} {:>22} {:>10.0}",
            mean_spread(accs),
            mean_spread(f1s),
            secs.iter().sum::<f64>() / secs.len() as f64
        );
    }
}

fn retrieval_runs(b: &Bench, split: &RetrievalSplit, adapted: &Path, seeds: &[u64]) {
    let dir = b.work.join("retrieval");
    std::fs::create_dir_all(&dir).unwrap();
    let pair = |r: &&Row| json!({"query": r.description, "positive": r.transcription});
    write_jsonl(&dir.join("pairs-train.jsonl"), split.train.iter().map(pair));
    let n_queries = write_heldout(&dir, &split.test);
    let steps: usize = env_or("RET_STEPS", 60);
    let batch: usize = env_or("RET_BATCH", 16);
    let lr: f64 = env_or("RET_LR", 2e-5);
    let mut table = vec![];
    for (name, base) in [
        ("base", b.model.clone()),
        ("adapted", adapted.display().to_string()),
    ] {
        let (mut ndcg, mut recall, mut secs) = (vec![], vec![], vec![]);
        for &seed in seeds {
            let settings = json!({"base": base, "seed": seed, "steps": steps, "batch": batch, "lr": lr, "pairs": split.train.len()});
            let r = b.cached(&format!("retrieval-{name}-{seed}"), &settings, || {
                let out = dir.join(format!("model-{name}-{seed}"));
                let started = Instant::now();
                b.run(
                    b.cmd()
                        .args(["finetune", "retrieval", "--json", "--base", &base])
                        .arg("--pairs")
                        .arg(dir.join("pairs-train.jsonl"))
                        .args(["--epochs", "1", "--max-steps", &steps.to_string()])
                        .args([
                            "--seed",
                            &seed.to_string(),
                            "--batch-size",
                            &batch.to_string(),
                        ])
                        .args(["--lr", &lr.to_string(), "--max-len", "128", "--out"])
                        .arg(&out),
                );
                let secs = started.elapsed().as_secs_f64();
                let data = dir.join(format!("data-{name}-{seed}"));
                let _ = std::fs::remove_dir_all(&data);
                let m = out.display().to_string();
                b.run(
                    b.cmd()
                        .args(["ingest", "--quiet", "--model", &m, "--data"])
                        .arg(&data)
                        .arg(dir.join("test-notes.jsonl")),
                );
                let (report, _) = b.run(
                    b.cmd()
                        .args([
                            "eval", "--json", "--modes", "semantic", "--model", &m, "--data",
                        ])
                        .arg(&data)
                        .arg("--queries")
                        .arg(dir.join("queries.jsonl"))
                        .arg("--qrels")
                        .arg(dir.join("qrels.tsv")),
                );
                let v: Value = serde_json::from_str(&report).unwrap();
                let s = v["summaries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["mode"] == "semantic")
                    .unwrap()
                    .clone();
                let _ = std::fs::remove_dir_all(&data);
                let _ = std::fs::remove_dir_all(&out);
                json!({"ndcg_10": s["ndcg_10"], "recall_10": s["recall"]["10"], "seconds": secs})
            });
            ndcg.push(r["ndcg_10"].as_f64().unwrap());
            recall.push(r["recall_10"].as_f64().unwrap());
            secs.push(r["seconds"].as_f64().unwrap());
        }
        table.push((name, ndcg, recall, secs));
    }
    println!(
        "\nMTSamples description -> note, semantic search over {} held-out notes ({n_queries} queries), retrieval tuning {steps} steps of {batch} pairs, seeds {seeds:?}: mean (min-max)",
        split.test.len()
    );
    println!(
        "{:<10} {:>22} {:>22} {:>10}",
        "start", "nDCG@10", "Recall@10", "train s"
    );
    for (name, ndcg, recall, secs) in &table {
        println!(
            "{name:<10} {:>22} {:>22} {:>10.0}",
            mean_spread(ndcg),
            mean_spread(recall),
            secs.iter().sum::<f64>() / secs.len() as f64
        );
    }
}

//! Does fine-tuning help? Both tasks of `clinsearch finetune` on MTSamples
//! (../shared/data/mtsamples, 4,999 real transcriptions), each against a baseline that needs
//! no fine-tuning, measured in the same run. Run with `cargo bench --bench finetune
//! [classify|retrieval]` (both by default); figures go to the README.
//!
//! Classification: `medical_specialty` as the label. Categories that name a document type
//! rather than a specialty (Surgery, Consult - History and Phy., SOAP / Chart / Progress Notes,
//! Discharge Summary, Emergency Room Reports, Office Notes, Letters, IME-QME-Work Comp) are
//! dropped, as are specialties with fewer than 80 notes (no stable test estimate), leaving 13
//! classes. MTSamples lists many transcriptions twice (under Surgery and under a specialty,
//! or under two specialties): identical transcriptions are kept once, and those listed under
//! two kept classes are dropped, so no text is in train and test. Stratified split 70/10/20
//! with a fixed seed. Baselines on frozen embeddings of the same input (the first 256 tokens,
//! the fine-tuned model's input): nearest centroid, and logistic regression (softmax, L2,
//! Adam, its step count chosen on the dev set).
//!
//! Retrieval: (description -> transcription) pairs. 20% of the distinct notes are held out
//! and never trained on; their descriptions are the queries, each judged relevant to the
//! note(s) it describes. The base and the tuned encoder each ingest the held-out notes into a
//! data directory and `clinsearch eval` measures them.
//!
//! Settings (environment): classification `FT_EPOCHS` (5), `FT_LR` (1e-4), `FT_BATCH` (16),
//! `FT_MAX_LEN` (256); retrieval `FT_EPOCHS_RETRIEVAL` (1), `FT_LR_RETRIEVAL` (2e-5),
//! `FT_BATCH_RETRIEVAL` (32), `FT_MAX_LEN_RETRIEVAL` (128 tokens of the note in training;
//! the notes are still embedded in full, in windows of 256, for the evaluation).
//!
//! Everything goes through the `clinsearch` binary (finetune, ingest, eval) except the
//! baselines and the classifier's test predictions (library calls).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use clinsearch::model::{Encoder, EncoderOptions};
use clinsearch::train::classify::{accuracy_macro_f1, Classifier};
use serde_json::json;

#[path = "common/mtsamples.rs"]
mod mtsamples;
use mtsamples::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_clinsearch")
}

fn run(cmd: &mut Command) -> String {
    let started = Instant::now();
    eprintln!("$ {:?}", cmd);
    let out = cmd.output().expect("run clinsearch");
    if !out.status.success() {
        panic!("failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
    String::from_utf8(out.stdout).unwrap()
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
    let work = root.join("target/bench-finetune");
    std::fs::create_dir_all(&work).unwrap();
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |t: &str| which.is_empty() || which.iter().any(|w| w == t);
    let rows = read_mtsamples(&csv);
    if want("classify") {
        classify(&rows, &model, &work.join("classify"));
    }
    if want("retrieval") {
        retrieval(&rows, &model, &work.join("retrieval"));
    }
}

// ---------------------------------------------------------------------------------------
// Classification

fn classify(rows: &[Row], model: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ClassSplit {
        train,
        dev,
        test,
        per_class,
        ambiguous,
    } = classification_split(rows);
    println!(
        "classification: {} classes, {} train / {} dev / {} test notes ({} transcriptions listed under two kept classes dropped)",
        per_class.len(),
        train.len(),
        dev.len(),
        test.len(),
        ambiguous
    );
    for (l, t) in &per_class {
        println!("  {:>4}  {l}", t.len());
    }
    let labels: Vec<String> = per_class.keys().cloned().collect();
    let label_of = |r: &serde_json::Value| {
        labels
            .binary_search(&r["label"].as_str().unwrap().to_string())
            .unwrap()
    };
    let text_of = |r: &serde_json::Value| r["text"].as_str().unwrap().to_string();
    write_jsonl(&dir.join("train.jsonl"), train.clone());
    write_jsonl(&dir.join("dev.jsonl"), dev.clone());
    write_jsonl(&dir.join("test.jsonl"), test.clone());

    // Baselines on frozen embeddings of the first 256 tokens.
    let enc = Encoder::load(model, &EncoderOptions::default()).unwrap();
    let started = Instant::now();
    let embed = |set: &[serde_json::Value]| -> Vec<Vec<f32>> {
        let texts: Vec<String> = set.iter().map(text_of).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        enc.embed(&refs).unwrap()
    };
    let (xtr, xdev, xte) = (embed(&train), embed(&dev), embed(&test));
    eprintln!(
        "embedded {} notes for the baselines in {:.0} s",
        train.len() + dev.len() + test.len(),
        started.elapsed().as_secs_f64()
    );
    let ytr: Vec<usize> = train.iter().map(label_of).collect();
    let ydev: Vec<usize> = dev.iter().map(label_of).collect();
    let yte: Vec<usize> = test.iter().map(label_of).collect();
    let centroid = nearest_centroid(&xtr, &ytr, labels.len(), &xte);
    let logreg = logistic_regression(&xtr, &ytr, &xdev, &ydev, labels.len(), &xte);

    // Fine-tuning through the CLI.
    let out = dir.join("model");
    let epochs: usize = env_or("FT_EPOCHS", 5);
    let started = Instant::now();
    let log = run(Command::new(bin())
        .args(["finetune", "classify", "--base", model, "--json"])
        .arg("--train")
        .arg(dir.join("train.jsonl"))
        .arg("--dev")
        .arg(dir.join("dev.jsonl"))
        .args(["--epochs", &epochs.to_string()])
        .args(["--batch-size", &env_or("FT_BATCH", 16usize).to_string()])
        .args(["--lr", &env_or("FT_LR", 1e-4f64).to_string()])
        .args(["--max-len", &env_or("FT_MAX_LEN", 256usize).to_string()])
        .arg("--out")
        .arg(&out));
    let train_secs = started.elapsed().as_secs_f64();
    for line in log.lines() {
        println!("  {line}");
    }
    let clf = Classifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    let texts: Vec<String> = test.iter().map(text_of).collect();
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| clinsearch::train::encode(&clf.tokenizer, t, 256).unwrap())
        .collect();
    let probs = clf.probabilities_of(&seqs).unwrap();
    let tuned: Vec<usize> = probs
        .iter()
        .map(|p| (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap())
        .collect();

    println!(
        "\nMTSamples specialty, test split ({} notes, {} classes), model {model}:",
        test.len(),
        labels.len()
    );
    println!("{:<48} {:>9} {:>9}", "method", "accuracy", "macro-F1");
    let mut results = vec![];
    for (name, pred) in [
        ("nearest centroid on frozen embeddings", &centroid),
        ("logistic regression on frozen embeddings", &logreg),
        ("fine-tuned (clinsearch finetune classify)", &tuned),
    ] {
        let (acc, f1) = accuracy_macro_f1(&yte, pred);
        println!("{name:<48} {acc:>9.3} {f1:>9.3}");
        results.push(json!({"method": name, "accuracy": acc, "macro_f1": f1}));
    }
    println!("fine-tuning took {:.0} s ({epochs} epochs)", train_secs);
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json!({"results": results, "train_seconds": train_secs}))
            .unwrap(),
    )
    .unwrap();
}

fn nearest_centroid(x: &[Vec<f32>], y: &[usize], classes: usize, test: &[Vec<f32>]) -> Vec<usize> {
    let d = x[0].len();
    let mut c = vec![vec![0f32; d]; classes];
    for (v, &l) in x.iter().zip(y) {
        for (a, b) in c[l].iter_mut().zip(v) {
            *a += b;
        }
    }
    for v in &mut c {
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|a| *a /= n);
    }
    test.iter()
        .map(|v| {
            (0..classes)
                .max_by(|&a, &b| {
                    clinsearch::search::cosine(v, &c[a])
                        .total_cmp(&clinsearch::search::cosine(v, &c[b]))
                })
                .unwrap()
        })
        .collect()
}

/// Softmax regression, full batch, Adam, L2 1e-4; the step count with the best dev macro-F1.
fn logistic_regression(
    x: &[Vec<f32>],
    y: &[usize],
    xdev: &[Vec<f32>],
    ydev: &[usize],
    classes: usize,
    test: &[Vec<f32>],
) -> Vec<usize> {
    let dev = Device::Cpu;
    let d = x[0].len();
    let t = |m: &[Vec<f32>]| Tensor::from_vec(m.concat(), (m.len(), d), &dev).unwrap();
    let (xt, xd, xe) = (t(x), t(xdev), t(test));
    let yt = Tensor::from_vec(
        y.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        y.len(),
        &dev,
    )
    .unwrap();
    let w = Var::zeros((d, classes), DType::F32, &dev).unwrap();
    let b = Var::zeros(classes, DType::F32, &dev).unwrap();
    let mut opt = candle_nn::AdamW::new(
        vec![w.clone(), b.clone()],
        candle_nn::ParamsAdamW {
            lr: 0.05,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )
    .unwrap();
    let predict = |m: &Tensor| -> Vec<usize> {
        m.matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    };
    let (mut best, mut best_pred) = (-1.0, vec![]);
    for step in 1..=1000 {
        let logits = xt
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &yt).unwrap();
        opt.backward_step(&loss).unwrap();
        if step % 25 == 0 {
            let (_, f1) = accuracy_macro_f1(ydev, &predict(&xd));
            if f1 > best {
                best = f1;
                best_pred = predict(&xe);
            }
        }
    }
    best_pred
}

// ---------------------------------------------------------------------------------------
// Retrieval

fn retrieval(rows: &[Row], model: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let RetrievalSplit { train, dev, test } = retrieval_split(rows);
    let pair = |r: &&Row| json!({"query": r.description, "positive": r.transcription});
    write_jsonl(&dir.join("pairs-train.jsonl"), train.iter().map(pair));
    write_jsonl(&dir.join("pairs-dev.jsonl"), dev.iter().map(pair));
    let n_queries = write_heldout(dir, &test);
    println!(
        "retrieval: {} training pairs, {} dev pairs; held out: {} notes, {} queries",
        train.len(),
        dev.len(),
        test.len(),
        n_queries
    );

    let out = dir.join("model");
    let started = Instant::now();
    let log = run(Command::new(bin())
        .args(["finetune", "retrieval", "--base", model, "--json"])
        .arg("--pairs")
        .arg(dir.join("pairs-train.jsonl"))
        .arg("--dev")
        .arg(dir.join("pairs-dev.jsonl"))
        .args([
            "--epochs",
            &env_or("FT_EPOCHS_RETRIEVAL", 1usize).to_string(),
        ])
        .args([
            "--batch-size",
            &env_or("FT_BATCH_RETRIEVAL", 32usize).to_string(),
        ])
        .args(["--lr", &env_or("FT_LR_RETRIEVAL", 2e-5f64).to_string()])
        .args([
            "--max-len",
            &env_or("FT_MAX_LEN_RETRIEVAL", 128usize).to_string(),
        ])
        .arg("--out")
        .arg(&out));
    let train_secs = started.elapsed().as_secs_f64();
    for line in log.lines() {
        println!("  {line}");
    }
    let mut results = vec![];
    println!(
        "\nMTSamples description -> note, {} held-out notes, {} queries:",
        test.len(),
        n_queries
    );
    println!(
        "{:<10} {:<9} {:>10} {:>10} {:>8}",
        "encoder", "mode", "Recall@10", "nDCG@10", "MRR@10"
    );
    for (name, m) in [
        ("base", model.to_string()),
        ("tuned", out.display().to_string()),
    ] {
        let data = dir.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&data);
        run(Command::new(bin())
            .args(["ingest", "--quiet", "--model", &m, "--data"])
            .arg(&data)
            .arg(dir.join("test-notes.jsonl")));
        let report = run(Command::new(bin())
            .args(["eval", "--json", "--model", &m, "--data"])
            .arg(&data)
            .arg("--queries")
            .arg(dir.join("queries.jsonl"))
            .arg("--qrels")
            .arg(dir.join("qrels.tsv")));
        let v: serde_json::Value = serde_json::from_str(&report).unwrap();
        for s in v["summaries"].as_array().unwrap() {
            println!(
                "{name:<10} {:<9} {:>10.3} {:>10.3} {:>8.3}",
                s["mode"].as_str().unwrap(),
                s["recall"]["10"].as_f64().unwrap(),
                s["ndcg_10"].as_f64().unwrap(),
                s["mrr_10"].as_f64().unwrap()
            );
            results.push(json!({"encoder": name, "summary": s}));
        }
    }
    println!("retrieval tuning took {train_secs:.0} s");
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json!({"results": results, "train_seconds": train_secs}))
            .unwrap(),
    )
    .unwrap();
}

//! Named-entity tagging on two real corpora: NCBI-disease (diseases) and BC5CDR (chemicals
//! and diseases), ../shared/data, their standard train/devel/test splits. For each, the base
//! model (all-MiniLM-L6-v2 by default) is fine-tuned with `clinsearch finetune ner` on train
//! with devel as dev, and a frozen-encoder baseline (`--freeze-layers` = every layer: a linear
//! layer on the frozen hidden states) is trained in the same run; `clinsearch tag --eval`
//! scores both on test with seqeval's default-mode entity F1. Run with `cargo bench --bench
//! ner`; the figures go to the README with the published ones for context (BioBERT paper,
//! NCBI-disease: BERT-base 85.6, BioBERT 89.7 F1 — 12-layer 768-wide models; ours is a
//! 6-layer 384-wide sentence encoder).
//!
//! Settings (environment): `NER_SETS` (ncbi_disease,bc5cdr), `NER_EPOCHS` (3), `NER_LR`
//! (5e-5), `NER_FROZEN_LR` (1e-3), `NER_BATCH` (16), `NER_MAX_STEPS` (none: a cap for quick
//! trials), `NER_MODEL` (models/all-MiniLM-L6-v2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "common/cpu.rs"]
mod cpu;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_clinsearch")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn run(cmd: &mut Command) -> String {
    eprintln!("$ {cmd:?}");
    let out = cmd.output().expect("run clinsearch");
    if !out.status.success() {
        panic!("failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

struct Result {
    set: String,
    method: &'static str,
    precision: f64,
    recall: f64,
    f1: f64,
    per_type: String,
    train_s: f64,
}

fn train_and_score(
    set: &str,
    data: &Path,
    model: &str,
    out: &Path,
    method: &'static str,
    extra: &[String],
) -> Result {
    let started = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.args(["finetune", "ner", "--json", "--base", model, "--train"])
        .arg(data.join("train.tsv"))
        .arg("--dev")
        .arg(data.join("devel.tsv"))
        .args(["--epochs", &env_or("NER_EPOCHS", "3")])
        .args(["--batch-size", &env_or("NER_BATCH", "16")])
        .args(extra)
        .arg("--out")
        .arg(out);
    if let Ok(s) = std::env::var("NER_MAX_STEPS") {
        cmd.args(["--max-steps", &s]);
    }
    for line in run(&mut cmd).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        println!(
            "  {set} {method} epoch {}: train loss {:.4}, dev F1 {:.4} ({:.0} s)",
            v["epoch"],
            v["train_loss"].as_f64().unwrap_or(f64::NAN),
            v["dev"]["f1"].as_f64().unwrap_or(f64::NAN),
            v["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let train_s = started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_str(&run(Command::new(bin())
        .args(["tag", "--model"])
        .arg(out)
        .arg("--eval")
        .arg(data.join("test.tsv"))))
    .unwrap();
    let r = &report["report"];
    let per_type = r["per_type"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, p)| format!("{t} {:.1}", 100.0 * p["f1"].as_f64().unwrap()))
        .collect::<Vec<_>>()
        .join(", ");
    Result {
        set: set.to_string(),
        method,
        precision: r["overall"]["precision"].as_f64().unwrap(),
        recall: r["overall"]["recall"].as_f64().unwrap(),
        f1: r["overall"]["f1"].as_f64().unwrap(),
        per_type,
        train_s,
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = env_or(
        "NER_MODEL",
        &root.join("models/all-MiniLM-L6-v2").display().to_string(),
    );
    if !Path::new(&model).join("config.json").is_file() {
        eprintln!("skipped: no model at {model} (run ./scripts/fetch_model.sh {model})");
        return;
    }
    let layers = {
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(&model).join("config.json")).unwrap(),
        )
        .unwrap();
        c["num_hidden_layers"].as_u64().unwrap()
    };
    let cpu = cpu::cpu_name();
    let work = root.join("target/ner-bench");
    let mut results = vec![];
    for set in env_or("NER_SETS", "ncbi_disease,bc5cdr").split(',') {
        let data = root.join("../shared/data").join(set);
        if !data.join("train.tsv").is_file() {
            eprintln!("skipped {set}: {} is absent", data.display());
            continue;
        }
        let lr = env_or("NER_LR", "5e-5");
        results.push(train_and_score(
            set,
            &data,
            &model,
            &work.join(format!("{set}-finetuned")),
            "fine-tuned",
            &["--lr".into(), lr],
        ));
        results.push(train_and_score(
            set,
            &data,
            &model,
            &work.join(format!("{set}-frozen")),
            "frozen encoder + linear",
            &[
                "--lr".into(),
                env_or("NER_FROZEN_LR", "1e-3"),
                "--freeze-layers".into(),
                layers.to_string(),
            ],
        ));
    }
    println!("\nEntity-level test F1 (seqeval default mode), {model}, {cpu}:");
    println!("| set | model | precision | recall | F1 | per type | training |");
    println!("| --- | --- | ---: | ---: | ---: | --- | ---: |");
    for r in &results {
        println!(
            "| {} | {} | {:.1} | {:.1} | **{:.1}** | {} | {:.0} s |",
            r.set,
            r.method,
            100.0 * r.precision,
            100.0 * r.recall,
            100.0 * r.f1,
            r.per_type,
            r.train_s
        );
    }
}

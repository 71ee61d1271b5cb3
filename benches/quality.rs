//! The quality table: nDCG@10 of every retrieval option on every judged collection, in one
//! command (`cargo bench --bench quality`; `make quality`). The README's table is this
//! benchmark's output, and the defaults are chosen from it.
//!
//! Collections: SciFact and NFCorpus (BEIR test splits, ../shared/data), sample_corpus/ with
//! its three judged sets (general, abbreviations, negation), and MTSamples description ->
//! note (the held-out 20% of the fine-tuning benchmark's retrieval split: the same notes
//! and queries). Each collection is ingested once per window context (none, title,
//! heading: an ingest-time choice), and `clinsearch bench options` then measures, on each
//! data directory and judged set, BM25 under each k1/b and stop-word setting, semantic
//! search under each note score, every fusion, and the 5-fold cross-validated tuned fusion,
//! each with a paired randomisation test against its retriever's default.
//!
//! Data directories are kept under `target/quality/` and completed rather than re-embedded
//! on a second run (delete the folder to start again). Settings (environment):
//! `QUALITY_SETS` (comma-separated from scifact,nfcorpus,sample,mtsamples; default all),
//! `QUALITY_CONTEXTS` (default none,title,heading), `QUALITY_MODEL` (default
//! models/all-MiniLM-L6-v2). Output: a Markdown table on stdout, also written with the raw
//! rows to `target/quality/table.md` and `table.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

#[path = "common/mtsamples.rs"]
mod mtsamples;

#[path = "common/cpu.rs"]
mod cpu;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_clinsearch")
}

fn run(cmd: &mut Command) -> String {
    let started = Instant::now();
    eprintln!("$ {cmd:?}");
    let out = cmd.output().expect("run clinsearch");
    if !out.status.success() {
        panic!("failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("  ({:.0} s)", started.elapsed().as_secs_f64());
    String::from_utf8(out.stdout).unwrap()
}

/// A judged set of a collection: its column in the table, queries and judgments.
struct Judged {
    column: &'static str,
    queries: PathBuf,
    qrels: PathBuf,
}

/// A collection: how to ingest it into a data directory, and its judged sets.
struct Collection {
    name: &'static str,
    /// `bench beir` over a BEIR folder, or `ingest` of a notes file.
    source: Source,
    sets: Vec<Judged>,
}

enum Source {
    Beir(PathBuf),
    Notes(PathBuf),
}

fn collections(root: &Path, work: &Path, wanted: &[String]) -> Vec<Collection> {
    let shared = root.join("../shared/data");
    let mut out = vec![];
    let want = |n: &str| wanted.iter().any(|w| w == n);
    for (name, column) in [("scifact", "SciFact"), ("nfcorpus", "NFCorpus")] {
        let beir = shared.join(name).join("beir");
        if !want(name) {
            continue;
        }
        if !beir.join("corpus.jsonl").is_file() {
            eprintln!("skipped {name}: {} is absent", beir.display());
            continue;
        }
        out.push(Collection {
            name,
            sets: vec![Judged {
                column,
                queries: beir.join("queries.jsonl"),
                qrels: beir.join("qrels/test.tsv"),
            }],
            source: Source::Beir(beir),
        });
    }
    if want("sample") {
        let s = root.join("sample_corpus");
        let set = |column, q: &str, r: &str| Judged {
            column,
            queries: s.join(q),
            qrels: s.join(r),
        };
        out.push(Collection {
            name: "sample",
            source: Source::Notes(s.join("notes.jsonl")),
            sets: vec![
                set("sample", "queries.jsonl", "qrels.tsv"),
                set("sample abbrev.", "queries_abbrev.jsonl", "qrels_abbrev.tsv"),
                set(
                    "sample negation",
                    "queries_negation.jsonl",
                    "qrels_negation.tsv",
                ),
            ],
        });
    }
    if want("mtsamples") {
        let csv = shared.join("mtsamples/mtsamples.csv");
        if csv.is_file() {
            let dir = work.join("mtsamples-set");
            std::fs::create_dir_all(&dir).unwrap();
            let rows = mtsamples::read_mtsamples(&csv);
            let split = mtsamples::retrieval_split(&rows);
            let n = mtsamples::write_heldout(&dir, &split.test);
            eprintln!(
                "mtsamples: {} held-out notes, {n} queries",
                split.test.len()
            );
            out.push(Collection {
                name: "mtsamples",
                source: Source::Notes(dir.join("test-notes.jsonl")),
                sets: vec![Judged {
                    column: "MTSamples",
                    queries: dir.join("queries.jsonl"),
                    qrels: dir.join("qrels.tsv"),
                }],
            });
        } else {
            eprintln!("skipped mtsamples: {} is absent", csv.display());
        }
    }
    out
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() {
    clinsearch::model::tune_allocator();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = root.join("target/quality");
    std::fs::create_dir_all(&work).unwrap();
    let model = std::env::var("QUALITY_MODEL")
        .unwrap_or_else(|_| root.join("models/all-MiniLM-L6-v2").display().to_string());
    if !Path::new(&model).join("config.json").is_file() {
        eprintln!("skipped: no model at {model} (run ./scripts/fetch_model.sh {model})");
        return;
    }
    let sets = env_list("QUALITY_SETS", "scifact,nfcorpus,sample,mtsamples");
    let contexts = env_list("QUALITY_CONTEXTS", "none,title,heading");
    let cpu = cpu::cpu_name();
    let started = Instant::now();

    // (retriever, option, context) -> column -> (nDCG@10, p, default)
    type Cell = (f64, f64, bool);
    let mut table: BTreeMap<(usize, String, String), BTreeMap<String, Cell>> = BTreeMap::new();
    let mut order: Vec<(usize, String, String)> = vec![];
    let mut columns: Vec<&'static str> = vec![];
    let mut raw = vec![];
    let rank = |r: &str| match r {
        "bm25" => 0,
        "semantic" => 1,
        "hybrid" => 2,
        _ => 3,
    };
    for c in collections(&root, &work, &sets) {
        for (ci, ctx) in contexts.iter().enumerate() {
            let data = work.join(format!("{}-{ctx}", c.name));
            let t = Instant::now();
            match &c.source {
                Source::Beir(dir) => {
                    run(Command::new(bin())
                        .args(["bench", "beir"])
                        .arg(dir)
                        .args(["--modes", "bm25", "--model", &model, "--data"])
                        .arg(&data)
                        .args(["--window-context", ctx]));
                }
                Source::Notes(file) => {
                    if !data.join("sled").is_dir() {
                        run(Command::new(bin())
                            .args(["ingest", "--quiet", "--model", &model, "--data"])
                            .arg(&data)
                            .args(["--window-context", ctx])
                            .arg(file));
                    }
                }
            }
            eprintln!(
                "{} ({ctx}): ingested in {:.0} s",
                c.name,
                t.elapsed().as_secs_f64()
            );
            for s in &c.sets {
                if !columns.contains(&s.column) {
                    columns.push(s.column);
                }
                let mut cmd = Command::new(bin());
                cmd.args(["bench", "options", "--json", "--model", &model, "--data"])
                    .arg(&data)
                    .arg("--queries")
                    .arg(&s.queries)
                    .arg("--qrels")
                    .arg(&s.qrels)
                    .args(["--name", s.column]);
                // BM25 does not depend on the window context: its settings once per set.
                if ci > 0 {
                    cmd.arg("--no-bm25");
                }
                let v: Value = serde_json::from_str(&run(&mut cmd)).expect("options JSON");
                for r in v["rows"].as_array().unwrap() {
                    let retriever = r["retriever"].as_str().unwrap();
                    // BM25 rows once, from the first context's directory.
                    if retriever == "bm25" && ci > 0 {
                        continue;
                    }
                    let context = if retriever == "bm25" {
                        "-".to_string()
                    } else {
                        ctx.clone()
                    };
                    let key = (
                        rank(retriever),
                        format!("{retriever}: {}", r["option"].as_str().unwrap()),
                        context,
                    );
                    if !table.contains_key(&key) {
                        order.push(key.clone());
                    }
                    table.entry(key).or_default().insert(
                        s.column.to_string(),
                        (
                            r["ndcg_10"].as_f64().unwrap(),
                            r["p_value"].as_f64().unwrap(),
                            r["default"].as_bool().unwrap() && ctx == "none",
                        ),
                    );
                }
                raw.push(v);
            }
        }
    }
    // Rows grouped by retriever, in first-seen order within a retriever.
    order.sort_by_key(|k| k.0);
    let mut md = format!(
        "nDCG@10, all-MiniLM-L6-v2, {cpu}, {:.0} min. Bold: the default configuration. \
         p: paired randomisation test against the retriever's default on the same data \
         directory (tuned: against RRF k=60 on the same held-out folds); * marks p < 0.05.\n\n",
        started.elapsed().as_secs_f64() / 60.0
    );
    md.push_str("| option | window context |");
    for c in &columns {
        md.push_str(&format!(" {c} |"));
    }
    md.push_str("\n| --- | --- |");
    for _ in &columns {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for key in &order {
        let cells = &table[key];
        let default = cells.values().any(|c| c.2);
        let label = if default {
            format!("**{}**", key.1)
        } else {
            key.1.clone()
        };
        md.push_str(&format!("| {label} | {} |", key.2));
        for c in &columns {
            match cells.get(*c) {
                Some((v, p, d)) => {
                    let star = if !d && *p < 0.05 { "*" } else { "" };
                    if *d {
                        md.push_str(&format!(" **{v:.3}** |"));
                    } else {
                        md.push_str(&format!(" {v:.3}{star} |"));
                    }
                }
                None => md.push_str(" |"),
            }
        }
        md.push('\n');
    }
    print!("{md}");
    std::fs::write(work.join("table.md"), &md).unwrap();
    std::fs::write(
        work.join("table.json"),
        serde_json::to_string_pretty(&raw).unwrap(),
    )
    .unwrap();
    eprintln!("written: {}", work.join("table.md").display());
}

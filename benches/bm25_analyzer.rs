//! Chooses the BM25 analyzer with evidence: SciFact (BEIR test split, ../shared/data/scifact)
//! indexed with and without English stemming, scored by nDCG@10 and Recall@100, beside
//! Anserini's published multifield BM25 (nDCG@10 0.665). BM25 only: nothing is embedded.
//!
//! `cargo bench --bench bm25_analyzer`.

use std::collections::HashMap;

use clinsearch::index::bm25::Bm25Index;
use clinsearch::index::Filter;
use clinsearch::ingest::{source, CsvMapping, Format};
use clinsearch::store::{EmbeddedNote, Store};

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/scifact/beir");
    if !root.join("corpus.jsonl").is_file() {
        eprintln!("skipped: {} is absent", root.display());
        return;
    }
    let notes: Vec<_> = source::read(&root, Format::Beir, &CsvMapping::default())
        .map(|r| {
            r.expect("corpus record")
                .note
                .validate()
                .expect("valid note")
        })
        .collect();
    let queries: HashMap<String, String> = std::fs::read_to_string(root.join("queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["_id"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for l in std::fs::read_to_string(root.join("qrels/test.tsv"))
        .unwrap()
        .lines()
        .skip(1)
    {
        let p: Vec<&str> = l.split('\t').collect();
        qrels
            .entry(p[0].into())
            .or_default()
            .insert(p[1].into(), p[2].parse().unwrap());
    }
    println!(
        "SciFact test: {} docs, {} judged queries",
        notes.len(),
        qrels.len()
    );
    println!("{:<26} {:>8} {:>10}", "analyzer", "nDCG@10", "Recall@100");
    for stem in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for chunk in notes.chunks(1000) {
            let batch: Vec<EmbeddedNote> = chunk
                .iter()
                .map(|n| EmbeddedNote::new(n.clone(), vec![]))
                .collect();
            store.apply(&batch, &[]).unwrap();
        }
        let bm25 = Bm25Index::open(&tmp.path().join("bm25"), stem).unwrap();
        let ops: Vec<_> = store.ops_after(0).collect::<Result<_, _>>().unwrap();
        bm25.apply(&store, &ops).unwrap();
        let (mut ndcg, mut recall) = (0.0, 0.0);
        for (qid, rel) in &qrels {
            let hits = bm25.search(&queries[qid], 100, &Filter::default()).unwrap();
            let dcg: f64 = hits
                .iter()
                .take(10)
                .enumerate()
                .map(|(i, (id, _))| rel.get(id).copied().unwrap_or(0.0) / (i as f64 + 2.0).log2())
                .sum();
            let mut ideal: Vec<f64> = rel.values().copied().collect();
            ideal.sort_by(|a, b| b.total_cmp(a));
            let idcg: f64 = ideal
                .iter()
                .take(10)
                .enumerate()
                .map(|(i, g)| g / (i as f64 + 2.0).log2())
                .sum();
            ndcg += if idcg > 0.0 { dcg / idcg } else { 0.0 };
            let found = hits
                .iter()
                .filter(|(id, _)| rel.get(id).is_some_and(|g| *g > 0.0))
                .count();
            recall += found as f64 / rel.values().filter(|g| **g > 0.0).count().max(1) as f64;
        }
        let n = qrels.len() as f64;
        let name = if stem {
            "lowercase+ascii+stem"
        } else {
            "lowercase+ascii (no stem)"
        };
        println!("{name:<26} {:>8.3} {:>10.3}", ndcg / n, recall / n);
    }
    println!(
        "{:<26} {:>8.3} {:>10}",
        "Anserini multifield BM25", 0.665, "-"
    );
}

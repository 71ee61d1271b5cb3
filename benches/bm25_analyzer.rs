//! Chooses the BM25 analyzer and query options with evidence: SciFact and NFCorpus (BEIR test
//! splits, ../shared/data) indexed with and without English stemming, queried with and
//! without common English words, scored by nDCG@10 and Recall@100, beside Anserini's
//! published multifield BM25 (SciFact nDCG@10 0.665, NFCorpus 0.325). BM25 only: nothing is
//! embedded.
//!
//! `cargo bench --bench bm25_analyzer`.

use std::collections::HashMap;

use clinsearch::index::bm25::Bm25Index;
use clinsearch::index::query::TextQuery;
use clinsearch::index::Filter;
use clinsearch::ingest::{source, CsvMapping, Format};
use clinsearch::store::{EmbeddedNote, Store};

fn main() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    println!(
        "{:<10} {:<26} {:<14} {:>8} {:>10}",
        "set", "analyzer", "query", "nDCG@10", "Recall@100"
    );
    for (name, anserini) in [("scifact", 0.665), ("nfcorpus", 0.325)] {
        let root = data.join(name).join("beir");
        if !root.join("corpus.jsonl").is_file() {
            eprintln!("skipped {name}: {} is absent", root.display());
            continue;
        }
        run(name, &root, anserini);
    }
}

fn run(name: &str, root: &std::path::Path, anserini: f64) {
    let notes: Vec<_> = source::read(root, Format::Beir, &CsvMapping::default())
        .filter_map(|r| r.ok()?.note.validate().ok())
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
    qrels.retain(|q, _| queries.contains_key(q));
    eprintln!(
        "{name} test: {} docs, {} judged queries",
        notes.len(),
        qrels.len()
    );
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
        for drop_stopwords in [false, true] {
            let (mut ndcg, mut recall) = (0.0, 0.0);
            for (qid, rel) in &qrels {
                let mut q = TextQuery::plain(&queries[qid]);
                q.drop_stopwords = drop_stopwords;
                let hits = bm25
                    .search_built(&bm25.build(&q).unwrap(), 100, &Filter::default())
                    .unwrap();
                let dcg: f64 = hits
                    .iter()
                    .take(10)
                    .enumerate()
                    .map(|(i, (id, _))| {
                        rel.get(id).copied().unwrap_or(0.0) / (i as f64 + 2.0).log2()
                    })
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
            let analyzer = if stem {
                "lowercase+ascii+stem"
            } else {
                "lowercase+ascii (no stem)"
            };
            let query = if drop_stopwords {
                "no stop words"
            } else {
                "every word"
            };
            println!(
                "{name:<10} {analyzer:<26} {query:<14} {:>8.3} {:>10.3}",
                ndcg / n,
                recall / n
            );
        }
    }
    println!(
        "{name:<10} {:<26} {:<14} {anserini:>8.3} {:>10}",
        "Anserini multifield BM25", "", "-"
    );
}

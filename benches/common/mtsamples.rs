//! MTSamples (../shared/data/mtsamples) for the benchmarks: the rows, and the retrieval split
//! the fine-tuning and quality benchmarks share (so the quality table's MTSamples column is
//! measured on the very notes and queries the fine-tuned encoder never saw).

#![allow(dead_code)] // each benchmark uses part of it

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_json::json;

pub struct Row {
    pub description: String,
    pub specialty: String,
    pub transcription: String,
}

pub fn read_mtsamples(path: &Path) -> Vec<Row> {
    let mut r = csv::Reader::from_path(path).expect("read mtsamples.csv");
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (d, s, t) = (
        col("description"),
        col("medical_specialty"),
        col("transcription"),
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            Row {
                description: rec[d].trim().to_string(),
                specialty: rec[s].trim().to_string(),
                transcription: rec[t].trim().to_string(),
            }
        })
        .filter(|r| !r.transcription.is_empty())
        .collect()
}

pub fn norm(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn write_jsonl(path: &Path, rows: impl IntoIterator<Item = serde_json::Value>) {
    let text: String = rows.into_iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// The retrieval split: distinct notes (by transcription) with a description, shuffled with
/// seed 7; 20% held out for test, a tenth of the rest for dev, the remainder for training.
pub struct RetrievalSplit<'a> {
    pub train: Vec<&'a Row>,
    pub dev: Vec<&'a Row>,
    pub test: Vec<&'a Row>,
}

pub fn retrieval_split(rows: &[Row]) -> RetrievalSplit<'_> {
    let mut seen = BTreeSet::new();
    let mut notes: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.description.is_empty() && seen.insert(norm(&r.transcription)))
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    rng.shuffle(&mut notes);
    let n_test = notes.len() / 5;
    let n_dev = (notes.len() - n_test) / 10;
    let test = notes[..n_test].to_vec();
    let dev = notes[n_test..n_test + n_dev].to_vec();
    let train = notes[n_test + n_dev..].to_vec();
    RetrievalSplit { train, dev, test }
}

/// Writes the held-out notes (`test-notes.jsonl`, ids `t0`...) and the judged set: the
/// distinct descriptions of held-out notes as queries (`queries.jsonl`), each relevant to
/// every held-out note it describes (`qrels.tsv`). Returns the number of queries.
pub fn write_heldout(dir: &Path, test: &[&Row]) -> usize {
    write_jsonl(
        &dir.join("test-notes.jsonl"),
        test.iter().enumerate().map(|(i, r)| json!({"id": format!("t{i}"), "text": r.transcription, "note_type": r.specialty})),
    );
    let mut by_desc: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in test.iter().enumerate() {
        by_desc.entry(norm(&r.description)).or_default().push(i);
    }
    let mut queries = vec![];
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (q, (desc, docs)) in by_desc.iter().enumerate() {
        queries.push(json!({"_id": format!("q{q}"), "text": desc}));
        for d in docs {
            qrels.push_str(&format!("q{q}\tt{d}\t1\n"));
        }
    }
    let n = queries.len();
    write_jsonl(&dir.join("queries.jsonl"), queries);
    std::fs::write(dir.join("qrels.tsv"), qrels).unwrap();
    n
}

/// Categories that name a document type rather than a specialty: dropped from the
/// classification task.
pub const DOC_TYPES: &[&str] = &[
    "Surgery",
    "Consult - History and Phy.",
    "SOAP / Chart / Progress Notes",
    "Discharge Summary",
    "Emergency Room Reports",
    "Office Notes",
    "Letters",
    "IME-QME-Work Comp etc.",
];
/// Specialties with fewer notes are dropped (no stable test estimate).
pub const MIN_CLASS: usize = 80;

/// The specialty-classification split (see the finetune benchmark's doc): rows of
/// `{"text", "label"}`.
pub struct ClassSplit {
    pub train: Vec<serde_json::Value>,
    pub dev: Vec<serde_json::Value>,
    pub test: Vec<serde_json::Value>,
    /// The kept classes and their distinct transcriptions.
    pub per_class: BTreeMap<String, Vec<String>>,
    /// Transcriptions listed under two kept classes (dropped).
    pub ambiguous: usize,
}

pub fn classification_split(rows: &[Row]) -> ClassSplit {
    // Distinct transcriptions with their kept labels.
    let mut by_text: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for r in rows {
        if DOC_TYPES.contains(&r.specialty.as_str()) {
            continue;
        }
        let e = by_text
            .entry(norm(&r.transcription))
            .or_insert_with(|| (r.transcription.clone(), BTreeSet::new()));
        e.1.insert(r.specialty.clone());
    }
    let ambiguous = by_text.values().filter(|(_, l)| l.len() > 1).count();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, labels) in by_text.values().filter(|(_, l)| l.len() == 1) {
        *counts
            .entry(labels.iter().next().unwrap().clone())
            .or_default() += 1;
    }
    let mut per_class: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (text, labels) in by_text.values() {
        if labels.len() != 1 {
            continue;
        }
        let label = labels.iter().next().unwrap();
        if counts[label] >= MIN_CLASS {
            per_class
                .entry(label.clone())
                .or_default()
                .push(text.clone());
        }
    }
    // Stratified 70/10/20 split with a fixed seed.
    let mut rng = fastrand::Rng::with_seed(2024);
    let (mut train, mut dev, mut test) = (vec![], vec![], vec![]);
    for (label, texts) in &per_class {
        let mut texts = texts.clone();
        rng.shuffle(&mut texts);
        let n = texts.len();
        let (n_test, n_dev) = (
            (n as f64 * 0.2).round() as usize,
            (n as f64 * 0.1).round() as usize,
        );
        for (i, t) in texts.into_iter().enumerate() {
            let row = json!({"text": t, "label": label});
            if i < n_test {
                test.push(row);
            } else if i < n_test + n_dev {
                dev.push(row);
            } else {
                train.push(row);
            }
        }
    }
    rng.shuffle(&mut train);
    ClassSplit {
        train,
        dev,
        test,
        per_class,
        ambiguous,
    }
}

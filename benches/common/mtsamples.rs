//! MTSamples (../shared/data/mtsamples) for the benchmarks: the rows, and the retrieval split
//! the fine-tuning and quality benchmarks share (so the quality table's MTSamples column is
//! measured on the very notes and queries the fine-tuned encoder never saw).

use std::collections::{BTreeMap, BTreeSet};
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

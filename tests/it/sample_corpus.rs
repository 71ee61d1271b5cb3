//! sample_corpus/ is the demo and the test bed: check it is what the README promises.

use std::collections::{HashMap, HashSet};

use crate::common::*;

#[test]
fn sample_corpus_has_realistic_notes_and_graded_judged_queries() {
    let dir = repo_root().join("sample_corpus");
    let notes: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("notes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(notes.len() >= 300, "{} notes", notes.len());
    let field = |k: &str| {
        notes
            .iter()
            .filter_map(|n| n[k].as_str().map(str::to_string))
            .collect::<HashSet<_>>()
    };
    assert!(field("note_type").len() >= 10);
    assert!(field("specialty").len() >= 10);
    let ids = field("id");
    assert_eq!(ids.len(), notes.len(), "ids are unique");
    let mut per_patient: HashMap<String, usize> = HashMap::new();
    for n in &notes {
        *per_patient
            .entry(n["patient_id"].as_str().unwrap().to_string())
            .or_default() += 1;
        clinsearch::note::date_key(n["date"].as_str().unwrap()).unwrap();
    }
    assert!(
        per_patient.values().all(|&c| c >= 3),
        "patients share several notes"
    );
    let all_text: String = notes
        .iter()
        .map(|n| n["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    for term in ["SOB", "CHF", "BID", "PRN", "Denies", "mg"] {
        assert!(all_text.contains(term), "clinical language: {term}");
    }

    let queries: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(queries.len() >= 40);
    let qrels = std::fs::read_to_string(dir.join("qrels.tsv")).unwrap();
    let mut lines = qrels.lines();
    assert_eq!(lines.next(), Some("query-id\tcorpus-id\tscore"));
    let mut judged: HashMap<String, Vec<u32>> = HashMap::new();
    for l in lines {
        let parts: Vec<&str> = l.split('\t').collect();
        assert!(
            ids.contains(parts[1]),
            "qrels name an unknown note {}",
            parts[1]
        );
        judged
            .entry(parts[0].to_string())
            .or_default()
            .push(parts[2].parse().unwrap());
    }
    for q in &queries {
        let grades = &judged[q["_id"].as_str().unwrap()];
        assert!(
            grades.contains(&2),
            "{} has a highly relevant note",
            q["text"]
        );
    }
    assert!(judged.values().any(|g| g.contains(&1)), "graded relevance");
}

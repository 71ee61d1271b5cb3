//! Ranking metrics with trec_eval's semantics, so that our figures equal what trec_eval (and
//! pytrec_eval, which wraps its code) computes from our run files:
//! - the run is ordered by score, highest first, ties broken by document id in *descending*
//!   byte order (trec_eval ignores the rank column);
//! - a document is relevant when its grade is at least 1; grades below are judged non-relevant;
//! - nDCG@k uses the grade itself as the gain and `1 / log2(rank + 1)` as the discount, against
//!   the ideal ordering of all judged documents;
//! - Recall@k divides by all relevant documents of the query; AP@k sums precision at each
//!   relevant document within the top k, divided by all relevant documents; RR@k is the
//!   reciprocal rank of the first relevant document within the top k (0 if none).

use std::collections::HashMap;

/// Judgments of one query: document id -> grade.
pub type Judged = HashMap<String, i32>;

/// Orders a run as trec_eval does: score descending, then document id descending.
pub fn trec_order(run: &mut [(String, f64)]) {
    run.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
}

fn relevant_count(judged: &Judged) -> usize {
    judged.values().filter(|g| **g >= 1).count()
}

fn grade(judged: &Judged, doc: &str) -> i32 {
    judged.get(doc).copied().unwrap_or(0)
}

/// Recall at `k` of a run already in trec order.
pub fn recall(run: &[(String, f64)], judged: &Judged, k: usize) -> f64 {
    let rel = relevant_count(judged);
    if rel == 0 {
        return 0.0;
    }
    let found = run
        .iter()
        .take(k)
        .filter(|(d, _)| grade(judged, d) >= 1)
        .count();
    found as f64 / rel as f64
}

/// nDCG at `k` (trec_eval's `ndcg_cut`).
pub fn ndcg(run: &[(String, f64)], judged: &Judged, k: usize) -> f64 {
    let dcg: f64 = run
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, (d, _))| grade(judged, d).max(0) as f64 / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<i32> = judged.values().copied().filter(|g| *g > 0).collect();
    ideal.sort_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| *g as f64 / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// Reciprocal rank of the first relevant document within the top `k`.
pub fn reciprocal_rank(run: &[(String, f64)], judged: &Judged, k: usize) -> f64 {
    run.iter()
        .take(k)
        .position(|(d, _)| grade(judged, d) >= 1)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// Average precision within the top `k` (trec_eval's `map_cut`).
pub fn average_precision(run: &[(String, f64)], judged: &Judged, k: usize) -> f64 {
    let rel = relevant_count(judged);
    if rel == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, (d, _)) in run.iter().take(k).enumerate() {
        if grade(judged, d) >= 1 {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / rel as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(v: &[(&str, i32)]) -> Judged {
        v.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn run(v: &[(&str, f64)]) -> Vec<(String, f64)> {
        let mut r: Vec<(String, f64)> = v.iter().map(|(d, s)| (d.to_string(), *s)).collect();
        trec_order(&mut r);
        r
    }

    /// Values computed by pytrec_eval for the same input.
    #[test]
    fn ties_are_broken_by_descending_document_id_as_trec_eval_does() {
        let j = judged(&[("a", 1), ("b", 2), ("c", 0), ("z", 1)]);
        let r = run(&[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 0.5)]);
        assert_eq!(r[0].0, "c");
        assert_eq!(recall(&r, &j, 1), 0.0);
        assert!((recall(&r, &j, 2) - 1.0 / 3.0).abs() < 1e-12);
        assert!((ndcg(&r, &j, 10) - 0.5627272554209044).abs() < 1e-12);
        assert_eq!(reciprocal_rank(&r, &j, 10), 0.5);
        assert!((average_precision(&r, &j, 100) - 0.38888888888888884).abs() < 1e-12);
    }

    #[test]
    fn a_query_without_relevant_documents_scores_zero() {
        let j = judged(&[("a", 0)]);
        let r = run(&[("a", 1.0)]);
        assert_eq!(ndcg(&r, &j, 10), 0.0);
        assert_eq!(recall(&r, &j, 10), 0.0);
        assert_eq!(average_precision(&r, &j, 10), 0.0);
    }
}

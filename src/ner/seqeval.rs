//! Entity-level precision, recall and F1 exactly as the `seqeval` package computes them in
//! its default mode (`seqeval.metrics.classification_report` / `f1_score` without
//! `mode="strict"`), so figures can be compared with published NER results, most of which
//! are seqeval's.
//!
//! seqeval's default mode reads chunks leniently: an entity starts at `B-X`, and also at an
//! `I-X` that follows `O` or an entity of another type (IOB1 and "broken" IOB2 alike); it
//! ends before `B`, `O` or a change of type. Sentences are joined with an `O` between them,
//! so no entity crosses a sentence. An entity counts as found only with the same type and
//! the same first and last word. Micro averages sum the counts over types first; a ratio
//! with a zero denominator is 0 (seqeval's `zero_division="warn"` value).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// An entity: its type and first and last word (inclusive) in the joined sequence.
pub type Chunk = (String, usize, usize);

/// The prefix letter and the type of a tag, as seqeval splits it (`B-Disease` -> ('B',
/// "Disease"); `O` -> ('O', "_"); a bare `B` -> ('B', "_")).
fn split(tag: &str) -> (char, String) {
    let mut chars = tag.chars();
    let prefix = chars.next().unwrap_or('O');
    let rest: String = chars.collect();
    // Python: chunk[1:].split('-', maxsplit=1)[-1] or '_'
    let ty = match rest.split_once('-') {
        Some((_, t)) => t.to_string(),
        None => rest,
    };
    (prefix, if ty.is_empty() { "_".into() } else { ty })
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_type != ty)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// The entities of tagged sentences, as seqeval's `get_entities` finds them.
pub fn entities(sentences: &[Vec<String>]) -> Vec<Chunk> {
    let mut seq: Vec<&str> = vec![];
    for s in sentences {
        seq.extend(s.iter().map(String::as_str));
        seq.push("O");
    }
    let mut out = vec![];
    let (mut prev, mut prev_type) = ('O', String::new());
    let mut begin = 0;
    for (i, tag) in seq.iter().chain(std::iter::once(&"O")).enumerate() {
        let (t, ty) = split(tag);
        if end_of_chunk(prev, t, &prev_type, &ty) {
            out.push((prev_type.clone(), begin, i - 1));
        }
        if start_of_chunk(prev, t, &prev_type, &ty) {
            begin = i;
        }
        prev = t;
        prev_type = ty;
    }
    out
}

/// Precision, recall, F1 and support (gold entities) of one type or of all.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// seqeval's report: micro average over all types, and each type's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub overall: Prf,
    pub per_type: BTreeMap<String, Prf>,
    /// Words whose predicted tag equals the gold tag (seqeval's `accuracy_score`).
    pub token_accuracy: f64,
}

fn divide(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn prf(tp: usize, pred: usize, gold: usize) -> Prf {
    let precision = divide(tp, pred);
    let recall = divide(tp, gold);
    // seqeval: (1 + beta^2) p r / (beta^2 p + r), 0 when the denominator is 0.
    let denom = precision + recall;
    Prf {
        precision,
        recall,
        f1: if denom == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / denom
        },
        support: gold,
    }
}

/// Scores predicted tags against gold tags, sentence by sentence (the same word counts).
pub fn evaluate(gold: &[Vec<String>], pred: &[Vec<String>]) -> Report {
    assert_eq!(gold.len(), pred.len(), "one prediction per sentence");
    let group = |chunks: Vec<Chunk>| {
        let mut m: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
        for (t, s, e) in chunks {
            m.entry(t).or_default().insert((s, e));
        }
        m
    };
    let g = group(entities(gold));
    let p = group(entities(pred));
    let types: BTreeSet<&String> = g.keys().chain(p.keys()).collect();
    let empty = BTreeSet::new();
    let (mut tp_all, mut pred_all, mut gold_all) = (0, 0, 0);
    let mut per_type = BTreeMap::new();
    for t in types {
        let gs = g.get(t).unwrap_or(&empty);
        let ps = p.get(t).unwrap_or(&empty);
        let tp = gs.intersection(ps).count();
        tp_all += tp;
        pred_all += ps.len();
        gold_all += gs.len();
        per_type.insert(t.clone(), prf(tp, ps.len(), gs.len()));
    }
    let (mut right, mut words) = (0, 0);
    for (gs, ps) in gold.iter().zip(pred) {
        assert_eq!(gs.len(), ps.len(), "one predicted tag per word");
        words += gs.len();
        right += gs.iter().zip(ps).filter(|(a, b)| a == b).count();
    }
    Report {
        overall: prf(tp_all, pred_all, gold_all),
        per_type,
        token_accuracy: divide(right, words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn entities_follow_seqevals_lenient_reading() {
        // seqeval's own docstring example.
        let seq = vec![tags("B-PER I-PER O B-LOC")];
        assert_eq!(
            entities(&seq),
            vec![("PER".into(), 0, 1), ("LOC".into(), 3, 3)]
        );
        // I- after O starts an entity (IOB1); a change of type ends one and starts another.
        let seq = vec![tags("I-X I-X O I-X B-X I-Y")];
        assert_eq!(
            entities(&seq),
            vec![
                ("X".into(), 0, 1),
                ("X".into(), 3, 3),
                ("X".into(), 4, 4),
                ("Y".into(), 5, 5)
            ]
        );
        // Sentences are joined with an O: an entity at a sentence's end does not run on.
        let seq = vec![tags("O B-D"), tags("I-D O")];
        assert_eq!(entities(&seq), vec![("D".into(), 1, 1), ("D".into(), 3, 3)]);
    }

    #[test]
    fn micro_and_per_type_figures() {
        let gold = vec![tags("B-D I-D O B-C"), tags("B-D O")];
        let pred = vec![tags("B-D I-D O O"), tags("B-D I-D")];
        let r = evaluate(&gold, &pred);
        // Gold: D(0,1) C(3,3) D(5,5); predicted: D(0,1) D(5,6). One right.
        assert_eq!(r.overall.support, 3);
        assert!((r.overall.precision - 0.5).abs() < 1e-12);
        assert!((r.overall.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.overall.f1 - 0.4).abs() < 1e-12);
        assert_eq!(r.per_type["C"].f1, 0.0);
        assert!((r.token_accuracy - 4.0 / 6.0).abs() < 1e-12);
        let none = evaluate(&[tags("O O")], &[tags("O O")]);
        assert_eq!(none.overall.f1, 0.0);
    }
}

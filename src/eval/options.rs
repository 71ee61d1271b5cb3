//! Every retrieval option on one judged set: the figures behind the README's quality table
//! (`clinsearch bench options`, assembled over every collection by `cargo bench --bench
//! quality`).
//!
//! The runs are made once — BM25 under each setting, semantic search under each note score —
//! and every fusion is then computed in memory from the BM25 and semantic runs, exactly as a
//! hybrid search fuses them (the candidate depth of each side, then the fusion). Each row
//! carries a paired randomisation test against its retriever's default, so a difference can
//! be read as noise or not. The window context is an ingest-time choice: one table per data
//! directory, one data directory per context.

use serde::Serialize;

use super::metrics::ndcg;
use super::tune::{self, FusionChoice};
use super::{EmbedFn, EvalOptions, QuerySet, Runs};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::bm25_scorer::Bm25Params;
use crate::search::{Fusion, Mode, NoteScore, FUSION_DEPTH};

/// One option's figure.
#[derive(Debug, Clone, Serialize)]
pub struct OptionRow {
    /// `bm25`, `semantic`, `hybrid` or `tuned` (cross-validated fusion).
    pub retriever: &'static str,
    /// The option, as its flags would name it.
    pub option: String,
    /// Whether this is what a search does without parameters.
    pub default: bool,
    pub ndcg_10: f64,
    /// Paired randomisation test against the retriever's default (1 for the default; for
    /// `tuned`, against RRF k=60 on the same held-out folds).
    pub p_value: f64,
}

/// The rows of one judged set on one data directory.
#[derive(Debug, Clone, Serialize)]
pub struct OptionTable {
    pub set: String,
    pub queries: usize,
    /// The data directory's window context (how its windows were embedded).
    pub window_context: String,
    pub rows: Vec<OptionRow>,
}

/// BM25 settings tried: (k1, b) and whether common English words are dropped from the query.
pub const BM25_SETTINGS: [(Bm25Params, bool); 8] = [
    (Bm25Params::TANTIVY, false),
    (Bm25Params::TANTIVY, true),
    (Bm25Params::LUCENE, false),
    (Bm25Params::LUCENE, true),
    (Bm25Params { k1: 1.5, b: 0.75 }, false),
    (Bm25Params { k1: 2.0, b: 0.75 }, false),
    (Bm25Params { k1: 1.2, b: 0.4 }, false),
    (Bm25Params { k1: 2.0, b: 0.75 }, true),
];

/// Fusions tried at the default note score and candidate depth; the first is the default.
pub fn fusions() -> Vec<Fusion> {
    let mut out = vec![
        crate::search::DEFAULT_FUSION,
        Fusion::Rrf { k: 60.0 },
        Fusion::Rrf { k: 20.0 },
        Fusion::WeightedRrf {
            k: 60.0,
            alpha: 0.7,
        },
    ];
    for alpha in [0.3, 0.4, 0.5, 0.7] {
        out.extend([
            Fusion::Weighted { alpha },
            Fusion::Dbsf { alpha },
            Fusion::Zscore { alpha },
        ]);
    }
    out
}

/// A fusion as the flags of `eval` name it.
pub fn fusion_label(f: Fusion) -> String {
    match f {
        Fusion::Rrf { k } => format!("rrf k={k}"),
        Fusion::WeightedRrf { k, alpha } => format!("rrf k={k} alpha={alpha}"),
        Fusion::Weighted { alpha } => format!("weighted (min-max) alpha={alpha}"),
        Fusion::Dbsf { alpha } => format!("dbsf alpha={alpha}"),
        Fusion::Zscore { alpha } => format!("zscore alpha={alpha}"),
    }
}

fn note_score_label(n: NoteScore) -> &'static str {
    match n {
        NoteScore::Max => "max",
        NoteScore::First => "first",
        NoteScore::MaxFirst => "max_first",
        NoteScore::Top2 => "top2",
    }
}

/// nDCG@10 of each query of a mode's runs, in the set's order.
fn per_query(set: &QuerySet, runs: &Runs, mode: &str) -> Result<Vec<f64>> {
    let r = runs
        .get(mode)
        .ok_or_else(|| Error::InvalidInput(format!("no {mode} runs")))?;
    Ok(set
        .queries
        .iter()
        .zip(r)
        .map(|((qid, _), (_, run))| ndcg(run, &set.qrels[qid], 10))
        .collect())
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Rows of one retriever: each option's per-query figures against the first (the default).
fn rows_of(retriever: &'static str, options: Vec<(String, Vec<f64>)>) -> Vec<OptionRow> {
    let base = options.first().map(|(_, v)| v.clone()).unwrap_or_default();
    options
        .into_iter()
        .enumerate()
        .map(|(i, (option, v))| OptionRow {
            retriever,
            option,
            default: i == 0,
            ndcg_10: mean(&v),
            p_value: if i == 0 {
                1.0
            } else {
                super::significance::randomization_test(&v, &base)
            },
        })
        .collect()
}

/// Every option on `set`. With `bm25` false the BM25 settings other than the default are
/// skipped (BM25 does not depend on the window context: one table per collection needs them).
pub fn option_table(
    engine: &Engine,
    embed: &EmbedFn,
    name: &str,
    set: &QuerySet,
    bm25: bool,
    progress: &dyn Fn(&str),
) -> Result<OptionTable> {
    let cached = super::CachedEmbed::new(embed);
    let embed = |t: &[&str]| cached.embed(t);
    let base = EvalOptions::default();
    progress("semantic runs under each note score");
    let runs = tune::collect_runs(engine, &embed, set, &base, &|_, _| {})?;
    let mut rows = vec![];

    let mut b = vec![];
    for (i, (params, drop)) in BM25_SETTINGS.iter().enumerate() {
        let label = format!(
            "k1={} b={}, {} common words",
            params.k1,
            params.b,
            if *drop { "drop" } else { "keep" }
        );
        if i == 0 {
            b.push((label, per_query(set, &runs[0].1, "bm25")?));
            continue;
        }
        if !bm25 {
            continue;
        }
        progress(&format!("bm25 {label}"));
        let opts = EvalOptions {
            modes: vec![Mode::Bm25],
            bm25: *params,
            drop_stopwords: *drop,
            ..base.clone()
        };
        let (_, r) = super::evaluate(engine, &embed, set, &opts, &|_, _| {})?;
        b.push((label, per_query(set, &r, "bm25")?));
    }
    rows.extend(rows_of("bm25", b));

    let mut s = vec![];
    for (n, r) in &runs {
        s.push((
            format!("note score {}", note_score_label(*n)),
            per_query(set, r, "semantic")?,
        ));
    }
    rows.extend(rows_of("semantic", s));

    let bm25_runs = &runs[0].1["bm25"];
    let fused = |choice: FusionChoice, sem: &Runs| -> Vec<f64> {
        set.queries
            .iter()
            .zip(bm25_runs.iter().zip(&sem["semantic"]))
            .map(|((qid, _), ((_, b), (_, s)))| {
                ndcg(&tune::fuse_run(b, s, &choice), &set.qrels[qid], 10)
            })
            .collect()
    };
    let mut h = vec![];
    for f in fusions() {
        let choice = FusionChoice {
            fusion: f,
            depth: FUSION_DEPTH,
            note_score: NoteScore::Max,
        };
        h.push((fusion_label(f), fused(choice, &runs[0].1)));
    }
    for (n, r) in runs.iter().skip(1) {
        let choice = FusionChoice {
            fusion: crate::search::DEFAULT_FUSION,
            depth: FUSION_DEPTH,
            note_score: *n,
        };
        h.push((
            format!(
                "{}, note score {}",
                fusion_label(crate::search::DEFAULT_FUSION),
                note_score_label(*n)
            ),
            fused(choice, r),
        ));
    }
    rows.extend(rows_of("hybrid", h));

    // Too few queries to cross-validate (sample_corpus's negation set has 6): no tuned row.
    if set.queries.len() >= 2 * tune::FOLDS {
        progress("tune (5-fold cross-validation)");
        let t = tune::tune(name, set, &runs)?;
        rows.push(OptionRow {
            retriever: "tuned",
            option: format!("{}-fold cross-validated fusion", tune::FOLDS),
            default: false,
            ndcg_10: t.cv_ndcg_10,
            p_value: t.p_value,
        });
    }
    Ok(OptionTable {
        set: name.to_string(),
        queries: set.queries.len(),
        window_context: engine
            .store
            .model_identity()?
            .map_or_else(|| "none".into(), |m| m.context.to_string()),
        rows,
    })
}

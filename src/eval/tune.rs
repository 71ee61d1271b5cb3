//! Choosing the hybrid fusion from judgments: method, weight, RRF constant and candidate
//! depth, by k-fold cross-validation on a judged query set.
//!
//! The BM25 and semantic runs of every query are computed once; each configuration of the
//! grid then fuses them in memory. For each fold the configuration with the best mean
//! nDCG@10 on the other folds is scored on the held-out one, so the figure reported is what a
//! tuned choice earns on queries it was not chosen on (the training fit is higher and is not
//! reported as the result). The configuration best on all queries is the one stored
//! (`DATA/fusion.json`) and used by searches that do not ask for a fusion themselves.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::ndcg;
use super::{Judged, QuerySet, Runs};
use crate::error::{Error, Result};
use crate::search::{Fusion, Mode, NoteScore};

/// File in the data directory holding the tuned fusion.
pub const TUNED_FILE: &str = "fusion.json";
/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// Judged queries a set needs to be tuned on: two per fold.
pub const MIN_QUERIES: usize = FOLDS * 2;

/// A fusion, the candidate depth each retriever contributes to it, and how a note's
/// semantic score comes from its windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FusionChoice {
    pub fusion: Fusion,
    pub depth: usize,
    #[serde(default)]
    pub note_score: NoteScore,
}

/// What `tune` found and stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tuned {
    pub choice: FusionChoice,
    /// The query set it was tuned on.
    pub set: String,
    pub queries: usize,
    /// Mean held-out nDCG@10 of the cross-validated choice, and of RRF k=60 (depth 50) on
    /// the same queries.
    pub cv_ndcg_10: f64,
    pub baseline_ndcg_10: f64,
    /// Paired randomisation test of the two per-query held-out figures.
    pub p_value: f64,
    /// The choice of each fold (they may differ: a sign of how stable the choice is).
    pub fold_choices: Vec<FusionChoice>,
}

/// The grid searched.
pub fn grid() -> Vec<FusionChoice> {
    let mut out = vec![];
    let alphas = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
    for depth in [20usize, 50, 100] {
        for k in [5f32, 10.0, 20.0, 40.0, 60.0, 100.0] {
            out.push(FusionChoice {
                fusion: Fusion::Rrf { k },
                depth,
                note_score: NoteScore::Max,
            });
            for alpha in [0.3f32, 0.4, 0.6, 0.7] {
                out.push(FusionChoice {
                    fusion: Fusion::WeightedRrf { k, alpha },
                    depth,
                    note_score: NoteScore::Max,
                });
            }
        }
        for alpha in alphas {
            for f in [
                Fusion::Weighted { alpha },
                Fusion::Dbsf { alpha },
                Fusion::Zscore { alpha },
            ] {
                out.push(FusionChoice {
                    fusion: f,
                    depth,
                    note_score: NoteScore::Max,
                });
            }
        }
    }
    out
}

/// RRF k=60 at the searcher's default depth: what a search does without tuning.
pub fn baseline() -> FusionChoice {
    FusionChoice {
        fusion: Fusion::Rrf { k: 60.0 },
        depth: crate::search::FUSION_DEPTH,
        note_score: NoteScore::Max,
    }
}

/// One judged query: its judgments, its BM25 run and its semantic run under each note score
/// tried.
type Row<'a> = (
    &'a Judged,
    &'a [(String, f64)],
    Vec<(NoteScore, &'a [(String, f64)])>,
);

/// The semantic run of a row under a choice's note score.
fn semantic_of<'a>(row: &Row<'a>, c: &FusionChoice) -> &'a [(String, f64)] {
    row.2
        .iter()
        .find(|(n, _)| *n == c.note_score)
        .or(row.2.first())
        .map_or(&[][..], |(_, r)| r)
}

/// The fused run of one query under `choice`.
pub fn fuse_run(
    bm25: &[(String, f64)],
    semantic: &[(String, f64)],
    choice: &FusionChoice,
) -> Vec<(String, f64)> {
    let cut = |l: &[(String, f64)]| -> Vec<(String, f32)> {
        l.iter()
            .take(choice.depth)
            .map(|(d, s)| (d.clone(), *s as f32))
            .collect()
    };
    let fused = crate::search::fuse(choice.fusion, &cut(bm25), &cut(semantic));
    let mut run: Vec<(String, f64)> = fused.into_iter().map(|f| (f.id, f.score as f64)).collect();
    super::metrics::trec_order(&mut run);
    run
}

/// One mode's runs: per query, its id and run.
type QueryRuns = Vec<(String, Vec<(String, f64)>)>;

/// Per query: (judgments, BM25 run, semantic run per note score), from the runs of
/// evaluations with both modes, one per note score.
fn per_query<'a>(set: &'a QuerySet, runs: &'a [(NoteScore, Runs)]) -> Result<Vec<Row<'a>>> {
    let get = |r: &'a Runs, m: &str| {
        r.get(m)
            .ok_or_else(|| Error::InvalidInput(format!("tuning needs the {m} runs")))
    };
    let first = &runs
        .first()
        .ok_or_else(|| Error::InvalidInput("tuning needs runs".into()))?
        .1;
    let b = get(first, "bm25")?;
    let sems: Vec<(NoteScore, &QueryRuns)> = runs
        .iter()
        .map(|(n, r)| Ok((*n, get(r, "semantic")?)))
        .collect::<Result<_>>()?;
    Ok(set
        .queries
        .iter()
        .enumerate()
        .map(|(i, (qid, _))| {
            (
                &set.qrels[qid],
                b[i].1.as_slice(),
                sems.iter().map(|(n, s)| (*n, s[i].1.as_slice())).collect(),
            )
        })
        .collect())
}

fn mean_ndcg(rows: &[Row<'_>], idx: &[usize], c: &FusionChoice) -> f64 {
    if idx.is_empty() {
        return 0.0;
    }
    idx.iter()
        .map(|&i| {
            let row = &rows[i];
            ndcg(&fuse_run(row.1, semantic_of(row, c), c), row.0, 10)
        })
        .sum::<f64>()
        / idx.len() as f64
}

fn best(rows: &[Row<'_>], idx: &[usize], grid: &[FusionChoice]) -> FusionChoice {
    let mut best = (f64::NEG_INFINITY, baseline());
    for c in grid {
        let m = mean_ndcg(rows, idx, c);
        // Strictly better only: on a tie the earlier (simpler, RRF first) choice stays.
        if m > best.0 + 1e-12 {
            best = (m, *c);
        }
    }
    best.1
}

/// Why a set of `n` judged queries cannot be tuned on.
pub fn too_few(n: usize) -> String {
    format!(
        "{n} judged queries: tuning by {FOLDS}-fold cross-validation needs at least {MIN_QUERIES}"
    )
}

/// Cross-validates the grid on `set` and returns what to store. `runs` holds, for each note
/// score to try, the runs of [`super::evaluate`] with both modes under it (BM25 is taken from
/// the first); the grid is every fusion configuration under every note score given.
pub fn tune(name: &str, set: &QuerySet, runs: &[(NoteScore, Runs)]) -> Result<Tuned> {
    let rows = per_query(set, runs)?;
    let n = rows.len();
    if n < MIN_QUERIES {
        return Err(Error::InvalidInput(too_few(n)));
    }
    let grid: Vec<FusionChoice> = runs
        .iter()
        .flat_map(|(n, _)| {
            grid().into_iter().map(move |c| FusionChoice {
                note_score: *n,
                ..c
            })
        })
        .collect();
    // Query i is in fold i mod FOLDS: deterministic, and spread over the file's order.
    let mut held = vec![0.0; n];
    let mut base = vec![0.0; n];
    let mut fold_choices = vec![];
    for f in 0..FOLDS {
        let train: Vec<usize> = (0..n).filter(|i| i % FOLDS != f).collect();
        let test: Vec<usize> = (0..n).filter(|i| i % FOLDS == f).collect();
        let c = best(&rows, &train, &grid);
        fold_choices.push(c);
        for &i in &test {
            let row = &rows[i];
            held[i] = ndcg(&fuse_run(row.1, semantic_of(row, &c), &c), row.0, 10);
            let b = baseline();
            base[i] = ndcg(&fuse_run(row.1, semantic_of(row, &b), &b), row.0, 10);
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let choice = best(&rows, &all, &grid);
    Ok(Tuned {
        choice,
        set: name.to_string(),
        queries: n,
        cv_ndcg_10: held.iter().sum::<f64>() / n as f64,
        baseline_ndcg_10: base.iter().sum::<f64>() / n as f64,
        p_value: super::significance::randomization_test(&held, &base),
        fold_choices,
    })
}

/// The note scores `tune` tries (the semantic runs are made once under each).
pub const NOTE_SCORES: [NoteScore; 4] = [
    NoteScore::Max,
    NoteScore::First,
    NoteScore::MaxFirst,
    NoteScore::Top2,
];

/// The runs `tune` needs: BM25 once, and semantic search under each of [`NOTE_SCORES`], with
/// `base`'s other options (expansion, BM25 settings, a restricted key's view). Each query is
/// embedded once. `progress` gets (queries done, total) over all passes.
pub fn collect_runs(
    engine: &crate::engine::Engine,
    embed: &super::EmbedFn,
    set: &QuerySet,
    base: &super::EvalOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<(NoteScore, Runs)>> {
    let cached = super::CachedEmbed::new(embed);
    let embed = |t: &[&str]| cached.embed(t);
    let n = set.queries.len();
    let total = n * NOTE_SCORES.len();
    let mut runs = vec![];
    for (pass, note_score) in NOTE_SCORES.into_iter().enumerate() {
        let modes = if runs.is_empty() {
            vec![Mode::Bm25, Mode::Semantic]
        } else {
            vec![Mode::Semantic]
        };
        let opts = super::EvalOptions {
            modes,
            note_score,
            use_tuned: false,
            ..base.clone()
        };
        let (_, r) = super::evaluate(engine, &embed, set, &opts, &|d, _| {
            progress(pass * n + d, total)
        })?;
        runs.push((note_score, r));
    }
    Ok(runs)
}

/// Stores the tuned choice in the data directory (written aside, then renamed).
pub fn store(data: &Path, t: &Tuned) -> Result<()> {
    let path = data.join(TUNED_FILE);
    let tmp = data.join(format!("{TUNED_FILE}.tmp"));
    let text = serde_json::to_string_pretty(t).map_err(|e| Error::InvalidInput(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// The tuned choice of a data directory, if `tune` stored one. A file that cannot be read is
/// an error (not silently the default).
pub fn load(data: &Path) -> Result<Option<Tuned>> {
    let path = data.join(TUNED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_holds_every_method_and_the_baseline() {
        let g = grid();
        // 3 depths x (6 RRF constants x (plain + 4 weights) + 9 alphas x 3 score fusions).
        assert_eq!(g.len(), 171);
        assert!(g.contains(&baseline()));
        for m in ["rrf", "weighted_rrf", "weighted", "dbsf", "zscore"] {
            assert!(
                g.iter()
                    .any(|c| serde_json::to_value(c.fusion).unwrap()["method"] == m),
                "{m}"
            );
        }
    }

    #[test]
    fn a_stored_choice_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let t = Tuned {
            choice: FusionChoice {
                fusion: Fusion::Dbsf { alpha: 0.7 },
                depth: 100,
                note_score: NoteScore::First,
            },
            set: "s".into(),
            queries: 20,
            cv_ndcg_10: 0.5,
            baseline_ndcg_10: 0.4,
            p_value: 0.03,
            fold_choices: vec![],
        };
        store(dir.path(), &t).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.choice, t.choice);
        std::fs::write(dir.path().join(TUNED_FILE), "{").unwrap();
        assert!(load(dir.path()).is_err());
    }
}

//! Evaluation: judged queries run through each search mode, scored with trec_eval's metrics
//! ([`metrics`]), compared pairwise with a paired randomisation test ([`significance`]), and
//! written as standard TREC run files so any outside tool can score them.
//!
//! Inputs: BEIR (`queries.jsonl` with `_id`/`text`; `qrels/<split>.tsv` with a
//! `query-id corpus-id score` header) or TREC (`qid text` tab-separated queries;
//! `qid 0 docid grade` qrels). Only queries with at least one judgment are evaluated (as
//! trec_eval does); a judged query a mode returns nothing for scores 0 in that mode.

pub mod metrics;
pub mod options;
pub mod significance;
pub mod tune;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::search::{Fusion, Mode, SearchRequest, Searcher};
use metrics::Judged;

/// Retrieval depth of every run (MAP@100 and Recall@100 need 100).
pub const RUN_DEPTH: usize = 100;
/// Hits of each mode kept per query in the report (for the UI's side-by-side view).
pub const REPORT_TOP: usize = 20;

/// Judged queries: the texts, and the judgments of each query.
#[derive(Debug, Clone, Default)]
pub struct QuerySet {
    /// `(id, text)` of every judged query, in file order.
    pub queries: Vec<(String, String)>,
    pub qrels: HashMap<String, Judged>,
    /// Queries of the query file without any judgment (not evaluated).
    pub unjudged: usize,
    /// What is wrong with the files but did not stop the evaluation, as `file:line: ...`
    /// (a query without text: scored 0, as trec_eval scores a judged query with no results).
    pub warnings: Vec<String>,
}

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}:{line}: {msg}", path.display()))
}

/// Reads queries: BEIR JSONL (`{"_id", "text"}`) or TSV (`qid<TAB>text`).
pub fn read_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_queries(&text, path)
}

/// Queries from text; `path` names the source in errors.
pub fn parse_queries(text: &str, path: &Path) -> Result<Vec<(String, String)>> {
    Ok(parse_queries_checked(text, path)?.0)
}

/// Queries `(id, text)` and the warnings about them.
pub type CheckedQueries = (Vec<(String, String)>, Vec<String>);

/// [`parse_queries`] with what it found wrong but kept: a query without text is kept (it
/// scores 0) and reported as `file:line: query ID has no text`.
pub fn parse_queries_checked(text: &str, path: &Path) -> Result<CheckedQueries> {
    let mut out = vec![];
    let mut warnings = vec![];
    let mut warn_empty = |n: usize, id: &str, text: &str| {
        if !text.chars().any(char::is_alphanumeric) {
            warnings.push(format!(
                "{}:{n}: query {id} has no text (scored 0)",
                path.display()
            ));
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| bad(path, n, format!("invalid JSON: {e}")))?;
            let id = v
                .get("_id")
                .or_else(|| v.get("id"))
                .or_else(|| v.get("query_id"))
                .and_then(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .or_else(|| x.as_i64().map(|n| n.to_string()))
                })
                .ok_or_else(|| bad(path, n, "no \"_id\""))?;
            let text = v
                .get("text")
                .or_else(|| v.get("query"))
                .and_then(|x| x.as_str())
                .ok_or_else(|| bad(path, n, "no \"text\""))?;
            warn_empty(n, &id, text);
            out.push((id, text.to_string()));
        } else {
            let (id, text) = line
                .split_once('\t')
                .ok_or_else(|| bad(path, n, "expected JSON or `qid<TAB>text`"))?;
            if i == 0 && id == "query-id" {
                continue;
            }
            warn_empty(n, id.trim(), text);
            out.push((id.trim().to_string(), text.trim().to_string()));
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no queries",
            path.display()
        )));
    }
    Ok((out, warnings))
}

/// Reads qrels: BEIR TSV with a header (`query-id corpus-id score`) or TREC
/// (`qid iter docid grade`, whitespace-separated). A folder means `<folder>/test.tsv`.
pub fn read_qrels(path: &Path) -> Result<HashMap<String, Judged>> {
    let path: PathBuf = if path.is_dir() {
        path.join("test.tsv")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_qrels(&text, &path)
}

/// Judgments from text; `path` names the source in errors.
pub fn parse_qrels(text: &str, path: &Path) -> Result<HashMap<String, Judged>> {
    let mut out: HashMap<String, Judged> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        let (q, d, g) = match cols.len() {
            3 => {
                if i == 0 && cols[2].parse::<f64>().is_err() {
                    continue; // the BEIR header
                }
                (cols[0], cols[1], cols[2])
            }
            4 => (cols[0], cols[2], cols[3]),
            _ => {
                return Err(bad(
                    path,
                    n,
                    "expected `query-id corpus-id score` (BEIR) or `qid 0 docid grade` (TREC)",
                ))
            }
        };
        let grade: i32 = g
            .parse::<i32>()
            .or_else(|_| g.parse::<f64>().map(|f| f as i32))
            .map_err(|_| bad(path, n, format!("grade {g:?} is not a number")))?;
        out.entry(q.to_string())
            .or_default()
            .insert(d.to_string(), grade);
    }
    if out.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no judgments",
            path.display()
        )));
    }
    Ok(out)
}

impl QuerySet {
    /// Reads a query file and a qrels file and keeps the judged queries.
    pub fn load(queries: &Path, qrels: &Path) -> Result<QuerySet> {
        let text = std::fs::read_to_string(queries).map_err(|e| Error::io(queries, e))?;
        let (all, warnings) = parse_queries_checked(&text, queries)?;
        let mut set = Self::from_parts(all, read_qrels(qrels)?)?;
        set.warnings = warnings;
        Ok(set)
    }

    pub fn from_parts(
        all: Vec<(String, String)>,
        qrels: HashMap<String, Judged>,
    ) -> Result<QuerySet> {
        let total = all.len();
        let queries: Vec<(String, String)> = all
            .into_iter()
            .filter(|(id, _)| qrels.contains_key(id))
            .collect();
        if queries.is_empty() {
            return Err(Error::InvalidInput(
                "no query has judgments: do the query ids match the qrels' query ids?".into(),
            ));
        }
        Ok(QuerySet {
            unjudged: total - queries.len(),
            queries,
            qrels,
            warnings: vec![],
        })
    }
}

/// Means of one mode over the evaluated queries.
#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    pub mode: Mode,
    /// Recall@k for each k asked.
    pub recall: BTreeMap<usize, f64>,
    pub ndcg_10: f64,
    pub mrr_10: f64,
    pub map_100: f64,
}

/// One query in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct QueryMode {
    pub recall: BTreeMap<usize, f64>,
    pub ndcg_10: f64,
    pub mrr_10: f64,
    pub ap_100: f64,
    /// The first hits, `(doc, score)` in trec order.
    pub top: Vec<(String, f64)>,
    /// Rank (1-based) of each relevant document within the run, None when not retrieved.
    pub relevant_ranks: BTreeMap<String, Option<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub id: String,
    pub text: String,
    /// Judged documents with grade >= 1, best grade first.
    pub relevant: Vec<(String, i32)>,
    pub modes: BTreeMap<String, QueryMode>,
}

/// Two modes compared query by query on nDCG@10.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub a: Mode,
    pub b: Mode,
    pub a_wins: usize,
    pub b_wins: usize,
    pub ties: usize,
    /// Mean nDCG@10 of a minus b.
    pub mean_diff: f64,
    pub p_value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub queries: usize,
    pub unjudged_queries: usize,
    /// Judged queries without text (scored 0).
    pub empty_queries: usize,
    /// Judged documents that are not in the collection (relevant ones can never be found).
    pub unknown_documents: usize,
    /// `file:line` reports of queries without text, and a sample of the unknown documents.
    pub warnings: Vec<String>,
    pub ks: Vec<usize>,
    pub fusion: Fusion,
    pub summaries: Vec<ModeSummary>,
    pub pairs: Vec<PairResult>,
    /// How the pairs were tested.
    pub test: String,
    pub per_query: Vec<QueryResult>,
    pub seconds: f64,
}

/// The runs of each mode: per query, `(doc, score)` in trec order (at most [`RUN_DEPTH`]).
pub type Runs = BTreeMap<String, Vec<(String, Vec<(String, f64)>)>>;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub modes: Vec<Mode>,
    pub ks: Vec<usize>,
    pub fusion: Fusion,
    /// hnsw search breadth; None: the data directory's recorded `ef_search`.
    pub ef: Option<usize>,
    /// Evaluate as if only the notes passing this filter existed (a restricted key's view).
    pub restrict: Option<crate::index::Filter>,
    /// Expand abbreviations and long forms (as searches do by default).
    pub expand: bool,
    /// Weight of expansion clauses (see [`crate::search::EXPANSION_WEIGHT`]).
    pub expansion_weight: f32,
    /// Choose among senses with the collection's co-occurrences (see `Searcher`).
    pub sense_context: bool,
    /// Every mention, or affirmed mentions only.
    pub assertion: crate::search::Assertion,
    /// Leave common English words out of BM25's optional query words.
    pub drop_stopwords: bool,
    /// BM25's k1 and b.
    pub bm25: crate::index::bm25_scorer::Bm25Params,
    /// How a note's semantic score comes from its windows.
    pub note_score: crate::search::NoteScore,
    /// Fuse as searches without fusion parameters do (the collection's tuned fusion when
    /// `tune` stored one) instead of with `fusion`.
    pub use_tuned: bool,
    /// With affirmed mentions only, demote semantic hits matched in negated or family
    /// sentences.
    pub demote_unaffirmed: bool,
    /// The abbreviation dictionary (the shipped one when None).
    pub abbreviations: Option<std::sync::Arc<crate::clinical::abbrev::Dictionary>>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            modes: vec![Mode::Bm25, Mode::Semantic, Mode::Hybrid],
            ks: vec![1, 5, 10, 20, 100],
            fusion: Fusion::default(),
            ef: None,
            restrict: None,
            expand: true,
            expansion_weight: crate::search::EXPANSION_WEIGHT,
            sense_context: true,
            assertion: crate::search::Assertion::Any,
            use_tuned: false,
            drop_stopwords: false,
            bm25: Default::default(),
            note_score: crate::search::NoteScore::Max,
            demote_unaffirmed: true,
            abbreviations: None,
        }
    }
}

/// Parses `bm25,semantic,hybrid`.
pub fn parse_modes(s: &str) -> std::result::Result<Vec<Mode>, String> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let m: Mode = part.parse()?;
        if m == Mode::Compare {
            return Err(
                "compare is not a mode to evaluate: list bm25, semantic and/or hybrid".into(),
            );
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err("no modes given".into());
    }
    Ok(out)
}

/// Parses `1,5,10,20,100`.
pub fn parse_ks(s: &str) -> std::result::Result<Vec<usize>, String> {
    let mut ks: Vec<usize> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<usize>()
                .ok()
                .filter(|k| (1..=RUN_DEPTH).contains(k))
                .ok_or_else(|| format!("k {p:?} must be a whole number from 1 to {RUN_DEPTH}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    ks.sort_unstable();
    ks.dedup();
    if ks.is_empty() {
        return Err("no cut-offs given".into());
    }
    Ok(ks)
}

/// Embeds a batch of query texts.
pub type EmbedFn<'a> = dyn Fn(&[&str]) -> Result<Vec<Vec<f32>>> + 'a;

/// An embedding function that embeds each distinct text once: evaluations that run the same
/// queries several times (under each note score, each BM25 setting) share the vectors.
pub struct CachedEmbed<'a> {
    inner: &'a EmbedFn<'a>,
    cache: std::cell::RefCell<HashMap<String, Vec<f32>>>,
}

impl<'a> CachedEmbed<'a> {
    pub fn new(inner: &'a EmbedFn<'a>) -> Self {
        CachedEmbed {
            inner,
            cache: Default::default(),
        }
    }

    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let missing: Vec<&str> = {
            let c = self.cache.borrow();
            texts
                .iter()
                .copied()
                .filter(|t| !c.contains_key(*t))
                .collect()
        };
        if !missing.is_empty() {
            let vecs = (self.inner)(&missing)?;
            let mut c = self.cache.borrow_mut();
            for (t, v) in missing.into_iter().zip(vecs) {
                c.insert(t.to_string(), v);
            }
        }
        let c = self.cache.borrow();
        Ok(texts.iter().map(|t| c[*t].clone()).collect())
    }
}

/// Runs every judged query through each mode and scores the runs.
///
/// `embed` embeds a batch of query texts (modes other than BM25 need it); `progress(done,
/// total)` is called after each query.
pub fn evaluate(
    engine: &Engine,
    embed: &EmbedFn,
    set: &QuerySet,
    opts: &EvalOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<(EvalReport, Runs)> {
    let started = Instant::now();
    let empty_queries = set
        .queries
        .iter()
        .filter(|(_, t)| !t.chars().any(char::is_alphanumeric))
        .count();
    // Judged documents the collection does not hold (for a restricted view: that it may not
    // see, which is the same to it).
    let mut unknown: Vec<String> = vec![];
    let mut unknown_documents = 0;
    for (qid, _) in &set.queries {
        for doc in set.qrels[qid].keys() {
            // The note is read only when a restriction must be checked against it.
            let visible = match &opts.restrict {
                None => engine.store.contains(doc)?,
                Some(r) => engine.store.get(doc)?.is_some_and(|n| r.admits_stored(&n)),
            };
            if !visible {
                unknown_documents += 1;
                if unknown.len() < 10 {
                    unknown.push(format!(
                        "query {qid}: judged document {doc} is not in the collection"
                    ));
                }
            }
        }
    }
    let mut warnings = set.warnings.clone();
    warnings.extend(unknown);
    let needs_vectors = opts.modes.iter().any(|m| m.needs_vector());
    let vectors: Vec<Option<Vec<f32>>> = if needs_vectors {
        let mut out = Vec::with_capacity(set.queries.len());
        // A query without words is not embedded (the encoder refuses empty text): it gets
        // an empty run and scores 0.
        let has_words = |t: &str| t.chars().any(char::is_alphanumeric);
        for chunk in set.queries.chunks(64) {
            let texts: Vec<&str> = chunk
                .iter()
                .map(|(_, t)| t.as_str())
                .filter(|t| has_words(t))
                .collect();
            let mut vecs = if texts.is_empty() {
                vec![].into_iter()
            } else {
                embed(&texts)?.into_iter()
            };
            for (_, t) in chunk {
                out.push(if has_words(t) { vecs.next() } else { None });
            }
        }
        out
    } else {
        vec![None; set.queries.len()]
    };
    let mut searcher = Searcher::new(engine);
    if let Some(ef) = opts.ef {
        searcher.ef = ef;
    }
    searcher.expansion_weight = opts.expansion_weight;
    searcher.sense_context = opts.sense_context;
    searcher.demote_unaffirmed = opts.demote_unaffirmed;
    if let Some(d) = &opts.abbreviations {
        searcher.abbreviations = d.clone();
    }
    let mut runs: Runs = BTreeMap::new();
    let mut per_query = Vec::with_capacity(set.queries.len());
    for (i, ((qid, text), qv)) in set.queries.iter().zip(&vectors).enumerate() {
        let judged = &set.qrels[qid];
        let mut req = SearchRequest::new(text.clone(), Mode::Compare, RUN_DEPTH);
        if !needs_vectors {
            req.mode = Mode::Bm25;
        }
        req.fusion = opts.fusion;
        req.details = false;
        req.expand = opts.expand;
        req.assertion = opts.assertion;
        req.fusion_explicit = !opts.use_tuned;
        req.drop_stopwords = opts.drop_stopwords;
        req.bm25 = opts.bm25;
        req.note_score = opts.note_score;
        req.note_score_explicit = !opts.use_tuned;
        if let Some(r) = &opts.restrict {
            req.filter = req.filter.and(r);
        }
        // A query the engine rejects (empty after trimming) is an empty run, not a failure.
        let resp = if req.check().is_ok() {
            Some(searcher.search(&req, qv.as_deref())?)
        } else {
            None
        };
        let mut relevant: Vec<(String, i32)> = judged
            .iter()
            .filter(|(_, g)| **g >= 1)
            .map(|(d, g)| (d.clone(), *g))
            .collect();
        relevant.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut modes = BTreeMap::new();
        for &m in &opts.modes {
            let mut run: Vec<(String, f64)> = resp
                .as_ref()
                .and_then(|r| r.ranking(m))
                .map(|r| {
                    r.hits
                        .iter()
                        .map(|h| (h.id.clone(), h.score as f64))
                        .collect()
                })
                .unwrap_or_default();
            metrics::trec_order(&mut run);
            let recall = opts
                .ks
                .iter()
                .map(|&k| (k, metrics::recall(&run, judged, k)))
                .collect();
            let relevant_ranks = relevant
                .iter()
                .map(|(d, _)| {
                    (
                        d.clone(),
                        run.iter().position(|(x, _)| x == d).map(|p| p + 1),
                    )
                })
                .collect();
            modes.insert(
                mode_name(m).to_string(),
                QueryMode {
                    recall,
                    ndcg_10: metrics::ndcg(&run, judged, 10),
                    mrr_10: metrics::reciprocal_rank(&run, judged, 10),
                    ap_100: metrics::average_precision(&run, judged, 100),
                    top: run.iter().take(REPORT_TOP).cloned().collect(),
                    relevant_ranks,
                },
            );
            runs.entry(mode_name(m).to_string())
                .or_default()
                .push((qid.clone(), run));
        }
        per_query.push(QueryResult {
            id: qid.clone(),
            text: text.clone(),
            relevant,
            modes,
        });
        progress(i + 1, set.queries.len());
    }
    let n = per_query.len().max(1) as f64;
    let summaries = opts
        .modes
        .iter()
        .map(|&m| {
            let name = mode_name(m);
            let of = |f: &dyn Fn(&QueryMode) -> f64| {
                per_query.iter().map(|q| f(&q.modes[name])).sum::<f64>() / n
            };
            ModeSummary {
                mode: m,
                recall: opts
                    .ks
                    .iter()
                    .map(|&k| (k, of(&|q| q.recall[&k])))
                    .collect(),
                ndcg_10: of(&|q| q.ndcg_10),
                mrr_10: of(&|q| q.mrr_10),
                map_100: of(&|q| q.ap_100),
            }
        })
        .collect();
    let mut pairs = vec![];
    for (i, &a) in opts.modes.iter().enumerate() {
        for &b in &opts.modes[i + 1..] {
            let xa: Vec<f64> = per_query
                .iter()
                .map(|q| q.modes[mode_name(a)].ndcg_10)
                .collect();
            let xb: Vec<f64> = per_query
                .iter()
                .map(|q| q.modes[mode_name(b)].ndcg_10)
                .collect();
            let (mut aw, mut bw, mut ties) = (0, 0, 0);
            for (x, y) in xa.iter().zip(&xb) {
                if (x - y).abs() < 1e-12 {
                    ties += 1;
                } else if x > y {
                    aw += 1;
                } else {
                    bw += 1;
                }
            }
            pairs.push(PairResult {
                a,
                b,
                a_wins: aw,
                b_wins: bw,
                ties,
                mean_diff: xa.iter().zip(&xb).map(|(x, y)| x - y).sum::<f64>() / n,
                p_value: significance::randomization_test(&xa, &xb),
            });
        }
    }
    Ok((
        EvalReport {
            queries: per_query.len(),
            unjudged_queries: set.unjudged,
            empty_queries,
            unknown_documents,
            warnings,
            ks: opts.ks.clone(),
            fusion: opts.fusion,
            summaries,
            pairs,
            test: format!(
                "paired randomisation test on nDCG@10, two-sided, {} sign permutations (fixed seed)",
                significance::PERMUTATIONS
            ),
            per_query,
            seconds: started.elapsed().as_secs_f64(),
        },
        runs,
    ))
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Bm25 => "bm25",
        Mode::Semantic => "semantic",
        Mode::Hybrid => "hybrid",
        Mode::Compare => "compare",
    }
}

/// Writes one TREC run file per mode (`<dir>/<mode>.run`: `qid Q0 docid rank score tag`).
/// Scores are written in full precision so that trec_eval orders them exactly as we did.
pub fn write_runs(dir: &Path, runs: &Runs) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = vec![];
    for (mode, queries) in runs {
        let path = dir.join(format!("{mode}.run"));
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?);
        for (qid, run) in queries {
            for (rank, (doc, score)) in run.iter().enumerate() {
                writeln!(f, "{qid} Q0 {doc} {} {score} clinsearch-{mode}", rank + 1)
                    .map_err(|e| Error::io(&path, e))?;
            }
        }
        f.flush().map_err(|e| Error::io(&path, e))?;
        paths.push(path);
    }
    Ok(paths)
}

/// The metrics table, as the CLI prints it.
pub fn format_table(r: &EvalReport) -> String {
    let mut out = String::new();
    let mut head = format!("{:<10}", "mode");
    for k in &r.ks {
        head.push_str(&format!(" {:>9}", format!("R@{k}")));
    }
    head.push_str(&format!(
        " {:>9} {:>9} {:>9}",
        "nDCG@10", "MRR@10", "MAP@100"
    ));
    out.push_str(&head);
    out.push('\n');
    for s in &r.summaries {
        let mut line = format!("{:<10}", mode_name(s.mode));
        for k in &r.ks {
            line.push_str(&format!(" {:>9.4}", s.recall[k]));
        }
        line.push_str(&format!(
            " {:>9.4} {:>9.4} {:>9.4}",
            s.ndcg_10, s.mrr_10, s.map_100
        ));
        out.push_str(&line);
        out.push('\n');
    }
    if !r.pairs.is_empty() {
        out.push_str(&format!(
            "\nper-query nDCG@10 ({} queries; {})\n",
            r.queries, r.test
        ));
        for p in &r.pairs {
            out.push_str(&format!(
                "{:>8} vs {:<8}  wins {:>4}  losses {:>4}  ties {:>4}  mean diff {:+.4}  p = {:.4}{}\n",
                mode_name(p.a),
                mode_name(p.b),
                p.a_wins,
                p.b_wins,
                p.ties,
                p.mean_diff,
                p.p_value,
                if p.p_value < 0.05 { "  (significant at 0.05)" } else { "" }
            ));
        }
    }
    out
}

/// Judged query sets kept in a data directory (`eval-sets/<name>/`), for the API and the UI.
pub fn sets_dir(data: &Path) -> PathBuf {
    data.join("eval-sets")
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidInput(format!(
            "set name {name:?}: use 1-64 letters, digits, - or _"
        )));
    }
    Ok(())
}

/// Copies a query file and a qrels file into the data directory under `name` (both are
/// checked first).
pub fn save_set(data: &Path, name: &str, queries: &Path, qrels: &Path) -> Result<QuerySet> {
    check_name(name)?;
    let set = QuerySet::load(queries, qrels)?;
    let dir = sets_dir(data).join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut q = String::new();
    for (id, text) in &set.queries {
        q.push_str(&serde_json::json!({"_id": id, "text": text}).to_string());
        q.push('\n');
    }
    let mut r = String::from("query-id\tcorpus-id\tscore\n");
    let mut ids: Vec<&String> = set.qrels.keys().collect();
    ids.sort();
    for id in ids {
        let mut docs: Vec<(&String, &i32)> = set.qrels[id].iter().collect();
        docs.sort();
        for (d, g) in docs {
            r.push_str(&format!("{id}\t{d}\t{g}\n"));
        }
    }
    std::fs::write(dir.join("queries.jsonl"), q).map_err(|e| Error::io(&dir, e))?;
    std::fs::write(dir.join("qrels.tsv"), r).map_err(|e| Error::io(&dir, e))?;
    Ok(set)
}

/// Names of the stored sets with their query counts.
pub fn list_sets(data: &Path) -> Vec<(String, usize)> {
    let Ok(entries) = std::fs::read_dir(sets_dir(data)) else {
        return vec![];
    };
    let mut out: Vec<(String, usize)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let set = load_set(data, &name).ok()?;
            Some((name, set.queries.len()))
        })
        .collect();
    out.sort();
    out
}

pub fn load_set(data: &Path, name: &str) -> Result<QuerySet> {
    check_name(name)?;
    let dir = sets_dir(data).join(name);
    if !dir.is_dir() {
        return Err(Error::NotFound(format!(
            "no stored query set named {name:?}"
        )));
    }
    QuerySet::load(&dir.join("queries.jsonl"), &dir.join("qrels.tsv"))
}

//! Query-time ranking: BM25, semantic and hybrid search over an [`Engine`].
//!
//! A request names a mode; the searcher gathers a candidate list from each retriever it needs
//! (both apply the filters themselves, so a selective filter still fills the page), fuses them
//! by rank ([`rrf`]) or by normalised score ([`score_fusion`]), optionally groups notes by
//! patient, and hydrates the page: every hit keeps each retriever's own rank and score, its
//! best-matching chunk, BM25 term highlights and the best semantic window.
//!
//! The module is split as a reader looks for it: `params` (what a request may ask and how it
//! is checked), `retrieve` (candidates from each retriever), `present` (pages, groups,
//! snippets and highlights) and `response` (what a search answers); this file runs a request
//! through them.
//!
//! The searcher never embeds: the caller passes the query vector (the server batches query
//! embeddings of concurrent requests on one worker; the CLI and evaluation embed directly).

pub mod dbsf;
pub mod export;
pub mod facets;
mod params;
mod present;
mod response;
mod retrieve;
pub mod rrf;
pub mod score_fusion;
pub mod shards;
pub mod spec;
pub mod zscore;

pub use params::{
    Assertion, Fusion, GroupBy, Mode, NoteScore, ParamError, SearchRequest, DEFAULT_FUSION,
};
pub use present::segments;
pub use response::{
    AppliedExpansion, ChunkMatch, FusedShares, Group, Hit, Ranking, SearchResponse, Segment,
    Signal, Timings, WindowSnippet,
};
pub use retrieve::cosine;

use present::lean_hits;
use retrieve::{best_chunk, SemanticCandidate};

use std::collections::HashMap;
use std::time::Instant;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::Filter;
use crate::store::{Chunk, StoredNote};

/// Largest page size.
pub const MAX_K: usize = 1000;
/// Deepest page start.
pub const MAX_OFFSET: usize = 10_000;
/// Longest query, in characters.
pub const MAX_QUERY_BYTES: usize = 32 * 1024;
/// Candidates each retriever contributes to a fused ranking (at least; more for deep pages).
/// 50 rather than 100: ranks beyond 50 move a top-10 RRF page very little, and the semantic
/// side is the costliest part of a query (evaluation runs ask for 100 and get 100).
pub const FUSION_DEPTH: usize = 50;
/// A filter passing at most this many notes is searched exactly on the vector side: hnsw's
/// filtered search slows down and loses recall when few points pass (STACK-NOTES: 1% of the
/// points passing took 100 ms against 7 ms brute force).
pub const EXACT_FILTER_LIMIT: usize = 2000;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A fused note: its score and each retriever's share of it (they add up to the score), so a
/// hit can say why it ranks where it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: String,
    pub score: f32,
    pub bm25: f32,
    pub semantic: f32,
}

/// Every note of two lists once, in order of first appearance (BM25 first), with the shares
/// `part(id, bm25 score, semantic score)` gives it, sorted by their sum (ties: appearance).
pub(crate) fn combine(
    bm25: &[(String, f32)],
    semantic: &[(String, f32)],
    part: impl Fn(&str, Option<f32>, Option<f32>) -> (f32, f32),
) -> Vec<Fused> {
    let b: HashMap<&str, f32> = bm25.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    let s: HashMap<&str, f32> = semantic.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(Fused, usize)> = vec![];
    for (id, _) in bm25.iter().chain(semantic) {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let (pb, ps) = part(id, b.get(id.as_str()).copied(), s.get(id.as_str()).copied());
        let n = out.len();
        out.push((
            Fused {
                id: id.clone(),
                score: pb + ps,
                bm25: pb,
                semantic: ps,
            },
            n,
        ));
    }
    out.sort_by(|a, b| b.0.score.total_cmp(&a.0.score).then(a.1.cmp(&b.1)));
    out.into_iter().map(|(f, _)| f).collect()
}

/// Fuses a BM25 and a semantic candidate list (each `(id, score)`, best first) as `fusion`
/// says: the one place the methods are dispatched, for searches and for `tune`.
pub fn fuse(fusion: Fusion, bm25: &[(String, f32)], semantic: &[(String, f32)]) -> Vec<Fused> {
    let ids = |l: &[(String, f32)]| -> Vec<String> { l.iter().map(|(i, _)| i.clone()).collect() };
    match fusion {
        Fusion::Rrf { k } => rrf::fuse(&ids(bm25), &ids(semantic), k, 0.5),
        Fusion::WeightedRrf { k, alpha } => rrf::fuse(&ids(bm25), &ids(semantic), k, alpha),
        Fusion::Weighted { alpha } => score_fusion::fuse(bm25, semantic, alpha),
        Fusion::Dbsf { alpha } => dbsf::fuse(bm25, semantic, alpha),
        Fusion::Zscore { alpha } => zscore::fuse(bm25, semantic, alpha),
    }
}

/// Weight of an expansion's clause relative to the words typed (times the sense's share
/// when an abbreviation keeps several senses). Chosen on the judged abbreviation set of
/// sample_corpus (README, "Abbreviations").
pub const EXPANSION_WEIGHT: f32 = 0.75;

/// How a request's text is searched on the BM25 side: the query built once per request and
/// shared by retrieval, per-hit scores and snippets.
pub(crate) struct Plan {
    text: crate::index::query::TextQuery,
    built: crate::index::bm25::Built,
    expansions: Vec<AppliedExpansion>,
    notices: Vec<String>,
}

/// Ranks notes of an [`Engine`].
pub struct Searcher<'a> {
    engine: &'a Engine,
    /// Abbreviations for query expansion (the shipped dictionary unless configured).
    pub abbreviations: std::sync::Arc<crate::clinical::abbrev::Dictionary>,
    /// Weight of expansion clauses ([`EXPANSION_WEIGHT`] unless set).
    pub expansion_weight: f32,
    /// Let the collection (which senses co-occur with the query's words and with the
    /// abbreviation itself) choose among an ambiguous abbreviation's senses; false: the
    /// dictionary's frequencies alone.
    pub sense_context: bool,
    /// With `assertion=affirmed`, demote semantic hits matched in a negated or family
    /// sentence (false: BM25's affirmed view only; for measuring the demotion).
    pub demote_unaffirmed: bool,
    /// hnsw search breadth (raised to the number of chunks asked for); the data directory's
    /// recorded `ef_search` unless set. A breadth of at least the number of chunks is an
    /// exact scan of every note instead (hnsw cannot promise that: identical vectors can be
    /// unreachable in its graph).
    pub ef: usize,
    /// Filtered sets of at most this many notes are searched exactly on the vector side.
    pub exact_limit: usize,
    /// The statistics of a sharded collection this engine is one shard of ([`shards`]): BM25
    /// and abbreviation expansion then read them instead of this shard's own, and a fusion
    /// tuned for this shard alone is not used. None for a collection of one directory.
    pub collection: Option<std::sync::Arc<crate::index::CollectionStats>>,
}

/// A request made ready to run: the filter as the search applies it, the fusion, how deep
/// each retriever is asked, and the BM25 side's plan.
struct Prepared {
    req: SearchRequest,
    fusion: Fusion,
    note_score: NoteScore,
    depth: usize,
    plan: Plan,
}

/// Each retriever's candidates for a request, best first.
struct Retrieved {
    bm25: Vec<(String, f32)>,
    semantic: Vec<SemanticCandidate>,
    /// The patient of every candidate, when they came from shards (a patient grouping cannot
    /// load notes that live on other shards).
    patients: Option<HashMap<String, Option<String>>>,
}

/// A note loaded once per request, shared by the rankings of `compare`.
struct Loaded {
    note: StoredNote,
    chunks: Vec<Chunk>,
}

impl<'a> Searcher<'a> {
    pub fn new(engine: &'a Engine) -> Self {
        Searcher {
            engine,
            abbreviations: crate::clinical::abbrev::Dictionary::builtin(),
            expansion_weight: EXPANSION_WEIGHT,
            sense_context: true,
            demote_unaffirmed: true,
            ef: engine.vectors.settings().ef_search,
            exact_limit: EXACT_FILTER_LIMIT,
            collection: None,
        }
    }

    /// A fusion tuned for this data directory (`tune`), unless it is one shard of many.
    fn tuned(&self) -> Option<crate::eval::tune::FusionChoice> {
        if self.collection.is_some() {
            None
        } else {
            self.engine.tuned_fusion()
        }
    }

    /// The BM25 side of `req`: its text read as its syntax says, plus one optional phrase
    /// clause per expansion, weighted [`EXPANSION_WEIGHT`] x the sense's share.
    fn plan(&self, req: &SearchRequest) -> Result<Plan> {
        let (text, expansions) = self.expanded_query(req)?;
        let mut built = self.engine.bm25.build(&text)?;
        built.stats = self.collection.clone();
        let mut notices = vec![];
        if built.dropped > 0 {
            notices.push(format!(
                "the query has {} terms; BM25 used the first {} (the limit)",
                built.terms + built.dropped,
                crate::index::query::MAX_QUERY_TERMS
            ));
        }
        Ok(Plan {
            text,
            built,
            expansions,
            notices,
        })
    }

    /// The text query of `req` with its expansions (what BM25 searches and snippets mark).
    pub fn expanded_query(
        &self,
        req: &SearchRequest,
    ) -> Result<(crate::index::query::TextQuery, Vec<AppliedExpansion>)> {
        match &self.collection {
            Some(c) => self.expanded_query_with(
                req,
                &crate::index::collection_stats::TableCooccurrence(&c.cooccurrence),
            ),
            None => self.expanded_query_with(req, &self.engine.bm25),
        }
    }

    /// [`Self::expanded_query`] with `corpus` answering which senses co-occur.
    fn expanded_query_with(
        &self,
        req: &SearchRequest,
        corpus: &dyn crate::clinical::abbrev::Cooccurrence,
    ) -> Result<(crate::index::query::TextQuery, Vec<AppliedExpansion>)> {
        use crate::index::query::Clause;
        let mut text = req
            .text_query()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        text.affirmed_only = req.assertion == Assertion::Affirmed;
        text.drop_stopwords = req.drop_stopwords;
        text.bm25 = req.bm25;
        let mut expansions = vec![];
        if req.expand {
            let found = self
                .abbreviations
                .expand(&text.positive_text(), self.sense_context.then_some(corpus));
            for e in found {
                if req.expand_skip.contains(&e.from.to_lowercase()) {
                    continue;
                }
                for alt in &e.to {
                    text.clauses.push(Clause::phrase(
                        alt.text.clone(),
                        self.expansion_weight * alt.weight,
                    ));
                }
                expansions.push(AppliedExpansion {
                    from: e.from.clone(),
                    to: e.to.iter().map(|a| a.text.clone()).collect(),
                    kind: e.kind,
                });
            }
        }
        Ok((text, expansions))
    }

    /// Runs `req`; `query_vector` is required by every mode but `bm25`.
    pub fn search(
        &self,
        req: &SearchRequest,
        query_vector: Option<&[f32]>,
    ) -> Result<SearchResponse> {
        let t = Instant::now();
        let p = self.prepare(req, query_vector)?;
        let plan_ms = ms(t);
        let mut timings = Timings::default();
        let got = self.retrieve(&p, query_vector, &mut timings)?;
        // Planning (expansion, query building) counts as the BM25 side's time.
        timings.bm25_ms += plan_ms;
        self.respond(p, query_vector, got, timings)
    }

    /// Checks `req` and decides how it runs.
    fn prepare(&self, req: &SearchRequest, query_vector: Option<&[f32]>) -> Result<Prepared> {
        req.check()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        // `assertion=affirmed` asks for affirmed mentions: of the words, and of the entities.
        let mut filter = req.filter.clone();
        filter.entities_affirmed |= req.assertion == Assertion::Affirmed;
        let req = SearchRequest {
            filter,
            ..req.clone()
        };
        if req.mode.needs_vector() && query_vector.is_none() {
            return Err(Error::InvalidInput(
                "this search mode needs the query embedded".into(),
            ));
        }
        let need = req.offset + req.k;
        // A fusion tuned for this collection, unless the request chose one.
        let tuned = self.tuned();
        let (fusion, fusion_depth) = match (tuned, req.fusion_explicit) {
            (Some(t), false) => (t.fusion, t.depth),
            _ => (req.fusion, FUSION_DEPTH),
        };
        let note_score = match (tuned, req.note_score_explicit) {
            (Some(t), false) => t.note_score,
            _ => req.note_score,
        };
        let depth = match req.group_by {
            // Grouping folds several notes into one hit: look deeper to fill the page.
            GroupBy::Patient => (need * 5).max(FUSION_DEPTH),
            GroupBy::Note => match req.mode {
                Mode::Bm25 | Mode::Semantic => need,
                Mode::Hybrid | Mode::Compare => need.max(fusion_depth),
            },
        }
        .max(req.min_depth);
        let plan = self.plan(&req)?;
        Ok(Prepared {
            req,
            fusion,
            note_score,
            depth,
            plan,
        })
    }

    /// Each retriever's candidates for a prepared request.
    fn retrieve(
        &self,
        p: &Prepared,
        qv: Option<&[f32]>,
        timings: &mut Timings,
    ) -> Result<Retrieved> {
        let req = &p.req;
        let t = Instant::now();
        let bm25 = self
            .engine
            .bm25
            .search_built(&p.plan.built, p.depth, &req.filter)?;
        timings.bm25_ms = ms(t);

        let semantic = match qv {
            Some(v) => {
                let t = Instant::now();
                let mut s = self.semantic_candidates(v, p.depth, &req.filter)?;
                if p.note_score != NoteScore::Max {
                    self.rescore_notes(v, p.note_score, &mut s)?;
                }
                if req.assertion == Assertion::Affirmed && self.demote_unaffirmed {
                    self.demote_unaffirmed(&p.plan.text, &mut s)?;
                }
                timings.semantic_ms = ms(t);
                s
            }
            None => vec![],
        };
        Ok(Retrieved {
            bm25,
            semantic,
            patients: None,
        })
    }

    /// Fuses, pages and hydrates the candidates of a prepared request. Notes this engine does
    /// not hold (another shard's) are left out of the page's hits; their ranks stay theirs.
    fn respond(
        &self,
        p: Prepared,
        qv: Option<&[f32]>,
        got: Retrieved,
        mut timings: Timings,
    ) -> Result<SearchResponse> {
        let Prepared {
            req, fusion, plan, ..
        } = p;
        let req = &req;
        let Retrieved {
            bm25,
            semantic,
            patients,
        } = got;
        let t = Instant::now();
        let bm25_rank: HashMap<&str, (usize, f32)> = bm25
            .iter()
            .enumerate()
            .map(|(i, (id, s))| (id.as_str(), (i + 1, *s)))
            .collect();
        let sem_rank: HashMap<&str, (usize, &SemanticCandidate)> = semantic
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), (i + 1, c)))
            .collect();
        let modes: Vec<Mode> = match req.mode {
            Mode::Compare => vec![Mode::Bm25, Mode::Semantic, Mode::Hybrid],
            m => vec![m],
        };
        let mut ordered: Vec<(Mode, Vec<(String, f32)>)> = vec![];
        // Each retriever's share of every fused score, for the hits' explanations.
        let mut shares: HashMap<String, (f32, f32)> = HashMap::new();
        for &m in &modes {
            let list: Vec<(String, f32)> = match m {
                Mode::Bm25 => bm25.clone(),
                Mode::Semantic => semantic.iter().map(|c| (c.id.clone(), c.score)).collect(),
                _ => {
                    let sem: Vec<(String, f32)> =
                        semantic.iter().map(|c| (c.id.clone(), c.score)).collect();
                    let fused = fuse(fusion, &bm25, &sem);
                    shares = fused
                        .iter()
                        .map(|f| (f.id.clone(), (f.bm25, f.semantic)))
                        .collect();
                    fused.into_iter().map(|f| (f.id, f.score)).collect()
                }
            };
            ordered.push((m, list));
        }
        timings.fuse_ms = ms(t);

        let t = Instant::now();
        let mut cache: HashMap<String, Option<Loaded>> = HashMap::new();
        let mut rankings = vec![];
        let snippets = if req.details {
            Some(self.engine.bm25.snippets(
                &plan.text,
                req.snippet_chars,
                self.collection.as_deref(),
            )?)
        } else {
            None
        };
        for (m, list) in ordered {
            if !req.details && req.group_by == GroupBy::Note {
                rankings.push(Ranking {
                    mode: m,
                    candidates: list.len(),
                    hits: lean_hits(req, m, &list, &bm25_rank, &sem_rank),
                });
                continue;
            }
            let (candidates, page) = self.page(req, &list, &mut cache, patients.as_ref())?;
            let mut hits = Vec::with_capacity(page.len());
            for (i, (id, score, group)) in page.into_iter().enumerate() {
                let Some(loaded) = cache.get(&id).and_then(|l| l.as_ref()) else {
                    continue;
                };
                let Some(snippets) = snippets.as_ref() else {
                    continue;
                };
                let mut hit =
                    self.hydrate(req, &plan, m, loaded, qv, &bm25_rank, &sem_rank, snippets)?;
                hit.rank = req.offset + i + 1;
                hit.score = score;
                if m == Mode::Hybrid {
                    hit.fused = Some(score);
                    hit.fusion = shares
                        .get(&hit.id)
                        .map(|&(bm25, semantic)| FusedShares { bm25, semantic });
                }
                hit.group = group;
                hits.push(hit);
            }
            rankings.push(Ranking {
                mode: m,
                candidates,
                hits,
            });
        }
        timings.hydrate_ms = ms(t);

        Ok(SearchResponse {
            q: req.q.clone(),
            mode: req.mode,
            k: req.k,
            offset: req.offset,
            filter: req.filter.clone(),
            fusion,
            group_by: req.group_by,
            syntax: req.syntax,
            expansions: plan.expansions,
            notices: plan.notices,
            rankings,
            timings,
        })
    }
}

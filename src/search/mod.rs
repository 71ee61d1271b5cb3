//! Query-time ranking: BM25, semantic and hybrid search over an [`Engine`].
//!
//! A request names a mode; the searcher gathers a candidate list from each retriever it needs
//! (both apply the filters themselves, so a selective filter still fills the page), fuses them
//! by rank ([`rrf`]) or by normalised score ([`score_fusion`]), optionally groups notes by
//! patient, and hydrates the page: every hit keeps each retriever's own rank and score, its
//! best-matching chunk, BM25 term highlights and the best semantic window.
//!
//! The searcher never embeds: the caller passes the query vector (the server batches query
//! embeddings of concurrent requests on one worker; the CLI and evaluation embed directly).

pub mod rrf;
pub mod score_fusion;

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::Filter;
use crate::store::{Chunk, StoredNote};

/// Largest page size.
pub const MAX_K: usize = 1000;
/// Deepest page start.
pub const MAX_OFFSET: usize = 10_000;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Candidates each retriever contributes to a fused ranking (at least; more for deep pages).
/// 50 rather than 100: ranks beyond 50 move a top-10 RRF page very little, and the semantic
/// side is the costliest part of a query (evaluation runs ask for 100 and get 100).
pub const FUSION_DEPTH: usize = 50;
/// A filter passing at most this many notes is searched exactly on the vector side: hnsw's
/// filtered search slows down and loses recall when few points pass (STACK-NOTES: 1% of the
/// points passing took 100 ms against 7 ms brute force).
pub const EXACT_FILTER_LIMIT: usize = 2000;
/// hnsw search breadth floor.
pub const MIN_EF: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Semantic,
    Hybrid,
    /// The three rankings side by side.
    Compare,
}

impl Mode {
    /// Whether this mode needs the query embedded.
    pub fn needs_vector(self) -> bool {
        self != Mode::Bm25
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bm25" | "keyword" => Ok(Mode::Bm25),
            "semantic" | "vector" => Ok(Mode::Semantic),
            "hybrid" => Ok(Mode::Hybrid),
            "compare" => Ok(Mode::Compare),
            other => Err(format!(
                "unknown mode {other:?}: use bm25, semantic, hybrid or compare"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal rank fusion with constant `k`.
    Rrf { k: f32 },
    /// `alpha * semantic + (1 - alpha) * bm25` over min-max normalised scores.
    Weighted { alpha: f32 },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Rrf { k: 60.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Note,
    /// One hit per patient (its best note), with the patient's other matching notes listed.
    Patient,
}

/// A validated search request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchRequest {
    pub q: String,
    pub mode: Mode,
    pub k: usize,
    pub offset: usize,
    pub filter: Filter,
    pub fusion: Fusion,
    pub group_by: GroupBy,
    /// Longest snippet, in characters.
    pub snippet_chars: usize,
    /// Load notes and build snippets for the page (false: ids, ranks and scores only, for
    /// evaluation runs that only need the ranking).
    pub details: bool,
}

impl SearchRequest {
    pub fn new(q: impl Into<String>, mode: Mode, k: usize) -> Self {
        SearchRequest {
            q: q.into(),
            mode,
            k,
            offset: 0,
            filter: Filter::default(),
            fusion: Fusion::default(),
            group_by: GroupBy::Note,
            snippet_chars: 240,
            details: true,
        }
    }

    /// Builds a request from `name=value` parameters (a query string or a flattened JSON
    /// body). Every mistake names its parameter, and unknown parameters are refused so that a
    /// misspelt filter does not silently return unfiltered results.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> std::result::Result<Self, ParamError> {
        let mut req = SearchRequest::new("", Mode::Hybrid, 10);
        let mut q = None;
        let mut fusion = None;
        let mut rrf_k = None;
        let mut alpha = None;
        for (name, value) in params {
            let bad = |message: String| ParamError {
                param: name.to_string(),
                message,
            };
            let v = value.trim();
            match name {
                "q" | "query" => q = Some(value.to_string()),
                "mode" => req.mode = v.parse().map_err(bad)?,
                "k" | "limit" => req.k = parse_num(v, 1, MAX_K).map_err(bad)?,
                "offset" => req.offset = parse_num(v, 0, MAX_OFFSET).map_err(bad)?,
                "note_type" => req.filter.note_type = non_empty(v),
                "specialty" => req.filter.specialty = non_empty(v),
                "patient_id" => req.filter.patient_id = non_empty(v),
                "date_from" | "date_to" => {
                    let d = match non_empty(v) {
                        Some(d) => Some(
                            crate::note::normalize_date(&d)
                                .map_err(|_| bad(format!("{d:?} is not a YYYY-MM-DD date")))?,
                        ),
                        None => None,
                    };
                    if name == "date_from" {
                        req.filter.date_from = d;
                    } else {
                        req.filter.date_to = d;
                    }
                }
                "fusion" => {
                    fusion = Some(match v.to_ascii_lowercase().as_str() {
                        "rrf" => "rrf",
                        "weighted" => "weighted",
                        other => {
                            return Err(bad(format!(
                                "unknown fusion {other:?}: use rrf or weighted"
                            )))
                        }
                    })
                }
                "rrf_k" => {
                    let k: f32 = v
                        .parse()
                        .map_err(|_| bad(format!("{v:?} is not a number")))?;
                    if !(k.is_finite() && k > 0.0 && k <= 1e6) {
                        return Err(bad("must be a number above 0".into()));
                    }
                    rrf_k = Some(k);
                }
                "alpha" => {
                    let a: f32 = v
                        .parse()
                        .map_err(|_| bad(format!("{v:?} is not a number")))?;
                    if !(0.0..=1.0).contains(&a) {
                        return Err(bad("must be between 0 and 1".into()));
                    }
                    alpha = Some(a);
                }
                "group_by" => {
                    req.group_by = match v.to_ascii_lowercase().as_str() {
                        "" | "note" => GroupBy::Note,
                        "patient" => GroupBy::Patient,
                        other => {
                            return Err(bad(format!(
                                "unknown grouping {other:?}: use note or patient"
                            )))
                        }
                    }
                }
                "snippet_chars" => req.snippet_chars = parse_num(v, 20, 2000).map_err(bad)?,
                other => {
                    return Err(ParamError {
                        param: other.to_string(),
                        message: "unknown parameter".into(),
                    })
                }
            }
        }
        req.fusion = match fusion {
            Some("weighted") => Fusion::Weighted {
                alpha: alpha.unwrap_or(0.5),
            },
            _ if alpha.is_some() && rrf_k.is_none() && fusion.is_none() => Fusion::Weighted {
                alpha: alpha.unwrap_or(0.5),
            },
            _ => Fusion::Rrf {
                k: rrf_k.unwrap_or(60.0),
            },
        };
        req.q = q.ok_or_else(|| ParamError {
            param: "q".into(),
            message: "the query is missing".into(),
        })?;
        req.check().map(|_| req)
    }

    /// Checks the invariants `from_params` establishes (for requests built in code).
    pub fn check(&self) -> std::result::Result<(), ParamError> {
        let bad = |param: &str, message: &str| {
            Err(ParamError {
                param: param.into(),
                message: message.into(),
            })
        };
        if self.q.trim().is_empty() {
            return bad("q", "the query is empty");
        }
        if self.q.len() > MAX_QUERY_BYTES {
            return bad(
                "q",
                &format!("the query is longer than {MAX_QUERY_BYTES} bytes"),
            );
        }
        if self.k == 0 || self.k > MAX_K {
            return bad("k", &format!("must be between 1 and {MAX_K}"));
        }
        if self.offset > MAX_OFFSET {
            return bad("offset", &format!("must be at most {MAX_OFFSET}"));
        }
        if let (Some(a), Some(b)) = (&self.filter.date_from, &self.filter.date_to) {
            if a > b {
                return bad("date_from", "date_from is after date_to");
            }
        }
        Ok(())
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn parse_num(v: &str, lo: usize, hi: usize) -> std::result::Result<usize, String> {
    let n: usize = v
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number"))?;
    if n < lo || n > hi {
        return Err(format!("must be between {lo} and {hi}"));
    }
    Ok(n)
}

/// A bad search parameter: which one and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

/// One retriever's view of a hit: its rank in that retriever's candidate list (None when the
/// note was not among them) and its score (computed for the note when it was not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Signal {
    pub rank: Option<usize>,
    pub score: Option<f32>,
}

/// A piece of a snippet; `hl` marks a matched query term.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub text: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hl: bool,
}

/// The chunk (embedded window) of a note that matched best.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkMatch {
    pub index: u32,
    pub char_start: usize,
    pub char_end: usize,
    /// Cosine to the query (None in BM25 mode, where the query is not embedded).
    pub score: Option<f32>,
}

/// The best semantic window: its span in the note and an excerpt of it with the query's
/// terms marked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSnippet {
    pub char_start: usize,
    pub char_end: usize,
    pub segments: Vec<Segment>,
    /// Whether the excerpt is shorter than the window.
    pub truncated: bool,
}

/// Notes of one patient folded into a hit by `group_by=patient`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub patient_id: String,
    pub count: usize,
    /// The patient's matching notes, best first (the hit itself first).
    pub note_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// 1-based position in this ranking (offset included).
    pub rank: usize,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specialty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// The score this ranking sorted by (BM25, cosine or fused).
    pub score: f32,
    pub bm25: Signal,
    pub semantic: Signal,
    /// The fused score (hybrid rankings only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_chunk: Option<ChunkMatch>,
    /// BM25 term highlights in the best fragment of the note.
    pub snippet: Vec<Segment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSnippet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

/// One ranking: a page of hits and how many candidates it was cut from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    pub mode: Mode,
    /// Candidates in this ranking before paging (a lower bound: retrieval stops at its depth).
    pub candidates: usize,
    pub hits: Vec<Hit>,
}

/// Milliseconds per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub embed_ms: f64,
    pub bm25_ms: f64,
    pub semantic_ms: f64,
    pub fuse_ms: f64,
    pub hydrate_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResponse {
    pub q: String,
    pub mode: Mode,
    pub k: usize,
    pub offset: usize,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
    pub fusion: Fusion,
    pub group_by: GroupBy,
    /// One ranking, or three (bm25, semantic, hybrid) for `mode=compare`.
    pub rankings: Vec<Ranking>,
    pub timings: Timings,
}

impl SearchResponse {
    /// The ranking of a mode.
    pub fn ranking(&self, mode: Mode) -> Option<&Ranking> {
        self.rankings.iter().find(|r| r.mode == mode)
    }
}

/// A semantic candidate: a note, its best cosine and the chunk that gave it.
#[derive(Debug, Clone)]
struct SemanticCandidate {
    id: String,
    score: f32,
    chunk: u64,
}

/// Cosine similarity (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Ranks notes of an [`Engine`].
pub struct Searcher<'a> {
    engine: &'a Engine,
    /// hnsw search breadth (raised to the number of chunks asked for).
    pub ef: usize,
    /// Filtered sets of at most this many notes are searched exactly on the vector side.
    pub exact_limit: usize,
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
            ef: MIN_EF,
            exact_limit: EXACT_FILTER_LIMIT,
        }
    }

    /// Runs `req`; `query_vector` is required by every mode but `bm25`.
    pub fn search(
        &self,
        req: &SearchRequest,
        query_vector: Option<&[f32]>,
    ) -> Result<SearchResponse> {
        req.check()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let qv = match (req.mode.needs_vector(), query_vector) {
            (true, None) => {
                return Err(Error::InvalidInput(
                    "this search mode needs the query embedded".into(),
                ))
            }
            (_, v) => v,
        };
        let mut timings = Timings::default();
        let need = req.offset + req.k;
        let depth = match req.group_by {
            // Grouping folds several notes into one hit: look deeper to fill the page.
            GroupBy::Patient => (need * 5).max(FUSION_DEPTH),
            GroupBy::Note => match req.mode {
                Mode::Bm25 | Mode::Semantic => need,
                Mode::Hybrid | Mode::Compare => need.max(FUSION_DEPTH),
            },
        };

        let t = Instant::now();
        let bm25 = self.engine.bm25.search(&req.q, depth, &req.filter)?;
        timings.bm25_ms = ms(t);

        let semantic = match qv {
            Some(v) => {
                let t = Instant::now();
                let s = self.semantic_candidates(v, depth, &req.filter)?;
                timings.semantic_ms = ms(t);
                s
            }
            None => vec![],
        };

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
        for &m in &modes {
            let list: Vec<(String, f32)> = match m {
                Mode::Bm25 => bm25.clone(),
                Mode::Semantic => semantic.iter().map(|c| (c.id.clone(), c.score)).collect(),
                _ => {
                    let sem: Vec<(String, f32)> =
                        semantic.iter().map(|c| (c.id.clone(), c.score)).collect();
                    match req.fusion {
                        Fusion::Rrf { k } => {
                            let a: Vec<String> = bm25.iter().map(|(i, _)| i.clone()).collect();
                            let b: Vec<String> = sem.iter().map(|(i, _)| i.clone()).collect();
                            rrf::fuse(&[&a, &b], k)
                        }
                        Fusion::Weighted { alpha } => score_fusion::fuse(&bm25, &sem, alpha),
                    }
                }
            };
            ordered.push((m, list));
        }
        timings.fuse_ms = ms(t);

        let t = Instant::now();
        let mut cache: HashMap<String, Option<Loaded>> = HashMap::new();
        let mut rankings = vec![];
        let snippets = if req.details {
            Some(self.engine.bm25.snippets(&req.q, req.snippet_chars)?)
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
            let (candidates, page) = self.page(req, &list, &mut cache)?;
            let mut hits = Vec::with_capacity(page.len());
            for (i, (id, score, group)) in page.into_iter().enumerate() {
                let Some(loaded) = cache.get(&id).and_then(|l| l.as_ref()) else {
                    continue;
                };
                let Some(snippets) = snippets.as_ref() else {
                    continue;
                };
                let mut hit = self.hydrate(req, m, loaded, qv, &bm25_rank, &sem_rank, snippets)?;
                hit.rank = req.offset + i + 1;
                hit.score = score;
                if m == Mode::Hybrid {
                    hit.fused = Some(score);
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
            fusion: req.fusion,
            group_by: req.group_by,
            rankings,
            timings,
        })
    }

    /// The ids and scores of the `depth` best semantic notes under `filter`.
    fn semantic_candidates(
        &self,
        qv: &[f32],
        depth: usize,
        filter: &Filter,
    ) -> Result<Vec<SemanticCandidate>> {
        let store = &self.engine.store;
        if !filter.is_empty() {
            let (_, small) = self.engine.bm25.filter_ids(filter, self.exact_limit)?;
            if let Some(ids) = small {
                // Exact search over the few notes that pass.
                let mut out = vec![];
                for id in ids {
                    if let Some((_, chunks)) = store.get_with_chunks(&id)? {
                        if let Some((c, s)) = best_chunk(&chunks, qv) {
                            out.push(SemanticCandidate {
                                id,
                                score: s,
                                chunk: c.id,
                            });
                        }
                    }
                }
                out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
                out.truncate(depth);
                return Ok(out);
            }
        }
        // A note scores by its best chunk, so the first `depth` distinct notes among the
        // nearest chunks are exactly the top `depth` notes. Ask for up to twice as many chunks
        // as notes (hnsw's cost grows with it), and deeper only if they fell on too few notes.
        // Counts from the vector index's live set: the store's are O(n) scans in sled.
        let vectors = &self.engine.vectors;
        let chunks = vectors.len();
        let notes = vectors.note_count().max(1);
        let per_note = (chunks as f64 / notes as f64).ceil().clamp(1.0, 2.0) as usize;
        let mut want = (depth * per_note + 16).min(chunks.max(1));
        // Memoised per request: one store lookup per distinct note the graph visits.
        let passes: std::cell::RefCell<HashMap<String, bool>> = Default::default();
        let keep = |id: &str| -> bool {
            if filter.is_empty() {
                return true;
            }
            if let Some(&p) = passes.borrow().get(id) {
                return p;
            }
            let p = store
                .get(id)
                .ok()
                .flatten()
                .is_some_and(|n| note_passes(&n.note, filter));
            passes.borrow_mut().insert(id.to_string(), p);
            p
        };
        loop {
            let hits = vectors.search(
                qv,
                want,
                self.ef.max(want).max(MIN_EF),
                if filter.is_empty() { None } else { Some(&keep) },
            );
            let mut best: Vec<SemanticCandidate> = vec![];
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for h in &hits {
                match seen.get(&*h.note_id) {
                    Some(&i) => {
                        if h.score > best[i].score {
                            best[i].score = h.score;
                            best[i].chunk = h.chunk_id;
                        }
                    }
                    None => {
                        seen.insert(&h.note_id, best.len());
                        best.push(SemanticCandidate {
                            id: h.note_id.to_string(),
                            score: h.score,
                            chunk: h.chunk_id,
                        });
                    }
                }
            }
            let exhausted = hits.len() < want || want >= chunks;
            if best.len() >= depth || exhausted {
                best.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
                best.truncate(depth);
                return Ok(best);
            }
            want = (want * 2).min(chunks);
        }
    }

    /// Groups (when asked) and cuts the page out of a ranking; loads the page's notes.
    #[allow(clippy::type_complexity)]
    fn page(
        &self,
        req: &SearchRequest,
        list: &[(String, f32)],
        cache: &mut HashMap<String, Option<Loaded>>,
    ) -> Result<(usize, Vec<(String, f32, Option<Group>)>)> {
        let load = |id: &str, cache: &mut HashMap<String, Option<Loaded>>| -> Result<()> {
            if !cache.contains_key(id) {
                let loaded = self
                    .engine
                    .store
                    .get_with_chunks(id)?
                    .map(|(note, chunks)| Loaded { note, chunks });
                cache.insert(id.to_string(), loaded);
            }
            Ok(())
        };
        match req.group_by {
            GroupBy::Note => {
                let page: Vec<(String, f32, Option<Group>)> = list
                    .iter()
                    .skip(req.offset)
                    .take(req.k)
                    .map(|(id, s)| (id.clone(), *s, None))
                    .collect();
                for (id, _, _) in &page {
                    load(id, cache)?;
                }
                Ok((list.len(), page))
            }
            GroupBy::Patient => {
                // The best note of each patient leads its group; notes without a patient stay
                // alone.
                let mut groups: Vec<(String, f32, Vec<String>, Option<String>)> = vec![];
                let mut by_patient: HashMap<String, usize> = HashMap::new();
                for (id, s) in list {
                    load(id, cache)?;
                    let patient = cache
                        .get(id)
                        .and_then(|l| l.as_ref())
                        .and_then(|l| l.note.note.patient_id.clone());
                    match patient.as_ref().and_then(|p| by_patient.get(p)) {
                        Some(&g) => groups[g].2.push(id.clone()),
                        None => {
                            if let Some(p) = &patient {
                                by_patient.insert(p.clone(), groups.len());
                            }
                            groups.push((id.clone(), *s, vec![id.clone()], patient));
                        }
                    }
                }
                let total = groups.len();
                let page = groups
                    .into_iter()
                    .skip(req.offset)
                    .take(req.k)
                    .map(|(id, s, members, patient)| {
                        let group = patient.map(|p| Group {
                            patient_id: p,
                            count: members.len(),
                            note_ids: members,
                        });
                        (id, s, group)
                    })
                    .collect();
                Ok((total, page))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hydrate(
        &self,
        req: &SearchRequest,
        mode: Mode,
        loaded: &Loaded,
        qv: Option<&[f32]>,
        bm25_rank: &HashMap<&str, (usize, f32)>,
        sem_rank: &HashMap<&str, (usize, &SemanticCandidate)>,
        snippets: &crate::index::bm25::Snippets,
    ) -> Result<Hit> {
        let note = &loaded.note.note;
        let text = note.text.as_str();
        let bm25 = match bm25_rank.get(note.id.as_str()) {
            Some(&(rank, score)) => Signal {
                rank: Some(rank),
                score: Some(score),
            },
            None => Signal {
                rank: None,
                score: self.engine.bm25.score_of(&req.q, &note.id)?,
            },
        };
        // The best chunk by cosine when the query is embedded.
        let (semantic, best) = match qv {
            Some(v) => {
                let best = best_chunk(&loaded.chunks, v);
                let rank = sem_rank.get(note.id.as_str()).map(|(r, _)| *r);
                (
                    Signal {
                        rank,
                        score: best.map(|(_, s)| s),
                    },
                    best.map(|(c, s)| (c, Some(s))),
                )
            }
            None => (Signal::default(), None),
        };
        let (fragment, ranges) = snippets.snippet(text);
        let snippet = if fragment.is_empty() {
            vec![Segment {
                text: head_chars(text, req.snippet_chars),
                hl: false,
            }]
        } else {
            segments(&fragment, &ranges)
        };
        // Without a query vector, the best chunk is the one holding the first highlighted term.
        let best = best.or_else(|| {
            let at = text.find(&fragment)? + ranges.first().map_or(0, |r| r.start);
            loaded
                .chunks
                .iter()
                .find(|c| c.start <= at && at < c.end)
                .map(|c| (c, None))
        });
        let window = match (mode, best) {
            (Mode::Bm25, _) | (_, None) => None,
            (_, Some((c, _))) => Some(window_snippet(req, text, c, snippets)),
        };
        Ok(Hit {
            rank: 0,
            id: note.id.clone(),
            title: note.title.clone(),
            patient_id: note.patient_id.clone(),
            note_type: note.note_type.clone(),
            specialty: note.specialty.clone(),
            date: note.date.clone(),
            score: 0.0,
            bm25,
            semantic,
            fused: None,
            best_chunk: best.map(|(c, s)| ChunkMatch {
                index: c.index,
                char_start: c.char_start,
                char_end: c.char_end,
                score: s,
            }),
            snippet,
            window,
            group: None,
        })
    }
}

/// The best-matching excerpt of a window, with the query's terms marked.
fn window_snippet(
    req: &SearchRequest,
    text: &str,
    c: &Chunk,
    snippets: &crate::index::bm25::Snippets,
) -> WindowSnippet {
    // Windows start at token boundaries, which may fall inside a word ("...rial
    // fibrillation"): show the excerpt from the start of that word.
    let start = text
        .get(..c.start)
        .and_then(|before| {
            let word = before.len()
                - before
                    .chars()
                    .rev()
                    .take_while(|ch| !ch.is_whitespace())
                    .map(char::len_utf8)
                    .sum::<usize>();
            (c.start - word <= 24).then_some(word)
        })
        .unwrap_or(c.start);
    let window = text.get(start..c.end).unwrap_or("");
    let (fragment, ranges) = snippets.snippet(window);
    let (segments, shown) = if fragment.is_empty() {
        let head = head_chars(window, req.snippet_chars);
        let n = head.chars().count();
        (
            vec![Segment {
                text: head,
                hl: false,
            }],
            n,
        )
    } else {
        let n = fragment.chars().count();
        (segments(&fragment, &ranges), n)
    };
    WindowSnippet {
        char_start: c.char_start,
        char_end: c.char_end,
        segments,
        truncated: shown < c.char_end - c.char_start,
    }
}

/// Hits with ranks and scores only (no note loaded): what an evaluation run needs.
fn lean_hits(
    req: &SearchRequest,
    mode: Mode,
    list: &[(String, f32)],
    bm25_rank: &HashMap<&str, (usize, f32)>,
    sem_rank: &HashMap<&str, (usize, &SemanticCandidate)>,
) -> Vec<Hit> {
    list.iter()
        .enumerate()
        .skip(req.offset)
        .take(req.k)
        .map(|(i, (id, score))| Hit {
            rank: i + 1,
            id: id.clone(),
            title: None,
            patient_id: None,
            note_type: None,
            specialty: None,
            date: None,
            score: *score,
            bm25: bm25_rank
                .get(id.as_str())
                .map_or(Signal::default(), |(r, s)| Signal {
                    rank: Some(*r),
                    score: Some(*s),
                }),
            semantic: sem_rank
                .get(id.as_str())
                .map_or(Signal::default(), |(r, c)| Signal {
                    rank: Some(*r),
                    score: Some(c.score),
                }),
            fused: (mode == Mode::Hybrid).then_some(*score),
            best_chunk: None,
            snippet: vec![],
            window: None,
            group: None,
        })
        .collect()
}

/// Whether a note's metadata passes a filter (the vector side's check on large filtered sets;
/// the BM25 side filters inside tantivy with the same case-insensitive rules).
pub fn note_passes(note: &crate::note::Note, f: &Filter) -> bool {
    let eq = |want: &Option<String>, have: &Option<String>| match want {
        None => true,
        Some(w) => have
            .as_deref()
            .is_some_and(|h| h.trim().eq_ignore_ascii_case(w.trim())),
    };
    if !(eq(&f.note_type, &note.note_type)
        && eq(&f.specialty, &note.specialty)
        && eq(&f.patient_id, &note.patient_id))
    {
        return false;
    }
    if f.date_from.is_none() && f.date_to.is_none() {
        return true;
    }
    let Some(d) = note.date_key() else {
        return false;
    };
    let bound = |s: &Option<String>| s.as_deref().and_then(|v| crate::note::date_key(v).ok());
    bound(&f.date_from).is_none_or(|lo| d >= lo) && bound(&f.date_to).is_none_or(|hi| d <= hi)
}

fn best_chunk<'c>(chunks: &'c [Chunk], qv: &[f32]) -> Option<(&'c Chunk, f32)> {
    chunks
        .iter()
        .map(|c| (c, cosine(&c.vector, qv)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// At most `n` characters from the start of `text`, cut at a word boundary when one is near.
fn head_chars(text: &str, n: usize) -> String {
    let end = text.char_indices().nth(n).map_or(text.len(), |(i, _)| i);
    let mut cut = &text[..end];
    if end < text.len() {
        if let Some(space) = cut.rfind(char::is_whitespace) {
            if space > end / 2 {
                cut = &cut[..space];
            }
        }
    }
    cut.trim().to_string()
}

/// A fragment split at its highlighted byte ranges.
pub fn segments(fragment: &str, ranges: &[std::ops::Range<usize>]) -> Vec<Segment> {
    let mut out = vec![];
    let mut at = 0;
    for r in ranges {
        let (s, e) = (r.start.max(at), r.end.min(fragment.len()));
        if s >= e || !fragment.is_char_boundary(s) || !fragment.is_char_boundary(e) {
            continue;
        }
        if s > at {
            out.push(Segment {
                text: fragment[at..s].to_string(),
                hl: false,
            });
        }
        out.push(Segment {
            text: fragment[s..e].to_string(),
            hl: true,
        });
        at = e;
    }
    if at < fragment.len() {
        out.push(Segment {
            text: fragment[at..].to_string(),
            hl: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        v: &[(&'static str, &'static str)],
    ) -> std::result::Result<SearchRequest, ParamError> {
        SearchRequest::from_params(v.iter().copied())
    }

    #[test]
    fn parameters_default_to_hybrid_rrf_top_ten() {
        let r = params(&[("q", "chest pain")]).unwrap();
        assert_eq!(r.mode, Mode::Hybrid);
        assert_eq!(r.k, 10);
        assert_eq!(r.fusion, Fusion::Rrf { k: 60.0 });
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (p, v) in [
            ("k", "0"),
            ("k", "ten"),
            ("k", "1001"),
            ("offset", "-1"),
            ("mode", "fuzzy"),
            ("fusion", "max"),
            ("alpha", "1.5"),
            ("rrf_k", "0"),
            ("rrf_k", "NaN"),
            ("date_from", "yesterday"),
            ("group_by", "ward"),
            ("colour", "red"),
        ] {
            let e = params(&[("q", "x"), (p, v)]).unwrap_err();
            assert_eq!(e.param, p, "{p}={v}");
        }
        assert_eq!(params(&[]).unwrap_err().param, "q");
        assert_eq!(params(&[("q", "  ")]).unwrap_err().param, "q");
        let e = params(&[
            ("q", "x"),
            ("date_from", "2024-02-01"),
            ("date_to", "2024-01-01"),
        ]);
        assert_eq!(e.unwrap_err().param, "date_from");
    }

    #[test]
    fn weighted_fusion_takes_alpha() {
        let r = params(&[("q", "x"), ("fusion", "weighted"), ("alpha", "0.3")]).unwrap();
        assert_eq!(r.fusion, Fusion::Weighted { alpha: 0.3 });
    }

    #[test]
    fn segments_mark_highlights_and_keep_all_text() {
        let s = segments("the chest pain was", &[4..9, 10..14]);
        let joined: String = s.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(joined, "the chest pain was");
        assert!(s[1].hl && s[3].hl && !s[0].hl && !s[2].hl);
    }

    #[test]
    fn metadata_filters_are_case_insensitive_and_dates_inclusive() {
        let mut n = crate::note::Note::new("a", "t");
        n.specialty = Some("Cardiology".into());
        n.date = Some("2024-03-05".into());
        let f = Filter {
            specialty: Some("cardiology".into()),
            date_from: Some("2024-03-05".into()),
            date_to: Some("2024-03-05".into()),
            ..Default::default()
        };
        assert!(note_passes(&n, &f));
        let f2 = Filter {
            date_to: Some("2024-03-04".into()),
            ..Default::default()
        };
        assert!(!note_passes(&n, &f2));
    }
}

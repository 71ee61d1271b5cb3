//! One search over several data directories (shards), ranking exactly as one directory
//! holding all their notes would.
//!
//! A router (`python -m clinsearch.ray serve`) runs a request in four steps, each a call to
//! every shard, and adds up or merges what they answer:
//!
//! 1. [`Searcher::shard_cooccurrence`]: the counts abbreviation expansion reads of the
//!    collection (which senses co-occur with the query's words), from each shard; summed.
//!    Skipped when the query asks the collection nothing ([`asks_collection`]).
//! 2. [`Searcher::shard_statistics`]: with those sums set as the searcher's
//!    [`Searcher::collection`], each shard expands the query as one collection would and
//!    answers the BM25 statistics of its terms; summed ([`CollectionStats::sum`]) together
//!    with step 1's sums (which step 2 does not repeat).
//! 3. [`Searcher::shard_candidates`]: each shard's BM25 and semantic candidates, BM25 scored
//!    with the summed statistics, so scores from different shards compare; merged by score
//!    ([`Candidates::merge`]). A note lives on one shard, so the merged lists are the lists a
//!    single directory gives (the vector side up to its approximate index).
//! 4. [`Searcher::search_merged`]: each shard fuses the merged lists (every shard computes
//!    the same fusion of the same lists), pages and groups them, and hydrates the hits of the
//!    notes it holds; the router puts the hits together by rank.
//!
//! Ties are ordered by note id on both sides, never by a note's place in an index, so the
//! order does not depend on which shard holds a note.

use serde::{Deserialize, Serialize};

use super::retrieve::SemanticCandidate;
use super::{Retrieved, SearchRequest, SearchResponse, Searcher, Timings};
use crate::error::Result;
use crate::index::collection_stats::RecordingCooccurrence;
use crate::index::CollectionStats;

/// One candidate of one retriever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    /// The retriever's score of the note (BM25 with the collection's statistics; the
    /// semantic note score).
    pub score: f32,
    /// Semantic candidates: the best window's cosine, which chose the candidate before any
    /// note-level rescoring (`note_score`, the affirmed-only demotion) reordered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_pass: Option<f32>,
    /// The note's patient, sent when the request groups by patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
}

/// Each retriever's candidates, best first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Candidates {
    /// How many candidates each retriever contributes to the ranking (the same for every
    /// shard: it follows from the request).
    pub depth: usize,
    pub bm25: Vec<Candidate>,
    pub semantic: Vec<Candidate>,
}

fn by_score(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))
}

/// BM25's order ([`crate::index::bm25::rank_key`]: last-bit differences are ties).
fn by_bm25(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    use crate::index::bm25::rank_key;
    rank_key(b.score)
        .total_cmp(&rank_key(a.score))
        .then_with(|| a.id.cmp(&b.id))
}

impl Candidates {
    /// The candidates of the union of the shards that gave `parts`: each list by score (ties
    /// by id; BM25 scores equal to [`crate::index::bm25::rank_key`] tie), cut at the depth.
    /// The semantic list is chosen by the first-pass cosine and then ordered by the note
    /// score, as one directory does it.
    pub fn merge(parts: Vec<Candidates>) -> Candidates {
        let depth = parts.iter().map(|p| p.depth).max().unwrap_or(0);
        let mut bm25 = vec![];
        let mut semantic = vec![];
        for p in parts {
            bm25.extend(p.bm25);
            semantic.extend(p.semantic);
        }
        bm25.sort_by(by_bm25);
        bm25.truncate(depth);
        semantic.sort_by(|a, b| {
            let (fa, fb) = (
                a.first_pass.unwrap_or(a.score),
                b.first_pass.unwrap_or(b.score),
            );
            fb.total_cmp(&fa).then_with(|| a.id.cmp(&b.id))
        });
        semantic.truncate(depth);
        semantic.sort_by(by_score);
        Candidates {
            depth,
            bm25,
            semantic,
        }
    }
}

/// Whether step 1 is needed for `req`: whether its abbreviation expansion asks the
/// collection anything (an ambiguous abbreviation whose senses the query's words choose
/// among). What it asks depends on the query and the dictionary only, never on the answers,
/// so a router can skip step 1 (a round trip to every shard) for most queries.
pub fn asks_collection(req: &SearchRequest) -> Result<bool> {
    struct Nothing;
    impl crate::clinical::abbrev::Cooccurrence for Nothing {
        fn notes_with_all(&self, _: &[&str]) -> u64 {
            0
        }
    }
    if !req.expand {
        return Ok(false);
    }
    let text = req
        .text_query()
        .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))?;
    let rec = RecordingCooccurrence {
        inner: &Nothing,
        asked: Default::default(),
    };
    crate::clinical::abbrev::Dictionary::builtin().expand(&text.positive_text(), Some(&rec));
    Ok(!rec.asked.into_inner().is_empty())
}

impl Searcher<'_> {
    /// Step 1: this shard's answers to every question `req`'s abbreviation expansion asks of
    /// the collection (only [`CollectionStats::cooccurrence`] is filled; empty when the query
    /// has no ambiguous abbreviation or does not expand).
    pub fn shard_cooccurrence(&self, req: &SearchRequest) -> Result<CollectionStats> {
        req.check()
            .map_err(|e| crate::error::Error::InvalidInput(e.to_string()))?;
        let rec = RecordingCooccurrence {
            inner: &self.engine.bm25,
            asked: Default::default(),
        };
        self.expanded_query_with(req, &rec)?;
        Ok(CollectionStats {
            cooccurrence: rec.asked.into_inner(),
            ..Default::default()
        })
    }

    /// Step 2: this shard's BM25 statistics of every term `req` searches or marks in
    /// snippets, the query expanded with the collection's co-occurrence counts (set
    /// [`Searcher::collection`] to step 1's sums first). The co-occurrence counts are not
    /// repeated: the router adds step 1's sums to the sum of these.
    pub fn shard_statistics(&self, req: &SearchRequest) -> Result<CollectionStats> {
        // The terms are the same in every mode, and BM25 needs no query vector.
        let bm25 = SearchRequest {
            mode: super::Mode::Bm25,
            ..req.clone()
        };
        let p = self.prepare(&bm25, None)?;
        let snippets = self.engine.bm25.snippet_query(&p.plan.text)?;
        self.engine.bm25.statistics(&[&p.plan.built, &snippets])
    }

    /// Step 3: this shard's candidates for `req`, BM25 scored with the collection's
    /// statistics ([`Searcher::collection`], step 2's sums).
    pub fn shard_candidates(
        &self,
        req: &SearchRequest,
        query_vector: Option<&[f32]>,
    ) -> Result<Candidates> {
        let p = self.prepare(req, query_vector)?;
        let got = self.retrieve(&p, query_vector, &mut Timings::default())?;
        let grouped = p.req.group_by == super::GroupBy::Patient;
        let patient = |id: &str| -> Result<Option<String>> {
            if !grouped {
                return Ok(None);
            }
            Ok(self
                .engine
                .store
                .get(id)?
                .and_then(|n| n.note.patient_id.clone()))
        };
        let mut out = Candidates {
            depth: p.depth,
            ..Default::default()
        };
        for (id, score) in &got.bm25 {
            out.bm25.push(Candidate {
                id: id.clone(),
                score: *score,
                first_pass: None,
                patient_id: patient(id)?,
            });
        }
        for c in &got.semantic {
            out.semantic.push(Candidate {
                id: c.id.clone(),
                score: c.score,
                // Sent only where rescoring moved the score away from it.
                first_pass: (c.first != c.score).then_some(c.first),
                patient_id: patient(&c.id)?,
            });
        }
        Ok(out)
    }

    /// Step 4: the reply to `req` over the merged candidates of every shard, with hits only
    /// for the notes this shard holds (each at its rank in the whole collection).
    pub fn search_merged(
        &self,
        req: &SearchRequest,
        query_vector: Option<&[f32]>,
        merged: &Candidates,
    ) -> Result<SearchResponse> {
        let p = self.prepare(req, query_vector)?;
        let grouped = p.req.group_by == super::GroupBy::Patient;
        let patients = grouped.then(|| {
            merged
                .bm25
                .iter()
                .chain(&merged.semantic)
                .map(|c| (c.id.clone(), c.patient_id.clone()))
                .collect()
        });
        let got = Retrieved {
            bm25: merged
                .bm25
                .iter()
                .map(|c| (c.id.clone(), c.score))
                .collect(),
            semantic: if query_vector.is_some() {
                merged
                    .semantic
                    .iter()
                    .map(|c| SemanticCandidate {
                        id: c.id.clone(),
                        score: c.score,
                        first: c.first_pass.unwrap_or(c.score),
                        chunk: 0,
                    })
                    .collect()
            } else {
                vec![]
            },
            patients,
        };
        self.respond(p, query_vector, got, Timings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, score: f32) -> Candidate {
        Candidate {
            id: id.into(),
            score,
            first_pass: None,
            patient_id: None,
        }
    }

    #[test]
    fn merging_orders_by_score_then_id_and_cuts_at_the_depth() {
        let a = Candidates {
            depth: 3,
            bm25: vec![c("a1", 5.0), c("a2", 2.0), c("a3", 1.0)],
            semantic: vec![],
        };
        let b = Candidates {
            depth: 3,
            bm25: vec![c("b1", 4.0), c("b0", 2.0)],
            semantic: vec![],
        };
        let m = Candidates::merge(vec![a, b]);
        let ids: Vec<&str> = m.bm25.iter().map(|c| c.id.as_str()).collect();
        // a2 and b0 tie at 2.0: the id orders them, and the cut keeps a2.
        assert_eq!(ids, ["a1", "b1", "a2"]);
        // The same when the tie straddles shards the other way round.
        let m2 = Candidates::merge(vec![
            Candidates {
                depth: 3,
                bm25: vec![c("a1", 5.0), c("a2", 2.0)],
                semantic: vec![],
            },
            Candidates {
                depth: 3,
                bm25: vec![c("b1", 4.0), c("a0", 2.0)],
                semantic: vec![],
            },
        ]);
        let ids: Vec<&str> = m2.bm25.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1", "a0"]);
    }

    #[test]
    fn semantic_candidates_are_chosen_by_first_pass_and_ordered_by_note_score() {
        let s = |id: &str, first: f32, score: f32| Candidate {
            first_pass: Some(first),
            ..c(id, score)
        };
        let m = Candidates::merge(vec![
            Candidates {
                depth: 2,
                bm25: vec![],
                semantic: vec![s("x", 0.9, 0.3), s("y", 0.5, 0.8)],
            },
            Candidates {
                depth: 2,
                bm25: vec![],
                semantic: vec![s("z", 0.8, 0.7)],
            },
        ]);
        // x and z have the best first passes; then the note score orders them.
        let ids: Vec<&str> = m.semantic.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["z", "x"]);
    }
}

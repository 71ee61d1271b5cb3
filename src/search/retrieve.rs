//! Candidates from the vector side (hnsw, or exact over a small filtered set) and the
//! metadata checks both retrievers share; the BM25 side is the index's own
//! ([`crate::index::bm25`]).

use super::*;
use crate::index::Filter;
use crate::store::Chunk;

/// A semantic candidate: a note, its best cosine and the chunk that gave it.
#[derive(Debug, Clone)]
pub(super) struct SemanticCandidate {
    pub(super) id: String,
    /// The note's score: `first`, unless note-level rescoring changed it.
    pub(super) score: f32,
    /// The best window's cosine, which chose the candidate (a sharded search merges by it).
    pub(super) first: f32,
    pub(super) chunk: u64,
}

impl SemanticCandidate {
    /// A note scored exactly by its best window; None for a note without windows.
    fn best_of(id: String, chunks: &[Chunk], qv: &[f32]) -> Option<SemanticCandidate> {
        best_chunk(chunks, qv).map(|(c, score)| SemanticCandidate {
            id,
            score,
            first: score,
            chunk: c.id,
        })
    }
}

/// The `depth` best candidates, by score (ties by id).
fn best_first(mut out: Vec<SemanticCandidate>, depth: usize) -> Vec<SemanticCandidate> {
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    out.truncate(depth);
    out
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

impl Searcher<'_> {
    /// The ids and scores of the `depth` best semantic notes under `filter`.
    pub(super) fn semantic_candidates(
        &self,
        qv: &[f32],
        depth: usize,
        filter: &Filter,
    ) -> Result<Vec<SemanticCandidate>> {
        let store = &self.engine.store;
        if self.ef >= self.engine.vectors.len() {
            return self.exhaustive_candidates(qv, depth, filter);
        }
        if !filter.is_empty() {
            let (_, small) = self.engine.bm25.filter_ids(filter, self.exact_limit)?;
            if let Some(ids) = small {
                // Exact search over the few notes that pass.
                let mut out = vec![];
                for id in ids {
                    if let Some((_, chunks)) = store.get_with_chunks(&id)? {
                        out.extend(SemanticCandidate::best_of(id, &chunks, qv));
                    }
                }
                return Ok(best_first(out, depth));
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
                .is_some_and(|n| filter.admits_stored(&n));
            passes.borrow_mut().insert(id.to_string(), p);
            p
        };
        loop {
            let hits = vectors.search_rescored(
                store,
                qv,
                want,
                self.ef.max(want),
                if filter.is_empty() { None } else { Some(&keep) },
            )?;
            let mut best: Vec<SemanticCandidate> = vec![];
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for h in &hits {
                match seen.get(&*h.note_id) {
                    Some(&i) => {
                        if h.score > best[i].score {
                            best[i].score = h.score;
                            best[i].first = h.score;
                            best[i].chunk = h.chunk_id;
                        }
                    }
                    None => {
                        seen.insert(&h.note_id, best.len());
                        best.push(SemanticCandidate {
                            id: h.note_id.to_string(),
                            score: h.score,
                            first: h.score,
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
}

impl Searcher<'_> {
    /// Every stored note's best window, scored exactly: what a search breadth (`ef`) of at
    /// least the number of chunks asks for. hnsw does not get there by itself: points with
    /// identical vectors (boilerplate windows) can be unreachable in its graph however wide
    /// the search.
    fn exhaustive_candidates(
        &self,
        qv: &[f32],
        depth: usize,
        filter: &Filter,
    ) -> Result<Vec<SemanticCandidate>> {
        let store = &self.engine.store;
        let mut out = vec![];
        for note in store.notes() {
            let note = note?;
            if !filter.is_empty() && !filter.admits_stored(&note) {
                continue;
            }
            let chunks = store.chunks_of(&note)?;
            out.extend(SemanticCandidate::best_of(note.note.id, &chunks, qv));
        }
        Ok(best_first(out, depth))
    }
}

/// Whether a note's metadata passes a filter (the vector side's check on large filtered sets;
/// the BM25 side filters inside tantivy with the same case-insensitive rules).
/// A semantic score is multiplied by this when its note's best window matches the query only
/// in negated or family mentions (`assertion=affirmed`). Chosen on the negation query set of
/// sample_corpus (README, "Negation and other assertions").
pub const UNAFFIRMED_DEMOTION: f32 = 0.5;

impl Searcher<'_> {
    /// Re-scores the candidate notes from all their windows' cosines as `how` says (the
    /// candidates are those whose best window the index found), then re-sorts them.
    pub(super) fn rescore_notes(
        &self,
        qv: &[f32],
        how: super::NoteScore,
        cands: &mut [SemanticCandidate],
    ) -> Result<()> {
        use super::NoteScore;
        for c in cands.iter_mut() {
            let Some((_, chunks)) = self.engine.store.get_with_chunks(&c.id)? else {
                continue;
            };
            let mut scored: Vec<(u32, f32)> = chunks
                .iter()
                .map(|k| (k.index, cosine(&k.vector, qv)))
                .collect();
            if scored.is_empty() {
                continue;
            }
            let first = scored
                .iter()
                .min_by_key(|(i, _)| *i)
                .map_or(0.0, |(_, s)| *s);
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            let best = scored[0].1;
            c.score = match how {
                NoteScore::Max => best,
                NoteScore::First => first,
                NoteScore::MaxFirst => (best + 0.1 * first) / 1.1,
                NoteScore::Top2 => scored.get(1).map_or(best, |(_, s2)| (best + s2) / 2.0),
            };
        }
        cands.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(())
    }

    /// Demotes, then re-sorts, semantic candidates whose best window says the query's words
    /// only where they are negated or about the family. In the window the sentence holding
    /// the most query words (title, expansions included; common words not) is taken as the
    /// one that matched; when every query word there lies in a negated or family scope, the
    /// cosine is multiplied by [`UNAFFIRMED_DEMOTION`]. A window sharing no word with the
    /// query is left alone: nothing says what in it matched. Returns how many were demoted.
    pub(super) fn demote_unaffirmed(
        &self,
        query: &crate::index::query::TextQuery,
        cands: &mut [SemanticCandidate],
    ) -> Result<usize> {
        use crate::clinical::assertion::{annotate, status_at, Status};
        let terms: std::collections::HashSet<String> =
            crate::clinical::words(&query.positive_text())
                .iter()
                .map(|w| w.text.to_lowercase())
                .filter(|w| !crate::clinical::is_stopword(w))
                .collect();
        if terms.is_empty() {
            return Ok(0);
        }
        let mut demoted = 0;
        for c in cands.iter_mut() {
            let Some((stored, chunks)) = self.engine.store.get_with_chunks(&c.id)? else {
                continue;
            };
            let Some(chunk) = chunks.iter().find(|k| k.id == c.chunk) else {
                continue;
            };
            let text = &stored.note.text;
            let ann = annotate(text);
            // Character offset of every byte offset that starts a word.
            let char_at = |b: usize| text[..b].chars().count();
            let hits: Vec<(usize, usize)> = crate::clinical::words(text)
                .iter()
                .filter(|w| w.start >= chunk.start && w.end <= chunk.end)
                .filter(|w| terms.contains(&w.text.to_lowercase()))
                .map(|w| (char_at(w.start), char_at(w.end)))
                .collect();
            let best = ann
                .sentences
                .iter()
                .map(|&(s, e)| {
                    let inside: Vec<&(usize, usize)> =
                        hits.iter().filter(|h| h.0 >= s && h.1 <= e).collect();
                    (inside.len(), inside)
                })
                .filter(|(n, _)| *n > 0)
                .max_by_key(|(n, _)| *n);
            let Some((_, inside)) = best else {
                continue;
            };
            let unaffirmed = inside.iter().all(|&&(s, e)| {
                matches!(
                    status_at(&ann, s, e),
                    Some(Status::Negated | Status::Family)
                )
            });
            if unaffirmed {
                c.score *= UNAFFIRMED_DEMOTION;
                demoted += 1;
            }
        }
        cands.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(demoted)
    }
}

pub(super) fn best_chunk<'c>(chunks: &'c [Chunk], qv: &[f32]) -> Option<(&'c Chunk, f32)> {
    chunks
        .iter()
        .map(|c| (c, cosine(&c.vector, qv)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(f.admits(&n));
        let f2 = Filter {
            date_to: Some("2024-03-04".into()),
            ..Default::default()
        };
        assert!(!f2.admits(&n));
    }
}

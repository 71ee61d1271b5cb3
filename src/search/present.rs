//! Turning a ranking into a page: grouping by patient, loading the page's notes once, and
//! the snippets, term highlights and best windows each hit shows.

use super::*;

impl Searcher<'_> {
    /// Groups (when asked) and cuts the page out of a ranking; loads the page's notes.
    #[allow(clippy::type_complexity)]
    pub(super) fn page(
        &self,
        req: &SearchRequest,
        list: &[(String, f32)],
        cache: &mut HashMap<String, Option<Loaded>>,
        patients: Option<&HashMap<String, Option<String>>>,
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
                    // Candidates from shards name their patients: their notes may live on
                    // another shard.
                    let patient = match patients {
                        Some(known) => known.get(id).cloned().flatten(),
                        None => {
                            load(id, cache)?;
                            cache
                                .get(id)
                                .and_then(|l| l.as_ref())
                                .and_then(|l| l.note.note.patient_id.clone())
                        }
                    };
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
                let page: Vec<_> = groups
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
                for (id, _, _) in &page {
                    load(id, cache)?;
                }
                Ok((total, page))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn hydrate(
        &self,
        req: &SearchRequest,
        plan: &Plan,
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
                score: self.engine.bm25.score_of(&plan.built, &note.id)?,
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
        let assertion = snippet_status(&loaded.note, &fragment, &ranges);
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
            fusion: None,
            best_chunk: best.map(|(c, s)| ChunkMatch {
                index: c.index,
                char_start: c.char_start,
                char_end: c.char_end,
                score: s,
            }),
            snippet,
            assertion,
            window,
            group: None,
            entities: super::response::EntityChip::of(&loaded.note),
        })
    }
}

/// The assertion status of a snippet's highlighted matches: None when any of them is
/// affirmed (or none is highlighted); else the strongest status among them.
fn snippet_status(
    stored: &crate::store::StoredNote,
    fragment: &str,
    ranges: &[std::ops::Range<usize>],
) -> Option<crate::clinical::assertion::Status> {
    let text = &stored.note.text;
    let base = text
        .find(fragment)
        .filter(|_| !fragment.is_empty() && !ranges.is_empty())?;
    let ann = stored.annotation();
    let mut worst = None;
    for r in ranges {
        let s = text[..base + r.start].chars().count();
        let e = s + text[base + r.start..base + r.end].chars().count();
        let st = crate::clinical::assertion::status_at(&ann, s, e)?;
        if st.is_affirmed() {
            return None;
        }
        worst = Some(worst.map_or(st, |w: crate::clinical::assertion::Status| w.min(st)));
    }
    worst
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
pub(super) fn lean_hits(
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
            fusion: None,
            best_chunk: None,
            snippet: vec![],
            assertion: None,
            window: None,
            group: None,
            entities: vec![],
        })
        .collect()
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

    #[test]
    fn segments_mark_highlights_and_keep_all_text() {
        let s = segments("the chest pain was", &[4..9, 10..14]);
        let joined: String = s.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(joined, "the chest pain was");
        assert!(s[1].hl && s[3].hl && !s[0].hl && !s[2].hl);
    }
}

//! What a search answers: rankings of hits, each with every retriever's rank and score, its
//! best chunk, highlighted snippet and best semantic window.

use serde::Serialize;

use super::*;

/// One retriever's view of a hit: its rank in that retriever's candidate list (None when the
/// note was not among them) and its score (computed for the note when it was not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Signal {
    pub rank: Option<usize>,
    pub score: Option<f32>,
}

/// A piece of a snippet; `hl` marks a matched query term.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Segment {
    pub text: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub hl: bool,
}

/// The chunk (embedded window) of a note that matched best.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChunkMatch {
    pub index: u32,
    pub char_start: usize,
    pub char_end: usize,
    /// Cosine to the query (None in BM25 mode, where the query is not embedded).
    pub score: Option<f32>,
}

/// The best semantic window: its span in the note and an excerpt of it with the query's
/// terms marked.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowSnippet {
    pub char_start: usize,
    pub char_end: usize,
    pub segments: Vec<Segment>,
    /// Whether the excerpt is shorter than the window.
    pub truncated: bool,
}

/// Notes of one patient folded into a hit by `group_by=patient`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Group {
    pub patient_id: String,
    pub count: usize,
    /// The patient's matching notes, best first (the hit itself first).
    pub note_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    /// What each retriever added to the fused score (hybrid rankings only; they sum to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<FusedShares>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_chunk: Option<ChunkMatch>,
    /// BM25 term highlights in the best fragment of the note.
    pub snippet: Vec<Segment>,
    /// The assertion status of the snippet's matches: null when one of them is affirmed
    /// (or nothing is highlighted), else the strongest of theirs (`negated`, `family`, ...).
    pub assertion: Option<crate::clinical::assertion::Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSnippet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    /// The note's distinct named entities (with a tagger), for chips and the entity filter.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub entities: Vec<EntityChip>,
}

/// One distinct entity of a note: type, normalised value, and whether any mention of it is
/// affirmed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EntityChip {
    #[serde(rename = "type")]
    pub entity_type: String,
    pub value: String,
    pub affirmed: bool,
}

impl EntityChip {
    /// The distinct entities of a stored note, in order of first mention.
    pub fn of(note: &crate::store::StoredNote) -> Vec<EntityChip> {
        let mut out: Vec<EntityChip> = vec![];
        for e in &note.entities {
            let ty = e.entity_type.to_lowercase();
            match out
                .iter_mut()
                .find(|c| c.entity_type == ty && c.value == e.value)
            {
                Some(c) => c.affirmed |= e.affirmed(),
                None => out.push(EntityChip {
                    entity_type: ty,
                    value: e.value.clone(),
                    affirmed: e.affirmed(),
                }),
            }
        }
        out
    }
}

/// Each retriever's share of a fused score, after its normalisation and weight.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FusedShares {
    pub bm25: f32,
    pub semantic: f32,
}

/// One ranking: a page of hits and how many candidates it was cut from.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Ranking {
    pub mode: Mode,
    /// Candidates in this ranking before paging (a lower bound: retrieval stops at its depth).
    pub candidates: usize,
    pub hits: Vec<Hit>,
}

/// Milliseconds per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub embed_ms: f64,
    pub bm25_ms: f64,
    pub semantic_ms: f64,
    pub fuse_ms: f64,
    pub hydrate_ms: f64,
}

/// An expansion the search applied.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AppliedExpansion {
    /// The words of the query, as written.
    pub from: String,
    /// What they also searched.
    pub to: Vec<String>,
    /// `abbreviation` (expanded) or `long_form` (abbreviated).
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub q: String,
    pub mode: Mode,
    pub k: usize,
    pub offset: usize,
    #[serde(skip_serializing_if = "Filter::is_empty")]
    #[schema(required = false)]
    pub filter: Filter,
    pub fusion: Fusion,
    pub group_by: GroupBy,
    pub syntax: crate::index::query::Syntax,
    /// What the query also searched: abbreviations expanded and long forms abbreviated
    /// (`{"from": "SOB", "to": ["shortness of breath"]}`); empty with `expand=false`.
    pub expansions: Vec<AppliedExpansion>,
    /// Things the user should know about how the query was read (terms over the cap).
    pub notices: Vec<String>,
    /// One ranking, or three (bm25, semantic, hybrid) for `mode=compare`.
    pub rankings: Vec<Ranking>,
    pub timings: Timings,
}

impl SearchResponse {
    /// The ranking of a mode.
    pub fn ranking(&self, mode: Mode) -> Option<&Ranking> {
        self.rankings.iter().find(|r| r.mode == mode)
    }

    /// Every note this reply shows (hits, and the notes folded into their patient groups)
    /// and every patient, each once in order of first appearance: what the access audit
    /// records of a search.
    pub fn disclosed(&self) -> (Vec<String>, Vec<String>) {
        let (mut notes, mut patients): (Vec<String>, Vec<String>) = (vec![], vec![]);
        let mut add = |note: &str, patient: Option<&str>| {
            if !notes.iter().any(|n| n == note) {
                notes.push(note.to_string());
            }
            if let Some(p) = patient {
                if !patients.iter().any(|x| x == p) {
                    patients.push(p.to_string());
                }
            }
        };
        for r in &self.rankings {
            for h in &r.hits {
                add(&h.id, h.patient_id.as_deref());
                if let Some(g) = &h.group {
                    for n in &g.note_ids {
                        add(n, Some(&g.patient_id));
                    }
                }
            }
        }
        (notes, patients)
    }
}

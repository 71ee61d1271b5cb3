//! The derived indexes: BM25 over note text (tantivy) and nearest neighbours over chunk
//! vectors (hnsw_rs). Both are rebuilt from the store when missing or corrupt.

pub mod bm25;
pub mod vectors;

use serde::{Deserialize, Serialize};

/// Metadata filters applied inside both retrievers. String fields match case-insensitively;
/// dates are inclusive `YYYY-MM-DD` bounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_to: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether a note passes the filter.
    pub fn matches(&self, note: &crate::note::Note) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(w.trim())),
        };
        if !eq(&self.note_type, &note.note_type)
            || !eq(&self.specialty, &note.specialty)
            || !eq(&self.patient_id, &note.patient_id)
        {
            return false;
        }
        let key = note.date_key();
        let bound = |b: &Option<String>| b.as_deref().and_then(|d| crate::note::date_key(d).ok());
        if let Some(from) = bound(&self.date_from) {
            if key.is_none_or(|k| k < from) {
                return false;
            }
        }
        if let Some(to) = bound(&self.date_to) {
            if key.is_none_or(|k| k > to) {
                return false;
            }
        }
        true
    }
}

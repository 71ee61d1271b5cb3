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
}

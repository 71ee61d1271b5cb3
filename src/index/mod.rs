//! The derived indexes: BM25 over note text (tantivy) and nearest neighbours over chunk
//! vectors (our compact HNSW graph, [`hnsw`]). Both are rebuilt from the store when missing or corrupt.

pub mod bm25;
pub mod bm25_scorer;
pub mod collection_stats;
pub mod hnsw;
pub mod query;
pub mod vector_settings;
pub mod vectors;

pub use collection_stats::CollectionStats;
pub use vector_settings::{Quantization, VectorChoice, VectorSettings};

use serde::{Deserialize, Serialize};

/// The key an entity is indexed and filtered by: `type:value`, the type lowercased and the
/// value normalised ([`crate::ner::normalise`]).
pub fn entity_key(entity_type: &str, value: &str) -> String {
    format!(
        "{}:{}",
        entity_type.trim().to_lowercase(),
        crate::ner::normalise(value)
    )
}

/// Parses an `entity=` parameter (`TYPE:VALUE`, e.g. `disease:pneumonia`) into its key.
pub fn parse_entity(v: &str) -> std::result::Result<String, String> {
    match v.split_once(':') {
        Some((t, val)) if !t.trim().is_empty() && !val.trim().is_empty() => Ok(entity_key(t, val)),
        _ => Err(format!("{v:?}: use TYPE:VALUE, such as disease:pneumonia")),
    }
}

/// Metadata filters applied inside both retrievers. String fields match case-insensitively;
/// dates are inclusive `YYYY-MM-DD` bounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Named entities every note must mention, as `type:value` keys ([`entity_key`]): all of
    /// them (AND).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<String>,
    /// The entities must be affirmed mentions (not negated, possible, hypothetical or about
    /// the family), as `assertion=affirmed` asks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub entities_affirmed: bool,
    /// Set when two filters that cannot both hold were combined ([`Filter::and`]): both
    /// retrievers then find nothing. Never read from or written to JSON.
    #[serde(skip)]
    pub matches_nothing: bool,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// The notes passing both `self` and `other`: equality fields must agree (case-insensitively,
    /// as the index compares them), date ranges intersect. When no note can pass both, the
    /// result [`matches_nothing`](Self::matches_nothing). This is how a key's document-level
    /// restriction is laid over a request's own filters.
    pub fn and(&self, other: &Filter) -> Filter {
        let mut out = Filter {
            matches_nothing: self.matches_nothing || other.matches_nothing,
            ..Filter::default()
        };
        let field = |a: &Option<String>, b: &Option<String>, none: &mut bool| match (a, b) {
            (Some(x), Some(y)) => {
                if x.trim().to_lowercase() != y.trim().to_lowercase() {
                    *none = true;
                }
                Some(x.clone())
            }
            (x, y) => x.clone().or_else(|| y.clone()),
        };
        let mut none = out.matches_nothing;
        out.note_type = field(&self.note_type, &other.note_type, &mut none);
        out.specialty = field(&self.specialty, &other.specialty, &mut none);
        out.patient_id = field(&self.patient_id, &other.patient_id, &mut none);
        let key = |d: &Option<String>| d.as_deref().and_then(|d| crate::note::date_key(d).ok());
        let pick = |a: &Option<String>, b: &Option<String>, later: bool| match (key(a), key(b)) {
            (Some(x), Some(y)) => {
                if (x >= y) == later {
                    a.clone()
                } else {
                    b.clone()
                }
            }
            _ => a.clone().or_else(|| b.clone()),
        };
        out.entities = self.entities.clone();
        for e in &other.entities {
            if !out.entities.contains(e) {
                out.entities.push(e.clone());
            }
        }
        out.entities_affirmed = self.entities_affirmed || other.entities_affirmed;
        out.date_from = pick(&self.date_from, &other.date_from, true);
        out.date_to = pick(&self.date_to, &other.date_to, false);
        if let (Some(f), Some(t)) = (key(&out.date_from), key(&out.date_to)) {
            if f > t {
                none = true;
            }
        }
        out.matches_nothing = none;
        out
    }

    /// Whether `note` passes, by the rules the retrievers apply inside the indexes (strings
    /// case-insensitive, dates inclusive, a note without a date fails any date bound). A
    /// filter on entities admits no bare note: the entities are the stored note's
    /// ([`Self::admits_stored`]), and denying is the safe answer for an access check.
    pub fn admits(&self, note: &crate::note::Note) -> bool {
        if self.matches_nothing || !self.entities.is_empty() {
            return false;
        }
        self.admits_metadata(note)
    }

    /// [`Self::admits`] for a stored note, entities included.
    pub fn admits_stored(&self, stored: &crate::store::StoredNote) -> bool {
        if self.matches_nothing || !self.admits_metadata(&stored.note) {
            return false;
        }
        self.entities.iter().all(|key| {
            stored.entities.iter().any(|e| {
                (!self.entities_affirmed || e.affirmed())
                    && entity_key(&e.entity_type, &e.value) == *key
            })
        })
    }

    fn admits_metadata(&self, note: &crate::note::Note) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have
                .as_deref()
                .is_some_and(|h| h.trim().to_lowercase() == w.trim().to_lowercase()),
        };
        if !(eq(&self.note_type, &note.note_type)
            && eq(&self.specialty, &note.specialty)
            && eq(&self.patient_id, &note.patient_id))
        {
            return false;
        }
        let bound = |d: &Option<String>| d.as_deref().and_then(|d| crate::note::date_key(d).ok());
        let (from, to) = (bound(&self.date_from), bound(&self.date_to));
        if from.is_none() && to.is_none() {
            return true;
        }
        match note.date_key() {
            None => false,
            Some(k) => from.is_none_or(|f| k >= f) && to.is_none_or(|t| k <= t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::Note;

    fn f(specialty: Option<&str>, from: Option<&str>, to: Option<&str>) -> Filter {
        Filter {
            specialty: specialty.map(str::to_string),
            date_from: from.map(str::to_string),
            date_to: to.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn combining_filters_intersects_them_and_contradictions_match_nothing() {
        let key = f(Some("Oncology"), Some("2020-01-01"), None);
        let req = f(None, Some("2019-01-01"), Some("2021-12-31"));
        let both = req.and(&key);
        assert_eq!(both.specialty.as_deref(), Some("Oncology"));
        assert_eq!(both.date_from.as_deref(), Some("2020-01-01"));
        assert_eq!(both.date_to.as_deref(), Some("2021-12-31"));
        assert!(!both.matches_nothing);
        assert!(!f(Some("oncology "), None, None).and(&key).matches_nothing);
        assert!(f(Some("Cardiology"), None, None).and(&key).matches_nothing);
        assert!(f(None, None, Some("2019-06-01")).and(&key).matches_nothing);
    }

    #[test]
    fn admits_follows_the_index_rules() {
        let mut n = Note::new("a", "text");
        n.specialty = Some("Oncology".into());
        n.date = Some("2020-05-01".into());
        assert!(f(Some("oncology"), Some("2020-05-01"), Some("2020-05-01")).admits(&n));
        assert!(!f(Some("Cardiology"), None, None).admits(&n));
        assert!(!f(None, Some("2020-05-02"), None).admits(&n));
        n.date = None;
        assert!(!f(None, Some("2000-01-01"), None).admits(&n));
        assert!(f(Some("Oncology"), None, None).admits(&n));
    }
}

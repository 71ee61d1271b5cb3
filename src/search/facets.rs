//! Entity facets: the most frequent named entities of each type among a set of notes (the
//! hits of a query, or every note passing the filters), with how many notes and how many
//! patients mention each — what a cohort finder shows beside the results.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::error::Result;
use crate::store::StoredNote;

/// Values listed per type at most.
pub const TOP_VALUES: usize = 20;

/// One value of one entity type.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EntityCount {
    /// The normalised value (what `entity=type:value` filters on).
    pub value: String,
    /// The most frequent spelling of it in the notes.
    pub text: String,
    pub notes: usize,
    /// Distinct patients among those notes (notes without a patient id not counted).
    pub patients: usize,
}

/// Counts entities over `notes` (each note once per value). With `affirmed_only`, mentions
/// that are negated, possible, hypothetical or about the family do not count.
pub fn count(
    notes: impl IntoIterator<Item = Result<StoredNote>>,
    affirmed_only: bool,
) -> Result<BTreeMap<String, Vec<EntityCount>>> {
    struct Acc {
        notes: usize,
        patients: BTreeSet<String>,
        spellings: HashMap<String, usize>,
    }
    let mut by_type: BTreeMap<String, HashMap<String, Acc>> = BTreeMap::new();
    for n in notes {
        let n = n?;
        let mut seen = BTreeSet::new();
        for e in &n.entities {
            if affirmed_only && !e.affirmed() {
                continue;
            }
            let ty = e.entity_type.to_lowercase();
            let acc = by_type
                .entry(ty.clone())
                .or_default()
                .entry(e.value.clone())
                .or_insert_with(|| Acc {
                    notes: 0,
                    patients: BTreeSet::new(),
                    spellings: HashMap::new(),
                });
            *acc.spellings.entry(e.text.clone()).or_default() += 1;
            if seen.insert((ty, e.value.clone())) {
                acc.notes += 1;
                if let Some(p) = &n.note.patient_id {
                    acc.patients.insert(p.clone());
                }
            }
        }
    }
    Ok(by_type
        .into_iter()
        .map(|(ty, values)| {
            let mut list: Vec<EntityCount> = values
                .into_iter()
                .map(|(value, a)| {
                    let text = a
                        .spellings
                        .iter()
                        .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
                        .map(|(t, _)| t.clone())
                        .unwrap_or_else(|| value.clone());
                    EntityCount {
                        value,
                        text,
                        notes: a.notes,
                        patients: a.patients.len(),
                    }
                })
                .collect();
            list.sort_by(|a, b| b.notes.cmp(&a.notes).then(a.value.cmp(&b.value)));
            list.truncate(TOP_VALUES);
            (ty, list)
        })
        .collect())
}

//! Collection statistics of a sharded collection, so that each shard scores BM25 as one
//! index over every shard would (Elasticsearch's "DFS query then fetch").
//!
//! BM25 of a note depends on the collection through three numbers: N (documents), the
//! field's average length (its tokens over N) and each term's document frequency. A shard
//! alone knows only its own, so the same note would score differently on a shard than in a
//! single index, and merged rankings would not be comparable. A router asks every shard for
//! the statistics of one query's terms ([`super::bm25::Bm25Index::statistics`]), adds them up
//! ([`CollectionStats::sum`]), and hands the sums back; each shard then scores with them
//! ([`Global`], a tantivy statistics provider). Abbreviation expansion reads the collection
//! too (which senses co-occur with the query's words), so its counts travel the same way
//! ([`CollectionStats::cooccurrence`]).
//!
//! The sums are exact: every statistic is a count over documents (or tokens), and a note
//! lives on one shard. As in tantivy itself, N counts document slots, deleted ones included
//! until their segment is merged: a shard that replaced notes counts them twice for a while,
//! exactly as a single index that replaced them would.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, Schema};
use tantivy::Term;

/// What a query's scoring needs to know of the whole collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionStats {
    /// Document slots (tantivy's N: every segment's `max_doc`).
    #[serde(default)]
    pub docs: u64,
    /// Tokens of each field the query searches, by field name.
    #[serde(default)]
    pub tokens: BTreeMap<String, u64>,
    /// Documents holding each of the query's terms, by [`term_key`].
    #[serde(default)]
    pub doc_freq: BTreeMap<String, u64>,
    /// Notes holding every phrase of a set, by [`cooccurrence_key`]: the questions the
    /// abbreviation expansion asks of the collection.
    #[serde(default)]
    pub cooccurrence: BTreeMap<String, u64>,
}

impl CollectionStats {
    /// The statistics of the union of the shards that gave `parts`.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a CollectionStats>) -> CollectionStats {
        let mut out = CollectionStats::default();
        for p in parts {
            out.docs += p.docs;
            for (map, part) in [
                (&mut out.tokens, &p.tokens),
                (&mut out.doc_freq, &p.doc_freq),
                (&mut out.cooccurrence, &p.cooccurrence),
            ] {
                for (k, v) in part {
                    *map.entry(k.clone()).or_default() += v;
                }
            }
        }
        out
    }
}

/// The key of a term in [`CollectionStats::doc_freq`]: its field's name and its value's bytes
/// in hex (field ids are the same on every shard, since every shard has the same schema, but
/// a name reads better in a trace).
pub fn term_key(schema: &Schema, term: &Term) -> String {
    let mut key = format!("{}:", schema.get_field_name(term.field()));
    for b in term.serialized_value_bytes() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// The key of a set of phrases in [`CollectionStats::cooccurrence`].
pub fn cooccurrence_key(phrases: &[&str]) -> String {
    phrases.join("\u{1f}")
}

/// A statistics provider that answers from a collection's sums, and from the local searcher
/// for what the sums do not hold (the terms of filters and id lookups, which score 0).
pub struct Global<'a> {
    pub local: &'a tantivy::Searcher,
    pub schema: &'a Schema,
    pub stats: &'a CollectionStats,
}

impl Bm25StatisticsProvider for Global<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        match self.stats.tokens.get(self.schema.get_field_name(field)) {
            Some(&n) => Ok(n),
            None => self.local.total_num_tokens(field),
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        // Never fewer than this shard holds: tantivy asserts N >= n for every term.
        Ok(self.stats.docs.max(self.local.total_num_docs()?))
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let n = match self.stats.doc_freq.get(&term_key(self.schema, term)) {
            Some(&n) => n,
            None => self.local.doc_freq(term)?,
        };
        Ok(n.min(self.total_num_docs()?))
    }
}

/// The expansion's questions answered from a collection's sums (0 for one never asked).
pub struct TableCooccurrence<'a>(pub &'a BTreeMap<String, u64>);

impl crate::clinical::abbrev::Cooccurrence for TableCooccurrence<'_> {
    fn notes_with_all(&self, phrases: &[&str]) -> u64 {
        self.0.get(&cooccurrence_key(phrases)).copied().unwrap_or(0)
    }
}

/// The expansion's questions answered by a shard, each answer recorded for the router to add
/// up.
pub struct RecordingCooccurrence<'a> {
    pub inner: &'a dyn crate::clinical::abbrev::Cooccurrence,
    pub asked: std::cell::RefCell<BTreeMap<String, u64>>,
}

impl crate::clinical::abbrev::Cooccurrence for RecordingCooccurrence<'_> {
    fn notes_with_all(&self, phrases: &[&str]) -> u64 {
        let n = self.inner.notes_with_all(phrases);
        self.asked.borrow_mut().insert(cooccurrence_key(phrases), n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_every_count_and_keep_keys_one_shard_lacks() {
        let a = CollectionStats {
            docs: 10,
            tokens: [("text".to_string(), 100)].into(),
            doc_freq: [("text:61".to_string(), 2)].into(),
            cooccurrence: [("pe".to_string(), 1)].into(),
        };
        let b = CollectionStats {
            docs: 5,
            tokens: [("text".to_string(), 40), ("title".to_string(), 7)].into(),
            doc_freq: [("text:61".to_string(), 1), ("text:62".to_string(), 3)].into(),
            cooccurrence: BTreeMap::new(),
        };
        let s = CollectionStats::sum([&a, &b]);
        assert_eq!(s.docs, 15);
        assert_eq!(s.tokens["text"], 140);
        assert_eq!(s.tokens["title"], 7);
        assert_eq!(s.doc_freq["text:61"], 3);
        assert_eq!(s.doc_freq["text:62"], 3);
        assert_eq!(s.cooccurrence["pe"], 1);
        assert_eq!(CollectionStats::sum([]), CollectionStats::default());
    }

    #[test]
    fn the_table_answers_what_the_recorder_heard() {
        struct Fixed;
        impl crate::clinical::abbrev::Cooccurrence for Fixed {
            fn notes_with_all(&self, phrases: &[&str]) -> u64 {
                phrases.len() as u64 + 1
            }
        }
        let rec = RecordingCooccurrence {
            inner: &Fixed,
            asked: Default::default(),
        };
        use crate::clinical::abbrev::Cooccurrence;
        assert_eq!(rec.notes_with_all(&["pulmonary embolism", "PE"]), 3);
        assert_eq!(rec.notes_with_all(&[]), 1);
        let asked = rec.asked.into_inner();
        let table = TableCooccurrence(&asked);
        assert_eq!(table.notes_with_all(&["pulmonary embolism", "PE"]), 3);
        assert_eq!(table.notes_with_all(&[]), 1);
        assert_eq!(table.notes_with_all(&["never asked"]), 0);
    }
}

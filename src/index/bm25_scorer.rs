//! BM25 with settable k1 and b, as a tantivy query of one term.
//!
//! tantivy's own term scorer has k1 = 1.2 and b = 0.75 built in; Lucene (and bm25s, Anserini)
//! use k1 = 0.9, b = 0.4, which scores better on some collections (README, BM25 table). This
//! query computes, for a term t in a document d of field length |d|,
//!
//! ```text
//! score(t, d) = boost * idf(t) * (k1 + 1) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
//! idf(t)      = ln(1 + (N - n + 0.5) / (n + 0.5))
//! ```
//!
//! with exactly tantivy's statistics: N counts every document slot of every segment, n is the
//! term's document frequency, avgdl is the field's tokens over N, and |d| is the field length
//! as tantivy stores it (one byte per document, so lengths over 40 are rounded). With k1 = 1.2
//! and b = 0.75 it gives tantivy's scores to the last bit (tested), so [`super::bm25`] keeps
//! tantivy's own faster query (block-max WAND) for those values and uses this one otherwise.

use std::sync::Arc;

use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::query::{EmptyScorer, EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Score, SegmentReader, Term};

/// BM25's two free parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bm25Params {
    /// Term-frequency saturation: how fast repeated occurrences stop adding to the score.
    pub k1: f32,
    /// Length normalisation: 0 ignores the field's length, 1 divides by it fully.
    pub b: f32,
}

impl Bm25Params {
    /// tantivy's built-in values (and Robertson's classic ones).
    pub const TANTIVY: Bm25Params = Bm25Params { k1: 1.2, b: 0.75 };
    /// Lucene's defaults (also bm25s' and Anserini's).
    pub const LUCENE: Bm25Params = Bm25Params { k1: 0.9, b: 0.4 };

    /// Whether tantivy's own scorer computes exactly these.
    pub fn is_tantivy(&self) -> bool {
        *self == Self::TANTIVY
    }

    /// Checks the ranges BM25 is defined on (k1 in [0, 10], b in [0, 1]).
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(0.0..=10.0).contains(&self.k1) {
            return Err(format!("k1 {} must be between 0 and 10", self.k1));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(format!("b {} must be between 0 and 1", self.b));
        }
        Ok(())
    }
}

impl Default for Bm25Params {
    fn default() -> Self {
        Self::TANTIVY
    }
}

/// One term scored with [`Bm25Params`].
#[derive(Debug, Clone)]
pub struct Bm25TermQuery {
    term: Term,
    params: Bm25Params,
}

impl Bm25TermQuery {
    pub fn new(term: Term, params: Bm25Params) -> Self {
        Bm25TermQuery { term, params }
    }
}

impl Query for Bm25TermQuery {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        // Without scoring (counting, collecting ids) only the matches matter. The statistics
        // come from the provider: the searcher's own, or a whole sharded collection's
        // (`crate::search::shards`), so a shard scores as one index over every shard would.
        let (idf, avgdl) = match scoring {
            EnableScoring::Enabled {
                statistics_provider: stats,
                ..
            } => {
                let docs = stats.total_num_docs()?;
                let tokens = stats.total_num_tokens(self.term.field())?;
                let n = stats.doc_freq(&self.term)?;
                (idf(n, docs), tokens as Score / docs.max(1) as Score)
            }
            EnableScoring::Disabled { .. } => (0.0, 1.0),
        };
        Ok(Box::new(Bm25TermWeight {
            term: self.term.clone(),
            weight: idf * (1.0 + self.params.k1),
            norms: norm_cache(self.params, avgdl),
            params: self.params,
            idf,
            avgdl,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        visitor(&self.term, false);
    }
}

/// tantivy's idf (natural log, never negative).
fn idf(doc_freq: u64, docs: u64) -> Score {
    let n = doc_freq.min(docs);
    let x = ((docs - n) as Score + 0.5) / (n as Score + 0.5);
    (1.0 + x).ln()
}

/// `k1 * (1 - b + b * |d| / avgdl)` for each of the 256 stored field lengths, computed in the
/// same order of operations as tantivy so the scores agree exactly.
fn norm_cache(p: Bm25Params, avgdl: Score) -> Arc<[Score; 256]> {
    let mut cache = [0.0; 256];
    for (id, c) in cache.iter_mut().enumerate() {
        let dl = FieldNormReader::id_to_fieldnorm(id as u8);
        *c = p.k1 * (1.0 - p.b + p.b * dl as Score / avgdl);
    }
    Arc::new(cache)
}

struct Bm25TermWeight {
    term: Term,
    /// `idf * (k1 + 1)`.
    weight: Score,
    norms: Arc<[Score; 256]>,
    params: Bm25Params,
    idf: Score,
    avgdl: Score,
}

impl Bm25TermWeight {
    fn term_scorer(
        &self,
        reader: &SegmentReader,
        boost: Score,
    ) -> tantivy::Result<Option<Bm25Scorer>> {
        let field = self.term.field();
        let index = reader.inverted_index(field)?;
        let Some(info) = index.get_term_info(&self.term)? else {
            return Ok(None);
        };
        let postings = index.read_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?;
        Ok(Some(Bm25Scorer {
            postings,
            fieldnorms: reader.get_fieldnorms_reader(field)?,
            weight: self.weight * boost,
            norms: self.norms.clone(),
        }))
    }
}

impl Weight for Bm25TermWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(match self.term_scorer(reader, boost)? {
            Some(s) => Box::new(s),
            None => Box::new(EmptyScorer),
        })
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let not_matched =
            || tantivy::TantivyError::InvalidArgument(format!("document {doc} does not match"));
        let mut s = self.term_scorer(reader, 1.0)?.ok_or_else(not_matched)?;
        if s.doc() > doc || s.seek(doc) != doc {
            return Err(not_matched());
        }
        let tf = s.postings.term_freq() as Score;
        let dl = s.fieldnorms.fieldnorm(doc) as Score;
        let mut e = Explanation::new(
            "BM25: idf * (k1 + 1) * tf / (tf + k1 * (1 - b + b * dl / avgdl))",
            s.score(),
        );
        e.add_const("idf", self.idf);
        e.add_const("k1", self.params.k1);
        e.add_const("b", self.params.b);
        e.add_const("tf", tf);
        e.add_const("dl", dl);
        e.add_const("avgdl", self.avgdl);
        e.add_context(format!("Term={:?}", self.term));
        Ok(e)
    }
}

struct Bm25Scorer {
    postings: SegmentPostings,
    fieldnorms: FieldNormReader,
    weight: Score,
    norms: Arc<[Score; 256]>,
}

impl DocSet for Bm25Scorer {
    fn advance(&mut self) -> DocId {
        self.postings.advance()
    }
    fn seek(&mut self, target: DocId) -> DocId {
        self.postings.seek(target)
    }
    fn doc(&self) -> DocId {
        self.postings.doc()
    }
    fn size_hint(&self) -> u32 {
        self.postings.size_hint()
    }
}

impl Scorer for Bm25Scorer {
    fn score(&mut self) -> Score {
        let tf = self.postings.term_freq() as Score;
        let norm = self.norms[self.fieldnorms.fieldnorm_id(self.doc()) as usize];
        self.weight * (tf / (tf + norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::TopDocs;
    use tantivy::query::{BooleanQuery, Occur, TermQuery};
    use tantivy::schema::{Schema, Value, STORED, TEXT};
    use tantivy::{doc, Index};

    const DOCS: &[&str] = &[
        "chest pain",
        "chest pain radiating to the left arm with diaphoresis and chest tightness",
        "no chest pain today",
        "pain pain pain in the lower back",
        "shortness of breath on exertion",
        "abdominal pain after meals, nausea, no vomiting, pain worse at night",
    ];

    fn index() -> (Index, tantivy::schema::Field) {
        let mut b = Schema::builder();
        let text = b.add_text_field("text", TEXT | STORED);
        let index = Index::create_in_ram(b.build());
        let mut w = index.writer_with_num_threads(1, 15_000_000).unwrap();
        // Two segments, so the statistics are summed over both as tantivy does.
        for (i, d) in DOCS.iter().enumerate() {
            w.add_document(doc!(text => *d)).unwrap();
            if i == 2 {
                w.commit().unwrap();
            }
        }
        w.commit().unwrap();
        (index, text)
    }

    /// (index in DOCS, score) of every match, in DOCS order.
    fn scores(index: &Index, q: &dyn Query) -> Vec<(usize, f32)> {
        let s = index.reader().unwrap().searcher();
        let field = index.schema().get_field("text").unwrap();
        let mut out: Vec<_> = s
            .search(q, &TopDocs::with_limit(100).order_by_score())
            .unwrap()
            .into_iter()
            .map(|(score, a)| {
                let d: tantivy::TantivyDocument = s.doc(a).unwrap();
                let t = d
                    .get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap()
                    .to_string();
                (DOCS.iter().position(|x| *x == t).unwrap(), score)
            })
            .collect();
        out.sort_by_key(|&(i, _)| i);
        out
    }

    #[test]
    fn with_tantivys_constants_it_scores_exactly_as_tantivy() {
        let (index, text) = index();
        for word in ["pain", "chest", "breath", "nausea"] {
            let term = Term::from_field_text(text, word);
            let ours = scores(
                &index,
                &Bm25TermQuery::new(term.clone(), Bm25Params::TANTIVY),
            );
            let theirs = scores(&index, &TermQuery::new(term, IndexRecordOption::WithFreqs));
            assert!(!ours.is_empty());
            assert_eq!(ours, theirs, "{word}");
        }
        // Summed in a boolean query of optional words, as queries are built.
        let q = |ours: bool| -> BooleanQuery {
            BooleanQuery::new(
                ["chest", "pain", "arm"]
                    .iter()
                    .map(|w| {
                        let t = Term::from_field_text(text, w);
                        let q: Box<dyn Query> = if ours {
                            Box::new(Bm25TermQuery::new(t, Bm25Params::TANTIVY))
                        } else {
                            Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs))
                        };
                        (Occur::Should, q)
                    })
                    .collect(),
            )
        };
        assert_eq!(scores(&index, &q(true)), scores(&index, &q(false)));
    }

    #[test]
    fn other_values_follow_the_formula() {
        let (index, text) = index();
        let p = Bm25Params::LUCENE;
        let term = Term::from_field_text(text, "pain");
        let got = scores(&index, &Bm25TermQuery::new(term, p));
        // Every document here is shorter than 40 tokens, so stored lengths are exact.
        let lens: Vec<f32> = DOCS
            .iter()
            .map(|d| d.split([' ', ',']).filter(|w| !w.is_empty()).count() as f32)
            .collect();
        let avgdl = lens.iter().sum::<f32>() / DOCS.len() as f32;
        let n = DOCS.iter().filter(|d| d.contains("pain")).count() as f32;
        let idf = (1.0 + (DOCS.len() as f32 - n + 0.5) / (n + 0.5)).ln();
        assert_eq!(got.len(), 5);
        for (i, score) in got {
            let tf = DOCS[i].matches("pain").count() as f32;
            let want = idf * (p.k1 + 1.0) * tf / (tf + p.k1 * (1.0 - p.b + p.b * lens[i] / avgdl));
            assert!((score - want).abs() < 1e-5, "doc {i}: {score} vs {want}");
        }
    }

    #[test]
    fn lower_b_penalises_long_documents_less() {
        let (index, text) = index();
        let rank = |p: Bm25Params| {
            let mut s = scores(
                &index,
                &Bm25TermQuery::new(Term::from_field_text(text, "chest"), p),
            );
            s.sort_by(|a, b| b.1.total_cmp(&a.1));
            s.iter().map(|&(i, _)| i).collect::<Vec<_>>()
        };
        // The long note mentions "chest" twice: with no length normalisation it ranks first.
        assert_eq!(rank(Bm25Params { k1: 1.2, b: 0.0 })[0], 1);
        assert_eq!(rank(Bm25Params { k1: 1.2, b: 1.0 })[0], 0);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(Bm25Params { k1: -1.0, b: 0.5 }.check().is_err());
        assert!(Bm25Params { k1: 1.0, b: 1.5 }.check().is_err());
        assert!(Bm25Params::LUCENE.check().is_ok());
    }
}

//! What a search request may ask for, parsed from query parameters and checked: every bad
//! parameter is named in the error.

use serde::{Deserialize, Serialize};

use super::*;
use crate::index::bm25_scorer::Bm25Params;
use crate::index::query::{Syntax, TextQuery};
use crate::index::Filter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Semantic,
    Hybrid,
    /// The three rankings side by side.
    Compare,
}

impl Mode {
    /// Whether this mode needs the query embedded.
    pub fn needs_vector(self) -> bool {
        self != Mode::Bm25
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bm25" | "keyword" => Ok(Mode::Bm25),
            "semantic" | "vector" => Ok(Mode::Semantic),
            "hybrid" => Ok(Mode::Hybrid),
            "compare" => Ok(Mode::Compare),
            other => Err(format!(
                "unknown mode {other:?}: use bm25, semantic, hybrid or compare"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Fusion {
    /// Reciprocal rank fusion with constant `k` ([`super::rrf`]).
    Rrf { k: f32 },
    /// RRF with the semantic side weighted `alpha` and BM25 `1 - alpha` (0.5: plain RRF).
    #[serde(rename = "weighted_rrf")]
    WeightedRrf { k: f32, alpha: f32 },
    /// `alpha * semantic + (1 - alpha) * bm25` over min-max normalised scores
    /// ([`super::score_fusion`]).
    Weighted { alpha: f32 },
    /// The same over scores mapped by each list's mean +- 3 standard deviations
    /// ([`super::dbsf`]).
    Dbsf { alpha: f32 },
    /// The same over z-scores ([`super::zscore`]).
    Zscore { alpha: f32 },
}

impl Fusion {
    /// A fusion from a method name (`rrf`, `weighted`, `dbsf`, `zscore`), RRF's `k` and the
    /// semantic weight `alpha` (for `rrf`, an alpha other than 0.5 is weighted RRF).
    pub fn from_parts(method: &str, k: f32, alpha: f32) -> std::result::Result<Fusion, String> {
        if !(k.is_finite() && k > 0.0 && k <= 1e6) {
            return Err("rrf_k: must be a number above 0".into());
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err("alpha: must be between 0 and 1".into());
        }
        Ok(match method {
            "rrf" if alpha != 0.5 => Fusion::WeightedRrf { k, alpha },
            "rrf" => Fusion::Rrf { k },
            "weighted" => Fusion::Weighted { alpha },
            "dbsf" => Fusion::Dbsf { alpha },
            "zscore" => Fusion::Zscore { alpha },
            "default" => Fusion::default(),
            other => {
                return Err(format!(
                    "fusion: unknown {other:?}: use default, rrf, weighted, dbsf or zscore"
                ))
            }
        })
    }
}

/// The default fusion: RRF with k = 60, BM25 weighted 0.7 and semantic 0.3. Chosen from the
/// README's quality table (`cargo bench --bench quality`): on SciFact, NFCorpus, MTSamples
/// and sample_corpus's three sets it is the one configuration that is never below the better
/// single retriever by more than 0.002 nDCG@10 (equal-weight RRF loses 0.05 to BM25 on the
/// abbreviation queries and 0.012 on MTSamples; the score fusions lose more there), where
/// BM25 with abbreviation expansion is far stronger than the sentence encoder.
pub const DEFAULT_FUSION: Fusion = Fusion::WeightedRrf {
    k: 60.0,
    alpha: 0.3,
};

impl Default for Fusion {
    fn default() -> Self {
        DEFAULT_FUSION
    }
}

/// How a note's semantic score comes from its windows' cosines (`note_score=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoteScore {
    /// The best window (MaxP).
    #[default]
    Max,
    /// The first window (FirstP): the title and the opening.
    First,
    /// The best window plus a tenth of the first: `(best + 0.1 first) / 1.1`.
    MaxFirst,
    /// The mean of the two best windows (the best alone for a one-window note).
    Top2,
}

impl std::str::FromStr for NoteScore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "" | "max" => NoteScore::Max,
            "first" => NoteScore::First,
            "max_first" => NoteScore::MaxFirst,
            "top2" => NoteScore::Top2,
            other => return Err(format!("{other:?}: use max, first, max_first or top2")),
        })
    }
}

/// Which mentions count (`assertion=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Assertion {
    /// Every mention, as written.
    #[default]
    Any,
    /// Affirmed mentions only: BM25 searches the note's affirmed view, and a semantic hit
    /// whose best window matches the query in a negated or family sentence is demoted.
    Affirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Note,
    /// One hit per patient (its best note), with the patient's other matching notes listed.
    Patient,
}

/// A validated search request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchRequest {
    pub q: String,
    pub mode: Mode,
    pub k: usize,
    pub offset: usize,
    pub filter: Filter,
    pub fusion: Fusion,
    pub group_by: GroupBy,
    /// Longest snippet, in characters.
    pub snippet_chars: usize,
    /// Load notes and build snippets for the page (false: ids, ranks and scores only, for
    /// evaluation runs that only need the ranking).
    pub details: bool,
    /// How the query text is read (plain by default: no operators).
    pub syntax: Syntax,
    /// Search abbreviations' expansions and long forms' abbreviations too.
    pub expand: bool,
    /// Words of the query not to expand (lowercase), e.g. one the user removed in the UI.
    pub expand_skip: Vec<String>,
    /// Every mention, or affirmed mentions only.
    pub assertion: Assertion,
    /// Leave common English words out of BM25's optional words (`stopwords=drop`).
    pub drop_stopwords: bool,
    /// BM25's k1 and b (`bm25_k1`, `bm25_b`).
    pub bm25: Bm25Params,
    /// How a note's semantic score comes from its windows.
    pub note_score: NoteScore,
    /// Whether the request named a note score (otherwise a tuned one replaces the default).
    pub note_score_explicit: bool,
    /// Whether the request named a fusion (`fusion`, `rrf_k` or `alpha`); when it did not,
    /// a fusion tuned for the collection replaces the default.
    pub fusion_explicit: bool,
    /// Retrieve at least this many candidates from each retriever whatever the page: an
    /// export reads a ranking page by page and needs every page cut from the same ranking
    /// (with depth following the page, a deeper page can fuse differently).
    pub min_depth: usize,
}

impl SearchRequest {
    pub fn new(q: impl Into<String>, mode: Mode, k: usize) -> Self {
        SearchRequest {
            q: q.into(),
            mode,
            k,
            offset: 0,
            filter: Filter::default(),
            fusion: Fusion::default(),
            group_by: GroupBy::Note,
            snippet_chars: 240,
            details: true,
            syntax: Syntax::Plain,
            expand: true,
            expand_skip: vec![],
            assertion: Assertion::Any,
            fusion_explicit: false,
            drop_stopwords: false,
            bm25: Bm25Params::default(),
            note_score: NoteScore::Max,
            note_score_explicit: false,
            min_depth: 0,
        }
    }

    /// The BM25 query the text asks for (the syntax checked by [`Self::check`]).
    pub fn text_query(&self) -> std::result::Result<TextQuery, ParamError> {
        TextQuery::parse(&self.q, self.syntax).map_err(|e| ParamError {
            param: "q".into(),
            message: e.to_string(),
        })
    }

    /// What the semantic side embeds: the text as typed, or in advanced syntax the words and
    /// phrases searched for (operators, fields and excluded words left out).
    pub fn embedding_text(&self) -> String {
        match self.syntax {
            Syntax::Plain => self.q.clone(),
            Syntax::Advanced => self
                .text_query()
                .map(|t| t.positive_text())
                .unwrap_or_else(|_| self.q.clone()),
        }
    }

    /// Builds a request from `name=value` parameters (a query string or a flattened JSON
    /// body). Every mistake names its parameter, and unknown parameters are refused so that a
    /// misspelt filter does not silently return unfiltered results.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> std::result::Result<Self, ParamError> {
        let mut req = SearchRequest::new("", Mode::Hybrid, 10);
        let mut q = None;
        let mut fusion = None;
        let mut rrf_k = None;
        let mut alpha = None;
        for (name, value) in params {
            let bad = |message: String| ParamError {
                param: name.to_string(),
                message,
            };
            let v = value.trim();
            // The table is the list of names (and what the API description documents).
            if super::spec::lookup(&[], name).is_none() {
                return Err(ParamError {
                    param: name.to_string(),
                    message: "unknown parameter".into(),
                });
            }
            super::spec::check_length(name, value)?;
            match name {
                "q" | "query" => q = Some(value.to_string()),
                "mode" => req.mode = v.parse().map_err(bad)?,
                "k" | "limit" => req.k = parse_num(v, 1, MAX_K).map_err(bad)?,
                "offset" => req.offset = parse_num(v, 0, MAX_OFFSET).map_err(bad)?,
                "note_type" => req.filter.note_type = non_empty(v),
                "specialty" => req.filter.specialty = non_empty(v),
                "patient_id" => req.filter.patient_id = non_empty(v),
                "entity" => {
                    let key = crate::index::parse_entity(v).map_err(bad)?;
                    if !req.filter.entities.contains(&key) {
                        if req.filter.entities.len() == super::spec::MAX_ENTITIES {
                            return Err(bad(format!(
                                "at most {} entity filters",
                                super::spec::MAX_ENTITIES
                            )));
                        }
                        req.filter.entities.push(key);
                    }
                }
                "date_from" | "date_to" => {
                    let d = match non_empty(v) {
                        Some(d) => Some(
                            crate::note::normalize_date(&d)
                                .map_err(|_| bad(format!("{d:?} is not a YYYY-MM-DD date")))?,
                        ),
                        None => None,
                    };
                    if name == "date_from" {
                        req.filter.date_from = d;
                    } else {
                        req.filter.date_to = d;
                    }
                }
                "fusion" => {
                    fusion = Some(match v.to_ascii_lowercase().as_str() {
                        "rrf" => "rrf",
                        "default" => "default",
                        "weighted" => "weighted",
                        "dbsf" => "dbsf",
                        "zscore" => "zscore",
                        other => {
                            return Err(bad(format!(
                            "unknown fusion {other:?}: use default, rrf, weighted, dbsf or zscore"
                        )))
                        }
                    })
                }
                "rrf_k" => {
                    let k: f32 = v
                        .parse()
                        .map_err(|_| bad(format!("{v:?} is not a number")))?;
                    if !(k.is_finite() && k > 0.0 && k <= 1e6) {
                        return Err(bad("must be a number above 0".into()));
                    }
                    rrf_k = Some(k);
                }
                "alpha" => {
                    let a: f32 = v
                        .parse()
                        .map_err(|_| bad(format!("{v:?} is not a number")))?;
                    if !(0.0..=1.0).contains(&a) {
                        return Err(bad("must be between 0 and 1".into()));
                    }
                    alpha = Some(a);
                }
                "group_by" => {
                    req.group_by = match v.to_ascii_lowercase().as_str() {
                        "" | "note" => GroupBy::Note,
                        "patient" => GroupBy::Patient,
                        other => {
                            return Err(bad(format!(
                                "unknown grouping {other:?}: use note or patient"
                            )))
                        }
                    }
                }
                "snippet_chars" => req.snippet_chars = parse_num(v, 20, 2000).map_err(bad)?,
                "syntax" => req.syntax = v.parse().map_err(bad)?,
                "note_score" => {
                    req.note_score = v.parse().map_err(bad)?;
                    req.note_score_explicit = true;
                }
                "bm25_k1" | "bm25_b" => {
                    let x: f32 = v
                        .parse()
                        .map_err(|_| bad(format!("{v:?} is not a number")))?;
                    let mut p = req.bm25;
                    if name == "bm25_k1" {
                        p.k1 = x;
                    } else {
                        p.b = x;
                    }
                    p.check().map_err(bad)?;
                    req.bm25 = p;
                }
                "stopwords" => {
                    req.drop_stopwords = match v.to_ascii_lowercase().as_str() {
                        "" | "keep" => false,
                        "drop" => true,
                        other => return Err(bad(format!("{other:?}: use keep or drop"))),
                    }
                }
                "assertion" => {
                    req.assertion = match v.to_ascii_lowercase().as_str() {
                        "" | "any" => Assertion::Any,
                        "affirmed" => Assertion::Affirmed,
                        other => return Err(bad(format!("{other:?}: use any or affirmed"))),
                    }
                }
                "expand" => {
                    req.expand = match v {
                        "true" => true,
                        "false" => false,
                        other => return Err(bad(format!("{other:?}: use true or false"))),
                    }
                }
                "expand_skip" => {
                    req.expand_skip.extend(
                        v.split(',')
                            .map(|w| w.trim().to_lowercase())
                            .filter(|w| !w.is_empty()),
                    );
                }
                other => {
                    return Err(ParamError {
                        param: other.to_string(),
                        message: "unknown parameter".into(),
                    })
                }
            }
        }
        req.fusion_explicit = fusion.is_some() || rrf_k.is_some() || alpha.is_some();
        req.fusion = match fusion {
            Some("default") => Fusion::default(),
            Some("weighted") => Fusion::Weighted {
                alpha: alpha.unwrap_or(0.5),
            },
            Some("dbsf") => Fusion::Dbsf {
                alpha: alpha.unwrap_or(0.5),
            },
            Some("zscore") => Fusion::Zscore {
                alpha: alpha.unwrap_or(0.5),
            },
            Some("rrf") if alpha.is_some_and(|a| a != 0.5) => Fusion::WeightedRrf {
                k: rrf_k.unwrap_or(60.0),
                alpha: alpha.unwrap_or(0.5),
            },
            _ if alpha.is_some() && rrf_k.is_none() && fusion.is_none() => Fusion::Weighted {
                alpha: alpha.unwrap_or(0.5),
            },
            // Nothing asked: the default fusion.
            None if rrf_k.is_none() => Fusion::default(),
            _ => Fusion::Rrf {
                k: rrf_k.unwrap_or(60.0),
            },
        };
        req.q = q.ok_or_else(|| ParamError {
            param: "q".into(),
            message: "the query is missing".into(),
        })?;
        req.check().map(|_| req)
    }

    /// Checks the invariants `from_params` establishes (for requests built in code).
    pub fn check(&self) -> std::result::Result<(), ParamError> {
        let bad = |param: &str, message: &str| {
            Err(ParamError {
                param: param.into(),
                message: message.into(),
            })
        };
        if self.q.trim().is_empty() {
            return bad("q", "the query is empty");
        }
        if self.q.chars().count() > MAX_QUERY_BYTES {
            return bad(
                "q",
                &format!("the query is longer than {MAX_QUERY_BYTES} characters"),
            );
        }
        if !self.q.chars().any(char::is_alphanumeric) {
            return bad("q", "the query has no words (no letters or digits)");
        }
        self.text_query()?;
        if self.k == 0 || self.k > MAX_K {
            return bad("k", &format!("must be between 1 and {MAX_K}"));
        }
        if self.offset > MAX_OFFSET {
            return bad("offset", &format!("must be at most {MAX_OFFSET}"));
        }
        if let (Some(a), Some(b)) = (&self.filter.date_from, &self.filter.date_to) {
            if a > b {
                return bad("date_from", "date_from is after date_to");
            }
        }
        Ok(())
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn parse_num(v: &str, lo: usize, hi: usize) -> std::result::Result<usize, String> {
    let n: usize = v
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number"))?;
    if n < lo || n > hi {
        return Err(format!("must be between {lo} and {hi}"));
    }
    Ok(n)
}

/// A bad search parameter: which one and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        v: &[(&'static str, &'static str)],
    ) -> std::result::Result<SearchRequest, ParamError> {
        SearchRequest::from_params(v.iter().copied())
    }

    #[test]
    fn parameters_default_to_hybrid_weighted_rrf_top_ten() {
        let r = params(&[("q", "chest pain")]).unwrap();
        assert_eq!(r.mode, Mode::Hybrid);
        assert_eq!(r.k, 10);
        assert_eq!(r.fusion, DEFAULT_FUSION);
        assert!(!r.fusion_explicit);
        // fusion=rrf alone is equal-weight RRF.
        let r = params(&[("q", "chest pain"), ("fusion", "rrf")]).unwrap();
        assert_eq!(r.fusion, Fusion::Rrf { k: 60.0 });
        assert_eq!(
            params(&[("q", "x"), ("fusion", "default")]).unwrap().fusion,
            DEFAULT_FUSION
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (p, v) in [
            ("k", "0"),
            ("k", "ten"),
            ("k", "1001"),
            ("offset", "-1"),
            ("mode", "fuzzy"),
            ("fusion", "max"),
            ("alpha", "1.5"),
            ("rrf_k", "0"),
            ("rrf_k", "NaN"),
            ("date_from", "yesterday"),
            ("group_by", "ward"),
            ("colour", "red"),
        ] {
            let e = params(&[("q", "x"), (p, v)]).unwrap_err();
            assert_eq!(e.param, p, "{p}={v}");
        }
        assert_eq!(params(&[]).unwrap_err().param, "q");
        assert_eq!(params(&[("q", "  ")]).unwrap_err().param, "q");
        let e = params(&[
            ("q", "x"),
            ("date_from", "2024-02-01"),
            ("date_to", "2024-01-01"),
        ]);
        assert_eq!(e.unwrap_err().param, "date_from");
    }

    #[test]
    fn weighted_fusion_takes_alpha() {
        let r = params(&[("q", "x"), ("fusion", "weighted"), ("alpha", "0.3")]).unwrap();
        assert_eq!(r.fusion, Fusion::Weighted { alpha: 0.3 });
    }
}

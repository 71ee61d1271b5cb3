//! The search parameters as a table: the names [`SearchRequest::from_params`] accepts (it
//! refuses every other), each with its type, bounds and meaning. The API description's
//! query parameters and JSON bodies for search, facets and export are built from this table
//! (`server::openapi`), and a JSON body is typed by it ([`typed_pairs`]), so what the
//! description promises and what the parser takes are one list.
//!
//! [`SearchRequest::from_params`]: super::SearchRequest::from_params

use serde_json::Value;

use super::{ParamError, MAX_K, MAX_OFFSET, MAX_QUERY_BYTES};

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Free text (of at most this many characters, where bounded).
    Text { max_chars: Option<usize> },
    /// A whole number in `min..=max`.
    Int { min: usize, max: usize },
    /// A number in the range (`exclusive_min`: above `min`, not equal to it).
    Number {
        min: f64,
        max: f64,
        exclusive_min: bool,
    },
    /// `true` or `false`.
    Bool,
    /// One of these words (case-insensitive; `""` where an empty value means the default).
    Choice(&'static [&'static str]),
    /// A `YYYY-MM-DD` date (empty: no bound).
    Date,
    /// Comma-separated words (at most [`MAX_VALUE_CHARS`]).
    Words,
    /// `TYPE:VALUE` (at most [`MAX_VALUE_CHARS`]), repeatable up to [`MAX_ENTITIES`] times
    /// (every one must hold).
    Entity,
}

/// One search parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
    /// A metadata filter: a JSON body may also nest it under `"filter"`.
    pub filter: bool,
}

const fn p(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        doc,
        filter: false,
    }
}

const fn filter(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        doc,
        filter: true,
    }
}

/// Longest value of a filter or word list, in characters.
pub const MAX_VALUE_CHARS: usize = 256;
/// Most `entity` filters in one request.
pub const MAX_ENTITIES: usize = 8;
/// Longest `q` in a URL (GET), in characters: with every other parameter at its longest and
/// each character percent-encoded, a URL stays under the 64 KiB the HTTP layer parses (above
/// it, it answers 400 without a body before any handler). Longer queries go by POST, whose
/// limit is [`MAX_QUERY_BYTES`] characters.
pub const MAX_URL_QUERY_CHARS: usize = 2048;

/// Other spellings the parser also takes (older clients); not described, so not generated.
pub const ALIASES: &[(&str, &str)] = &[("query", "q"), ("limit", "k")];

/// Every search parameter, in the order the description lists them.
pub const PARAMS: &[Param] = &[
    p(
        "q",
        Kind::Text {
            max_chars: Some(MAX_QUERY_BYTES),
        },
        "The query: plain words by default (no operators); it must hold a letter or a digit. Required (facets: optional, the filters alone count every note passing them).",
    ),
    p(
        "mode",
        Kind::Choice(&["bm25", "semantic", "hybrid", "compare", "keyword", "vector"]),
        "bm25, semantic, hybrid (default) or compare (the three rankings side by side); keyword and vector are bm25 and semantic.",
    ),
    p(
        "k",
        Kind::Int { min: 1, max: MAX_K },
        "Hits per page (default 10; offset + k is bounded by the server's max_offset_k).",
    ),
    p(
        "offset",
        Kind::Int {
            min: 0,
            max: MAX_OFFSET,
        },
        "Hits skipped before the page.",
    ),
    filter("note_type", Kind::Text { max_chars: Some(MAX_VALUE_CHARS) }, "Only notes of this type (case-insensitive)."),
    filter("specialty", Kind::Text { max_chars: Some(MAX_VALUE_CHARS) }, "Only notes of this specialty (case-insensitive)."),
    filter("patient_id", Kind::Text { max_chars: Some(MAX_VALUE_CHARS) }, "Only this patient's notes."),
    filter("date_from", Kind::Date, "Notes dated on or after this day (YYYY-MM-DD)."),
    filter("date_to", Kind::Date, "Notes dated on or before this day (YYYY-MM-DD)."),
    filter(
        "entity",
        Kind::Entity,
        "A named entity every note must mention, as TYPE:VALUE (disease:pneumonia); repeat it for several (all must hold).",
    ),
    p(
        "fusion",
        Kind::Choice(&["default", "rrf", "weighted", "dbsf", "zscore"]),
        "How hybrid fuses the rankings: the collection's tuned or default fusion, reciprocal rank fusion, or a weighted sum of min-max, 3-sigma or z-score normalised scores.",
    ),
    p(
        "rrf_k",
        Kind::Number {
            min: 0.0,
            max: 1e6,
            exclusive_min: true,
        },
        "RRF's constant k (default 60).",
    ),
    p(
        "alpha",
        Kind::Number {
            min: 0.0,
            max: 1.0,
            exclusive_min: false,
        },
        "The semantic side's weight (BM25's is 1 - alpha).",
    ),
    p(
        "group_by",
        Kind::Choice(&["", "note", "patient"]),
        "note (default), or patient: one hit per patient (its best note) with the patient's other matching notes.",
    ),
    p(
        "snippet_chars",
        Kind::Int { min: 20, max: 2000 },
        "Longest snippet, in characters (default 240).",
    ),
    p(
        "syntax",
        Kind::Choice(&["", "plain", "advanced"]),
        "plain (default: every word optional, no operators) or advanced (\"phrases\", +required, -excluded, title:word).",
    ),
    p(
        "expand",
        Kind::Bool,
        "Search abbreviations' expansions and long forms' abbreviations too (default true).",
    ),
    p(
        "expand_skip",
        Kind::Words,
        "Words of the query not to expand, comma-separated.",
    ),
    p(
        "assertion",
        Kind::Choice(&["", "any", "affirmed"]),
        "any (default), or affirmed: only affirmed mentions count (negated, possible, historical, family and hypothetical ones do not).",
    ),
    p(
        "note_score",
        Kind::Choice(&["", "max", "first", "max_first", "top2"]),
        "How a note's semantic score comes from its windows' cosines (default: the collection's tuned choice, else max).",
    ),
    p(
        "stopwords",
        Kind::Choice(&["", "keep", "drop"]),
        "keep (default) or drop common English words from BM25's optional words.",
    ),
    p(
        "bm25_k1",
        Kind::Number {
            min: 0.0,
            max: 10.0,
            exclusive_min: false,
        },
        "BM25's k1 (default 1.2).",
    ),
    p(
        "bm25_b",
        Kind::Number {
            min: 0.0,
            max: 1.0,
            exclusive_min: false,
        },
        "BM25's b (default 0.75).",
    ),
];

/// Checks a value's length against its parameter's bound (the parser calls it for every
/// parameter it takes).
pub fn check_length(name: &str, value: &str) -> Result<(), ParamError> {
    let Some(p) = lookup(&[], name) else {
        return Ok(());
    };
    let max = match p.kind {
        Kind::Text { max_chars } => max_chars,
        Kind::Words | Kind::Entity => Some(MAX_VALUE_CHARS),
        _ => None,
    };
    match max {
        Some(m) if value.chars().count() > m => Err(ParamError {
            param: p.name.to_string(),
            message: format!("longer than {m} characters"),
        }),
        _ => Ok(()),
    }
}

/// The bound of query strings: `q` of at most [`MAX_URL_QUERY_CHARS`] characters.
pub fn check_url_params<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ParamError> {
    for (k, v) in pairs {
        if (k == "q" || k == "query") && v.chars().count() > MAX_URL_QUERY_CHARS {
            return Err(ParamError {
                param: "q".into(),
                message: format!(
                    "longer than {MAX_URL_QUERY_CHARS} characters in a URL: send long queries by POST"
                ),
            });
        }
    }
    Ok(())
}

/// The spec of a parameter name (aliases resolved), if the parser takes it.
pub fn lookup<'a>(extra: &'a [Param], name: &str) -> Option<&'a Param> {
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, n)| n);
    PARAMS.iter().chain(extra).find(|p| p.name == name)
}

/// A JSON body of parameters (with `extra`, an endpoint's own ones) as `name=value` pairs
/// for the parser, each value of its parameter's JSON type: integers for [`Kind::Int`],
/// numbers for [`Kind::Number`], `true`/`false` for [`Kind::Bool`], strings otherwise (an
/// array of strings for [`Kind::Entity`]); `null` leaves a parameter unset. Filters may be
/// nested under `"filter"`. Anything else names the parameter at fault.
pub fn typed_pairs(body: &Value, extra: &[Param]) -> Result<Vec<(String, String)>, ParamError> {
    let Value::Object(map) = body else {
        return Err(ParamError {
            param: "body".into(),
            message: "the body must be a JSON object of search parameters".into(),
        });
    };
    let mut out = vec![];
    for (k, v) in map {
        if k == "filter" {
            let Value::Object(inner) = v else {
                if v.is_null() {
                    continue;
                }
                return Err(bad(k, "must be an object of filters"));
            };
            for (fk, fv) in inner {
                match lookup(extra, fk) {
                    Some(spec) if spec.filter => push_typed(&mut out, spec, fk, fv)?,
                    _ => return Err(bad(fk, "unknown filter")),
                }
            }
            continue;
        }
        let Some(spec) = lookup(extra, k) else {
            return Err(bad(k, "unknown parameter"));
        };
        push_typed(&mut out, spec, k, v)?;
    }
    Ok(out)
}

fn bad(param: &str, message: &str) -> ParamError {
    ParamError {
        param: param.to_string(),
        message: message.to_string(),
    }
}

fn push_typed(
    out: &mut Vec<(String, String)>,
    spec: &Param,
    name: &str,
    v: &Value,
) -> Result<(), ParamError> {
    let text = match (spec.kind, v) {
        (_, Value::Null) => return Ok(()),
        (Kind::Int { .. }, Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        // JSON Schema's integer: 5.0 is 5.
        (Kind::Int { .. }, Value::Number(n)) if n.as_f64().is_some_and(|x| x.fract() == 0.0) => {
            format!("{}", n.as_f64().unwrap_or_default())
        }
        (Kind::Int { .. }, _) => return Err(bad(name, "must be a whole number")),
        (Kind::Number { .. }, Value::Number(n)) => n.to_string(),
        (Kind::Number { .. }, _) => return Err(bad(name, "must be a number")),
        (Kind::Bool, Value::Bool(b)) => b.to_string(),
        (Kind::Bool, _) => return Err(bad(name, "must be true or false")),
        (Kind::Entity, Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => out.push((name.to_string(), s.clone())),
                    _ => return Err(bad(name, "must be a string or an array of strings")),
                }
            }
            return Ok(());
        }
        (_, Value::String(s)) => s.clone(),
        _ => return Err(bad(name, "must be a string")),
    };
    out.push((name.to_string(), text));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::SearchRequest;
    use serde_json::json;

    /// A value of each kind the parser must take.
    fn sample(kind: Kind) -> &'static str {
        match kind {
            Kind::Text { .. } => "cardiology",
            Kind::Int { min, .. } if min > 0 => "20",
            Kind::Int { .. } => "0",
            Kind::Number { .. } => "0.5",
            Kind::Bool => "false",
            Kind::Choice(words) => words.last().unwrap(),
            Kind::Date => "2020-01-31",
            Kind::Words => "sob,cp",
            Kind::Entity => "disease:pneumonia",
        }
    }

    #[test]
    fn the_parser_takes_every_parameter_of_the_table() {
        for p in PARAMS {
            let v = sample(p.kind);
            let pairs = if p.name == "q" {
                vec![("q", v)]
            } else {
                vec![("q", "chest pain"), (p.name, v)]
            };
            SearchRequest::from_params(pairs).unwrap_or_else(|e| panic!("{}={v}: {e}", p.name));
        }
        for (alias, _) in ALIASES {
            let v = if *alias == "limit" { "5" } else { "x" };
            SearchRequest::from_params([("q", "x"), (alias, v)]).unwrap();
        }
    }

    #[test]
    fn every_choice_the_table_lists_is_taken_and_others_refused() {
        for p in PARAMS {
            if let Kind::Choice(words) = p.kind {
                for w in words {
                    SearchRequest::from_params([("q", "x"), (p.name, w)])
                        .unwrap_or_else(|e| panic!("{}={w}: {e}", p.name));
                }
                let e = SearchRequest::from_params([("q", "x"), (p.name, "zzz")]).unwrap_err();
                assert_eq!(e.param, p.name);
            }
        }
    }

    #[test]
    fn values_over_their_bounds_are_refused_naming_the_parameter() {
        let long = "x".repeat(MAX_VALUE_CHARS + 1);
        for name in ["note_type", "specialty", "patient_id", "expand_skip"] {
            let e = SearchRequest::from_params([("q", "x"), (name, long.as_str())]).unwrap_err();
            assert_eq!(e.param, name);
        }
        let many: Vec<String> = (0..=MAX_ENTITIES)
            .map(|i| format!("disease:d{i}"))
            .collect();
        let mut pairs = vec![("q", "x")];
        pairs.extend(many.iter().map(|e| ("entity", e.as_str())));
        assert_eq!(
            SearchRequest::from_params(pairs).unwrap_err().param,
            "entity"
        );
        let q = "word ".repeat(MAX_URL_QUERY_CHARS / 5 + 1);
        assert_eq!(
            check_url_params([("q", q.as_str())]).unwrap_err().param,
            "q"
        );
        assert!(
            SearchRequest::from_params([("q", q.as_str())]).is_ok(),
            "POST takes it"
        );
    }

    #[test]
    fn a_name_outside_the_table_is_refused() {
        let e = SearchRequest::from_params([("q", "x"), ("note_typ", "x")]).unwrap_err();
        assert_eq!(e.param, "note_typ");
    }

    #[test]
    fn json_bodies_are_typed_by_the_table() {
        let ok = typed_pairs(
            &json!({"q": "cp", "k": 5, "expand": false, "alpha": 0.25, "entity": ["disease:x", "drug:y"],
                    "filter": {"note_type": "consult"}, "fusion": null}),
            &[],
        )
        .unwrap();
        assert!(ok.contains(&("k".into(), "5".into())), "{ok:?}");
        assert!(ok.contains(&("expand".into(), "false".into())));
        assert!(ok.contains(&("entity".into(), "drug:y".into())));
        assert!(ok.contains(&("note_type".into(), "consult".into())));
        assert!(!ok.iter().any(|(k, _)| k == "fusion"));
        for (body, param) in [
            (json!({"q": "cp", "k": "5"}), "k"),
            (json!({"q": "cp", "k": 2.5}), "k"),
            (json!({"q": "cp", "filter": 3}), "filter"),
            (json!({"q": "cp", "expand": "false"}), "expand"),
            (json!({"q": 7}), "q"),
            (json!({"q": "cp", "filter": {"mode": "bm25"}}), "mode"),
            (json!({"q": "cp", "colour": "red"}), "colour"),
            (json!({"q": "cp", "entity": [1]}), "entity"),
        ] {
            assert_eq!(typed_pairs(&body, &[]).unwrap_err().param, param, "{body}");
        }
    }
}

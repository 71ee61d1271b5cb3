//! Cohort export: every hit of a search (not one page), up to a cap, as CSV or JSON Lines:
//! one row per note, or with `group_by=patient` one row per patient. The search API
//! (`/api/search/export`) and `clinsearch export` both write through here.
//!
//! The ranking is read page by page ([`EXPORT_PAGE`] hits at a time) and each row is written
//! as soon as its page is ranked, so an export of many notes never holds them all in memory.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{GroupBy, Hit, Mode, SearchRequest, Searcher};
use crate::error::{Error, Result};

/// Hits ranked per page of an export.
pub const EXPORT_PAGE: usize = 200;

/// The two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

impl std::str::FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" | "ndjson" => Ok(ExportFormat::Jsonl),
            other => Err(Error::InvalidInput(format!(
                "format {other:?}: use csv or jsonl"
            ))),
        }
    }
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
        }
    }
}

/// Columns of a note row.
pub const NOTE_COLUMNS: &[&str] = &[
    "rank",
    "note_id",
    "patient_id",
    "date",
    "note_type",
    "specialty",
    "title",
    "score",
    "bm25_rank",
    "bm25_score",
    "semantic_rank",
    "semantic_score",
    "fused_score",
    "snippet",
];

/// Columns of a patient row (`group_by=patient`).
pub const PATIENT_COLUMNS: &[&str] = &[
    "rank",
    "patient_id",
    "matching_notes",
    "first_date",
    "last_date",
    "best_note_id",
    "best_note_date",
    "score",
    "snippet",
];

/// What an export must be given before it may run: one ranking (not `compare`) and a
/// bounded number of rows.
pub fn check(req: &SearchRequest, limit: usize, cap: usize) -> Result<()> {
    if req.mode == Mode::Compare {
        return Err(Error::InvalidInput(
            "mode=compare: an export is one ranking; use bm25, semantic or hybrid".into(),
        ));
    }
    if limit == 0 || limit > cap {
        return Err(Error::InvalidInput(format!(
            "limit {limit}: between 1 and {cap} rows (the configured max_export_rows)"
        )));
    }
    Ok(())
}

/// Writes rows in one format: the header first (CSV), then one line per row.
pub struct RowWriter {
    format: ExportFormat,
    columns: &'static [&'static str],
}

impl RowWriter {
    pub fn new(format: ExportFormat, group_by: GroupBy) -> Self {
        let columns = match group_by {
            GroupBy::Note => NOTE_COLUMNS,
            GroupBy::Patient => PATIENT_COLUMNS,
        };
        RowWriter { format, columns }
    }

    /// The first line (CSV's header; nothing for JSON Lines).
    pub fn header(&self) -> String {
        match self.format {
            ExportFormat::Csv => csv_line(self.columns.iter().map(|c| c.to_string())),
            ExportFormat::Jsonl => String::new(),
        }
    }

    /// One row (`values` in column order) as a line.
    pub fn line(&self, values: &[Value]) -> String {
        match self.format {
            ExportFormat::Csv => csv_line(values.iter().map(|v| match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })),
            ExportFormat::Jsonl => {
                let mut m = serde_json::Map::new();
                for (c, v) in self.columns.iter().zip(values) {
                    m.insert(c.to_string(), v.clone());
                }
                format!("{}\n", Value::Object(m))
            }
        }
    }
}

fn csv_line(fields: impl Iterator<Item = String>) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(vec![]);
    let fields: Vec<String> = fields.collect();
    w.write_record(&fields).expect("writing to memory");
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("utf-8 in, utf-8 out")
}

fn snippet_text(hit: &Hit) -> String {
    let s: String = hit.snippet.iter().map(|s| s.text.as_str()).collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn opt<T: serde::Serialize>(v: &Option<T>) -> Value {
    v.as_ref().map_or(Value::Null, |x| json!(x))
}

/// The values of a note row (in [`NOTE_COLUMNS`] order).
pub fn note_values(hit: &Hit) -> Vec<Value> {
    vec![
        json!(hit.rank),
        json!(hit.id),
        opt(&hit.patient_id),
        opt(&hit.date),
        opt(&hit.note_type),
        opt(&hit.specialty),
        opt(&hit.title),
        json!(hit.score),
        opt(&hit.bm25.rank),
        opt(&hit.bm25.score),
        opt(&hit.semantic.rank),
        opt(&hit.semantic.score),
        opt(&hit.fused),
        json!(snippet_text(hit)),
    ]
}

/// The values of a patient row (in [`PATIENT_COLUMNS`] order): `dates` gives a note's date
/// (from the store).
pub fn patient_values(hit: &Hit, dates: &dyn Fn(&str) -> Option<String>) -> Vec<Value> {
    let (patient, notes) = match &hit.group {
        Some(g) => (Some(g.patient_id.clone()), g.note_ids.clone()),
        None => (hit.patient_id.clone(), vec![hit.id.clone()]),
    };
    let mut all: Vec<String> = notes.iter().filter_map(|n| dates(n)).collect();
    all.sort();
    vec![
        json!(hit.rank),
        opt(&patient),
        json!(notes.len()),
        opt(&all.first().cloned()),
        opt(&all.last().cloned()),
        json!(hit.id),
        opt(&hit.date),
        json!(hit.score),
        json!(snippet_text(hit)),
    ]
}

/// Ranks `req` page by page and hands each hit of its ranking to `each`, best first, up to
/// `limit` hits; `each` returns false to stop. Returns the hits handed over. A note (or
/// patient) seen on an earlier page is not handed over again (pages are re-ranked, and the
/// collection may change meanwhile). `ids_only`: hits carry ids, ranks and scores but no
/// snippets or metadata (a first pass that only needs to know which notes; grouped by
/// patient the groups still come whole).
pub fn for_each_hit(
    searcher: &Searcher<'_>,
    req: &SearchRequest,
    query_vector: Option<&[f32]>,
    limit: usize,
    ids_only: bool,
    each: &mut dyn FnMut(&Hit) -> Result<bool>,
) -> Result<usize> {
    let mut seen = HashSet::new();
    let mut n = 0;
    let mut offset = 0;
    while n < limit {
        let k = EXPORT_PAGE.min(limit - n);
        let page = SearchRequest {
            offset,
            k,
            // Every page from the same candidates, so pages neither repeat nor skip a hit.
            min_depth: match req.group_by {
                GroupBy::Note => limit,
                GroupBy::Patient => limit * 5,
            },
            details: req.details && !(ids_only && req.group_by == GroupBy::Note),
            ..req.clone()
        };
        let resp = searcher.search(&page, query_vector)?;
        let Some(ranking) = resp.ranking(req.mode) else {
            break;
        };
        let hits = &ranking.hits;
        for h in hits {
            let key = match &h.group {
                Some(g) => format!("patient:{}", g.patient_id),
                None => format!("note:{}", h.id),
            };
            if !seen.insert(key) {
                continue;
            }
            if n >= limit || !each(h)? {
                return Ok(n);
            }
            n += 1;
        }
        if hits.len() < k {
            break;
        }
        offset += k;
    }
    Ok(n)
}

/// What an export holds, found by a first pass that ranks without snippets: the audit
/// names these before any row is written.
#[derive(Debug, Clone, Default)]
pub struct Cohort {
    /// The hits (notes, or each patient's best note), in ranking order.
    pub hits: Vec<String>,
    /// Every note the rows disclose (the hits and the notes grouped under them), sorted.
    pub notes: Vec<String>,
    /// Their patients, sorted.
    pub patients: Vec<String>,
}

/// The first pass of an export (see [`Cohort`]).
pub fn find(
    searcher: &Searcher<'_>,
    req: &SearchRequest,
    query_vector: Option<&[f32]>,
    limit: usize,
) -> Result<Cohort> {
    let mut c = Cohort::default();
    for_each_hit(searcher, req, query_vector, limit, true, &mut |h| {
        c.hits.push(h.id.clone());
        c.notes.push(h.id.clone());
        match &h.group {
            Some(g) => {
                c.notes.extend(g.note_ids.iter().cloned());
                c.patients.push(g.patient_id.clone());
            }
            // Without details a note's hit carries no patient: the store has it.
            None => c.patients.extend(
                searcher
                    .engine
                    .store
                    .get(&h.id)?
                    .and_then(|n| n.note.patient_id),
            ),
        }
        Ok(true)
    })?;
    for v in [&mut c.notes, &mut c.patients] {
        v.sort();
        v.dedup();
    }
    Ok(c)
}

/// The second pass: the header, then one line per hit of `cohort` (a note found since is
/// left out, so the rows never hold a note the audit does not name), each handed to `emit`
/// as soon as its page is ranked; `emit` returns false to stop. `limit` is the first pass's
/// (the depth every page is cut from). Returns the rows written.
pub fn write_rows(
    searcher: &Searcher<'_>,
    req: &SearchRequest,
    query_vector: Option<&[f32]>,
    limit: usize,
    cohort: &Cohort,
    format: ExportFormat,
    emit: &mut dyn FnMut(String) -> bool,
) -> Result<usize> {
    let writer = RowWriter::new(format, req.group_by);
    if !emit(writer.header()) {
        return Ok(0);
    }
    let allowed: HashSet<&str> = cohort.hits.iter().map(String::as_str).collect();
    let dates = |id: &str| -> Option<String> {
        searcher
            .engine
            .store
            .get(id)
            .ok()
            .flatten()
            .and_then(|n| n.note.date)
    };
    let mut written = 0;
    let rows = cohort.hits.len();
    for_each_hit(searcher, req, query_vector, limit, false, &mut |h| {
        if written >= rows {
            return Ok(false);
        }
        if !allowed.contains(h.id.as_str()) {
            return Ok(true);
        }
        let values = match req.group_by {
            GroupBy::Note => note_values(h),
            GroupBy::Patient => patient_values(h, &dates),
        };
        written += 1;
        Ok(emit(writer.line(&values)))
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commas, quotes and line breaks in a snippet stay inside their CSV field; JSON Lines
    /// names every column; nulls are empty fields.
    #[test]
    fn rows_are_quoted_as_csv_readers_expect_and_jsonl_names_every_column() {
        let w = RowWriter::new(ExportFormat::Csv, GroupBy::Note);
        let mut values: Vec<Value> = NOTE_COLUMNS.iter().map(|_| Value::Null).collect();
        values[0] = json!(1);
        values[1] = json!("N,1");
        values[13] = json!("said \"no\",\nthen left");
        let text = format!("{}{}", w.header(), w.line(&values));
        let mut r = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(r.headers().unwrap().len(), NOTE_COLUMNS.len());
        let row = r.records().next().unwrap().unwrap();
        assert_eq!(&row[1], "N,1");
        assert_eq!(&row[13], "said \"no\",\nthen left");
        assert_eq!(&row[2], "");

        let j = RowWriter::new(ExportFormat::Jsonl, GroupBy::Patient);
        assert_eq!(j.header(), "");
        let v: Value =
            serde_json::from_str(j.line(&vec![json!(7); PATIENT_COLUMNS.len()]).trim()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), PATIENT_COLUMNS.len());
        assert_eq!(v["matching_notes"], 7);
    }

    #[test]
    fn formats_and_checks() {
        assert_eq!("CSV".parse::<ExportFormat>().unwrap(), ExportFormat::Csv);
        assert_eq!(
            "ndjson".parse::<ExportFormat>().unwrap(),
            ExportFormat::Jsonl
        );
        assert!("xml".parse::<ExportFormat>().is_err());
        let mut req = SearchRequest::new("pain", Mode::Compare, 10);
        assert!(check(&req, 10, 100)
            .unwrap_err()
            .to_string()
            .contains("compare"));
        req.mode = Mode::Bm25;
        assert!(check(&req, 0, 100).is_err());
        assert!(check(&req, 101, 100).is_err());
        assert!(check(&req, 100, 100).is_ok());
    }
}

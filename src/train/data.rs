//! Reading training files: JSON Lines (one object per line) or CSV with a header, by
//! extension. Every error names the file and line, before any training starts.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One record with the line it starts on (1-based).
pub struct Record {
    pub line: usize,
    pub fields: Map<String, Value>,
}

fn at(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}:{line}: {msg}", path.display()))
}

/// Reads every record of `path` (`.csv` by extension, JSON Lines otherwise). Blank lines
/// are skipped; an empty file is an error.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let records = if is_csv {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| at(path, 1, format!("cannot read the CSV header: {e}")))?
            .iter()
            .map(str::to_string)
            .collect();
        let mut out = vec![];
        for row in reader.records() {
            let row = row.map_err(|e| {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                at(path, line, format!("bad CSV row: {e}"))
            })?;
            let line = row.position().map(|p| p.line() as usize).unwrap_or(0);
            let fields = header
                .iter()
                .zip(row.iter())
                .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                .collect();
            out.push(Record { line, fields });
        }
        out
    } else {
        let mut out = vec![];
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(raw)
                .map_err(|e| at(path, i + 1, format!("not valid JSON ({e})")))?;
            let Value::Object(fields) = value else {
                return Err(at(path, i + 1, "expected a JSON object"));
            };
            out.push(Record {
                line: i + 1,
                fields,
            });
        }
        out
    };
    if records.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no examples (the file is empty)",
            path.display()
        )));
    }
    Ok(records)
}

impl Record {
    /// The field `name` as text: strings as they are, numbers and booleans written out.
    /// `None` when absent or null; an error for objects and arrays.
    pub fn text(&self, path: &Path, name: &str) -> Result<Option<String>> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(at(
                path,
                self.line,
                format!("field {name:?} must be text, a number or a boolean"),
            )),
        }
    }

    /// The field `name` as non-empty text, or an error naming the fields there are.
    pub fn required(&self, path: &Path, name: &str, flag: &str) -> Result<String> {
        match self.text(path, name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(at(path, self.line, format!("field {name:?} is empty"))),
            None => {
                let mut have: Vec<&str> = self.fields.keys().map(String::as_str).collect();
                have.sort();
                Err(at(
                    path,
                    self.line,
                    format!(
                        "no field {name:?} (set {flag}; this record has {})",
                        if have.is_empty() {
                            "no fields".to_string()
                        } else {
                            have.join(", ")
                        }
                    ),
                ))
            }
        }
    }
}

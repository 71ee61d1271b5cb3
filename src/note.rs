//! The note: the unit users ingest, search and read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A clinical note with its metadata. `id` is the user's (or derived from the content).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Note {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    /// Discharge summary, progress note, radiology report...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialty: Option<String>,
    /// ISO 8601 date (`YYYY-MM-DD`, optionally followed by a time), normalised to the date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// Any other string metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// Longest accepted note id, in characters.
pub const MAX_ID_LEN: usize = 512;

impl Note {
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Note {
            id: id.into(),
            title: None,
            text: text.into(),
            patient_id: None,
            note_type: None,
            specialty: None,
            date: None,
            extra: BTreeMap::new(),
        }
    }

    /// A deterministic id from the content, for notes that arrive without one: the same
    /// note ingested twice gets the same id (and replaces itself).
    pub fn derived_id(title: Option<&str>, text: &str) -> String {
        let mut h = Sha256::new();
        h.update(title.unwrap_or("").as_bytes());
        h.update([0u8]);
        h.update(text.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        format!("n{hex}")
    }

    /// Checks and normalises a note: non-empty text and id, metadata trimmed, date parsed.
    pub fn validate(mut self) -> Result<Self> {
        if self.text.trim().is_empty() {
            return Err(Error::InvalidInput("the note's text is empty".into()));
        }
        self.id = self.id.trim().to_string();
        if self.id.is_empty() {
            self.id = Note::derived_id(self.title.as_deref(), &self.text);
        }
        if self.id.chars().count() > MAX_ID_LEN || self.id.chars().any(char::is_control) {
            return Err(Error::InvalidInput(format!(
                "note id must be at most {MAX_ID_LEN} characters without control characters"
            )));
        }
        let clean = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        self.title = clean(self.title);
        self.patient_id = clean(self.patient_id);
        self.note_type = clean(self.note_type);
        self.specialty = clean(self.specialty);
        self.date = match clean(self.date) {
            Some(d) => Some(normalize_date(&d)?),
            None => None,
        };
        Ok(self)
    }

    /// The date as `YYYYMMDD`, for range filters.
    pub fn date_key(&self) -> Option<i64> {
        self.date.as_deref().and_then(|d| date_key(d).ok())
    }
}

/// `YYYY-MM-DD[...]` -> `YYYY-MM-DD`, checking the calendar.
pub fn normalize_date(s: &str) -> Result<String> {
    date_key(s)?;
    Ok(s[..10].to_string())
}

/// `YYYY-MM-DD[...]` -> `YYYYMMDD` as a number.
pub fn date_key(s: &str) -> Result<i64> {
    let bad = || Error::InvalidInput(format!("date {s:?} is not ISO 8601 (YYYY-MM-DD)"));
    let b = s.as_bytes();
    if b.len() < 10
        || b[4] != b'-'
        || b[7] != b'-'
        || (b.len() > 10 && !matches!(b[10], b'T' | b' '))
    {
        return Err(bad());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days[(m - 1) as usize] {
        return Err(bad());
    }
    Ok(y * 10000 + m * 100 + d)
}

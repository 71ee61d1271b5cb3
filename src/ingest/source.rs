//! Reading notes from files: JSONL (one note per line, BEIR `corpus.jsonl` included), CSV
//! with a column mapping, and folders of `.txt` files. Every bad record is reported as
//! `file:line: reason`.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::note::Note;

/// Input formats.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Auto,
    Jsonl,
    Csv,
    Txt,
    Beir,
}

/// How CSV columns map to note fields.
#[derive(Debug, Clone)]
pub struct CsvMapping {
    pub text_col: String,
    pub id_col: Option<String>,
    pub title_col: Option<String>,
    /// `(column, field)`: field is patient_id, note_type, specialty, date or any other name
    /// (kept as free metadata).
    pub meta_cols: Vec<(String, String)>,
}

impl Default for CsvMapping {
    fn default() -> Self {
        CsvMapping {
            text_col: "text".into(),
            id_col: None,
            title_col: None,
            meta_cols: vec![],
        }
    }
}

/// A parsed note and where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    pub note: Note,
    pub origin: Origin,
    /// The chunks and vectors the record carries (precomputed elsewhere:
    /// [`super::vectors`]); None when its windows are to be embedded here.
    pub chunks: Option<Vec<super::vectors::SuppliedChunk>>,
}

impl Record {
    /// A note to embed here.
    pub fn new(note: Note, origin: Origin) -> Record {
        Record {
            note,
            origin,
            chunks: None,
        }
    }
}

/// A JSON object as a record: the note ([`note_from_json`]) and any chunks with vectors it
/// carries ([`super::vectors::chunks_from_json`]).
pub fn record_from_json(v: &Value, origin: Origin) -> Item {
    let read = || -> std::result::Result<Record, String> {
        let note = note_from_json(v)?;
        let chunks = super::vectors::chunks_from_json(v.as_object().expect("an object"))?;
        Ok(Record {
            note,
            origin: origin.clone(),
            chunks,
        })
    };
    read().map_err(|reason| RecordError {
        origin: origin.clone(),
        reason,
    })
}

/// `file:line` of a record (line 0 for a whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file.display(), self.line)
        } else {
            write!(f, "{}", self.file.display())
        }
    }
}

/// A record that could not be read.
#[derive(Debug, Clone)]
pub struct RecordError {
    pub origin: Origin,
    pub reason: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.origin, self.reason)
    }
}

pub type Item = std::result::Result<Record, RecordError>;

fn set_field(note: &mut Note, field: &str, value: String) {
    match field {
        "title" => note.title = Some(value),
        "patient_id" | "patient" => note.patient_id = Some(value),
        "note_type" | "type" => note.note_type = Some(value),
        "specialty" => note.specialty = Some(value),
        "date" => note.date = Some(value),
        other => {
            note.extra.insert(other.to_string(), value);
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A JSON object as a note: `id`/`_id`, `text` (or `body`), `title`, metadata fields, and
/// a nested `metadata` object (BEIR) flattened into them.
pub fn note_from_json(v: &Value) -> std::result::Result<Note, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let text = obj
        .get("text")
        .or_else(|| obj.get("body"))
        .ok_or("missing \"text\"")?;
    let text = text
        .as_str()
        .ok_or("\"text\" must be a string")?
        .to_string();
    let id = obj
        .get("id")
        .or_else(|| obj.get("_id"))
        .and_then(scalar)
        .unwrap_or_default();
    // A known field of another kind is a mistake to report, not a value to drop.
    for (k, v) in obj {
        let known = matches!(
            k.as_str(),
            "id" | "_id"
                | "title"
                | "patient_id"
                | "patient"
                | "note_type"
                | "type"
                | "specialty"
                | "date"
        );
        if known && (v.is_array() || v.is_object()) {
            return Err(format!("{k:?} must be a string (or a number)"));
        }
        if matches!(k.as_str(), "metadata" | "meta") && !(v.is_object() || v.is_null()) {
            return Err(format!("{k:?} must be an object of fields"));
        }
    }
    let mut note = Note::new(id, text);
    let mut add = |k: &str, v: &Value| {
        if let Some(s) = scalar(v) {
            set_field(&mut note, k, s);
        }
    };
    for (k, v) in obj {
        match k.as_str() {
            "id" | "_id" | "text" | "body" => {}
            "metadata" | "meta" => {
                if let Some(m) = v.as_object() {
                    for (mk, mv) in m {
                        add(mk, mv);
                    }
                }
            }
            _ => add(k, v),
        }
    }
    Ok(note)
}

fn err(file: &Path, line: usize, reason: impl Into<String>) -> RecordError {
    RecordError {
        origin: Origin {
            file: file.to_path_buf(),
            line,
        },
        reason: reason.into(),
    }
}

fn jsonl(path: PathBuf) -> Box<dyn Iterator<Item = Item> + Send> {
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return Box::new(std::iter::once(Err(err(&path, 0, e.to_string())))),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut line_no = 0usize;
    let mut buf = Vec::new();
    let mut first = true;
    Box::new(std::iter::from_fn(move || loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(err(&path, line_no + 1, e.to_string()))),
        }
        line_no += 1;
        let Ok(line) = std::str::from_utf8(&buf) else {
            return Some(Err(err(&path, line_no, "not valid UTF-8")));
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let origin = Origin {
            file: path.clone(),
            line: line_no,
        };
        let item = match serde_json::from_str::<Value>(line) {
            Err(e) => Err(err(&path, line_no, format!("invalid JSON ({e})"))),
            // The exchange header ([`super::vectors::Header`]), checked before the run.
            Ok(v) if first && super::vectors::is_header(&v) => {
                first = false;
                continue;
            }
            Ok(v) if v.is_object() => record_from_json(&v, origin),
            Ok(_) => Err(err(&path, line_no, "expected a JSON object")),
        };
        first = false;
        return Some(item);
    }))
}

fn csv_source(path: PathBuf, mapping: CsvMapping) -> Box<dyn Iterator<Item = Item> + Send> {
    let mut rdr = match csv::ReaderBuilder::new().flexible(false).from_path(&path) {
        Ok(r) => r,
        Err(e) => return Box::new(std::iter::once(Err(err(&path, 0, e.to_string())))),
    };
    let headers = match rdr.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => return Box::new(std::iter::once(Err(err(&path, 1, e.to_string())))),
    };
    let col = |name: &str| headers.iter().position(|h| h == name.as_bytes());
    let Some(text_i) = col(&mapping.text_col) else {
        let msg = format!(
            "no column {:?} for the note text (choose one with --text-col)",
            mapping.text_col
        );
        return Box::new(std::iter::once(Err(err(&path, 1, msg))));
    };
    let id_i = match &mapping.id_col {
        Some(c) => match col(c) {
            Some(i) => Some(i),
            None => {
                return Box::new(std::iter::once(Err(err(
                    &path,
                    1,
                    format!("no id column {c:?}"),
                ))))
            }
        },
        None => col("id"),
    };
    let title_i = mapping
        .title_col
        .as_deref()
        .and_then(col)
        .or_else(|| col("title"));
    let mut metas: Vec<(usize, String)> = vec![];
    for (c, field) in &mapping.meta_cols {
        match col(c) {
            Some(i) => metas.push((i, field.clone())),
            None => {
                return Box::new(std::iter::once(Err(err(
                    &path,
                    1,
                    format!("no column {c:?} for --meta-col"),
                ))))
            }
        }
    }
    for f in ["patient_id", "note_type", "specialty", "date"] {
        if let Some(i) = col(f) {
            if !metas.iter().any(|(j, _)| *j == i) {
                metas.push((i, f.to_string()));
            }
        }
    }
    let mut records = rdr.into_byte_records();
    Box::new(std::iter::from_fn(move || {
        let rec = records.next()?;
        Some(match rec {
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                Err(err(&path, line, format!("malformed CSV row ({e})")))
            }
            Ok(r) => {
                let line = r.position().map(|p| p.line() as usize).unwrap_or(0);
                let get = |i: usize| -> std::result::Result<String, RecordError> {
                    let b = r.get(i).unwrap_or(b"");
                    std::str::from_utf8(b).map(str::to_string).map_err(|_| {
                        err(&path, line, format!("column {} is not valid UTF-8", i + 1))
                    })
                };
                (|| {
                    let mut note =
                        Note::new(id_i.map(get).transpose()?.unwrap_or_default(), get(text_i)?);
                    if let Some(i) = title_i {
                        note.title = Some(get(i)?);
                    }
                    for (i, field) in &metas {
                        let v = get(*i)?;
                        if !v.trim().is_empty() {
                            set_field(&mut note, field, v);
                        }
                    }
                    Ok(Record::new(
                        note,
                        Origin {
                            file: path.clone(),
                            line,
                        },
                    ))
                })()
            }
        })
    }))
}

fn txt_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            txt_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "txt") {
            out.push(p);
        }
    }
    Ok(())
}

fn txt_source(root: PathBuf) -> Box<dyn Iterator<Item = Item> + Send> {
    let mut files = vec![];
    if root.is_dir() {
        if let Err(e) = txt_files(&root, &mut files) {
            return Box::new(std::iter::once(Err(err(&root, 0, e.to_string()))));
        }
    } else {
        files.push(root.clone());
    }
    let base = if root.is_dir() {
        root.clone()
    } else {
        root.parent().unwrap_or(Path::new("")).to_path_buf()
    };
    Box::new(files.into_iter().map(move |f| {
        let bytes = std::fs::read(&f).map_err(|e| err(&f, 0, e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| err(&f, 0, "not valid UTF-8"))?;
        // The file name (its path below the folder, without .txt) is the note id.
        let rel = f.strip_prefix(&base).unwrap_or(&f).with_extension("");
        let id = rel.to_string_lossy().replace('\\', "/");
        Ok(Record::new(
            Note::new(id, text),
            Origin {
                file: f.clone(),
                line: 0,
            },
        ))
    }))
}

/// Resolves `auto` for a path.
pub fn detect(path: &Path, format: Format) -> Format {
    if format != Format::Auto {
        return format;
    }
    if path.is_dir() {
        if path.join("corpus.jsonl").is_file() {
            return Format::Beir;
        }
        return Format::Txt;
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Format::Csv,
        Some("txt") => Format::Txt,
        _ => Format::Jsonl,
    }
}

/// Records of one path in the given format.
pub fn read(
    path: &Path,
    format: Format,
    mapping: &CsvMapping,
) -> Box<dyn Iterator<Item = Item> + Send> {
    match detect(path, format) {
        Format::Jsonl | Format::Auto => jsonl(path.to_path_buf()),
        Format::Beir => {
            let p = if path.is_dir() {
                path.join("corpus.jsonl")
            } else {
                path.to_path_buf()
            };
            jsonl(p)
        }
        Format::Csv => csv_source(path.to_path_buf(), mapping.clone()),
        Format::Txt => txt_source(path.to_path_buf()),
    }
}

/// Counts records cheaply (for the progress bar's total).
pub fn count(path: &Path, format: Format) -> Option<u64> {
    match detect(path, format) {
        Format::Jsonl | Format::Auto | Format::Beir => {
            let p = if path.is_dir() {
                path.join("corpus.jsonl")
            } else {
                path.to_path_buf()
            };
            let f = std::fs::File::open(p).ok()?;
            Some(
                std::io::BufReader::new(f)
                    .split(b'\n')
                    .filter(|l| l.as_ref().is_ok_and(|l| !l.trim_ascii().is_empty()))
                    .count() as u64,
            )
        }
        Format::Csv => Some(
            csv::Reader::from_path(path)
                .ok()?
                .into_byte_records()
                .count() as u64,
        ),
        Format::Txt => {
            let mut files = vec![];
            if path.is_dir() {
                txt_files(path, &mut files).ok()?;
                Some(files.len() as u64)
            } else {
                Some(1)
            }
        }
    }
}

/// Parses `src=field` column mappings.
pub fn parse_meta_cols(specs: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
    specs
        .iter()
        .map(|s| match s.split_once('=') {
            Some((c, f)) if !c.is_empty() && !f.is_empty() => Ok((c.to_string(), f.to_string())),
            None if !s.is_empty() => Ok((s.clone(), s.clone())),
            _ => Err(format!("--meta-col {s:?}: expected COLUMN=FIELD")),
        })
        .collect()
}

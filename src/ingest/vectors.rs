//! Precomputed vectors: notes that arrive with their chunks' vectors (embedded elsewhere, on
//! GPUs in a batch job say) are stored without running the encoder, and
//! [`export`] writes a store back out in the same formats, so a collection moves between
//! machines without being embedded again.
//!
//! Two formats, both a JSONL of notes (the fields `ingest` reads) plus the chunks:
//! * **vectors in the JSONL**: `"chunks": [{"char_start": 0, "char_end": 812, "vector": [...]}]`
//!   (character spans into `text`), or `"vector": [...]` for a note that is one chunk;
//! * **a NumPy matrix beside it** (`--npy`): float32 or float64, C order, one row per chunk;
//!   each chunk names its row (`"row": 17`) or takes the row after the previous chunk's
//!   (the first takes row 0); a note without `chunks` is one chunk.
//!
//! An optional first line, the [`Header`] that [`export`] writes, says what made the vectors;
//! it is checked against the data directory's model ([`Header::check`]) before anything is
//! stored. Without one, the dimension of every vector is still checked, note by note.
//! Vectors are L2-normalised on the way in when the data directory's model normalises (a
//! vector already of unit length, to 1e-4, is kept bit for bit so that a round trip is exact).

use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::source::{Item, Origin, RecordError};
use crate::error::{Error, Result};
use crate::model::Window;
use crate::note::Note;
use crate::store::{ModelIdentity, Store};

/// Version of the exchange format, written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// A chunk as a file or request gives it: its character span and its vector, or the row of
/// the NumPy matrix holding it (`vector` None until [`with_rows`] fills it).
#[derive(Debug, Clone, PartialEq)]
pub struct SuppliedChunk {
    pub char_start: usize,
    /// None: to the end of the text (a note given one `vector`).
    pub char_end: Option<usize>,
    pub row: Option<u64>,
    pub vector: Option<Vec<f32>>,
}

/// The first line of an exchange file: what made the vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The format version ([`FORMAT_VERSION`]); its presence marks the line as the header.
    pub clinsearch_vectors: u32,
    /// The model that embedded the chunks (a Hub id or a folder), when the file names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub dim: usize,
    /// The full identity of a clinsearch data directory (pooling, windows...), as
    /// [`export`] writes it; files made elsewhere may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ModelIdentity>,
    /// The NumPy matrix holding the vectors (a file name beside this one), when they are not
    /// in the lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npy: Option<String>,
    /// Notes in the file (as [`export`] wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<u64>,
}

/// The last component of a model name: `sentence-transformers/all-MiniLM-L6-v2` and
/// `/srv/models/all-MiniLM-L6-v2` both name `all-MiniLM-L6-v2`.
fn model_leaf(m: &str) -> &str {
    let m = m.split('@').next().unwrap_or(m).trim_end_matches('/');
    m.rsplit('/').next().unwrap_or(m)
}

impl Header {
    /// Whether vectors made as this header says can go into a data directory built by
    /// `identity`: the same dimension, the same model (by name: the last component of a Hub
    /// id or folder path, since a folder is recorded by its absolute path and the file may
    /// come from another machine), and, when the header carries a full identity, the same
    /// pooling, normalisation, windows and window context.
    pub fn check(&self, identity: &ModelIdentity) -> std::result::Result<(), String> {
        if self.clinsearch_vectors != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this clinsearch reads version {FORMAT_VERSION})",
                self.clinsearch_vectors
            ));
        }
        if self.dim != identity.dim {
            return Err(format!(
                "the vectors have {} dimensions; the data directory's model ({}) makes {}",
                self.dim, identity.model, identity.dim
            ));
        }
        if let Some(m) = &self.model {
            if m != &identity.model && model_leaf(m) != model_leaf(&identity.model) {
                return Err(format!(
                    "the vectors were made by {m}; the data directory's model is {}",
                    identity.model
                ));
            }
        }
        if let Some(theirs) = &self.identity {
            let commits_known = theirs.commit.is_some() && identity.commit.is_some();
            let diff: Vec<String> = theirs
                .differences(identity)
                .into_iter()
                .filter(|d| !d.starts_with("model:"))
                .filter(|d| commits_known || !d.starts_with("commit:"))
                .map(|d| {
                    d.replacen("stored", "file", 1)
                        .replacen("now", "data directory", 1)
                })
                .collect();
            if !diff.is_empty() {
                return Err(format!(
                    "the vectors were made with other settings ({})",
                    diff.join("; ")
                ));
            }
        }
        Ok(())
    }

    /// The header of a JSONL file, if its first non-empty line is one.
    pub fn read(path: &Path) -> Result<Option<Header>> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut line = String::new();
        let mut r = BufReader::new(f);
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| Error::io(path, e))? == 0 {
                return Ok(None);
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            return Ok(None);
        };
        if !is_header(&v) {
            return Ok(None);
        }
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::InvalidInput(format!("{}:1: invalid header: {e}", path.display())))
    }
}

/// Whether a JSON line is an exchange header rather than a note.
pub fn is_header(v: &Value) -> bool {
    v.get("clinsearch_vectors").is_some()
}

fn int(v: &Value, what: &str) -> std::result::Result<u64, String> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .ok_or_else(|| format!("{what} must be a whole number >= 0"))
}

fn vector(v: &Value, what: &str) -> std::result::Result<Vec<f32>, String> {
    let a = v
        .as_array()
        .ok_or_else(|| format!("{what} must be an array of numbers"))?;
    if a.is_empty() {
        return Err(format!("{what} is empty"));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| format!("{what}[{i}] is not a number"))
        })
        .collect()
}

/// The chunks a note object carries (`chunks`, or one `vector`), or None when it carries
/// none (it is to be embedded, or to take the next row of a NumPy matrix).
pub fn chunks_from_json(
    obj: &Map<String, Value>,
) -> std::result::Result<Option<Vec<SuppliedChunk>>, String> {
    match (obj.get("chunks"), obj.get("vector")) {
        (None, None) | (Some(Value::Null), None) | (None, Some(Value::Null)) => Ok(None),
        (Some(_), Some(_)) => Err("give \"chunks\" or \"vector\", not both".into()),
        (None, Some(v)) => Ok(Some(vec![SuppliedChunk {
            char_start: 0,
            char_end: None,
            row: None,
            vector: Some(vector(v, "\"vector\"")?),
        }])),
        (Some(c), None) => {
            let items = c
                .as_array()
                .ok_or("\"chunks\" must be an array of {char_start, char_end, vector} objects")?;
            if items.is_empty() {
                return Err("\"chunks\" is empty".into());
            }
            items
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = |f: &str| format!("chunks[{i}].{f}");
                    let o = c
                        .as_object()
                        .ok_or_else(|| format!("chunks[{i}] must be an object"))?;
                    for k in o.keys() {
                        if !matches!(k.as_str(), "char_start" | "char_end" | "vector" | "row") {
                            return Err(format!(
                                "chunks[{i}] has an unknown field {k:?} (char_start, char_end, vector, row)"
                            ));
                        }
                    }
                    let start = o
                        .get("char_start")
                        .ok_or_else(|| format!("{} is missing", at("char_start")))?;
                    let end = o
                        .get("char_end")
                        .ok_or_else(|| format!("{} is missing", at("char_end")))?;
                    Ok(SuppliedChunk {
                        char_start: int(start, &at("char_start"))? as usize,
                        char_end: Some(int(end, &at("char_end"))? as usize),
                        row: o.get("row").map(|r| int(r, &at("row"))).transpose()?,
                        vector: o.get("vector").map(|v| vector(v, &at("vector"))).transpose()?,
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()
                .map(Some)
        }
    }
}

/// The windows of `note` from its supplied chunks, checked: every span inside the text (an
/// empty one too: the encoder's first window can hold only the title), every vector of `dim` finite numbers, not all zero (then L2-normalised when
/// `normalize`, unless already of unit length).
pub fn windows_of(
    note: &Note,
    chunks: &[SuppliedChunk],
    dim: usize,
    normalize: bool,
) -> std::result::Result<Vec<Window>, String> {
    // The byte offset of every character, and the text's end.
    let bytes: Vec<usize> = note
        .text
        .char_indices()
        .map(|(b, _)| b)
        .chain([note.text.len()])
        .collect();
    let n_chars = bytes.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let end = c.char_end.unwrap_or(n_chars);
            // An empty span is allowed: a first window can hold nothing but the title.
            if c.char_start > end || end > n_chars {
                return Err(format!(
                    "chunks[{i}]: the span {}..{end} is not a part of the text (0..{n_chars} characters)",
                    c.char_start
                ));
            }
            let Some(v) = &c.vector else {
                return Err(format!(
                    "chunks[{i}] has no vector (give \"vector\", or its \"row\" of an --npy matrix)"
                ));
            };
            if v.len() != dim {
                return Err(format!(
                    "chunks[{i}]: the vector has {} dimensions; the data directory's model makes {dim}",
                    v.len()
                ));
            }
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("chunks[{i}]: vector[{j}] is not a finite number"));
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm == 0.0 {
                return Err(format!("chunks[{i}]: the vector is all zeros"));
            }
            let vector = if normalize && (norm - 1.0).abs() > 1e-4 {
                v.iter().map(|x| x / norm).collect()
            } else {
                v.clone()
            };
            Ok(Window {
                index: i,
                start: bytes[c.char_start],
                end: bytes[end],
                char_start: c.char_start,
                char_end: end,
                tokens: 0,
                vector,
            })
        })
        .collect()
}

/// Every record must carry its vectors (`ingest --vectors`): one without is refused, not
/// embedded.
pub fn require_vectors(
    src: Box<dyn Iterator<Item = Item> + Send>,
) -> Box<dyn Iterator<Item = Item> + Send> {
    Box::new(src.map(|item| {
        let rec = item?;
        if rec.chunks.is_none() {
            return Err(RecordError {
                origin: rec.origin,
                reason: "no vectors: with --vectors every note carries \"chunks\" or \"vector\""
                    .into(),
            });
        }
        Ok(rec)
    }))
}

/// A NumPy `.npy` matrix of chunk vectors, read a row at a time.
pub struct NpyMatrix {
    path: PathBuf,
    file: BufReader<std::fs::File>,
    data_offset: u64,
    rows: u64,
    dim: usize,
    /// Bytes per value: 4 (float32) or 8 (float64).
    width: usize,
    /// The row the reader stands before.
    pos: u64,
}

fn npy_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: {reason}", path.display()))
}

/// The value of `'key':` in a NumPy header dictionary (up to the next top-level comma).
fn header_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

impl NpyMatrix {
    /// Opens a 2-D float32/float64 little-endian C-order matrix.
    pub fn open(path: &Path) -> Result<NpyMatrix> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut file = BufReader::with_capacity(1 << 20, f);
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic)
            .map_err(|_| npy_err(path, "not a NumPy .npy file (too short)"))?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(npy_err(path, "not a NumPy .npy file (no \\x93NUMPY magic)"));
        }
        let header_len = match magic[6] {
            1 => {
                let mut b = [0u8; 2];
                file.read_exact(&mut b).map_err(|e| Error::io(path, e))?;
                u16::from_le_bytes(b) as usize
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                file.read_exact(&mut b).map_err(|e| Error::io(path, e))?;
                u32::from_le_bytes(b) as usize
            }
            v => {
                return Err(npy_err(
                    path,
                    format!("NumPy format version {v} is not known"),
                ))
            }
        };
        let prefix = if magic[6] == 1 { 10 } else { 12 };
        let mut h = vec![0u8; header_len];
        file.read_exact(&mut h)
            .map_err(|_| npy_err(path, "the header is truncated"))?;
        let h = String::from_utf8_lossy(&h).into_owned();
        let descr = header_value(&h, "descr")
            .ok_or_else(|| npy_err(path, "the header has no 'descr'"))?
            .trim_matches(|c| c == '\'' || c == '"');
        let width = match descr {
            "<f4" => 4,
            "<f8" => 8,
            other => {
                return Err(npy_err(
                    path,
                    format!(
                        "dtype {other}: float32 ('<f4') or float64 ('<f8') little-endian expected"
                    ),
                ))
            }
        };
        if header_value(&h, "fortran_order") != Some("False") {
            return Err(npy_err(
                path,
                "a Fortran-order matrix: save it in C order (numpy.ascontiguousarray)",
            ));
        }
        let shape =
            header_value(&h, "shape").ok_or_else(|| npy_err(path, "the header has no 'shape'"))?;
        let dims: Vec<u64> = shape
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| npy_err(path, format!("shape {shape} is not a tuple of sizes")))?;
        let [rows, dim] = dims[..] else {
            return Err(npy_err(
                path,
                format!("shape {shape}: a 2-D matrix (chunks x dimensions) expected"),
            ));
        };
        let data_offset = (prefix + header_len) as u64;
        let need = data_offset + rows * dim * width as u64;
        if len < need {
            return Err(npy_err(
                path,
                format!("shape {shape} needs {need} bytes; the file has {len}"),
            ));
        }
        Ok(NpyMatrix {
            path: path.to_path_buf(),
            file,
            data_offset,
            rows,
            dim: dim as usize,
            width,
            pos: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i` as f32 (sequential reads do not seek).
    pub fn row(&mut self, i: u64) -> Result<Vec<f32>> {
        if i >= self.rows {
            return Err(npy_err(
                &self.path,
                format!("row {i} does not exist (the matrix has {} rows)", self.rows),
            ));
        }
        let row_bytes = (self.dim * self.width) as u64;
        if i != self.pos {
            self.file
                .seek(SeekFrom::Start(self.data_offset + i * row_bytes))
                .map_err(|e| Error::io(&self.path, e))?;
        }
        let mut buf = vec![0u8; row_bytes as usize];
        self.file
            .read_exact(&mut buf)
            .map_err(|e| Error::io(&self.path, e))?;
        self.pos = i + 1;
        Ok(if self.width == 4 {
            buf.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        } else {
            buf.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect()
        })
    }
}

/// How many rows of a matrix [`with_rows`] used: read after the run to say when rows were
/// left over.
#[derive(Debug, Default)]
pub struct RowsUsed {
    pub count: AtomicU64,
}

/// A matrix of chunk vectors read by row: a `.npy` file ([`NpyMatrix`]) or one in memory
/// ([`MemoryRows`], the Python package's NumPy arrays).
pub trait Rows: Send {
    /// Row `i`; a row past the end is an error naming the matrix's size.
    fn row(&mut self, i: u64) -> Result<Vec<f32>>;
}

impl Rows for NpyMatrix {
    fn row(&mut self, i: u64) -> Result<Vec<f32>> {
        NpyMatrix::row(self, i)
    }
}

/// A row-major matrix held in memory.
pub struct MemoryRows {
    data: Vec<f32>,
    rows: usize,
    dim: usize,
}

impl MemoryRows {
    /// `data` holds `rows` rows of `dim` values each.
    pub fn new(data: Vec<f32>, rows: usize, dim: usize) -> MemoryRows {
        assert_eq!(data.len(), rows * dim, "a matrix of rows x dim values");
        MemoryRows { data, rows, dim }
    }
}

impl Rows for MemoryRows {
    fn row(&mut self, i: u64) -> Result<Vec<f32>> {
        let i = usize::try_from(i).unwrap_or(usize::MAX);
        if i >= self.rows {
            return Err(Error::InvalidInput(format!(
                "row {i} does not exist (the matrix has {} rows)",
                self.rows
            )));
        }
        Ok(self.data[i * self.dim..(i + 1) * self.dim].to_vec())
    }
}

/// Fills each record's chunks from `matrix`: a chunk names its row or takes the row after
/// the previous chunk's; a note without chunks is one chunk over its whole text. A chunk that
/// also carries a vector, or a row past the end, refuses its note (`file:line`).
pub fn with_rows(
    src: Box<dyn Iterator<Item = Item> + Send>,
    mut matrix: Box<dyn Rows>,
    used: Arc<RowsUsed>,
) -> Box<dyn Iterator<Item = Item> + Send> {
    let mut next: u64 = 0;
    Box::new(src.map(move |item| {
        let mut rec = item?;
        let fail = |origin: &Origin, reason: String| RecordError {
            origin: origin.clone(),
            reason,
        };
        let mut chunks = rec.chunks.take().unwrap_or_else(|| {
            vec![SuppliedChunk {
                char_start: 0,
                char_end: None,
                row: None,
                vector: None,
            }]
        });
        for (i, c) in chunks.iter_mut().enumerate() {
            if c.vector.is_some() {
                return Err(fail(
                    &rec.origin,
                    format!("chunks[{i}] has a vector and --npy gives rows: use one of the two"),
                ));
            }
            let row = c.row.unwrap_or(next);
            let v = matrix.row(row).map_err(|e| {
                fail(
                    &rec.origin,
                    format!(
                        "chunks[{i}]: {}",
                        e.to_string().trim_start_matches("invalid input: ")
                    ),
                )
            })?;
            next = row + 1;
            c.row = Some(row);
            c.vector = Some(v);
            used.count.fetch_add(1, Ordering::Relaxed);
        }
        rec.chunks = Some(chunks);
        Ok(rec)
    }))
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub notes: u64,
    pub chunks: u64,
    pub seconds: f64,
}

/// A note as an ingest line reads it: its fields, with free metadata under `metadata`.
fn note_object(note: &Note) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), note.id.clone().into());
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            o.insert(k.into(), v.clone().into());
        }
    };
    put("title", &note.title);
    put("patient_id", &note.patient_id);
    put("note_type", &note.note_type);
    put("specialty", &note.specialty);
    put("date", &note.date);
    o.insert("text".into(), note.text.clone().into());
    if !note.extra.is_empty() {
        let m: Map<String, Value> = note
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        o.insert("metadata".into(), Value::Object(m));
    }
    o
}

/// The header NumPy wants for an `rows x dim` float32 matrix, padded to `size` bytes (a
/// multiple of 64 above the dictionary's length); the rows follow it, little-endian.
pub fn npy_header(rows: u64, dim: usize, size: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let body = size - 10;
    h.extend_from_slice(&(body as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(size - 1, b' ');
    h.push(b'\n');
    h
}

/// Room kept for the matrix header, written once the row count is known (a multiple of 64,
/// as NumPy aligns the data).
const NPY_HEADER: usize = 128;

/// Writes every stored note with its chunks, in id order, to `out` (JSONL, after a
/// [`Header`]), with the vectors in the lines or, given `npy`, as rows of that matrix (each
/// chunk then names its row). Files are written aside and renamed into place.
pub fn export(
    store: &Store,
    identity: &ModelIdentity,
    out: &Path,
    npy: Option<&Path>,
) -> Result<ExportReport> {
    let t0 = std::time::Instant::now();
    let tmp = |p: &Path| PathBuf::from(format!("{}.partial", p.display()));
    let (out_tmp, npy_tmp) = (tmp(out), npy.map(tmp));
    let file = |p: &Path| -> Result<BufWriter<std::fs::File>> {
        Ok(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
        ))
    };
    let mut lines = file(&out_tmp)?;
    let mut matrix = npy_tmp.as_deref().map(file).transpose()?;
    if let Some(m) = matrix.as_mut() {
        m.write_all(&[0u8; NPY_HEADER])
            .map_err(|e| Error::io(npy.unwrap(), e))?;
    }
    let header = Header {
        clinsearch_vectors: FORMAT_VERSION,
        model: Some(identity.model.clone()),
        dim: identity.dim,
        identity: Some(identity.clone()),
        npy: npy
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        notes: Some(store.note_count() as u64),
    };
    let werr = |e: std::io::Error| Error::io(out, e);
    serde_json::to_writer(&mut lines, &header).map_err(|e| Error::io(out, e.into()))?;
    lines.write_all(b"\n").map_err(werr)?;
    let (mut notes, mut rows) = (0u64, 0u64);
    for stored in store.notes() {
        let stored = stored?;
        let chunks = store.chunks_of(&stored)?;
        let mut o = note_object(&stored.note);
        let mut list = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let mut co = Map::new();
            co.insert("char_start".into(), c.char_start.into());
            co.insert("char_end".into(), c.char_end.into());
            match matrix.as_mut() {
                Some(m) => {
                    co.insert("row".into(), rows.into());
                    let mut buf = Vec::with_capacity(4 * c.vector.len());
                    for x in &c.vector {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    m.write_all(&buf).map_err(|e| Error::io(npy.unwrap(), e))?;
                }
                None => {
                    co.insert(
                        "vector".into(),
                        serde_json::to_value(&c.vector).expect("floats"),
                    );
                }
            }
            rows += 1;
            list.push(Value::Object(co));
        }
        o.insert("chunks".into(), Value::Array(list));
        serde_json::to_writer(&mut lines, &Value::Object(o))
            .map_err(|e| Error::io(out, e.into()))?;
        lines.write_all(b"\n").map_err(werr)?;
        notes += 1;
    }
    lines.flush().map_err(werr)?;
    lines.get_ref().sync_all().map_err(werr)?;
    drop(lines);
    if let (Some(mut m), Some(npy), Some(npy_tmp)) = (matrix, npy, npy_tmp.as_deref()) {
        m.flush().map_err(|e| Error::io(npy, e))?;
        let mut f = m.into_inner().map_err(|e| Error::io(npy, e.into_error()))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(npy, e))?;
        f.write_all(&npy_header(rows, identity.dim, NPY_HEADER))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(npy, e))?;
        std::fs::rename(npy_tmp, npy).map_err(|e| Error::io(npy, e))?;
    }
    std::fs::rename(&out_tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(ExportReport {
        notes,
        chunks: rows,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunks(v: Value) -> std::result::Result<Option<Vec<SuppliedChunk>>, String> {
        chunks_from_json(v.as_object().unwrap())
    }

    #[test]
    fn a_note_carries_chunks_or_one_vector_and_every_mistake_is_named() {
        assert_eq!(chunks(json!({"text": "t"})).unwrap(), None);
        let one = chunks(json!({"vector": [1, 0.5]})).unwrap().unwrap();
        assert_eq!(one[0].vector.as_deref(), Some(&[1.0, 0.5][..]));
        assert_eq!((one[0].char_start, one[0].char_end), (0, None));
        let two = chunks(json!({"chunks": [
            {"char_start": 0, "char_end": 3, "vector": [1.0]},
            {"char_start": 2, "char_end": 5, "row": 7}
        ]}))
        .unwrap()
        .unwrap();
        assert_eq!((two[1].row, two[1].vector.as_ref()), (Some(7), None));
        for (bad, want) in [
            (json!({"vector": [1], "chunks": []}), "not both"),
            (json!({"vector": []}), "\"vector\" is empty"),
            (json!({"vector": [1, "x"]}), "\"vector\"[1] is not a number"),
            (json!({"chunks": []}), "\"chunks\" is empty"),
            (
                json!({"chunks": [{"char_end": 3}]}),
                "chunks[0].char_start is missing",
            ),
            (
                json!({"chunks": [{"char_start": -1, "char_end": 3}]}),
                "chunks[0].char_start must be",
            ),
            (
                json!({"chunks": [{"char_start": 0, "char_end": 3, "vec": []}]}),
                "unknown field \"vec\"",
            ),
        ] {
            let e = chunks(bad).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn spans_are_characters_and_vectors_are_checked_then_normalised() {
        let note = Note::new("n", "Fièvre à 39. Toux.");
        let c = |s, e: Option<usize>, v: Vec<f32>| SuppliedChunk {
            char_start: s,
            char_end: e,
            row: None,
            vector: Some(v),
        };
        let w = windows_of(
            &note,
            &[c(0, Some(12), vec![3.0, 4.0]), c(13, None, vec![0.6, 0.8])],
            2,
            true,
        )
        .unwrap();
        assert_eq!(&note.text[w[0].start..w[0].end], "Fièvre à 39.");
        assert_eq!(&note.text[w[1].start..w[1].end], "Toux.");
        assert_eq!(w[0].vector, vec![0.6, 0.8], "normalised");
        assert_eq!(
            w[1].vector,
            vec![0.6, 0.8],
            "already unit length: kept as given"
        );
        assert_eq!((w[1].index, w[1].char_end), (1, 18));
        for (chunk, want) in [
            (c(4, Some(3), vec![1.0, 0.0]), "the span 4..3"),
            (c(0, Some(19), vec![1.0, 0.0]), "0..18 characters"),
            (c(0, None, vec![1.0]), "1 dimensions"),
            (
                c(0, None, vec![f32::NAN, 1.0]),
                "vector[0] is not a finite number",
            ),
            (c(0, None, vec![0.0, 0.0]), "all zeros"),
        ] {
            let e = windows_of(&note, &[chunk], 2, true).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn npy_matrices_are_read_by_row_in_both_float_widths() {
        let dir = tempfile::tempdir().unwrap();
        let f32_path = dir.path().join("m.npy");
        let mut b = npy_header(3, 2, NPY_HEADER);
        for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(&f32_path, &b).unwrap();
        let mut m = NpyMatrix::open(&f32_path).unwrap();
        assert_eq!((m.rows(), m.dim()), (3, 2));
        assert_eq!(m.row(2).unwrap(), vec![5.0, 6.0]);
        assert_eq!(m.row(0).unwrap(), vec![1.0, 2.0]);
        assert_eq!(m.row(1).unwrap(), vec![3.0, 4.0]);
        assert!(m
            .row(3)
            .unwrap_err()
            .to_string()
            .contains("row 3 does not exist"));
        // float64 as NumPy writes it (version 1.0, 64-byte aligned header).
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(118u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.resize(127, b' ');
        b.push(b'\n');
        for x in [0.25f64, -2.0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        let p = dir.path().join("d.npy");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            NpyMatrix::open(&p).unwrap().row(0).unwrap(),
            vec![0.25, -2.0]
        );
        // Refused: another dtype, Fortran order, a short file.
        for (dict, want) in [
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2), }",
                "dtype <i4",
            ),
            (
                "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }",
                "Fortran",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (9, 2), }",
                "needs",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                "2-D",
            ),
        ] {
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(118u16).to_le_bytes());
            b.extend_from_slice(dict.as_bytes());
            b.resize(127, b' ');
            b.push(b'\n');
            b.extend_from_slice(&[0u8; 16]);
            std::fs::write(&p, &b).unwrap();
            let e = NpyMatrix::open(&p).err().unwrap().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn a_header_must_match_the_data_directorys_model() {
        let identity = ModelIdentity {
            model: "/srv/models/all-MiniLM-L6-v2".into(),
            revision: None,
            commit: None,
            pooling: crate::model::Pooling::Mean,
            normalize: true,
            dim: 384,
            window_size: 256,
            stride: 32,
            input: crate::store::EMBEDDING_INPUT.into(),
            context: Default::default(),
        };
        let h = |model: Option<&str>, dim| Header {
            clinsearch_vectors: FORMAT_VERSION,
            model: model.map(str::to_string),
            dim,
            identity: None,
            npy: None,
            notes: None,
        };
        assert!(h(None, 384).check(&identity).is_ok());
        assert!(h(Some("sentence-transformers/all-MiniLM-L6-v2"), 384)
            .check(&identity)
            .is_ok());
        assert!(h(Some("org/other"), 384)
            .check(&identity)
            .unwrap_err()
            .contains("org/other"));
        assert!(h(None, 768)
            .check(&identity)
            .unwrap_err()
            .contains("768 dimensions"));
        let mut full = h(Some("/elsewhere/all-MiniLM-L6-v2"), 384);
        full.identity = Some(ModelIdentity {
            model: "/elsewhere/all-MiniLM-L6-v2".into(),
            ..identity.clone()
        });
        assert!(
            full.check(&identity).is_ok(),
            "the same model in another folder"
        );
        full.identity.as_mut().unwrap().window_size = 128;
        let e = full.check(&identity).unwrap_err();
        assert!(e.contains("window: file 128, data directory 256"), "{e}");
    }
}

//! `clinsearch._native`: the Rust library seen from Python (PyO3). The Python package
//! (`python/clinsearch/__init__.py`) wraps these classes with keyword arguments and
//! docstrings; structured values cross as JSON text (the same serde types the HTTP API
//! writes, so a search answers exactly the API's fields) and vectors as NumPy arrays.
//!
//! Every call that embeds, reads or writes releases the GIL (`Python::detach`): other Python
//! threads run meanwhile, and two searches from two threads run in parallel.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use serde_json::{json, Value};

use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::ingest::{self, source, vectors as supplied};
use clinsearch::model::{Encoder as RustEncoder, EncoderOptions, WindowConfig};
use clinsearch::search::{SearchRequest, Searcher as RustSearcher};
use clinsearch::store::ModelIdentity;
use clinsearch::Error;

/// The library's errors as Python's: the caller's mistakes as `ValueError` (or
/// `FileNotFoundError` for a model that is not there), file failures as `OSError`, the rest
/// as `RuntimeError`; the message is the library's own.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::InvalidInput(_) | Error::ModelMismatch(_) | Error::Unsupported(_) => {
            PyValueError::new_err(msg)
        }
        Error::ModelNotFound(_) | Error::NotFound(_) => PyFileNotFoundError::new_err(msg),
        Error::Io { .. } => PyOSError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

fn bad(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

fn parse_json(text: &str, what: &str) -> PyResult<Value> {
    serde_json::from_str(text).map_err(|e| bad(format!("{what}: not JSON ({e})")))
}

fn to_json(v: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// Rows of vectors as a (rows, dim) float32 array.
fn matrix<'py>(py: Python<'py>, rows: Vec<Vec<f32>>, dim: usize) -> Bound<'py, PyArray2<f32>> {
    let n = rows.len();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Array2::from_shape_vec((n, dim), flat)
        .expect("every vector has the model's dimension")
        .into_pyarray(py)
}

/// A loaded BERT encoder (a model folder, or a Hub id resolved through the HF cache).
#[pyclass(frozen, module = "clinsearch._native")]
struct Encoder {
    inner: Arc<RustEncoder>,
}

#[pymethods]
impl Encoder {
    /// `data`: a data directory whose recorded encoder settings (window, stride, context)
    /// the encoder takes, so that its vectors compare with the stored ones. `max_windows`
    /// caps the windows of one text (256, as `clinsearch ingest`; None: no cap).
    #[new]
    #[pyo3(signature = (model, device="cpu", dtype="f32", window=None, stride=None, window_context=None, batch_size=32, normalize=true, max_windows=256, data=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &str,
        device: &str,
        dtype: &str,
        window: Option<usize>,
        stride: Option<usize>,
        window_context: Option<&str>,
        batch_size: usize,
        normalize: bool,
        max_windows: Option<usize>,
        data: Option<PathBuf>,
    ) -> PyResult<Self> {
        let (dtype, int8) = clinsearch::model::parse_precision(dtype).map_err(py_err)?;
        let mut opts = EncoderOptions {
            pooling: None,
            normalize: Some(normalize),
            window: WindowConfig {
                size: window,
                stride,
                max_windows,
                context: window_context
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| bad(format!("window_context: {e}")))?,
            },
            batch_size: batch_size.max(1),
            device: clinsearch::model::parse_device(device).map_err(py_err)?,
            dtype,
            int8,
        };
        if let Some(dir) = &data {
            clinsearch::engine::fill_profile(dir, &mut opts).map_err(py_err)?;
        }
        let model = model.to_string();
        let inner = py
            .detach(move || RustEncoder::load(&model, &opts))
            .map_err(py_err)?;
        Ok(Encoder {
            inner: Arc::new(inner),
        })
    }

    /// Dimensions of a vector.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// What `clinsearch model info` prints, as JSON.
    fn info_json(&self) -> PyResult<String> {
        to_json(self.inner.info())
    }

    /// What a data directory records of this model, as JSON.
    fn identity_json(&self) -> PyResult<String> {
        to_json(&ModelIdentity::from_info(self.inner.info()))
    }

    /// One vector per text (truncated to one window): (len(texts), dim) float32.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let enc = self.inner.clone();
        let rows = py
            .detach(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                enc.embed(&refs)
            })
            .map_err(py_err)?;
        Ok(matrix(py, rows, self.inner.dim()))
    }

    /// Every window of every text: the (windows, dim) matrix, and for each row its text's
    /// index and character span `(text, char_start, char_end)`.
    #[allow(clippy::type_complexity)]
    fn embed_windows<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Vec<(usize, usize, usize)>)> {
        let enc = self.inner.clone();
        let windows = py
            .detach(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                enc.embed_windows(&refs)
            })
            .map_err(py_err)?;
        let mut spans = vec![];
        let mut rows = vec![];
        for (i, ws) in windows.into_iter().enumerate() {
            for w in ws {
                spans.push((i, w.char_start, w.char_end));
                rows.push(w.vector);
            }
        }
        Ok((matrix(py, rows, self.inner.dim()), spans))
    }

    /// Embeds notes (a JSON array of note objects) exactly as `clinsearch ingest` does
    /// (title and section context, windows): returns the chunk map, a JSON array with for
    /// each note either `{"chunks": [{"char_start", "char_end", "row"}]}` or `{"error"}`,
    /// and the (chunks, dim) matrix the rows point into: what `DataDir.import_chunks` takes.
    fn embed_notes<'py>(
        &self,
        py: Python<'py>,
        notes_json: &str,
    ) -> PyResult<(String, Bound<'py, PyArray2<f32>>)> {
        let notes = parse_json(notes_json, "notes")?;
        let Value::Array(items) = notes else {
            return Err(bad("notes must be a list of note objects"));
        };
        let enc = self.inner.clone();
        let (map, rows) = py
            .detach(move || -> clinsearch::Result<(Vec<Value>, Vec<Vec<f32>>)> {
                let parsed: Vec<Result<clinsearch::note::Note, String>> =
                    items.iter().map(source::note_from_json).collect();
                let ok: Vec<&clinsearch::note::Note> =
                    parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
                let mut embedded = ingest::embed_notes(&enc, &ok)?.into_iter();
                let (mut map, mut rows) = (vec![], vec![]);
                for (i, p) in parsed.iter().enumerate() {
                    let windows = match p {
                        Err(e) => Err(e.clone()),
                        Ok(_) => embedded
                            .next()
                            .expect("one result per note")
                            .map_err(|e| e.to_string()),
                    };
                    map.push(match windows {
                        Err(e) => json!({ "error": format!("notes[{i}]: {e}") }),
                        Ok(ws) => {
                            let chunks: Vec<Value> = ws
                                .into_iter()
                                .map(|w| {
                                    let row = rows.len();
                                    rows.push(w.vector);
                                    json!({"char_start": w.char_start, "char_end": w.char_end, "row": row})
                                })
                                .collect();
                            json!({ "chunks": chunks })
                        }
                    });
                }
                Ok((map, rows))
            })
            .map_err(py_err)?;
        Ok((to_json(&map)?, matrix(py, rows, self.inner.dim())))
    }

    /// Token ids, token strings and byte offsets of a text (no special tokens).
    #[allow(clippy::type_complexity)]
    fn tokenize(&self, text: &str) -> PyResult<(Vec<u32>, Vec<String>, Vec<(usize, usize)>)> {
        let tok = self.inner.tokenizer();
        let t = tok.encode(text).map_err(py_err)?;
        let names = t
            .ids
            .iter()
            .map(|&i| tok.id_to_token(i).unwrap_or_default())
            .collect();
        Ok((t.ids, names, t.offsets))
    }

    /// The `top_k` most likely tokens for every `[MASK]` of `text`, as JSON.
    fn fill_mask(&self, py: Python<'_>, text: String, top_k: usize) -> PyResult<String> {
        let enc = self.inner.clone();
        let p = py
            .detach(move || enc.fill_mask(&text, top_k))
            .map_err(py_err)?;
        to_json(&p)
    }
}

/// A clinsearch data directory (sled store, BM25 and vector indexes), opened or created for
/// one model. One process holds it at a time (sled's lock).
#[pyclass(frozen, module = "clinsearch._native")]
struct DataDir {
    dir: PathBuf,
    engine: Arc<Engine>,
    encoder: Arc<RustEncoder>,
}

fn report_json(r: &ingest::IngestReport) -> PyResult<String> {
    to_json(r)
}

impl DataDir {
    fn run(&self, py: Python<'_>, items: Vec<ingest::Item>, batch_size: usize) -> PyResult<String> {
        let engine = self.engine.clone();
        let encoder = self.encoder.clone();
        let report = py
            .detach(move || -> clinsearch::Result<ingest::IngestReport> {
                let src: Box<dyn Iterator<Item = ingest::Item> + Send> =
                    Box::new(items.into_iter());
                let opts = ingest::IngestOptions {
                    batch_size: batch_size.max(1),
                    on_error: ingest::OnError::Skip,
                    ..Default::default()
                };
                let report = ingest::run(&engine, &encoder, vec![src], None, &opts)?;
                engine.checkpoint()?;
                Ok(report)
            })
            .map_err(py_err)?;
        report_json(&report)
    }
}

fn records(notes_json: &str) -> PyResult<Vec<ingest::Item>> {
    let Value::Array(items) = parse_json(notes_json, "notes")? else {
        return Err(bad("notes must be a list of note objects"));
    };
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, v)| source::record_from_json(v, ingest::batch::request_origin(i)))
        .collect())
}

#[pymethods]
impl DataDir {
    #[new]
    #[pyo3(signature = (path, encoder, quantization=None, m=None, ef_construction=None, ef_search=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        encoder: &Encoder,
        quantization: Option<&str>,
        m: Option<usize>,
        ef_construction: Option<usize>,
        ef_search: Option<usize>,
    ) -> PyResult<Self> {
        let quantization = quantization
            .map(|q| match q {
                "f32" => Ok(clinsearch::index::Quantization::F32),
                "int8" => Ok(clinsearch::index::Quantization::Int8),
                other => Err(bad(format!("quantization {other:?}: f32 or int8"))),
            })
            .transpose()?;
        let opts = OpenOptions {
            vectors: clinsearch::index::VectorChoice {
                quantization,
                m,
                ef_construction,
                ef_search,
            },
            ..Default::default()
        };
        let identity = ModelIdentity::from_info(encoder.inner.info());
        let dir = path.clone();
        let engine = py
            .detach(move || -> clinsearch::Result<Engine> {
                clinsearch::engine::recover_interrupted_swap(&dir)?;
                let e = Engine::open(&dir, Some(&identity), &opts)?;
                clinsearch::engine::mark_existing(&dir);
                Ok(e)
            })
            .map_err(py_err)?;
        Ok(DataDir {
            dir: path,
            engine: Arc::new(engine),
            encoder: encoder.inner.clone(),
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Stores notes with vectors computed elsewhere: `notes_json` is a JSON array of note
    /// objects whose `chunks` name rows of `vectors` (`{"char_start", "char_end", "row"}`;
    /// a chunk without `row` takes the row after the previous chunk's, a note without
    /// `chunks` one row for its whole text), exactly as `ingest --npy` reads them. The
    /// report names each refused note (`request:N: reason`); the others are stored.
    fn import_chunks(
        &self,
        py: Python<'_>,
        notes_json: &str,
        vectors: PyReadonlyArray2<'_, f32>,
        batch_size: usize,
    ) -> PyResult<String> {
        let a = vectors.as_array();
        let (rows, dim) = (a.nrows(), a.ncols());
        if dim != self.encoder.dim() {
            return Err(bad(format!(
                "the vectors have {dim} dimensions; the data directory's model makes {}; nothing was stored",
                self.encoder.dim()
            )));
        }
        let data: Vec<f32> = a.iter().copied().collect();
        let matrix = supplied::MemoryRows::new(data, rows, dim);
        let items = records(notes_json)?;
        let src: Box<dyn Iterator<Item = ingest::Item> + Send> = Box::new(items.into_iter());
        let filled: Vec<ingest::Item> =
            supplied::with_rows(src, Box::new(matrix), Default::default()).collect();
        self.run(py, filled, batch_size)
    }

    /// Stores notes (a JSON array of note objects), embedding those that carry no vectors.
    fn add(&self, py: Python<'_>, notes_json: &str, batch_size: usize) -> PyResult<String> {
        let items = records(notes_json)?;
        self.run(py, items, batch_size)
    }

    /// Deletes notes everywhere; returns how many existed.
    fn delete(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        let engine = self.engine.clone();
        py.detach(move || engine.delete(&ids)).map_err(py_err)
    }

    /// What `clinsearch stats` prints, as JSON.
    fn stats_json(&self, py: Python<'_>) -> PyResult<String> {
        let engine = self.engine.clone();
        let v = py.detach(move || engine.stats()).map_err(py_err)?;
        to_json(&v)
    }
}

/// `POST /api/search`'s reply: the response and the time taken.
#[derive(serde::Serialize)]
struct Reply<'a> {
    #[serde(flatten)]
    response: &'a clinsearch::search::SearchResponse,
    took_ms: f64,
}

/// Searches a data directory: the HTTP API's search, from Python. Every search records the
/// notes and patients it returned in the data directory's access audit before answering
/// (principal `python:USER`).
#[pyclass(frozen, module = "clinsearch._native")]
struct Searcher {
    engine: Arc<Engine>,
    encoder: Arc<RustEncoder>,
    audit: Arc<clinsearch::audit::AuditLog>,
}

#[pymethods]
impl Searcher {
    #[new]
    fn new(data: &DataDir) -> PyResult<Self> {
        let audit = clinsearch::audit::AuditLog::open(&data.dir.join("audit")).map_err(py_err)?;
        Ok(Searcher {
            engine: data.engine.clone(),
            encoder: data.encoder.clone(),
            audit: Arc::new(audit),
        })
    }

    /// Runs the search `body_json` (the JSON body of `POST /api/search`) and answers the
    /// API's reply as JSON.
    fn search(&self, py: Python<'_>, body_json: &str) -> PyResult<String> {
        let req = request_of(body_json)?;
        let (engine, encoder, audit) = (
            self.engine.clone(),
            self.encoder.clone(),
            self.audit.clone(),
        );
        let reply = py
            .detach(move || -> clinsearch::Result<String> {
                let t = std::time::Instant::now();
                let qv = if req.mode.needs_vector() {
                    Some(encoder.embed(&[req.embedding_text().as_str()])?.remove(0))
                } else {
                    None
                };
                let embed_ms = t.elapsed().as_secs_f64() * 1e3;
                let mut resp = RustSearcher::new(&engine).search(&req, qv.as_deref())?;
                resp.timings.embed_ms = embed_ms;
                let (notes, patients) = resp.disclosed();
                audited_reply(&audit, "python", &req, &mut resp, notes, patients, t)
            })
            .map_err(py_err)?;
        Ok(reply)
    }

    // The four steps of a search over shards (`clinsearch::search::shards`), one shard's
    // side: the router calls them on every shard and adds up or merges the answers with
    // [`sum_statistics`] and [`merge_candidates`]. `collection_json` is the summed statistics
    // (`{}` before step 2).

    /// Step 1: this shard's counts for the abbreviation expansion of the request.
    fn shard_cooccurrence(&self, py: Python<'_>, body_json: &str) -> PyResult<String> {
        let req = request_of(body_json)?;
        let engine = self.engine.clone();
        let v = py
            .detach(move || RustSearcher::new(&engine).shard_cooccurrence(&req))
            .map_err(py_err)?;
        to_json(&v)
    }

    /// Step 2: this shard's BM25 statistics of the request's terms.
    fn shard_statistics(
        &self,
        py: Python<'_>,
        body_json: &str,
        collection_json: &str,
    ) -> PyResult<String> {
        let req = request_of(body_json)?;
        let collection = collection_of(collection_json)?;
        let engine = self.engine.clone();
        let v = py
            .detach(move || {
                let mut s = RustSearcher::new(&engine);
                s.collection = Some(collection);
                s.shard_statistics(&req)
            })
            .map_err(py_err)?;
        to_json(&v)
    }

    /// Step 3: this shard's candidates, scored with the collection's statistics.
    #[pyo3(signature = (body_json, collection_json, query_vector=None))]
    fn shard_candidates(
        &self,
        py: Python<'_>,
        body_json: &str,
        collection_json: &str,
        query_vector: Option<Vec<f32>>,
    ) -> PyResult<String> {
        let req = request_of(body_json)?;
        let collection = collection_of(collection_json)?;
        let engine = self.engine.clone();
        let v = py
            .detach(move || {
                let mut s = RustSearcher::new(&engine);
                s.collection = Some(collection);
                s.shard_candidates(&req, query_vector.as_deref())
            })
            .map_err(py_err)?;
        to_json(&v)
    }

    /// Step 4: the reply over the merged candidates, with hits for this shard's notes only;
    /// the notes and patients it discloses are recorded in this shard's access audit first
    /// (`client` names who asked, e.g. `ray-serve`).
    #[pyo3(signature = (body_json, collection_json, candidates_json, query_vector=None, client="ray-serve"))]
    fn search_merged(
        &self,
        py: Python<'_>,
        body_json: &str,
        collection_json: &str,
        candidates_json: &str,
        query_vector: Option<Vec<f32>>,
        client: &str,
    ) -> PyResult<String> {
        let req = request_of(body_json)?;
        let collection = collection_of(collection_json)?;
        let merged: clinsearch::search::shards::Candidates = serde_json::from_str(candidates_json)
            .map_err(|e| bad(format!("the candidates: {e}")))?;
        let (engine, audit) = (self.engine.clone(), self.audit.clone());
        let client = client.to_string();
        py.detach(move || -> clinsearch::Result<String> {
            let t = std::time::Instant::now();
            let mut s = RustSearcher::new(&engine);
            s.collection = Some(collection);
            let mut resp = s.search_merged(&req, query_vector.as_deref(), &merged)?;
            let (notes, patients) = resp.disclosed();
            // Lean hits (no details) name every note of the page on every shard: each shard
            // records only its own.
            let notes: Vec<String> = notes
                .into_iter()
                .filter(|id| engine.store.get(id).ok().flatten().is_some())
                .collect();
            audited_reply(&audit, &client, &req, &mut resp, notes, patients, t)
        })
        .map_err(py_err)
    }
}

/// Records the `notes` and `patients` a search discloses in `audit` (as `client`), before
/// anything is answered, then writes the reply as the server writes it (the filter as asked,
/// not as the search widened it; f32 scores in their shortest form).
fn audited_reply(
    audit: &clinsearch::audit::AuditLog,
    client: &str,
    req: &SearchRequest,
    resp: &mut clinsearch::search::SearchResponse,
    notes: Vec<String>,
    patients: Vec<String>,
    started: std::time::Instant,
) -> clinsearch::Result<String> {
    resp.filter = req.filter.clone();
    audit.append_blocking(clinsearch::audit::Draft::local(
        "search",
        client,
        notes,
        patients,
        Some(&req.q),
    ))?;
    serde_json::to_string(&Reply {
        response: resp,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    })
    .map_err(|e| Error::InvalidInput(e.to_string()))
}

/// A search request from a JSON object (`POST /api/search`'s body) or a JSON array of
/// `[name, value]` string pairs (`GET /api/search`'s query string), checked as the server
/// checks it.
fn request_of(body_json: &str) -> PyResult<SearchRequest> {
    let body = parse_json(body_json, "the search")?;
    let pairs: Vec<(String, String)> = match &body {
        Value::Array(items) => items
            .iter()
            .map(|p| match p.as_array().map(|a| a.as_slice()) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err(bad(
                    "query parameters must be [name, value] pairs of strings",
                )),
            })
            .collect::<PyResult<_>>()?,
        _ => clinsearch::search::spec::typed_pairs(&body, &[]).map_err(|e| bad(e.to_string()))?,
    };
    SearchRequest::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| bad(e.to_string()))
}

fn collection_of(json: &str) -> PyResult<Arc<clinsearch::index::CollectionStats>> {
    serde_json::from_str(json)
        .map(Arc::new)
        .map_err(|e| bad(format!("the collection statistics: {e}")))
}

/// What a router needs to know of a request before asking the shards: whether the query is
/// embedded and which text is, and whether the expansion asks the collection anything (step
/// 1); a bad request is a `ValueError`.
#[pyfunction]
fn search_plan(body_json: &str) -> PyResult<String> {
    let req = request_of(body_json)?;
    req.check().map_err(|e| bad(e.to_string()))?;
    let asks = clinsearch::search::shards::asks_collection(&req).map_err(py_err)?;
    to_json(&json!({
        "needs_vector": req.mode.needs_vector(),
        "embedding_text": req.embedding_text(),
        "mode": req.mode,
        "asks_collection": asks,
    }))
}

/// The sum of the shards' statistics (a JSON array of what the steps answered).
#[pyfunction]
fn sum_statistics(parts_json: &str) -> PyResult<String> {
    let parts: Vec<clinsearch::index::CollectionStats> =
        serde_json::from_str(parts_json).map_err(|e| bad(format!("the statistics: {e}")))?;
    to_json(&clinsearch::index::CollectionStats::sum(&parts))
}

/// The shards' candidates merged into the collection's (a JSON array of step 3's answers).
#[pyfunction]
fn merge_candidates(parts_json: &str) -> PyResult<String> {
    let parts: Vec<clinsearch::search::shards::Candidates> =
        serde_json::from_str(parts_json).map_err(|e| bad(format!("the candidates: {e}")))?;
    to_json(&clinsearch::search::shards::Candidates::merge(parts))
}

/// A file of the browser UI (`index.html`, `app.js`, `style.css`): its content type and
/// text, the same files `clinsearch serve` is built with; None for any other name.
#[pyfunction]
fn web_asset(name: &str) -> Option<(&'static str, &'static str)> {
    clinsearch::server::assets::file(name)
}

/// The shard of each note (a JSON array of note objects) among `shards`: FNV-1a (64 bits)
/// of `patient:<patient_id>`, or `note:<id>` without a patient, modulo `shards`. The note is
/// read as the store reads it, so the key is the stored note's.
#[pyfunction]
fn shards_of(notes_json: &str, shards: u64) -> PyResult<Vec<u64>> {
    if shards == 0 {
        return Err(bad("shards must be at least 1"));
    }
    let Value::Array(items) = parse_json(notes_json, "notes")? else {
        return Err(bad("notes must be a list of note objects"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let note = source::note_from_json(v).map_err(|e| bad(format!("notes[{i}]: {e}")))?;
            let key = match note.patient_id.as_deref() {
                Some(p) if !p.is_empty() => format!("patient:{p}"),
                _ => format!("note:{}", note.id),
            };
            Ok(fnv1a(key.as_bytes()) % shards)
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Encoder>()?;
    m.add_class::<DataDir>()?;
    m.add_class::<Searcher>()?;
    m.add_function(wrap_pyfunction!(shards_of, m)?)?;
    m.add_function(wrap_pyfunction!(search_plan, m)?)?;
    m.add_function(wrap_pyfunction!(sum_statistics, m)?)?;
    m.add_function(wrap_pyfunction!(merge_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(web_asset, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

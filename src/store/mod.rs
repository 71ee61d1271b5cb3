//! sled: the source of truth. Notes, their chunks with vectors, the operation log and the
//! data directory's model identity live here; the BM25 and vector indexes are derived from it.
//!
//! Invariants:
//! * One batch of upserts/deletes is one sled transaction across all trees, flushed to disk
//!   before `apply` returns: an acknowledged write survives `kill -9`, and a note is stored
//!   with all its chunks or not at all.
//! * Every change appends `(seq -> op)` to the operation log, `seq` strictly increasing.
//!   Derived indexes remember the last `seq` they applied and replay the rest on open.
//! * Chunk ids are allocated monotonically and never reused, so a vector index can catch up
//!   by inserting every live chunk above the largest id it holds; replaced or deleted chunks
//!   are simply no longer live (tombstones).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::error::{Error, Result};
use crate::model::{ModelInfo, Pooling, Window};
use crate::note::Note;

/// What built the vectors of a data directory. Opening it with another model is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub model: String,
    pub revision: Option<String>,
    pub commit: Option<String>,
    pub pooling: Pooling,
    pub normalize: bool,
    pub dim: usize,
    pub window_size: usize,
    pub stride: usize,
    /// What each note was embedded from: "title+text" ([`crate::ingest::embedding_input`]);
    /// directories built before titles were embedded read as "text".
    #[serde(default = "text_only")]
    pub input: String,
    /// What later windows carry besides their text (directories built before this choice
    /// existed carried nothing: `none`).
    #[serde(default)]
    pub context: crate::model::WindowContext,
}

fn text_only() -> String {
    "text".into()
}

/// The embedding input of this version.
pub const EMBEDDING_INPUT: &str = "title+text";

impl ModelIdentity {
    /// A local folder is recorded by its absolute path, so that the same model named from
    /// another working directory is recognised.
    pub fn from_info(info: &ModelInfo) -> Self {
        let model = match (&info.revision, std::fs::canonicalize(&info.dir)) {
            (None, Ok(abs)) => abs.display().to_string(),
            _ => info.id.clone(),
        };
        ModelIdentity {
            model,
            revision: info.revision.clone(),
            commit: info.commit.clone(),
            pooling: info.pooling,
            normalize: info.normalize,
            dim: info.hidden_size,
            window_size: info.window_size,
            stride: info.stride,
            input: EMBEDDING_INPUT.into(),
            context: info.window_context,
        }
    }

    /// Differences that make stored vectors incomparable with new ones.
    pub fn differences(&self, other: &ModelIdentity) -> Vec<String> {
        let mut d = vec![];
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{what}: stored {a}, now {b}"));
            }
        };
        cmp("model", self.model.clone(), other.model.clone());
        cmp(
            "commit",
            format!("{:?}", self.commit),
            format!("{:?}", other.commit),
        );
        cmp(
            "pooling",
            self.pooling.to_string(),
            other.pooling.to_string(),
        );
        cmp(
            "normalize",
            self.normalize.to_string(),
            other.normalize.to_string(),
        );
        cmp("dimension", self.dim.to_string(), other.dim.to_string());
        cmp(
            "window",
            self.window_size.to_string(),
            other.window_size.to_string(),
        );
        cmp("stride", self.stride.to_string(), other.stride.to_string());
        cmp("embedded input", self.input.clone(), other.input.clone());
        cmp(
            "window context",
            self.context.to_string(),
            other.context.to_string(),
        );
        d
    }
}

/// A note as stored, with the ids of its chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredNote {
    pub note: Note,
    /// The operation that wrote this version.
    pub seq: u64,
    pub chunk_ids: Vec<u64>,
    /// Set when the note had more windows than the cap and its tail was not embedded.
    #[serde(default)]
    pub windows_capped: bool,
    /// The assertion scopes of the text, found at ingest (absent in notes stored before
    /// assertions existed: [`StoredNote::annotation`] computes them then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertions: Option<Vec<Scope>>,
    /// Named entities found by the data directory's tagger at ingest (empty without one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<StoredEntity>,
}

/// A named entity as stored: type, character span, text, the normalised value that filters
/// and facets use, the tagger's score and the assertion status of its span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredEntity {
    #[serde(rename = "type")]
    pub entity_type: String,
    pub start: u32,
    pub end: u32,
    pub text: String,
    /// [`crate::ner::normalise`] of the text.
    pub value: String,
    pub score: f32,
    /// None when the text affirms it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::clinical::assertion::Status>,
}

impl StoredEntity {
    /// Affirmed (not negated, possible, hypothetical or about the family; history counts).
    pub fn affirmed(&self) -> bool {
        self.status.is_none_or(|s| s.is_affirmed())
    }
}

/// An assertion scope as stored: character offsets of the scope and of its trigger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    pub start: u32,
    pub end: u32,
    pub status: crate::clinical::assertion::Status,
    pub trigger: (u32, u32),
}

impl Scope {
    pub fn of(a: &crate::clinical::assertion::Assertion) -> Scope {
        Scope {
            start: a.start as u32,
            end: a.end as u32,
            status: a.status,
            trigger: (a.trigger.start as u32, a.trigger.end as u32),
        }
    }
}

impl StoredNote {
    /// The text with what it does not affirm blanked
    /// ([`crate::clinical::assertion::affirmed_view`]), from the stored scopes when there are
    /// some (no trigger text is rebuilt).
    pub fn affirmed_text(&self) -> String {
        use crate::clinical::assertion::{affirmed_view, affirmed_view_of, annotate};
        let text = &self.note.text;
        match &self.assertions {
            Some(scopes) => affirmed_view_of(
                text,
                scopes
                    .iter()
                    .map(|s| (s.start as usize, s.end as usize, s.status)),
            ),
            None => affirmed_view(text, &annotate(text)),
        }
    }

    /// The note's assertion annotation: as stored, or computed now for a note stored before
    /// assertions were (the same annotator; sentences are not stored).
    pub fn annotation(&self) -> crate::clinical::assertion::Annotation {
        use crate::clinical::assertion::{annotate, Annotation, Assertion, Trigger};
        let text = &self.note.text;
        let Some(scopes) = &self.assertions else {
            return annotate(text);
        };
        // The byte offset of every character, once, to cut the triggers' text.
        let at: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let cut = |s: usize, e: usize| {
            let last = at.len() - 1;
            text[at[s.min(last)]..at[e.clamp(s.min(last), last)]].to_string()
        };
        Annotation {
            sentences: vec![],
            assertions: scopes
                .iter()
                .map(|s| {
                    let (ts, te) = (s.trigger.0 as usize, s.trigger.1 as usize);
                    Assertion {
                        start: s.start as usize,
                        end: s.end as usize,
                        status: s.status,
                        trigger: Trigger {
                            start: ts,
                            end: te,
                            text: cut(ts, te),
                        },
                    }
                })
                .collect(),
        }
    }
}

/// One embedded window of a note.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub id: u64,
    pub note_id: String,
    pub index: u32,
    /// Byte span in the note text.
    pub start: usize,
    pub end: usize,
    /// Character span in the note text.
    pub char_start: usize,
    pub char_end: usize,
    pub vector: Vec<f32>,
}

impl Chunk {
    /// The window this chunk stores, to write a note back with its vectors (no re-embedding).
    pub fn into_window(self) -> crate::model::Window {
        crate::model::Window {
            index: self.index as usize,
            start: self.start,
            end: self.end,
            char_start: self.char_start,
            char_end: self.char_end,
            tokens: 0,
            vector: self.vector,
        }
    }
}

/// An entry of the operation log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "id", rename_all = "lowercase")]
pub enum Op {
    Upsert(String),
    Delete(String),
}

impl Op {
    pub fn id(&self) -> &str {
        match self {
            Op::Upsert(id) | Op::Delete(id) => id,
        }
    }
}

/// A note ready to store: the note and its embedded windows.
#[derive(Debug, Clone)]
pub struct EmbeddedNote {
    pub note: Note,
    pub windows: Vec<Window>,
    pub windows_capped: bool,
    /// The text's assertion scopes (see [`crate::clinical::assertion`]).
    pub assertions: Vec<Scope>,
    /// Named entities ([`EmbeddedNote::with_entities`]); empty without a tagger.
    pub entities: Vec<StoredEntity>,
}

impl EmbeddedNote {
    /// A note with its windows; capped when the last window ends before the text does
    /// (the window cap left its tail unembedded).
    pub fn new(note: Note, windows: Vec<Window>) -> Self {
        let end = note.text.trim_end().len();
        let windows_capped = windows.last().is_some_and(|l| l.end < end);
        let assertions = crate::clinical::assertion::annotate(&note.text)
            .assertions
            .iter()
            .map(Scope::of)
            .collect();
        EmbeddedNote {
            note,
            windows,
            windows_capped,
            assertions,
            entities: vec![],
        }
    }

    /// Sets the note's entities, each with the assertion status of its span (the strongest
    /// of the scopes holding it, as [`crate::clinical::assertion::status_at`] decides).
    pub fn with_entities(mut self, found: Vec<crate::ner::Entity>) -> Self {
        self.entities = found
            .into_iter()
            .map(|e| {
                let status = self
                    .assertions
                    .iter()
                    .filter(|s| s.start as usize <= e.start && e.end <= s.end as usize)
                    .map(|s| s.status)
                    .min();
                StoredEntity {
                    value: crate::ner::normalise(&e.text),
                    entity_type: e.entity_type,
                    start: e.start as u32,
                    end: e.end as u32,
                    text: e.text,
                    score: e.score,
                    status,
                }
            })
            .collect();
        self
    }
}

const KEY_MODEL: &[u8] = b"model";
const KEY_SEQ: &[u8] = b"seq";
const KEY_CHUNK_ID: &[u8] = b"next_chunk_id";
const KEY_VECTOR_SETTINGS: &[u8] = b"vector_settings";

pub struct Store {
    /// The data directory (failure injection is scoped by it).
    dir: std::path::PathBuf,
    db: sled::Db,
    notes: sled::Tree,
    chunks: sled::Tree,
    oplog: sled::Tree,
    meta: sled::Tree,
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// sled's page cache. Its default, 1 GiB, is what a million-chunk store filled while it was
/// opened (every chunk record, vector included, is read once to list the chunks' owners),
/// and sled's accounting undercounts what the cache holds: the server's resident memory at
/// 1,000,000 chunks was 3.4 GB with the default (scale benchmark, README). Reads past the
/// cache come from the operating system's page cache.
const CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// How long [`Store::open`] waits for sled's file lock before calling the directory busy.
///
/// Why wait at all: sled 0.34 releases its `flock` from a background flusher thread that
/// `Db::drop` signals but does not join, so a store dropped and reopened at once in the same
/// process (a test, `reindex`, a job that reopens after a checkpoint) can find its own lock
/// still held for some milliseconds (sled issues 1234 and 1289; CI met it once in ~150
/// reopens). Another live process holds the lock for as long as it runs, so waiting a
/// bounded time never hides a real conflict: it only delays that error.
const LOCK_WAIT: Duration = Duration::from_secs(3);

fn is_lock_contention(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11))
}

/// Opens sled, retrying with backoff while only the file lock stands in the way.
fn open_sled(path: &Path) -> std::result::Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(e) if is_lock_contention(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Store(format!("corrupt record: {what}"))
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::engine::mark_existing(dir);
        let db = open_sled(&dir.join("sled")).map_err(|e| match e {
            e if is_lock_contention(&e) => Error::Store(format!(
                "{} is in use by another clinsearch process (stop it, or send notes to its API)",
                dir.display()
            )),
            other => Error::from(other),
        })?;
        Ok(Store {
            dir: dir.to_path_buf(),
            notes: db.open_tree("notes")?,
            chunks: db.open_tree("chunks")?,
            oplog: db.open_tree("oplog")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    pub fn model_identity(&self) -> Result<Option<ModelIdentity>> {
        match self.meta.get(KEY_MODEL)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
        }
    }

    pub fn set_model_identity(&self, id: &ModelIdentity) -> Result<()> {
        self.meta
            .insert(KEY_MODEL, serde_json::to_vec(id).map_err(corrupt)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// How the vector index is built ([`crate::index::VectorSettings`]); None in a data
    /// directory made before they were recorded.
    pub fn vector_settings(&self) -> Result<Option<crate::index::VectorSettings>> {
        match self.meta.get(KEY_VECTOR_SETTINGS)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
        }
    }

    pub fn set_vector_settings(&self, s: &crate::index::VectorSettings) -> Result<()> {
        self.meta
            .insert(KEY_VECTOR_SETTINGS, serde_json::to_vec(s).map_err(corrupt)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// The last operation sequence written.
    pub fn last_seq(&self) -> Result<u64> {
        Ok(u64_of(self.meta.get(KEY_SEQ)?))
    }

    pub fn note_count(&self) -> usize {
        self.notes.len()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Stores a batch atomically and durably: upserts replace any earlier version of the same
    /// id (its chunks included), deletes remove notes. Returns the last sequence written.
    pub fn apply(&self, upserts: &[EmbeddedNote], deletes: &[String]) -> Result<u64> {
        crate::failpoint::inject("store-apply", &self.dir)?;
        let res = (&self.notes, &self.chunks, &self.oplog, &self.meta).transaction(
            |(notes, chunks, oplog, meta)| {
                let mut seq = u64_of(meta.get(KEY_SEQ)?);
                let mut next_chunk = u64_of(meta.get(KEY_CHUNK_ID)?);
                let remove_old =
                    |id: &str| -> std::result::Result<bool, ConflictableTransactionError<Error>> {
                        match notes.get(id.as_bytes())? {
                            Some(old) => {
                                let old: StoredNote = serde_json::from_slice(&old)
                                    .map_err(|e| ConflictableTransactionError::Abort(corrupt(e)))?;
                                for c in old.chunk_ids {
                                    chunks.remove(&c.to_be_bytes())?;
                                }
                                Ok(true)
                            }
                            None => Ok(false),
                        }
                    };
                for u in upserts {
                    remove_old(&u.note.id)?;
                    seq += 1;
                    let mut ids = Vec::with_capacity(u.windows.len());
                    for w in &u.windows {
                        let chunk = Chunk {
                            id: next_chunk,
                            note_id: u.note.id.clone(),
                            index: w.index as u32,
                            start: w.start,
                            end: w.end,
                            char_start: w.char_start,
                            char_end: w.char_end,
                            vector: w.vector.clone(),
                        };
                        chunks.insert(&next_chunk.to_be_bytes(), encode_chunk(&chunk))?;
                        ids.push(next_chunk);
                        next_chunk += 1;
                    }
                    let stored = StoredNote {
                        note: u.note.clone(),
                        seq,
                        chunk_ids: ids,
                        windows_capped: u.windows_capped,
                        assertions: Some(u.assertions.clone()),
                        entities: u.entities.clone(),
                    };
                    let v = serde_json::to_vec(&stored)
                        .map_err(|e| ConflictableTransactionError::Abort(corrupt(e)))?;
                    notes.insert(u.note.id.as_bytes(), v)?;
                    let op =
                        serde_json::to_vec(&Op::Upsert(u.note.id.clone())).expect("op encodes");
                    oplog.insert(&seq.to_be_bytes(), op)?;
                }
                for id in deletes {
                    if remove_old(id)? {
                        notes.remove(id.as_bytes())?;
                        seq += 1;
                        let op = serde_json::to_vec(&Op::Delete(id.clone())).expect("op encodes");
                        oplog.insert(&seq.to_be_bytes(), op)?;
                    }
                }
                meta.insert(KEY_SEQ, &seq.to_be_bytes())?;
                meta.insert(KEY_CHUNK_ID, &next_chunk.to_be_bytes())?;
                Ok(seq)
            },
        );
        let seq = match res {
            Ok(seq) => seq,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        crate::failpoint::inject("store-flush", &self.dir)?;
        self.db.flush()?;
        Ok(seq)
    }

    /// Whether a note is stored (without reading it).
    pub fn contains(&self, id: &str) -> Result<bool> {
        Ok(self.notes.contains_key(id.as_bytes())?)
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredNote>> {
        match self.notes.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
        }
    }

    pub fn chunk(&self, id: u64) -> Result<Option<Chunk>> {
        match self.chunks.get(id.to_be_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(decode_chunk(id, &v)?)),
        }
    }

    /// A note and its chunks as one consistent version, for readers that run beside writers:
    /// between reading a note and its chunks, a concurrent replacement or delete may remove
    /// the chunks that version named, so the pair is read again (the soak found this: a
    /// search racing a delete answered 500 "chunk missing"). None when the note is gone.
    pub fn get_with_chunks(&self, id: &str) -> Result<Option<(StoredNote, Vec<Chunk>)>> {
        for _ in 0..16 {
            let Some(note) = self.get(id)? else {
                return Ok(None);
            };
            let mut chunks = Vec::with_capacity(note.chunk_ids.len());
            for &c in &note.chunk_ids {
                match self.chunk(c)? {
                    Some(chunk) => chunks.push(chunk),
                    None => break,
                }
            }
            if chunks.len() == note.chunk_ids.len() {
                return Ok(Some((note, chunks)));
            }
        }
        Err(Error::Store(format!(
            "note {id} kept changing while being read; try again"
        )))
    }

    /// Writes and flushes a small record: whether the store can write at all (the engine's
    /// healing asks before calling itself healthy).
    pub fn probe_write(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        self.meta.insert("write_probe", &now.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The chunks of `note`; every one must exist (callers hold the write lock, or use
    /// [`Self::get_with_chunks`]).
    pub fn chunks_of(&self, note: &StoredNote) -> Result<Vec<Chunk>> {
        let mut out = Vec::with_capacity(note.chunk_ids.len());
        for &id in &note.chunk_ids {
            out.push(
                self.chunk(id)?
                    .ok_or_else(|| corrupt(format!("chunk {id} of {} is missing", note.note.id)))?,
            );
        }
        Ok(out)
    }

    /// A chunk's vector alone (exact rescoring reads only this).
    pub fn chunk_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        let Some(b) = self.chunks.get(id.to_be_bytes())? else {
            return Ok(None);
        };
        let short = || corrupt(format!("chunk {id} is truncated"));
        let n = b
            .get(..4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()) as usize)
            .ok_or_else(short)?;
        // [u32 id_len][note id][u32 index][4 x u64 spans][u32 dim][dim x f32]
        let at = 4 + n + 4 + 32;
        let dim = b
            .get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()) as usize)
            .ok_or_else(short)?;
        let raw = b.get(at + 4..at + 4 + 4 * dim).ok_or_else(short)?;
        Ok(Some(
            raw.chunks_exact(4)
                .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                .collect(),
        ))
    }

    /// Operations with a sequence above `seq`, in order.
    pub fn ops_after(&self, seq: u64) -> impl Iterator<Item = Result<(u64, Op)>> + '_ {
        self.oplog.range((seq + 1).to_be_bytes()..).map(|kv| {
            let (k, v) = kv?;
            let seq = u64_of(Some(k));
            let op: Op = serde_json::from_slice(&v).map_err(corrupt)?;
            Ok((seq, op))
        })
    }

    /// Drops log entries up to `seq` once every derived index has applied them.
    pub fn prune_log(&self, seq: u64) -> Result<()> {
        crate::failpoint::inject("oplog-prune", &self.dir)?;
        for k in self.oplog.range(..=seq.to_be_bytes()).keys() {
            self.oplog.remove(k?)?;
        }
        Ok(())
    }

    /// Every stored note, in id order.
    pub fn notes(&self) -> impl Iterator<Item = Result<StoredNote>> + '_ {
        self.notes
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(corrupt))
    }

    /// Every live chunk, in id order.
    pub fn chunks(&self) -> impl Iterator<Item = Result<Chunk>> + '_ {
        self.chunks.iter().map(|kv| {
            let (k, v) = kv?;
            decode_chunk(u64_of(Some(k)), &v)
        })
    }

    /// Live chunks with an id above `id`, in id order.
    pub fn chunks_after(&self, id: Option<u64>) -> impl Iterator<Item = Result<Chunk>> + '_ {
        let start = id.map(|i| i + 1).unwrap_or(0);
        self.chunks.range(start.to_be_bytes()..).map(|kv| {
            let (k, v) = kv?;
            decode_chunk(u64_of(Some(k)), &v)
        })
    }

    /// Ids of every live chunk with the note they belong to. Decodes only each record's
    /// header, but sled reads every record whole, vector included.
    pub fn chunk_owners(&self) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for kv in self.chunks.iter() {
            let (k, v) = kv?;
            let id = u64_of(Some(k));
            out.push((id, decode_owner(id, &v)?));
        }
        Ok(out)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Chunk record: `[u32 id_len][note id][u32 index][4 x u64 spans][u32 dim][dim x f32]`, LE.
fn encode_chunk(c: &Chunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + c.note_id.len() + 4 * c.vector.len());
    out.extend_from_slice(&(c.note_id.len() as u32).to_le_bytes());
    out.extend_from_slice(c.note_id.as_bytes());
    out.extend_from_slice(&c.index.to_le_bytes());
    for x in [c.start, c.end, c.char_start, c.char_end] {
        out.extend_from_slice(&(x as u64).to_le_bytes());
    }
    out.extend_from_slice(&(c.vector.len() as u32).to_le_bytes());
    for x in &c.vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The note id at the head of a chunk record.
fn decode_owner(id: u64, b: &[u8]) -> Result<String> {
    let n = b
        .get(..4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()) as usize)
        .ok_or_else(|| corrupt(format!("chunk {id} is truncated")))?;
    let raw = b
        .get(4..4 + n)
        .ok_or_else(|| corrupt(format!("chunk {id} is truncated")))?;
    String::from_utf8(raw.to_vec()).map_err(|_| corrupt(format!("chunk {id} note id")))
}

fn decode_chunk(id: u64, b: &[u8]) -> Result<Chunk> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = b
            .get(pos..pos + n)
            .ok_or_else(|| corrupt(format!("chunk {id} is truncated")))?;
        pos += n;
        Ok(s)
    };
    let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
    let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap()) as usize;
    let n = u32_(take(4)?) as usize;
    let note_id =
        String::from_utf8(take(n)?.to_vec()).map_err(|_| corrupt(format!("chunk {id} note id")))?;
    let index = u32_(take(4)?);
    let start = u64_(take(8)?);
    let end = u64_(take(8)?);
    let char_start = u64_(take(8)?);
    let char_end = u64_(take(8)?);
    let dim = u32_(take(4)?) as usize;
    let raw = take(dim * 4)?;
    let vector = raw
        .chunks_exact(4)
        .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
        .collect();
    Ok(Chunk {
        id,
        note_id,
        index,
        start,
        end,
        char_start,
        char_end,
        vector,
    })
}

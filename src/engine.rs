//! The engine ties the store and the derived indexes together and keeps them consistent.
//!
//! Write path: `apply` stores a batch durably in sled (the acknowledgement point), then
//! replays the new log entries into BM25 and the vector index. Open path: each index catches
//! up from the log; an index that is missing, corrupt or too far behind (log pruned) is rebuilt
//! from the store without re-embedding.
//!
//! Self-healing: when an index fails (or panics) applying stored notes, the engine is marked
//! degraded with the reason (`/api/health` answers 503 with it), the caller gets
//! [`Error::Degraded`], and [`Engine::heal`] (run by [`spawn_healer`] in the background)
//! recovers the index and replays the log until it succeeds: no restart. A vector index that
//! failed mid-insert is rebuilt aside and swapped in.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::index::bm25::Bm25Index;
use crate::index::vectors::VectorIndex;
use crate::index::{VectorChoice, VectorSettings};
use crate::store::{EmbeddedNote, ModelIdentity, Op, Store};

/// Time spent in each write stage of one `apply`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyTimes {
    pub store: Duration,
    pub bm25: Duration,
    pub vectors: Duration,
}

pub struct Engine {
    pub dir: PathBuf,
    pub store: Store,
    pub bm25: Bm25Index,
    pub vectors: VectorIndex,
    write: Mutex<()>,
    /// Why the engine is degraded (an index behind the store), or None when healthy.
    degraded: Mutex<Option<Degraded>>,
    /// The fusion `clinsearch tune` chose for this collection (`DATA/fusion.json`): used by
    /// searches that do not ask for one.
    tuned_fusion: std::sync::RwLock<Option<crate::eval::tune::FusionChoice>>,
}

/// What is wrong, and what healing must do.
#[derive(Debug, Clone)]
struct Degraded {
    reason: String,
    /// The vector index failed part-way through an insert: rebuild it rather than replay.
    rebuild_vectors: bool,
}

/// Runs `f`, turning a panic into an error: a panic inside an index must degrade the engine,
/// not poison its write lock or kill the request's thread.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(Error::Index(format!("{what} panicked: {msg}")))
        }
    }
}

/// Options for opening a data directory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// BM25 with English stemming when the index is created (an existing index keeps its own).
    pub stem: bool,
    /// Vector index settings for a new data directory; an existing one keeps those it
    /// recorded, and asking it for others is an error ([`change_vector_settings`] changes
    /// them).
    pub vectors: VectorChoice,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            stem: true,
            vectors: VectorChoice::default(),
        }
    }
}

/// The vector settings of a store: as recorded; else, for a store holding notes (made before
/// settings were recorded) what built it, and for a new one the defaults, laid under
/// `choice` and recorded. A choice that contradicts recorded settings is refused.
fn vector_settings(dir: &Path, store: &Store, choice: &VectorChoice) -> Result<VectorSettings> {
    let stored = store.vector_settings()?;
    let settings = match implied_settings(store, stored)? {
        Some(rec) => {
            let clash = choice.conflicts(&rec);
            if !clash.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{}'s vector index is built with {rec}; asked for {}: `clinsearch reindex` with those options rebuilds it so",
                    dir.display(),
                    clash.join(", ")
                )));
            }
            rec
        }
        None => choice.over(VectorSettings::DEFAULT),
    };
    settings.check().map_err(Error::InvalidInput)?;
    if stored != Some(settings) {
        store.set_vector_settings(&settings)?;
    }
    Ok(settings)
}

/// The settings that built a store: those recorded, else for a store holding notes (made
/// before settings were recorded) the legacy ones; None for a new store.
fn implied_settings(
    store: &Store,
    stored: Option<VectorSettings>,
) -> Result<Option<VectorSettings>> {
    Ok(match stored {
        Some(s) => Some(s),
        None if store.note_count() > 0 => Some(VectorSettings::LEGACY),
        None => None,
    })
}

/// Records new vector settings for an existing data directory (`clinsearch reindex
/// --quantization ...`); the next open rebuilds the graph from the stored vectors.
pub fn change_vector_settings(dir: &Path, choice: &VectorChoice) -> Result<VectorSettings> {
    require_existing(dir)?;
    let store = Store::open(dir)?;
    let base =
        implied_settings(&store, store.vector_settings()?)?.unwrap_or(VectorSettings::DEFAULT);
    let settings = choice.over(base);
    settings.check().map_err(Error::InvalidInput)?;
    store.set_vector_settings(&settings)?;
    Ok(settings)
}

/// Below this much free space an index failure is reported as a full disk.
const LOW_SPACE_BYTES: u64 = 4 << 20;

/// Bytes available to us on the file system holding `dir` (None when it cannot be asked).
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

impl Engine {
    /// Opens `dir` for the model `identity` (None: read-only use that embeds nothing, such
    /// as `delete`, `stats` or `reindex`). A data directory built by another model is an error.
    pub fn open(dir: &Path, identity: Option<&ModelIdentity>, opts: &OpenOptions) -> Result<Self> {
        let store = Store::open(dir)?;
        match (store.model_identity()?, identity) {
            (Some(stored), Some(now)) => {
                let diff = stored.differences(now);
                if !diff.is_empty() {
                    return Err(Error::ModelMismatch(format!(
                        "{} was built with another model ({}); use the model it was built with, a new --data folder, or `clinsearch reindex --reembed --model M` to embed it again",
                        dir.display(),
                        diff.join("; ")
                    )));
                }
            }
            (None, Some(now)) => store.set_model_identity(now)?,
            _ => {}
        }
        let bm25_dir = dir.join("bm25");
        let bm25 = match Bm25Index::open(&bm25_dir, opts.stem) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("BM25 index unreadable ({e}); rebuilding it from the store");
                let _ = std::fs::remove_dir_all(&bm25_dir);
                Bm25Index::open(&bm25_dir, opts.stem)?
            }
        };
        let settings = vector_settings(dir, &store, &opts.vectors)?;
        let vectors = VectorIndex::open(&dir.join("vectors"), &store, settings)?;
        let engine = Engine {
            dir: dir.to_path_buf(),
            store,
            bm25,
            vectors,
            write: Mutex::new(()),
            degraded: Mutex::new(None),
            tuned_fusion: std::sync::RwLock::new(crate::eval::tune::load(dir)?.map(|t| t.choice)),
        };
        engine.catch_up_bm25()?;
        Ok(engine)
    }

    /// What `clinsearch stats` prints: counts of the store and of each index, the model,
    /// the vector index's settings, sizes and the tuned fusion.
    pub fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "notes": self.store.note_count(),
            "chunks": self.store.chunk_count(),
            "model": self.identity()?,
            "bm25_docs": self.bm25.num_docs(),
            "bm25_stemming": self.bm25.stems(),
            "vector_points": self.vectors.points(),
            "live_vectors": self.vectors.len(),
            "vector_index": self.vectors.settings(),
            "last_seq": self.store.last_seq()?,
            "store_bytes": self.store.size_on_disk(),
            "tuned_fusion": self.tuned_fusion(),
            "tagger": crate::ner::recorded(&self.dir)?,
        }))
    }

    /// The fusion `clinsearch tune` chose for this collection, if any.
    pub fn tuned_fusion(&self) -> Option<crate::eval::tune::FusionChoice> {
        *self.tuned_fusion.read().unwrap()
    }

    /// Stores a tuned fusion in the data directory and uses it from the next search on (a
    /// server tuning its own collection needs no restart).
    pub fn set_tuned(&self, t: &crate::eval::tune::Tuned) -> Result<()> {
        let _w = self.write.lock().unwrap();
        crate::eval::tune::store(&self.dir, t)?;
        *self.tuned_fusion.write().unwrap() = Some(t.choice);
        Ok(())
    }

    /// The model identity recorded in the data directory.
    pub fn identity(&self) -> Result<Option<ModelIdentity>> {
        self.store.model_identity()
    }

    fn catch_up_bm25(&self) -> Result<()> {
        let applied = self.bm25.applied_seq()?;
        let last = self.store.last_seq()?;
        if applied >= last {
            return Ok(());
        }
        let ops: Vec<(u64, Op)> = self.store.ops_after(applied).collect::<Result<_>>()?;
        let contiguous = ops.first().is_some_and(|(s, _)| *s == applied + 1);
        if contiguous {
            self.bm25.apply(&self.store, &ops)
        } else {
            self.rebuild_bm25()
        }
    }

    fn rebuild_bm25(&self) -> Result<()> {
        self.bm25.rebuild(&self.store)
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded sections never panic while holding it; survive poisoning regardless.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the engine is degraded, or None when every index holds every stored note.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|d| d.reason.clone())
    }

    fn degrade(&self, reason: String, rebuild_vectors: bool) -> Error {
        // Index libraries report a full disk as a dead worker thread or a short write: say
        // what happened when the data directory's file system has no room left.
        let reason = match free_bytes(&self.dir) {
            Some(free) if free < LOW_SPACE_BYTES => format!(
                "{reason} (the disk holding {} is full: {} KiB free)",
                self.dir.display(),
                free / 1024
            ),
            _ => reason,
        };
        tracing::error!("engine degraded: {reason}");
        let mut d = self.degraded.lock().unwrap_or_else(|p| p.into_inner());
        let rebuild = rebuild_vectors || d.as_ref().is_some_and(|d| d.rebuild_vectors);
        *d = Some(Degraded {
            reason: reason.clone(),
            rebuild_vectors: rebuild,
        });
        Error::Degraded(format!(
            "{reason}; the notes are stored and the index catches up in the background"
        ))
    }

    /// Stores a batch (durable on return) and applies it to both indexes. When an index
    /// fails, the notes stay stored, the engine is degraded and the error is
    /// [`Error::Degraded`]; searches keep answering from the indexes as they were.
    pub fn apply(&self, upserts: &[EmbeddedNote], deletes: &[String]) -> Result<(u64, ApplyTimes)> {
        let _guard = self.write_lock();
        let mut times = ApplyTimes::default();
        let stored_before = self.store.last_seq()?;
        let t = Instant::now();
        let seq = match guarded("the store", || self.store.apply(upserts, deletes)) {
            Ok(seq) => seq,
            Err(e) => {
                // A failed flush may leave the batch in sled's memory: make the indexes
                // follow whatever the store now holds, so nothing stays half-visible.
                if self.store.last_seq().unwrap_or(stored_before) > stored_before {
                    self.degrade(format!("store flush failed: {e}"), false);
                } else if matches!(e, Error::Store(_) | Error::Io { .. }) {
                    // The store itself cannot write (a full disk, say): say so in health.
                    // sled does not recover from its own I/O errors in-process; free the
                    // space and restart if writes keep failing.
                    self.degrade(
                        format!("the store cannot write ({e}); free disk space, and restart if writes keep failing"),
                        false,
                    );
                }
                return Err(e);
            }
        };
        times.store = t.elapsed();
        if self
            .degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            // Already behind: catch everything up (or stay degraded) in one go.
            self.heal_locked()?;
            return Ok((seq, times));
        }
        let t = Instant::now();
        let from = self.bm25.applied_seq()?;
        let ops: Vec<(u64, Op)> = self.store.ops_after(from).collect::<Result<_>>()?;
        if let Err(e) = guarded("the BM25 index", || self.bm25.apply(&self.store, &ops)) {
            return Err(self.degrade(format!("BM25 index: {e}"), false));
        }
        times.bm25 = t.elapsed();
        let t = Instant::now();
        let from = self.vectors.applied_seq();
        let ops: Vec<(u64, Op)> = self.store.ops_after(from).collect::<Result<_>>()?;
        if let Err(e) = guarded("the vector index", || self.vectors.apply(&self.store, &ops)) {
            return Err(self.degrade(format!("vector index: {e}"), true));
        }
        times.vectors = t.elapsed();
        Ok((seq, times))
    }

    /// Brings a degraded engine's indexes up to the store: BM25 drops what it held
    /// uncommitted and replays the log from its last commit; the vector index replays from
    /// its last applied operation, or is rebuilt aside when an insert failed part-way.
    /// Healthy again on success; still degraded (with the new reason) on failure.
    pub fn heal(&self) -> Result<()> {
        let _guard = self.write_lock();
        self.heal_locked()
    }

    fn heal_locked(&self) -> Result<()> {
        let Some(d) = self
            .degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        if let Err(e) = self.store.probe_write() {
            return Err(self.degrade(
                format!("the store cannot write ({e}); free disk space, and restart if writes keep failing"),
                d.rebuild_vectors,
            ));
        }
        let bm25 = guarded("the BM25 index", || {
            self.bm25.recover()?;
            self.catch_up_bm25()
        });
        if let Err(e) = bm25 {
            return Err(self.degrade(format!("BM25 index: {e}"), false));
        }
        let vectors = guarded("the vector index", || {
            if d.rebuild_vectors {
                self.vectors.rebuild(&self.store)
            } else {
                let from = self.vectors.applied_seq();
                let ops: Vec<(u64, Op)> = self.store.ops_after(from).collect::<Result<_>>()?;
                self.vectors.apply(&self.store, &ops)
            }
        });
        if let Err(e) = vectors {
            return Err(self.degrade(format!("vector index: {e}"), true));
        }
        *self.degraded.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!("engine healthy again: every index caught up with the store");
        Ok(())
    }

    /// Deletes notes everywhere; returns how many existed.
    pub fn delete(&self, ids: &[String]) -> Result<usize> {
        let existing: Vec<String> = ids
            .iter()
            .filter(|id| matches!(self.store.get(id), Ok(Some(_))))
            .cloned()
            .collect();
        self.apply(&[], &existing)?;
        Ok(existing.len())
    }

    /// Rebuilds both indexes from the store (no re-embedding).
    pub fn reindex(&self) -> Result<()> {
        let _guard = self.write_lock();
        self.rebuild_bm25()?;
        self.vectors.rebuild(&self.store)?;
        self.checkpoint_locked()
    }

    /// Persists the vector graph and prunes the log entries every index has applied.
    pub fn checkpoint(&self) -> Result<()> {
        let _guard = self.write_lock();
        guarded("the checkpoint", || self.checkpoint_locked())
    }

    fn checkpoint_locked(&self) -> Result<()> {
        // Test builds can stretch the checkpoint so a crash test can land a kill inside it.
        crate::failpoint::inject("checkpoint-delay", &self.dir)?;
        self.vectors.save()?;
        // The vector index catches up from chunk ids, not the log: BM25 alone bounds pruning.
        self.store.prune_log(self.bm25.applied_seq()?)
    }

    /// Whether a note is present in the store, BM25 and the vector index, in that order. The
    /// vector side asks the graph itself, not the live set: searching the graph for the
    /// note's own chunk vectors must bring one of them back first, and every chunk must be a
    /// point of the graph. (Not every chunk's own vector comes back: HNSW is approximate, and
    /// on the tiny test model's near-identical vectors about one chunk in 10,000 is missed by
    /// its own query even at ef 256.)
    pub fn presence(&self, id: &str) -> Result<(bool, bool, bool)> {
        let stored = self.store.get_with_chunks(id)?;
        let vectors = match &stored {
            Some((_, chunks)) => {
                let found: Vec<bool> = chunks
                    .iter()
                    .map(|c| self.vectors.graph_finds(c.id, &c.vector))
                    .collect();
                !chunks.is_empty()
                    && self.vectors.contains_note(id)
                    && found.iter().any(|f| *f)
                    && chunks
                        .iter()
                        .zip(&found)
                        .all(|(c, f)| *f || self.vectors.graph_holds(c.id))
            }
            None => self.vectors.contains_note(id),
        };
        Ok((stored.is_some(), self.bm25.contains(id)?, vectors))
    }
}

/// Heals `engine` in the background whenever it is degraded: retries every 200 ms, backing
/// off to 5 s while it keeps failing. The thread ends when the engine is dropped.
pub fn spawn_healer(engine: &std::sync::Arc<Engine>) {
    let weak = std::sync::Arc::downgrade(engine);
    let _ = std::thread::Builder::new()
        .name("index-healer".into())
        .spawn(move || {
            let mut wait = Duration::from_millis(200);
            loop {
                std::thread::sleep(wait);
                let Some(engine) = weak.upgrade() else { return };
                if engine.degraded().is_none() {
                    wait = Duration::from_millis(200);
                    continue;
                }
                match engine.heal() {
                    Ok(()) => wait = Duration::from_millis(200),
                    Err(e) => {
                        tracing::warn!("healing failed, retrying: {e}");
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
}

/// Fills the encoder settings a data directory was built with (window, stride, window
/// context, pooling) into
/// `opts` where they are unset, so every command and the server embed queries and notes as
/// the directory's notes were embedded; a setting given that contradicts the stored one is an
/// error naming both. A directory without notes yet (or none at all) changes nothing.
pub fn fill_profile(dir: &Path, opts: &mut crate::model::EncoderOptions) -> Result<()> {
    if !dir.join("sled").is_dir() {
        return Ok(());
    }
    let Some(stored) = Store::open(dir)?.model_identity()? else {
        return Ok(());
    };
    let w = &mut opts.window;
    fill(dir, "window", &mut w.size, stored.window_size)?;
    fill(dir, "stride", &mut w.stride, stored.stride)?;
    fill(dir, "window context", &mut w.context, stored.context)?;
    fill(dir, "pooling", &mut opts.pooling, stored.pooling)?;
    Ok(())
}

/// One setting of [`fill_profile`]: the stored value where none was given; a given value that
/// differs is an error naming both.
fn fill<T: PartialEq + std::fmt::Display>(
    dir: &Path,
    what: &str,
    given: &mut Option<T>,
    stored: T,
) -> Result<()> {
    match given {
        None => *given = Some(stored),
        Some(g) if *g != stored => {
            return Err(Error::InvalidInput(format!(
                "{what} {g} contradicts the data directory {}, whose notes were embedded with {what} {stored}: drop the setting (it is read from the directory), or re-embed with `clinsearch reindex --reembed`",
                dir.display()
            )))
        }
        Some(_) => {}
    }
    Ok(())
}

/// Swaps two directories in one step (Linux `renameat2(RENAME_EXCHANGE)`): at every instant
/// each name holds one complete directory.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidInput(format!("{}: a NUL in the path", p.display())))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(Error::io(a, std::io::Error::last_os_error()));
    }
    if let Some(parent) = a.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Elsewhere: two renames, `a` -> `a.old` then `b` -> `a`; [`recover_interrupted_swap`]
/// puts a directory back under `a` when a crash fell between them.
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    let old = a.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(a, &old).map_err(|e| Error::io(a, e))?;
    std::fs::rename(b, a).map_err(|e| Error::io(b, e))?;
    std::fs::rename(&old, b).map_err(|e| Error::io(&old, e))
}

/// After a crash between the two renames of the non-Linux swap: `dir` missing with
/// `dir.old` beside it. Puts the old directory back (the new one is rebuilt by running the
/// re-embedding again).
pub fn recover_interrupted_swap(dir: &Path) -> Result<()> {
    let old = dir.with_extension("old");
    if !dir.exists() && old.join("sled").is_dir() {
        tracing::warn!("restoring {} from an interrupted swap", dir.display());
        std::fs::rename(&old, dir).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The marker beside a data directory that says one existed there: a data directory that is
/// missing while its marker exists is an error for commands that serve or change existing
/// notes, not a silently created empty store.
pub fn existence_marker(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    dir.with_file_name(format!(".{name}.clinsearch"))
}

/// Records that `dir` holds a data directory (best effort: a parent that cannot be written
/// only loses the check).
pub fn mark_existing(dir: &Path) {
    let m = existence_marker(dir);
    if !m.exists() {
        let _ = std::fs::write(&m, format!("clinsearch data directory {}\n", dir.display()));
    }
}

/// For commands that need the notes already there (`serve`, `reindex`): refuses a data
/// directory that is missing where one existed before.
pub fn require_existing(dir: &Path) -> Result<()> {
    recover_interrupted_swap(dir)?;
    let m = existence_marker(dir);
    if !dir.join("sled").is_dir() && m.exists() {
        return Err(Error::Store(format!(
            "{} is missing, but a data directory existed there ({} says so): restore it from a backup, or delete that marker to start an empty one",
            dir.display(),
            m.display()
        )));
    }
    Ok(())
}

/// Embeds every note of the data directory `dir` again with `encoder` (another model).
///
/// The new store and indexes are built in a sibling folder (`DIR.reembed`), checkpointed,
/// and swapped with `dir` in one step, so at every instant `dir` holds one complete data
/// directory, the old one until the swap and the new one after it; a kill at any point leaves
/// one or the other, never an empty or partial one. The old copy is then removed.
pub fn reembed(dir: &Path, encoder: &crate::model::Encoder) -> Result<crate::ingest::IngestReport> {
    require_existing(dir)?;
    if !dir.join("sled").is_dir() {
        return Err(Error::InvalidInput(format!(
            "{}: no data directory to re-embed",
            dir.display()
        )));
    }
    let fresh = dir.with_extension("reembed");
    // An interrupted earlier run: an incomplete build, or the old copy after a swap.
    let _ = std::fs::remove_dir_all(&fresh);
    let report = {
        let old = Engine::open(dir, None, &OpenOptions::default())?;
        let stem = old.bm25.stems();
        let notes: Vec<crate::note::Note> = old
            .store
            .notes()
            .map(|n| n.map(|s| s.note))
            .collect::<Result<_>>()?;
        let vs = old.vectors.settings();
        drop(old);
        let identity = ModelIdentity::from_info(encoder.info());
        // The new build keeps the vector settings the directory recorded.
        let new = Engine::open(
            &fresh,
            Some(&identity),
            &OpenOptions {
                stem,
                vectors: VectorChoice {
                    quantization: Some(vs.quantization),
                    m: Some(vs.m),
                    ef_construction: Some(vs.ef_construction),
                    ef_search: Some(vs.ef_search),
                },
            },
        )?;
        let origin = dir.join("sled");
        let records = notes.into_iter().map(move |note| {
            Ok(crate::ingest::Record::new(
                note,
                crate::ingest::source::Origin {
                    file: origin.clone(),
                    line: 0,
                },
            ))
        });
        let report = crate::ingest::run(
            &new,
            encoder,
            vec![Box::new(records)],
            None,
            &crate::ingest::IngestOptions {
                on_error: crate::ingest::OnError::Abort,
                ..Default::default()
            },
        )?;
        if let Some(reason) = &report.aborted {
            return Err(Error::InvalidInput(format!(
                "re-embedding stopped: {reason}"
            )));
        }
        new.checkpoint()?;
        report
    };
    // The audit belongs to the directory, not to one model's build of it: the new build gets
    // a copy (not the files themselves: until the swap, the old directory keeps its own).
    let audit = dir.join("audit");
    if audit.is_dir() {
        let to = fresh.join("audit");
        std::fs::create_dir_all(&to).map_err(|e| Error::io(&to, e))?;
        for f in std::fs::read_dir(&audit)
            .map_err(|e| Error::io(&audit, e))?
            .flatten()
        {
            let target = to.join(f.file_name());
            std::fs::copy(f.path(), &target).map_err(|e| Error::io(&target, e))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&target, e))?;
        }
    }
    crate::failpoint::inject("reembed-swap", dir)?;
    exchange(dir, &fresh)?;
    let _ = std::fs::remove_dir_all(&fresh);
    Ok(report)
}

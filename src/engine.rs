//! The engine ties the store and the derived indexes together and keeps them consistent.
//!
//! Write path: `apply` stores a batch durably in sled (the acknowledgement point), then
//! replays the new log entries into BM25 and the vector index. Open path: each index catches
//! up from the log; an index that is missing, corrupt or too far behind (log pruned) is rebuilt
//! from the store without re-embedding.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::index::bm25::Bm25Index;
use crate::index::vectors::VectorIndex;
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
}

/// Options for opening a data directory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// BM25 with English stemming when the index is created (an existing index keeps its own).
    pub stem: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { stem: true }
    }
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
        let vectors = VectorIndex::open(&dir.join("vectors"), &store)?;
        let engine = Engine {
            dir: dir.to_path_buf(),
            store,
            bm25,
            vectors,
            write: Mutex::new(()),
        };
        engine.catch_up_bm25()?;
        Ok(engine)
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

    /// Stores a batch (durable on return) and applies it to both indexes.
    pub fn apply(&self, upserts: &[EmbeddedNote], deletes: &[String]) -> Result<(u64, ApplyTimes)> {
        let _guard = self
            .write
            .lock()
            .map_err(|_| Error::Store("writer poisoned".into()))?;
        let mut times = ApplyTimes::default();
        let before = self.bm25.applied_seq()?;
        let t = Instant::now();
        let seq = self.store.apply(upserts, deletes)?;
        times.store = t.elapsed();
        let ops: Vec<(u64, Op)> = self.store.ops_after(before).collect::<Result<_>>()?;
        let t = Instant::now();
        self.bm25.apply(&self.store, &ops)?;
        times.bm25 = t.elapsed();
        let t = Instant::now();
        self.vectors.apply(&self.store, &ops)?;
        times.vectors = t.elapsed();
        Ok((seq, times))
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
        let _guard = self
            .write
            .lock()
            .map_err(|_| Error::Store("writer poisoned".into()))?;
        self.rebuild_bm25()?;
        self.vectors.rebuild(&self.store)?;
        self.checkpoint_locked()
    }

    /// Persists the vector graph and prunes the log entries every index has applied.
    pub fn checkpoint(&self) -> Result<()> {
        let _guard = self
            .write
            .lock()
            .map_err(|_| Error::Store("writer poisoned".into()))?;
        self.checkpoint_locked()
    }

    fn checkpoint_locked(&self) -> Result<()> {
        self.vectors.save()?;
        // The vector index catches up from chunk ids, not the log: BM25 alone bounds pruning.
        self.store.prune_log(self.bm25.applied_seq()?)
    }

    /// Whether a note is present in the store, BM25 and the vector index, in that order.
    pub fn presence(&self, id: &str) -> Result<(bool, bool, bool)> {
        Ok((
            self.store.get(id)?.is_some(),
            self.bm25.contains(id)?,
            self.vectors.contains_note(id),
        ))
    }
}

/// Embeds every note of the data directory `dir` again with `encoder` (another model).
///
/// The new store and indexes are built in a sibling folder and swapped in by renames only
/// when complete, so a crash leaves the old directory intact.
pub fn reembed(dir: &Path, encoder: &crate::model::Encoder) -> Result<crate::ingest::IngestReport> {
    let fresh = dir.with_extension("reembed");
    let _ = std::fs::remove_dir_all(&fresh);
    let report = {
        let old = Engine::open(dir, None, &OpenOptions::default())?;
        let stem = old.bm25.stems();
        let notes: Vec<crate::note::Note> = old
            .store
            .notes()
            .map(|n| n.map(|s| s.note))
            .collect::<Result<_>>()?;
        drop(old);
        let identity = ModelIdentity::from_info(encoder.info());
        let new = Engine::open(&fresh, Some(&identity), &OpenOptions { stem })?;
        let origin = dir.join("sled");
        let records = notes.into_iter().map(move |note| {
            Ok(crate::ingest::Record {
                origin: crate::ingest::source::Origin {
                    file: origin.clone(),
                    line: 0,
                },
                note,
            })
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
    let retired = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&retired);
    std::fs::rename(dir, &retired).map_err(|e| Error::io(dir, e))?;
    std::fs::rename(&fresh, dir).map_err(|e| Error::io(&fresh, e))?;
    let _ = std::fs::remove_dir_all(&retired);
    Ok(report)
}

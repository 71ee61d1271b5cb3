//! Nearest neighbours over chunk vectors with our compact HNSW graph ([`super::hnsw`],
//! cosine distance).
//!
//! The graph cannot delete, so the graph may hold dead points: chunks of replaced or deleted
//! notes. A live set (chunk id -> note id), derived from the store, is the tombstone filter
//! applied during the search; the graph is rebuilt from the stored vectors when dead points
//! pass [`REBUILD_DEAD_FRACTION`]. Chunk ids only grow, so catching up after a crash is
//! "insert every live chunk above the largest id in the graph".
//!
//! Persistence: `save` dumps the graph into a fresh folder and then atomically replaces the
//! manifest `vectors.json` naming it, so a crash mid-dump leaves the previous dump in force.
//! The manifest names the settings the dump was built with; a dump built otherwise than the
//! data directory's [`VectorSettings`] now say is rebuilt on open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::hnsw::{Hnsw, FORMAT};
use super::vector_settings::{Quantization, VectorSettings, RESCORE_FACTOR};
use crate::error::{Error, Result};
use crate::store::{Chunk, Op, Store};

/// Rebuild the graph when more than this fraction of its points are dead (and at least
/// [`REBUILD_MIN_DEAD`] of them).
pub const REBUILD_DEAD_FRACTION: f64 = 0.25;
pub const REBUILD_MIN_DEAD: usize = 1000;

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The dump's format ([`FORMAT`]); a manifest without one names an hnsw_rs dump (before
    /// issue 21), which is rebuilt from the stored vectors.
    #[serde(default)]
    format: Option<String>,
    folder: String,
    seq: u64,
    max_chunk: Option<u64>,
    points: usize,
    /// What built the dump (dumps written before settings were recorded: the legacy ones).
    #[serde(default = "legacy_quantization")]
    quantization: Quantization,
    #[serde(default = "legacy_m")]
    m: usize,
    #[serde(default = "legacy_ef_construction")]
    ef_construction: usize,
}

fn legacy_quantization() -> Quantization {
    VectorSettings::LEGACY.quantization
}
fn legacy_m() -> usize {
    VectorSettings::LEGACY.m
}
fn legacy_ef_construction() -> usize {
    VectorSettings::LEGACY.ef_construction
}

/// A new, empty graph for these settings, with room for `expected` points.
fn new_graph(settings: &VectorSettings, expected: usize) -> Hnsw {
    Hnsw::new(
        settings.quantization,
        settings.m,
        settings.ef_construction,
        expected,
    )
}

/// The dump's file inside its folder.
const DUMP_FILE: &str = "graph.bin";

struct Live {
    /// Live chunk id -> its note.
    owners: HashMap<u64, Arc<str>>,
    /// Note -> its live chunk ids.
    by_note: HashMap<Arc<str>, Vec<u64>>,
    /// Whether each chunk id (dense: ids come from a counter) is live: the tombstone check
    /// hnsw runs on every candidate it visits must be a load, not a hash lookup.
    alive: Vec<bool>,
}

impl Live {
    fn remove_note(&mut self, id: &str) {
        if let Some(ids) = self.by_note.remove(id) {
            for c in ids {
                self.owners.remove(&c);
                if let Some(a) = self.alive.get_mut(c as usize) {
                    *a = false;
                }
            }
        }
    }
    fn add(&mut self, chunk: u64, note: &str) {
        let key: Arc<str> = match self.by_note.get_key_value(note) {
            Some((k, _)) => k.clone(),
            None => Arc::from(note),
        };
        self.owners.insert(chunk, key.clone());
        self.by_note.entry(key).or_default().push(chunk);
        let i = chunk as usize;
        if self.alive.len() <= i {
            self.alive.resize(i + 1, false);
        }
        self.alive[i] = true;
    }
}

/// A hit: the chunk, its note and the cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub chunk_id: u64,
    pub note_id: Arc<str>,
    pub score: f32,
}

/// A dump read back: the graph, the sequence it had applied, its largest chunk id, its points.
type LoadedDump = (Hnsw, u64, Option<u64>, usize);

pub struct VectorIndex {
    dir: PathBuf,
    settings: VectorSettings,
    graph: RwLock<Hnsw>,
    live: RwLock<Live>,
    /// Points in the graph, dead ones included.
    points: AtomicU64,
    max_chunk: RwLock<Option<u64>>,
    applied: AtomicU64,
}

/// Locks that survive a panic of another holder: a panic inside an insert leaves the index
/// marked for rebuild by the engine, and searches go on meanwhile.
fn rd<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn wr<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn idx_err(e: impl std::fmt::Display) -> Error {
    Error::Index(format!("vector index: {e}"))
}

impl VectorIndex {
    /// Opens the index in `dir` and brings it up to date with the store. A missing or
    /// unreadable dump is rebuilt from the stored vectors (no re-embedding).
    pub fn open(dir: &Path, store: &Store, settings: VectorSettings) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let fresh = || (new_graph(&settings, store.chunk_count()), 0, None, 0);
        let (graph, seq, max_chunk, points) = match Self::load(dir, &settings) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => fresh(),
            Err(e) => {
                tracing::warn!("vector index dump unreadable ({e}); rebuilding from the store");
                fresh()
            }
        };
        let idx = VectorIndex {
            dir: dir.to_path_buf(),
            settings,
            graph: RwLock::new(graph),
            live: RwLock::new(Live {
                owners: HashMap::new(),
                by_note: HashMap::new(),
                alive: Vec::new(),
            }),
            points: AtomicU64::new(points as u64),
            max_chunk: RwLock::new(max_chunk),
            applied: AtomicU64::new(seq),
        };
        idx.reload_live(store)?;
        idx.insert_new_chunks(store)?;
        idx.applied.store(store.last_seq()?, Ordering::SeqCst);
        Ok(idx)
    }

    fn load(dir: &Path, settings: &VectorSettings) -> Result<Option<LoadedDump>> {
        let manifest_path = dir.join("vectors.json");
        if !manifest_path.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(idx_err)?;
        if (m.quantization, m.m, m.ef_construction)
            != (settings.quantization, settings.m, settings.ef_construction)
        {
            tracing::info!(
                "the vector index dump was built with {} vectors, M {}, ef_construction {}; rebuilding it as {settings}",
                m.quantization, m.m, m.ef_construction
            );
            return Ok(None);
        }
        if m.format.as_deref() != Some(FORMAT) {
            tracing::info!("the vector index dump is in an older format; rebuilding it from the stored vectors");
            return Ok(None);
        }
        let g = Hnsw::load(&dir.join(&m.folder).join(DUMP_FILE)).map_err(idx_err)?;
        if g.len() != m.points {
            return Err(idx_err(format!(
                "dump holds {} points, manifest says {}",
                g.len(),
                m.points
            )));
        }
        Ok(Some((g, m.seq, m.max_chunk, m.points)))
    }

    fn reload_live(&self, store: &Store) -> Result<()> {
        let mut live = Live {
            owners: HashMap::new(),
            by_note: HashMap::new(),
            alive: Vec::new(),
        };
        for (chunk, note) in store.chunk_owners()? {
            live.add(chunk, &note);
        }
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live;
        Ok(())
    }

    fn insert_chunks(&self, chunks: &[Chunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        crate::failpoint::inject("hnsw-insert", &self.dir)?;
        // Exclusive on purpose: searches wait for an insert batch rather than walk a graph
        // whose layers are being linked.
        let mut g = self.graph.write().unwrap_or_else(|p| p.into_inner());
        let items: Vec<(u64, &[f32])> =
            chunks.iter().map(|c| (c.id, c.vector.as_slice())).collect();
        g.insert(&items).map_err(idx_err)?;
        self.points.fetch_add(chunks.len() as u64, Ordering::SeqCst);
        let mut m = self.max_chunk.write().unwrap_or_else(|p| p.into_inner());
        let top = chunks.iter().map(|c| c.id).max();
        *m = (*m).max(top);
        Ok(())
    }

    /// Inserts every live chunk above the largest id in the graph.
    fn insert_new_chunks(&self, store: &Store) -> Result<()> {
        let after = *self.max_chunk.read().unwrap_or_else(|p| p.into_inner());
        let mut batch = Vec::with_capacity(1024);
        for c in store.chunks_after(after) {
            batch.push(c?);
            if batch.len() == 1024 {
                self.insert_chunks(&batch)?;
                batch.clear();
            }
        }
        self.insert_chunks(&batch)
    }

    /// Applies operations from the log: new chunks go into the graph, replaced and deleted
    /// ones leave the live set.
    pub fn apply(&self, store: &Store, ops: &[(u64, Op)]) -> Result<()> {
        let Some(&(last, _)) = ops.last() else {
            return Ok(());
        };
        let mut fresh = vec![];
        {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            for (_, op) in ops {
                live.remove_note(op.id());
                if let Op::Upsert(id) = op {
                    if let Some(stored) = store.get(id)? {
                        for c in store.chunks_of(&stored)? {
                            live.add(c.id, id);
                            fresh.push(c);
                        }
                    }
                }
            }
        }
        let known = *self.max_chunk.read().unwrap_or_else(|p| p.into_inner());
        fresh.retain(|c| known.is_none_or(|m| c.id > m));
        fresh.sort_by_key(|c| c.id);
        fresh.dedup_by_key(|c| c.id);
        self.insert_chunks(&fresh)?;
        self.applied.store(last, Ordering::SeqCst);
        if self.needs_rebuild() {
            self.rebuild(store)?;
        }
        Ok(())
    }

    fn needs_rebuild(&self) -> bool {
        let points = self.points.load(Ordering::SeqCst) as usize;
        let live = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .owners
            .len();
        let dead = points.saturating_sub(live);
        dead >= REBUILD_MIN_DEAD && dead as f64 > REBUILD_DEAD_FRACTION * points as f64
    }

    /// Rebuilds the graph from the stored vectors, aside: searches keep using the old graph
    /// until the new one is complete, then graph, live set and counters are swapped together.
    pub fn rebuild(&self, store: &Store) -> Result<()> {
        let seq = store.last_seq()?;
        let fresh = VectorIndex {
            dir: self.dir.clone(),
            settings: self.settings,
            graph: RwLock::new(new_graph(&self.settings, store.chunk_count())),
            live: RwLock::new(Live {
                owners: HashMap::new(),
                by_note: HashMap::new(),
                alive: Vec::new(),
            }),
            points: AtomicU64::new(0),
            max_chunk: RwLock::new(None),
            applied: AtomicU64::new(seq),
        };
        fresh.reload_live(store)?;
        fresh.insert_new_chunks(store)?;
        let VectorIndex {
            graph,
            live,
            points,
            max_chunk,
            ..
        } = fresh;
        let graph = graph.into_inner().unwrap_or_else(|p| p.into_inner());
        let live = live.into_inner().unwrap_or_else(|p| p.into_inner());
        let max_chunk = max_chunk.into_inner().unwrap_or_else(|p| p.into_inner());
        // The swap: writers first take the live set, then the graph, as searches do.
        let mut l = wr(&self.live);
        let mut g = wr(&self.graph);
        *g = graph;
        *l = live;
        *wr(&self.max_chunk) = max_chunk;
        self.points.store(points.into_inner(), Ordering::SeqCst);
        self.applied.store(seq, Ordering::SeqCst);
        drop(g);
        drop(l);
        self.graph.clear_poison();
        self.live.clear_poison();
        Ok(())
    }

    /// Whether the graph itself returns `vector` (a chunk's own stored vector) as one of
    /// its nearest points: the check that a chunk is really searchable, not only listed.
    /// Whether the graph holds a point for `chunk_id` at all (a scan of its points: for tests
    /// and diagnostics, never on the search path).
    pub fn graph_holds(&self, chunk_id: u64) -> bool {
        rd(&self.graph).holds(chunk_id)
    }

    /// It must come back first: among the hits at distance 0. Several chunks can hold the
    /// same text, hence the same vector, and HNSW does not return every one of many exact
    /// duplicates; so when the search returns others at distance 0 but not this one, the
    /// check falls back to a scan of the graph's points for its id (a chunk missing from the
    /// graph still fails).
    pub fn graph_finds(&self, chunk_id: u64, vector: &[f32]) -> bool {
        let same = |score: f32| score >= 1.0 - 1e-5;
        // Cheap first: almost every chunk comes back at the serving breadth.
        if self
            .search(vector, 8, 64, None)
            .iter()
            .take_while(|h| same(h.score))
            .any(|h| h.chunk_id == chunk_id)
        {
            return true;
        }
        let mut k = 16;
        loop {
            // Live points only: replaced copies of the same text sit at distance 0 too.
            let hits = self.search(vector, k, (4 * k).max(256), None);
            let ties: Vec<&VectorHit> = hits.iter().take_while(|h| same(h.score)).collect();
            if ties.iter().any(|h| h.chunk_id == chunk_id) {
                return true;
            }
            if ties.is_empty() {
                return false;
            }
            if ties.len() < hits.len() || hits.len() < k || k >= 1024 {
                return self.graph_holds(chunk_id);
            }
            k *= 4;
        }
    }

    /// The settings this index was built with.
    pub fn settings(&self) -> VectorSettings {
        self.settings
    }

    /// [`Self::search`] with scores that are exact cosines: an int8 graph returns
    /// [`RESCORE_FACTOR`] times as many candidates, each scored again with its stored f32
    /// vector, and the best `k` are kept (an f32 graph's scores are exact already).
    pub fn search_rescored(
        &self,
        store: &Store,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<Vec<VectorHit>> {
        if self.settings.quantization == Quantization::F32 {
            return Ok(self.search(query, k, ef, keep));
        }
        let wide = k.saturating_mul(RESCORE_FACTOR);
        let mut hits = self.search(query, wide, ef.max(wide), keep);
        for h in hits.iter_mut() {
            // A chunk replaced since the graph found it is simply dropped below.
            h.score = match store.chunk_vector(h.chunk_id)? {
                Some(v) => crate::search::cosine(&v, query),
                None => f32::NEG_INFINITY,
            };
        }
        hits.retain(|h| h.score > f32::NEG_INFINITY);
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.chunk_id.cmp(&b.chunk_id))
        });
        hits.truncate(k);
        Ok(hits)
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Live chunks.
    pub fn len(&self) -> usize {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .owners
            .len()
    }

    /// Notes with live vectors.
    pub fn note_count(&self) -> usize {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_note
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Points in the graph, dead ones included.
    pub fn points(&self) -> usize {
        self.points.load(Ordering::SeqCst) as usize
    }

    /// Whether a note has live vectors in the graph.
    pub fn contains_note(&self, id: &str) -> bool {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let max = *self.max_chunk.read().unwrap_or_else(|p| p.into_inner());
        live.by_note
            .get(id)
            .is_some_and(|ids| !ids.is_empty() && ids.iter().all(|c| max.is_some_and(|m| *c <= m)))
    }

    /// The `k` nearest live chunks to `query` whose note passes `keep` (None: every note).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(&str) -> bool>,
    ) -> Vec<VectorHit> {
        if k == 0 {
            return vec![];
        }
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let g = self.graph.read().unwrap_or_else(|p| p.into_inner());
        // The filter runs on every candidate the search visits; skip it when nothing is
        // filtered and no point is dead.
        let unfiltered = keep.is_none() && live.owners.len() == g.len();
        let found = if unfiltered {
            g.search(query, k, ef.max(k), None)
        } else {
            let filter = |id: u64| {
                live.alive.get(id as usize).copied().unwrap_or(false)
                    && keep.is_none_or(|f| live.owners.get(&id).is_some_and(|n| f(n)))
            };
            g.search(query, k, ef.max(k), Some(&filter))
        };
        found
            .into_iter()
            .filter_map(|(chunk_id, distance)| {
                let note = live.owners.get(&chunk_id)?.clone();
                Some(VectorHit {
                    chunk_id,
                    note_id: note,
                    score: 1.0 - distance,
                })
            })
            .collect()
    }

    /// Dumps the graph and atomically points the manifest at the new dump.
    pub fn save(&self) -> Result<()> {
        crate::failpoint::inject("hnsw-dump", &self.dir)?;
        let seq = self.applied_seq();
        let folder = format!("hnsw-{seq}-{}", std::process::id());
        let path = self.dir.join(&folder);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let g = self.graph.read().unwrap_or_else(|p| p.into_inner());
        let points = g.len();
        if points > 0 {
            let file = path.join(DUMP_FILE);
            g.dump(&file).map_err(|e| Error::io(&file, e))?;
        }
        drop(g);
        let manifest = Manifest {
            format: Some(FORMAT.to_string()),
            folder: folder.clone(),
            seq,
            max_chunk: *self.max_chunk.read().unwrap_or_else(|p| p.into_inner()),
            points,
            quantization: self.settings.quantization,
            m: self.settings.m,
            ef_construction: self.settings.ef_construction,
        };
        let tmp = self.dir.join("vectors.json.tmp");
        let text = serde_json::to_vec_pretty(&manifest).map_err(idx_err)?;
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        crate::failpoint::inject("manifest-swap", &self.dir)?;
        if points == 0 {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(self.dir.join("vectors.json"));
        } else {
            std::fs::rename(&tmp, self.dir.join("vectors.json")).map_err(|e| Error::io(&tmp, e))?;
        }
        // Older dumps are no longer referenced.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("hnsw-") && name != folder {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }
}

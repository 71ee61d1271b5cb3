//! A compact HNSW graph (Malkov and Yashunin, 2018) over chunk vectors.
//!
//! Written here because hnsw_rs was what limited the scale (issue 21, 100,000 chunks on a
//! 2-core EPYC): it built 6.2x slower than hnswlib on the same vectors and parameters, and it
//! keeps every link as an `Arc` to a reference-counted point (the server held 8,955 bytes a
//! chunk with it, 6,570 with this graph). Here a point is its vector in one flat array (int8
//! or f32), its links in another (u32, one fixed-size slot per point and layer), its chunk id
//! and a level byte: about 600 bytes a point at int8 and M 24 by that layout (the 1M dump is
//! 570 MB), and a dump that loads as a few reads.
//!
//! The algorithm is the paper's, with hnswlib's choices: levels drawn with mL = 1/ln M,
//! greedy descent through the upper layers, a beam of `ef` on the lower ones, and the
//! neighbour-selection heuristic (a candidate is kept only when it is closer to the new point
//! than to every neighbour kept so far), M links chosen per layer, at most M per point above
//! layer 0 and 2M at layer 0. A point's level comes from its chunk id (a hash), so the same
//! vectors give the same levels on every build.
//!
//! Concurrency: a batch is inserted with `&mut self` (the vector index holds the graph
//! behind a write lock while it inserts): the batch's vectors are appended first, then the
//! points are linked in parallel (rayon). A link list is a count and ids, all atomics:
//! writers take the list's lock stripe; readers never lock, because every value a list can
//! hold is a valid point, so a list read while another thread rewrites it is at worst a
//! mixture of two valid lists, which only steers one search step (hnswlib locks readers too).
//!
//! Identical vectors (templated text gives identical windows, and int8 rounding makes
//! near-twins identical) are one node: a later copy is a *twin* of the first, stored but not
//! linked, and returned wherever its first is. Linked as separate nodes, more than M copies
//! link only to each other (each one's M nearest are copies at distance 0) and the rest of
//! the graph cannot reach past them; hnswlib has the same weakness.
//!
//! Cosine distance (1 - cosine): f32 vectors are normalised on insertion, so a distance is
//! one dot product; int8 vectors ([`quantize`]) keep their norm's inverse beside them.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::vector_settings::{quantize, Quantization};

/// The highest level a point may be drawn at.
const MAX_LEVEL: usize = 15;
/// Lock stripes guarding link-list writes while a batch is linked.
const STRIPES: usize = 1024;
/// The dump's format name, recorded in the manifest and the dump's header.
pub const FORMAT: &str = "clinsearch-hnsw-1";

/// A distance and a point, ordered by distance (then point, for a total order).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// A query at the graph's precision.
enum Query {
    F32(Vec<f32>),
    Int8(Vec<i8>, f32),
}

/// What the graph was asked to be and its size, written at the head of a dump.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    quantization: Quantization,
    dim: usize,
    m: usize,
    ef_construction: usize,
    points: usize,
    entry: Option<u32>,
    #[serde(default)]
    twins: usize,
}

pub struct Hnsw {
    quantization: Quantization,
    dim: usize,
    m: usize,
    ef_construction: usize,
    /// Normalised vectors, `dim` a point (f32 graphs).
    f32s: Vec<f32>,
    /// Quantised vectors, `dim` a point, and each one's 1/norm (int8 graphs).
    i8s: Vec<i8>,
    inv_norms: Vec<f32>,
    /// Point -> chunk id.
    ids: Vec<u64>,
    levels: Vec<u8>,
    /// Layer 0: `2M + 1` slots a point, a count and then the links.
    links0: Vec<AtomicU32>,
    /// Layers 1..=level: `M + 1` slots a layer (empty for points of level 0).
    upper: Vec<Box<[AtomicU32]>>,
    entry: Mutex<Option<u32>>,
    stripes: Box<[Mutex<()>]>,
    /// A linked point -> the later points with its very vector (see the module's doc).
    twins: HashMap<u32, Vec<u32>>,
    /// A hash of each linked point's vector -> the points with it, to find twins on insert.
    by_vector: HashMap<u64, Vec<u32>>,
}

/// The points one search has visited: a stamp per point, reused across searches of a thread.
struct Visited {
    stamps: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn start(&mut self, n: usize) {
        if self.stamps.len() < n {
            self.stamps.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.stamp = 1;
        }
    }
    /// Marks `p`, and says whether it was new.
    fn first(&mut self, p: u32) -> bool {
        let s = &mut self.stamps[p as usize];
        let new = *s != self.stamp;
        *s = self.stamp;
        new
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { stamps: Vec::new(), stamp: 0 }) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hnsw {
    /// An empty graph; its dimension is set by the first insert. `expected` points are
    /// reserved for.
    pub fn new(
        quantization: Quantization,
        m: usize,
        ef_construction: usize,
        expected: usize,
    ) -> Hnsw {
        let mut h = Hnsw {
            quantization,
            dim: 0,
            m: m.max(2),
            ef_construction: ef_construction.max(1),
            f32s: Vec::new(),
            i8s: Vec::new(),
            inv_norms: Vec::new(),
            ids: Vec::with_capacity(expected),
            levels: Vec::with_capacity(expected),
            links0: Vec::new(),
            upper: Vec::with_capacity(expected),
            entry: Mutex::new(None),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            twins: HashMap::new(),
            by_vector: HashMap::new(),
        };
        h.links0.reserve(expected * (2 * h.m + 1));
        h
    }

    /// Points in the graph.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether a point carries `chunk_id` (a scan: for tests and diagnostics).
    pub fn holds(&self, chunk_id: u64) -> bool {
        self.ids.contains(&chunk_id)
    }

    fn m0(&self) -> usize {
        2 * self.m
    }

    /// The level of a new point, from its chunk id: -ln(u) / ln(M), u uniform in (0, 1].
    fn level_of(&self, chunk_id: u64) -> u8 {
        let mut z = chunk_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let level = (-u.ln() / (self.m as f64).ln()).floor() as usize;
        level.min(MAX_LEVEL) as u8
    }

    /// A hash of point `p`'s stored vector (its bits, so only identical vectors collide
    /// on purpose).
    fn vector_hash(&self, p: u32) -> u64 {
        let (d, at) = (self.dim, p as usize * self.dim);
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |x: u64| h = (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
        match self.quantization {
            Quantization::F32 => self.f32s[at..at + d]
                .iter()
                .for_each(|x| mix(x.to_bits() as u64)),
            Quantization::Int8 => self.i8s[at..at + d]
                .chunks(8)
                .for_each(|c| mix(c.iter().fold(0u64, |a, &b| (a << 8) | b as u8 as u64))),
        }
        h
    }

    fn same_vector(&self, a: u32, b: u32) -> bool {
        let d = self.dim;
        let (x, y) = (a as usize * d, b as usize * d);
        match self.quantization {
            Quantization::F32 => self.f32s[x..x + d]
                .iter()
                .zip(&self.f32s[y..y + d])
                .all(|(u, v)| u.to_bits() == v.to_bits()),
            Quantization::Int8 => self.i8s[x..x + d] == self.i8s[y..y + d],
        }
    }

    /// The linked point with `p`'s very vector, if any; otherwise `p` is recorded as one.
    fn twin_of(&mut self, p: u32) -> Option<u32> {
        let h = self.vector_hash(p);
        let first = self
            .by_vector
            .get(&h)
            .and_then(|ps| ps.iter().copied().find(|&q| self.same_vector(p, q)));
        if first.is_none() {
            self.by_vector.entry(h).or_default().push(p);
        }
        first
    }

    fn slot(&self, p: u32, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            let w = self.m0() + 1;
            &self.links0[p as usize * w..(p as usize + 1) * w]
        } else {
            let w = self.m + 1;
            &self.upper[p as usize][(layer - 1) * w..layer * w]
        }
    }

    fn links(&self, p: u32, layer: usize, out: &mut Vec<u32>) {
        let s = self.slot(p, layer);
        let n = (s[0].load(Acquire) as usize).min(s.len() - 1);
        out.clear();
        out.extend(s[1..=n].iter().map(|a| a.load(Relaxed)));
    }

    /// Replaces a list; the caller holds its stripe.
    fn set_links(&self, p: u32, layer: usize, to: &[u32]) {
        let s = self.slot(p, layer);
        for (a, v) in s[1..].iter().zip(to) {
            a.store(*v, Relaxed);
        }
        s[0].store(to.len() as u32, Release);
    }

    fn query(&self, v: &[f32]) -> Query {
        match self.quantization {
            Quantization::F32 => Query::F32(normalised(v)),
            Quantization::Int8 => {
                let q = quantize(v);
                let inv = inv_norm_i8(&q);
                Query::Int8(q, inv)
            }
        }
    }

    fn dist(&self, q: &Query, p: u32) -> f32 {
        let (d, at) = (self.dim, p as usize * self.dim);
        match q {
            Query::F32(v) => 1.0 - dot_f32(v, &self.f32s[at..at + d]),
            Query::Int8(v, inv) => {
                1.0 - dot_i8(v, &self.i8s[at..at + d]) as f32 * inv * self.inv_norms[p as usize]
            }
        }
    }

    fn dist_points(&self, a: u32, b: u32) -> f32 {
        let d = self.dim;
        let (x, y) = (a as usize * d, b as usize * d);
        match self.quantization {
            Quantization::F32 => 1.0 - dot_f32(&self.f32s[x..x + d], &self.f32s[y..y + d]),
            Quantization::Int8 => {
                1.0 - dot_i8(&self.i8s[x..x + d], &self.i8s[y..y + d]) as f32
                    * self.inv_norms[a as usize]
                    * self.inv_norms[b as usize]
            }
        }
    }

    /// The query of a point already stored (for linking it).
    fn point_query(&self, p: u32) -> Query {
        let (d, at) = (self.dim, p as usize * self.dim);
        match self.quantization {
            Quantization::F32 => Query::F32(self.f32s[at..at + d].to_vec()),
            Quantization::Int8 => {
                Query::Int8(self.i8s[at..at + d].to_vec(), self.inv_norms[p as usize])
            }
        }
    }

    /// Greedy descent from `from` through the layers above `to`.
    fn descend(&self, q: &Query, from: u32, top: usize, to: usize, scratch: &mut Vec<u32>) -> Near {
        let mut best = Near(self.dist(q, from), from);
        for layer in (to + 1..=top).rev() {
            loop {
                let mut moved = false;
                self.links(best.1, layer, scratch);
                for &c in scratch.iter() {
                    let d = self.dist(q, c);
                    if d < best.0 {
                        best = Near(d, c);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        best
    }

    /// The beam search of one layer: the `ef` nearest points found from `entries`, nearest
    /// first. Points failing `keep` are walked through but not returned; `skip` never is.
    fn search_layer(
        &self,
        q: &Query,
        entries: &[Near],
        ef: usize,
        layer: usize,
        keep: Option<&dyn Fn(u32) -> bool>,
        skip: Option<u32>,
    ) -> Vec<Near> {
        VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            visited.start(self.len());
            let mut candidates: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(ef * 2);
            let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
            let admit = |p: u32| Some(p) != skip && keep.is_none_or(|f| f(p));
            for &e in entries {
                if visited.first(e.1) {
                    candidates.push(Reverse(e));
                    if admit(e.1) {
                        found.push(e);
                    }
                }
            }
            while found.len() > ef {
                found.pop();
            }
            let mut links = Vec::with_capacity(self.m0());
            while let Some(Reverse(c)) = candidates.pop() {
                if found.len() >= ef && found.peek().is_some_and(|w| c.0 > w.0) {
                    break;
                }
                self.links(c.1, layer, &mut links);
                for &n in &links {
                    if !visited.first(n) {
                        continue;
                    }
                    let d = self.dist(q, n);
                    if found.len() < ef || found.peek().is_some_and(|w| d < w.0) {
                        candidates.push(Reverse(Near(d, n)));
                        if admit(n) {
                            found.push(Near(d, n));
                            if found.len() > ef {
                                found.pop();
                            }
                        }
                    }
                }
            }
            found.into_sorted_vec()
        })
    }

    /// The heuristic: walk the candidates nearest first and keep one only if it is nearer
    /// the target than any neighbour already kept (which spreads links across directions).
    /// With `fill`, the places it leaves go to the nearest candidates it passed over.
    fn select(&self, candidates: &[Near], m: usize, fill: bool) -> Vec<u32> {
        if candidates.len() <= m {
            return candidates.iter().map(|c| c.1).collect();
        }
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in candidates {
            if kept.len() >= m {
                break;
            }
            // Ties are kept: points with identical vectors (templated text, and int8
            // rounding makes near-twins identical) would otherwise prune each other away.
            if kept.iter().all(|&k| self.dist_points(c.1, k) >= c.0) {
                kept.push(c.1);
            }
        }
        if fill {
            for c in candidates {
                if kept.len() >= m {
                    break;
                }
                if !kept.contains(&c.1) {
                    kept.push(c.1);
                }
            }
        }
        kept
    }

    /// Adds `p` to `n`'s list at `layer`, pruning it by the heuristic when full.
    fn link_back(&self, n: u32, p: u32, layer: usize, scratch: &mut Vec<u32>) {
        let cap = if layer == 0 { self.m0() } else { self.m };
        let _g = lock(&self.stripes[n as usize % STRIPES]);
        self.links(n, layer, scratch);
        if scratch.contains(&p) {
            return;
        }
        if scratch.len() < cap {
            let s = self.slot(n, layer);
            s[scratch.len() + 1].store(p, Relaxed);
            s[0].store(scratch.len() as u32 + 1, Release);
            return;
        }
        let mut c: Vec<Near> = scratch
            .iter()
            .chain(std::iter::once(&p))
            .map(|&x| Near(self.dist_points(n, x), x))
            .collect();
        c.sort_unstable();
        let kept = self.select(&c, cap, true);
        self.set_links(n, layer, &kept);
    }

    /// Links point `p` (already stored) into the graph.
    fn link(&self, p: u32) {
        let level = self.levels[p as usize] as usize;
        let Some(ep) = *lock(&self.entry) else {
            return;
        };
        if ep == p {
            return;
        }
        let top = self.levels[ep as usize] as usize;
        let q = self.point_query(p);
        let mut scratch = Vec::with_capacity(self.m0() + 1);
        let start = self.descend(&q, ep, top, level.min(top), &mut scratch);
        let mut entries = vec![start];
        for layer in (0..=level.min(top)).rev() {
            let found = self.search_layer(&q, &entries, self.ef_construction, layer, None, Some(p));
            let chosen = self.select(&found, self.m, false);
            {
                // Points inserted meanwhile may have found `p` through a layer above and
                // linked themselves here already: keep those links (overwriting them
                // left such points with no way in).
                let _g = lock(&self.stripes[p as usize % STRIPES]);
                self.links(p, layer, &mut scratch);
                if scratch.is_empty() {
                    self.set_links(p, layer, &chosen);
                } else {
                    let cap = if layer == 0 { self.m0() } else { self.m };
                    let mut all: Vec<Near> = chosen
                        .iter()
                        .chain(scratch.iter().filter(|x| !chosen.contains(x)))
                        .map(|&x| Near(self.dist_points(p, x), x))
                        .collect();
                    all.sort_unstable();
                    let kept = self.select(&all, cap, true);
                    self.set_links(p, layer, &kept);
                }
            }
            for &n in &chosen {
                self.link_back(n, p, layer, &mut scratch);
            }
            if !found.is_empty() {
                entries = found;
            }
        }
        if level > top {
            let mut e = lock(&self.entry);
            if e.is_none_or(|cur| self.levels[cur as usize] < level as u8) {
                *e = Some(p);
            }
        }
    }

    /// Inserts `(chunk id, vector)` pairs: stored first, then linked in parallel.
    pub fn insert(&mut self, items: &[(u64, &[f32])]) -> Result<(), String> {
        let Some(first) = items.first() else {
            return Ok(());
        };
        if self.dim == 0 {
            self.dim = first.1.len();
        }
        if let Some((id, v)) = items
            .iter()
            .find(|(_, v)| v.len() != self.dim || v.is_empty())
        {
            return Err(format!(
                "chunk {id}: a vector of {} dimensions in a graph of {}",
                v.len(),
                self.dim
            ));
        }
        let mut to_link = Vec::with_capacity(items.len());
        for (id, v) in items {
            let p = self.len() as u32;
            match self.quantization {
                Quantization::F32 => self.f32s.extend(normalised(v)),
                Quantization::Int8 => {
                    let q = quantize(v);
                    self.inv_norms.push(inv_norm_i8(&q));
                    self.i8s.extend(q);
                }
            }
            self.ids.push(*id);
            let twin = self.twin_of(p);
            let level = if twin.is_some() {
                0
            } else {
                self.level_of(*id)
            };
            self.levels.push(level);
            match twin {
                Some(first) => self.twins.entry(first).or_default().push(p),
                None => to_link.push(p),
            }
            self.links0
                .extend((0..=self.m0()).map(|_| AtomicU32::new(0)));
            self.upper.push(
                (0..level as usize * (self.m + 1))
                    .map(|_| AtomicU32::new(0))
                    .collect(),
            );
        }
        let entry = self.entry.get_mut().unwrap_or_else(|p| p.into_inner());
        if entry.is_none() {
            *entry = to_link.first().copied();
        }
        let this = &*self;
        to_link.into_par_iter().for_each(|p| this.link(p));
        Ok(())
    }

    /// The `k` nearest points to `query` whose chunk passes `keep`, as (chunk id, distance),
    /// nearest first. `ef` is the beam of the bottom layer (at least `k`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        let Some(ep) = *lock(&self.entry) else {
            return vec![];
        };
        if k == 0 || query.len() != self.dim {
            return vec![];
        }
        let q = self.query(query);
        let mut scratch = Vec::with_capacity(self.m0() + 1);
        let start = self.descend(&q, ep, self.levels[ep as usize] as usize, 0, &mut scratch);
        // A linked point stands for its twins too: it is admitted when any of them passes.
        let by_point = keep.map(|f| {
            move |p: u32| {
                f(self.ids[p as usize])
                    || self
                        .twins
                        .get(&p)
                        .is_some_and(|t| t.iter().any(|&x| f(self.ids[x as usize])))
            }
        });
        let found = self.search_layer(
            &q,
            &[start],
            ef.max(k),
            0,
            by_point.as_ref().map(|f| f as &dyn Fn(u32) -> bool),
            None,
        );
        let mut out = Vec::with_capacity(k);
        for n in found {
            let twins = self.twins.get(&n.1).map_or(&[][..], |t| t.as_slice());
            for &p in std::iter::once(&n.1).chain(twins) {
                let id = self.ids[p as usize];
                if out.len() < k && keep.is_none_or(|f| f(id)) {
                    out.push((id, n.0.max(0.0)));
                }
            }
        }
        out
    }

    /// Writes the graph to `path` (the manifest swap makes a dump current, not this).
    pub fn dump(&self, path: &Path) -> std::io::Result<()> {
        let header = Header {
            format: FORMAT.into(),
            quantization: self.quantization,
            dim: self.dim,
            m: self.m,
            ef_construction: self.ef_construction,
            points: self.len(),
            entry: *lock(&self.entry),
            twins: self.twins.values().map(Vec::len).sum(),
        };
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let mut h = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        h.push(b'\n');
        w.write_all(&h)?;
        for id in &self.ids {
            w.write_all(&id.to_le_bytes())?;
        }
        w.write_all(&self.levels)?;
        for x in &self.f32s {
            w.write_all(&x.to_le_bytes())?;
        }
        w.write_all(&self.i8s.iter().map(|&x| x as u8).collect::<Vec<u8>>())?;
        for x in &self.inv_norms {
            w.write_all(&x.to_le_bytes())?;
        }
        for a in self
            .links0
            .iter()
            .chain(self.upper.iter().flat_map(|u| u.iter()))
        {
            w.write_all(&a.load(Relaxed).to_le_bytes())?;
        }
        for (first, twins) in &self.twins {
            for t in twins {
                w.write_all(&t.to_le_bytes())?;
                w.write_all(&first.to_le_bytes())?;
            }
        }
        w.write_all(b"END\n")?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    }

    /// Reads a dump, checking its size and every link, so a damaged file is an error (and
    /// the index is rebuilt from the store) rather than a graph that misleads.
    pub fn load(path: &Path) -> Result<Hnsw, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut line = vec![];
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            r.read_exact(&mut byte)
                .map_err(|e| format!("header: {e}"))?;
            line.push(byte[0]);
            if line.len() > 4096 {
                return Err("header: too long".into());
            }
        }
        let h: Header = serde_json::from_slice(&line).map_err(|e| format!("header: {e}"))?;
        if h.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT}", h.format));
        }
        let (n, d) = (h.points, h.dim);
        let mut g = Hnsw::new(h.quantization, h.m, h.ef_construction, 0);
        g.dim = d;
        let mut bytes = |len: usize| -> Result<Vec<u8>, String> {
            let mut b = vec![0u8; len];
            r.read_exact(&mut b)
                .map_err(|e| format!("truncated dump: {e}"))?;
            Ok(b)
        };
        g.ids = bytes(n * 8)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        g.levels = bytes(n)?;
        match h.quantization {
            Quantization::F32 => g.f32s = f32s(&bytes(n * d * 4)?),
            Quantization::Int8 => {
                g.i8s = bytes(n * d)?.into_iter().map(|b| b as i8).collect();
                g.inv_norms = f32s(&bytes(n * 4)?);
            }
        }
        let u32s = |b: Vec<u8>| -> Vec<AtomicU32> {
            b.chunks_exact(4)
                .map(|c| AtomicU32::new(u32::from_le_bytes(c.try_into().unwrap())))
                .collect()
        };
        g.links0 = u32s(bytes(n * (g.m0() + 1) * 4)?);
        for &level in &g.levels {
            if level as usize > MAX_LEVEL {
                return Err(format!("a point of level {level}"));
            }
            let len = level as usize * (g.m + 1);
            g.upper.push(u32s(bytes(len * 4)?).into_boxed_slice());
        }
        let pairs: Vec<u32> = bytes(h.twins * 8)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if bytes(4)? != b"END\n" || r.read(&mut byte).map_err(|e| e.to_string())? != 0 {
            return Err(format!(
                "dump of {size} bytes does not end where its header says"
            ));
        }
        // Every count within its slot and every link a point: a search may then trust them.
        let bad = |s: &[AtomicU32]| {
            let c = s[0].load(Relaxed) as usize;
            c > s.len() - 1 || s[1..=c].iter().any(|a| a.load(Relaxed) as usize >= n)
        };
        let w0 = g.m0() + 1;
        if g.links0.chunks_exact(w0).any(bad)
            || g.upper.iter().any(|u| u.chunks_exact(g.m + 1).any(bad))
        {
            return Err("a link list out of bounds".into());
        }
        let mut is_twin = vec![false; n];
        for pair in pairs.chunks_exact(2) {
            let (t, first) = (pair[0] as usize, pair[1]);
            if t >= n || first as usize >= n || t == first as usize {
                return Err("a twin out of bounds".into());
            }
            is_twin[t] = true;
            g.twins.entry(first).or_default().push(t as u32);
        }
        for t in g.twins.values_mut() {
            t.sort_unstable();
        }
        for p in (0..n as u32).filter(|&p| !is_twin[p as usize]) {
            let h = g.vector_hash(p);
            g.by_vector.entry(h).or_default().push(p);
        }
        match h.entry {
            Some(e) if (e as usize) < n => *g.entry.get_mut().unwrap() = Some(e),
            None if n == 0 => {}
            _ => return Err("no valid entry point".into()),
        }
        Ok(g)
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = dot_f32(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

fn inv_norm_i8(q: &[i8]) -> f32 {
    let n = dot_i8(q, q);
    if n > 0 {
        1.0 / (n as f32).sqrt()
    } else {
        0.0
    }
}

/// Dot products in blocks of 16 lanes, written so the compiler vectorises them; compiled
/// again with AVX2 and chosen at run time where the CPU has it.
#[inline(always)]
fn dot_f32_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_i8_lanes(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x as i32 * y as i32)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] as i32 * y[i] as i32;
        }
    }
    acc.iter().sum::<i32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_lanes(a, b)
}

pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_f32_avx2(a, b) };
    }
    dot_f32_lanes(a, b)
}

pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_lanes(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clustered unit vectors, as embeddings of templated notes are: centres, and points
    /// near them.
    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..n / 20 + 1)
            .map(|_| (0..dim).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[(i * 7919) % centres.len()];
                normalised(&c.iter().map(|x| x + 0.15 * next()).collect::<Vec<f32>>())
            })
            .collect()
    }

    fn exact(points: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
        let mut d: Vec<(f32, u64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (1.0 - dot_f32(p, q), i as u64))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        d.into_iter().take(k).map(|x| x.1).collect()
    }

    fn build(q: Quantization, points: &[Vec<f32>], batch: usize) -> Hnsw {
        let mut g = Hnsw::new(q, 16, 100, 0);
        let items: Vec<(u64, &[f32])> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p.as_slice()))
            .collect();
        for b in items.chunks(batch) {
            g.insert(b).unwrap();
        }
        g
    }

    fn recall(g: &Hnsw, points: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut hit = 0;
        for q in queries {
            let truth = exact(points, q, 10);
            let got: Vec<u64> = g.search(q, 10, ef, None).into_iter().map(|x| x.0).collect();
            hit += got.iter().filter(|c| truth.contains(c)).count();
        }
        hit as f64 / (10 * queries.len()) as f64
    }

    /// Queries near the collection (a point moved by noise), as a query is near the notes
    /// it should find.
    fn near(points: &[Vec<f32>], seed: u64) -> Vec<Vec<f32>> {
        let noise = clustered(points.len() / 40, points[0].len(), seed);
        points
            .iter()
            .step_by(40)
            .zip(noise)
            .map(|(p, n)| {
                normalised(
                    &p.iter()
                        .zip(n)
                        .map(|(x, e)| x + 0.2 * e)
                        .collect::<Vec<f32>>(),
                )
            })
            .collect()
    }

    #[test]
    fn finds_the_exact_neighbours_of_clustered_vectors() {
        let points = clustered(4000, 48, 7);
        let queries = near(&points, 99);
        // Far queries (random directions) need a wider beam: the neighbours of a point
        // outside every cluster are nearly equidistant.
        let far = clustered(100, 48, 99);
        for quant in [Quantization::F32, Quantization::Int8] {
            // Batches of one and of many: the serial and the parallel path.
            for batch in [1, 500] {
                let g = build(quant, &points, batch);
                assert_eq!(g.len(), 4000);
                let r = recall(&g, &points, &queries, 64);
                assert!(r >= 0.97, "{quant} batch {batch}: recall@10 {r}");
                let r = recall(&g, &points, &far, 256);
                assert!(r >= 0.97, "{quant} batch {batch}: far recall@10 {r}");
            }
        }
    }

    #[test]
    fn a_point_finds_itself_first_and_distances_are_cosines() {
        // Built one point at a time, so the graph is the same on every run (parallel
        // linking orders insertions by the scheduler, and about 1 point in 2,000 is then
        // missed at this breadth; the recall test covers that path).
        let points = clustered(1000, 32, 3);
        let g = build(Quantization::F32, &points, 1);
        for (i, p) in points.iter().enumerate().step_by(37) {
            let hits = g.search(p, 3, 64, None);
            assert_eq!(hits[0].0, i as u64);
            assert!(hits[0].1 < 1e-5, "{}", hits[0].1);
            let j = hits[1].0 as usize;
            let cos = dot_f32(p, &points[j]);
            assert!((1.0 - hits[1].1 - cos).abs() < 1e-5);
        }
    }

    #[test]
    fn a_filter_returns_only_kept_chunks_and_still_finds_them() {
        let points = clustered(2000, 32, 5);
        let g = build(Quantization::F32, &points, 250);
        let keep = |c: u64| c.is_multiple_of(3);
        let kept = &points;
        for q in clustered(30, 32, 11) {
            let hits = g.search(&q, 10, 64, Some(&keep));
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.0.is_multiple_of(3)));
            let mut truth: Vec<(f32, u64)> = kept
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 == 0)
                .map(|(i, p)| (1.0 - dot_f32(p, &q), i as u64))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert_eq!(hits[0].0, truth[0].1);
        }
    }

    #[test]
    fn a_dump_loads_back_the_same_graph_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let points = clustered(1500, 24, 9);
        for quant in [Quantization::F32, Quantization::Int8] {
            let g = build(quant, &points, 300);
            let path = dir.path().join(format!("{quant}.bin"));
            g.dump(&path).unwrap();
            let back = Hnsw::load(&path).unwrap();
            for q in clustered(20, 24, 13) {
                assert_eq!(g.search(&q, 10, 50, None), back.search(&q, 10, 50, None));
            }
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
            assert!(Hnsw::load(&path).is_err(), "a truncated dump loads");
            let mut bad = bytes.clone();
            // A link past the last point, in the last slot of layer 0.
            let links_end = bytes.len() - 4 - back.upper.iter().map(|u| u.len() * 4).sum::<usize>();
            bad[links_end - 4..links_end].copy_from_slice(&u32::MAX.to_le_bytes());
            bad[links_end - 4 * (2 * 16 + 1)..links_end - 4 * (2 * 16)]
                .copy_from_slice(&(2u32 * 16).to_le_bytes());
            std::fs::write(&path, &bad).unwrap();
            assert!(Hnsw::load(&path).is_err(), "an out-of-bounds link loads");
        }
    }

    /// Templated notes give identical windows: 40 copies of each of 8 vectors among 400
    /// others, and (int8) 300 vectors so close that they round to one. Every point must
    /// still be found, its copies beside it, through a dump and back.
    #[test]
    fn identical_vectors_are_all_found() {
        let distinct = clustered(400, 32, 21);
        let mut points = distinct.clone();
        for v in distinct.iter().take(8) {
            points.extend(std::iter::repeat_n(v.clone(), 40));
        }
        let base = clustered(1, 32, 1)[0].clone();
        let near_twins: Vec<Vec<f32>> = clustered(300, 32, 2)
            .iter()
            .map(|n| {
                normalised(
                    &base
                        .iter()
                        .zip(n)
                        .map(|(b, e)| b + 0.002 * e)
                        .collect::<Vec<f32>>(),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for (quant, points) in [
            (Quantization::F32, &points),
            (Quantization::Int8, &points),
            (Quantization::Int8, &near_twins),
        ] {
            let g = build(quant, points, 7);
            let path = dir.path().join("g.bin");
            g.dump(&path).unwrap();
            let back = Hnsw::load(&path).unwrap();
            for g in [&g, &back] {
                for (i, p) in points.iter().enumerate() {
                    let hits = g.search(p, points.len(), points.len(), None);
                    assert!(
                        hits.iter().any(|h| h.0 == i as u64),
                        "{quant}: point {i} not found"
                    );
                    assert!(
                        hits[0].1 < 1e-4,
                        "{quant}: point {i}: nearest at {}",
                        hits[0].1
                    );
                }
            }
            // A filter that keeps only one copy finds that copy.
            let last = points.len() as u64 - 1;
            let hits = g.search(&points[last as usize], 1, 64, Some(&|c: u64| c == last));
            assert_eq!(hits, vec![(last, hits[0].1)]);
        }
    }

    #[test]
    fn a_vector_of_another_dimension_is_refused() {
        let mut g = Hnsw::new(Quantization::F32, 8, 32, 0);
        g.insert(&[(1, &[1.0, 0.0, 0.0][..])]).unwrap();
        let err = g.insert(&[(2, &[1.0, 0.0][..])]).unwrap_err();
        assert!(err.contains("2 dimensions"), "{err}");
        assert_eq!(g.len(), 1);
    }
}

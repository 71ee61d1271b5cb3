//! How the vector index is built: the precision of the vectors the graph holds, and the
//! graph's parameters. Recorded in the store when a data directory is created (the store is
//! the source of truth: a deleted `vectors/` folder is rebuilt the same way), changed only by
//! `clinsearch reindex`, which rebuilds the graph from the stored f32 vectors.
//!
//! **int8**: each vector is scaled by its own largest component to [-127, 127]
//! ([`quantize`]) and the graph compares quantised vectors by their cosine
//! ([`cosine_i8`]), so no collection-wide scale has to be learnt or kept: a vector's
//! scale cancels in its cosine. The graph then holds 384 bytes per 384-dimension vector
//! instead of 1,536. Its ranking is approximate twice over (graph and quantisation), so the
//! candidates it returns, [`RESCORE_FACTOR`] times as many as wanted, are scored again with
//! the exact f32 vectors from the store and cut to the wanted number
//! ([`super::vectors::VectorIndex::search_rescored`]).

use serde::{Deserialize, Serialize};

/// The precision of the vectors held by the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The vectors as stored (4 bytes a dimension).
    #[default]
    F32,
    /// One byte a dimension, with exact f32 rescoring of the candidates.
    Int8,
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quantization::F32 => "f32",
            Quantization::Int8 => "int8",
        })
    }
}

/// With int8, the graph returns this many candidates per wanted hit for exact rescoring.
pub const RESCORE_FACTOR: usize = 2;

/// The widest search breadth a directory may record: a breadth of at least its number of
/// chunks makes the vector side an exact scan (`search::Searcher::ef`), and a million covers
/// the collections one machine serves.
pub const MAX_EF_SEARCH: usize = 1_000_000;

/// The vector index's settings, as recorded in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorSettings {
    pub quantization: Quantization,
    /// Links per point and layer (hnsw's M; layer 0 keeps twice as many).
    pub m: usize,
    /// Candidates explored while linking a new point.
    pub ef_construction: usize,
    /// Candidates explored per search (the server's and eval's default; `ef_search` in the
    /// configuration overrides it).
    pub ef_search: usize,
}

impl VectorSettings {
    /// What built every data directory made before the settings were recorded.
    pub const LEGACY: VectorSettings = VectorSettings {
        quantization: Quantization::F32,
        m: 24,
        ef_construction: 200,
        ef_search: 64,
    };

    /// What a new data directory records unless told otherwise: int8 with exact rescoring,
    /// chosen by the scale benchmark (README, "Vectors embedded elsewhere, and compact
    /// vectors"). At 100,000 chunks int8 matches f32's recall@10 at ef_search 64 (0.996 and
    /// 0.997) and gives a faster build (22.8 s against 33.2 s), a smaller directory and less
    /// memory when serving. At 1,000,000 chunks ef_search 64 gives 0.854 on that benchmark's
    /// clustered set and 256 gives 0.960: a collection that large should record 256.
    pub const DEFAULT: VectorSettings = VectorSettings {
        quantization: Quantization::Int8,
        m: 24,
        ef_construction: 200,
        ef_search: 64,
    };

    /// Bounds a user's choice.
    pub fn check(&self) -> Result<(), String> {
        if !(4..=128).contains(&self.m) {
            return Err(format!("hnsw M {} is outside 4..=128", self.m));
        }
        if !(8..=4096).contains(&self.ef_construction) {
            return Err(format!(
                "hnsw ef_construction {} is outside 8..=4096",
                self.ef_construction
            ));
        }
        // Past the number of chunks a search is an exact scan, so a breadth may be large.
        if !(8..=MAX_EF_SEARCH).contains(&self.ef_search) {
            return Err(format!(
                "hnsw ef_search {} is outside 8..={MAX_EF_SEARCH}",
                self.ef_search
            ));
        }
        Ok(())
    }
}

impl Default for VectorSettings {
    fn default() -> Self {
        VectorSettings::DEFAULT
    }
}

impl std::fmt::Display for VectorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vectors, M {}, ef_construction {}, ef_search {}",
            self.quantization, self.m, self.ef_construction, self.ef_search
        )
    }
}

/// Settings asked for on the command line or in code: each one given replaces the base's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VectorChoice {
    pub quantization: Option<Quantization>,
    pub m: Option<usize>,
    pub ef_construction: Option<usize>,
    pub ef_search: Option<usize>,
}

impl VectorChoice {
    pub fn is_empty(&self) -> bool {
        *self == VectorChoice::default()
    }

    /// `base` with every given setting replacing its own.
    pub fn over(&self, base: VectorSettings) -> VectorSettings {
        VectorSettings {
            quantization: self.quantization.unwrap_or(base.quantization),
            m: self.m.unwrap_or(base.m),
            ef_construction: self.ef_construction.unwrap_or(base.ef_construction),
            ef_search: self.ef_search.unwrap_or(base.ef_search),
        }
    }

    /// The given settings that differ from `recorded`, for the message refusing them.
    pub fn conflicts(&self, recorded: &VectorSettings) -> Vec<String> {
        let mut out = vec![];
        let mut cmp = |name: &str, want: Option<String>, have: String| {
            if let Some(w) = want {
                if w != have {
                    out.push(format!("{name} {w} (recorded: {have})"));
                }
            }
        };
        cmp(
            "quantization",
            self.quantization.map(|q| q.to_string()),
            recorded.quantization.to_string(),
        );
        cmp("M", self.m.map(|v| v.to_string()), recorded.m.to_string());
        cmp(
            "ef_construction",
            self.ef_construction.map(|v| v.to_string()),
            recorded.ef_construction.to_string(),
        );
        cmp(
            "ef_search",
            self.ef_search.map(|v| v.to_string()),
            recorded.ef_search.to_string(),
        );
        out
    }
}

/// A vector as int8: scaled by its largest absolute component to [-127, 127].
pub fn quantize(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return vec![0; v.len()];
    }
    let s = 127.0 / max;
    v.iter()
        .map(|x| (x * s).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// The cosine of two int8 vectors (0 when either is all zeros), in integer arithmetic: the
/// measure the int8 graph ranks by ([`super::hnsw`] keeps each point's norm beside it).
pub fn cosine_i8(a: &[i8], b: &[i8]) -> f32 {
    use super::hnsw::dot_i8;
    let (dot, na, nb) = (dot_i8(a, b), dot_i8(a, a), dot_i8(b, b));
    if na == 0 || nb == 0 {
        return 0.0;
    }
    dot as f32 / ((na as f32).sqrt() * (nb as f32).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_cosine_is_close_to_the_exact_one() {
        // Deterministic pseudo-random unit vectors.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for _ in 0..50 {
            let a: Vec<f32> = (0..384).map(|_| next()).collect();
            let b: Vec<f32> = (0..384).map(|_| next() + 0.5 * a[0]).collect();
            let exact = crate::search::cosine(&a, &b);
            let approx = cosine_i8(&quantize(&a), &quantize(&b));
            assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
        }
        assert_eq!(cosine_i8(&quantize(&[0.0; 4]), &quantize(&[1.0; 4])), 0.0);
        assert_eq!(quantize(&[0.5, -1.0, 0.25]), vec![64, -127, 32]);
    }

    #[test]
    fn settings_outside_the_bounds_are_refused() {
        assert!(VectorSettings::DEFAULT.check().is_ok());
        let bad = VectorSettings {
            m: 300,
            ..VectorSettings::DEFAULT
        };
        assert!(bad.check().unwrap_err().contains("M 300"));
    }
}

//! Dense layers on weights packed once at load.

use super::*;

// ---------------------------------------------------------------------------------------
// Dense layers with AVX-512: the GEMM back-end candle uses runs its AVX2 microkernel on
// this CPU (perf: gemm_f32::microkernel::fma::f32::x2x6, ~68% of a batch) and packs the
// weight matrix again on every call. Weights do not change at inference, so they are packed
// once at load ([`PackedWeights`]) into column panels that a register-tiled AVX-512 kernel
// streams: 8 rows x 32 columns of accumulators (16 zmm registers).

/// Columns per packed panel (two zmm registers).
pub const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 8;

/// `W` `[n, k]` repacked as `ceil(n / 32)` panels, each `k x 32` (column `c` of a panel is
/// weight row `32 p + c`; missing rows of the last panel are zeros).
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    data: Vec<f32>,
}

impl PackedWeights {
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for p in 0..panels {
            let base = p * k * NR;
            for c in 0..NR {
                let j = p * NR + c;
                if j >= n {
                    break;
                }
                let row = &w[j * k..(j + 1) * k];
                for (kk, v) in row.iter().enumerate() {
                    data[base + kk * NR + c] = *v;
                }
            }
        }
        PackedWeights { n, k, data }
    }
}
/// Floats of `x` per block of rows (128 KB): the block stays in L2 (2 MB per core here) while
/// every panel of the thread streams past it. Without blocking, `x` (7 to 27 MB for a batch
/// of 32 windows) was read again from L3 for each of the layer's panels: blocking took the
/// kernel from 179-266 to 255-271 GFLOP/s on MiniLM's shapes (examples/probe_gemm; 16K, 96K
/// and 192K floats measured within noise of this or below it). Packing the block's rows so
/// that the broadcasts read consecutive floats was slower: each thread re-packs all of `x`.
const A_BLOCK: usize = 32 * 1024;
/// How many inputs ahead a tile asks for its panel's weights.
pub(crate) const PANEL_AHEAD: usize = 16;

/// What a dense kernel does to each output tile after the bias, while the tile is still in
/// registers or L1: a separate pass over a `[m, n]` buffer costs a read and a write of it
/// from memory (27 MB for a batch's FFN activations).
#[derive(Debug, Clone, Copy, Default)]
pub enum Epilogue<'a> {
    #[default]
    None,
    /// BERT's GELU (erf form).
    Gelu,
    /// Adds a `[m, n]` residual (the sub-layer's input).
    Residual(&'a [f32]),
}

/// `x` `[m, k]` times the packed weights' transpose, plus `bias`: `[m, n]` row-major.
/// Panels are split across the thread pool. Panics without AVX-512 (check [`has_avx512`]).
pub fn linear_packed(x: &[f32], m: usize, w: &PackedWeights, bias: Option<&[f32]>) -> Vec<f32> {
    linear_packed_with(x, m, w, bias, Epilogue::None)
}

/// [`linear_packed`] followed by `epi` on each output.
pub fn linear_packed_with(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epi: Epilogue,
) -> Vec<f32> {
    assert!(has_avx512(), "linear_packed needs AVX-512");
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k);
    if let Epilogue::Residual(r) = epi {
        assert_eq!(r.len(), m * n, "residual shape");
    }
    let panels = n.div_ceil(NR);
    let mut out = Vec::<f32>::with_capacity(m * n);
    for_each_panel_range(panels, out.as_mut_ptr(), |range, out| {
        // SAFETY: AVX-512 is present (asserted above); this thread's panels' columns of all
        // m rows: its own part of `out`.
        unsafe { run_tiles(x, 0..m, range, w, bias, epi, out) };
    });
    // SAFETY: the tiles above wrote every row of every panel's columns: all m x n values.
    unsafe { out.set_len(m * n) };
    out
}

/// Runs `work(range, out)` for the output panels `0..panels` split into one contiguous range
/// per thread of the pool (a thread packs its block of rows once for all its panels). Each
/// call must write only its own panels' columns of `out` (which is what makes sharing the
/// pointer sound); `out` may be a vector's uninitialised capacity that the calls fill.
/// Output rows `rows` x the columns of `panels` of `x w^T + bias`, then `epi`, into `out`
/// (`[.., w.n]`; `x` and `out` indexed by the same row numbers). Rows run in blocks of
/// [`A_BLOCK`] floats, each against all the panels before the next block.
///
/// # Safety
/// AVX-512 must be present; `out` must hold those rows and columns, written by no one else.
unsafe fn run_tiles(
    x: &[f32],
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epi: Epilogue,
    out: *mut f32,
) {
    let (n, k) = (w.n, w.k);
    // Rows per block of `x`, a multiple of the tile height.
    let mc = ((A_BLOCK / k.max(1)) / MR).max(1) * MR;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let iend = (i0 + mc).min(rows.end);
        for p in panels.clone() {
            let panel = &w.data[p * k * NR..(p + 1) * k * NR];
            let cols = (n - p * NR).min(NR);
            let mut i = i0;
            while i < iend {
                let at = TileAt {
                    out,
                    n,
                    i0: i,
                    rows: (iend - i).min(MR),
                    j0: p * NR,
                    cols,
                };
                // The tile reads rows i..i+at.rows of x and writes the same rows of its
                // panel's columns.
                tile_avx512(&x[i * k..], k, panel, &at, bias, epi);
                i += at.rows;
            }
        }
        i0 = iend;
    }
}

pub(crate) fn for_each_panel_range(
    panels: usize,
    out: *mut f32,
    work: impl Fn(std::ops::Range<usize>, *mut f32) + Sync,
) {
    let out_ptr = SendPtr(out);
    let tasks = rayon::current_num_threads().min(panels).max(1);
    let per = panels.div_ceil(tasks);
    let run = |t: usize| {
        let ptr = out_ptr;
        let range = t * per..((t + 1) * per).min(panels);
        if !range.is_empty() {
            work(range, ptr.0);
        }
    };
    if tasks > 1 {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(run);
    } else {
        run(0);
    }
}
/// Where a tile's outputs go: rows `i0..i0 + rows`, columns `j0..j0 + cols` of an `n`-wide
/// row-major buffer.
pub(crate) struct TileAt {
    pub out: *mut f32,
    pub n: usize,
    pub i0: usize,
    pub rows: usize,
    pub j0: usize,
    pub cols: usize,
}

impl TileAt {
    /// Applies `epi` to row `r` of the tile, just stored (so in L1).
    ///
    /// # Safety
    /// The tile must lie inside the buffer and be written by this thread alone.
    #[inline(always)]
    pub(crate) unsafe fn finish_row(&self, r: usize, epi: Epilogue) {
        let at = (self.i0 + r) * self.n + self.j0;
        let row = std::slice::from_raw_parts_mut(self.out.add(at), self.cols);
        match epi {
            Epilogue::None => {}
            Epilogue::Gelu => gelu_body(row),
            Epilogue::Residual(res) => {
                for (o, x) in row.iter_mut().zip(&res[at..at + self.cols]) {
                    *o += x;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_avx512(
    x: &[f32],
    k: usize,
    panel: &[f32],
    at: &TileAt,
    bias: Option<&[f32]>,
    epi: Epilogue,
) {
    // The row count as a constant: loops unroll and the accumulators stay in registers.
    match at.rows {
        8 => tile_rows::<8>(x, k, panel, at, bias, epi),
        7 => tile_rows::<7>(x, k, panel, at, bias, epi),
        6 => tile_rows::<6>(x, k, panel, at, bias, epi),
        5 => tile_rows::<5>(x, k, panel, at, bias, epi),
        4 => tile_rows::<4>(x, k, panel, at, bias, epi),
        3 => tile_rows::<3>(x, k, panel, at, bias, epi),
        2 => tile_rows::<2>(x, k, panel, at, bias, epi),
        _ => tile_rows::<1>(x, k, panel, at, bias, epi),
    }
}

/// R rows x 32 columns: 2R zmm accumulators; per input, two weight loads and R broadcasts
/// from the R rows of `x` (which the row blocking keeps in L2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn tile_rows<const R: usize>(
    x: &[f32],
    k: usize,
    panel: &[f32],
    at: &TileAt,
    bias: Option<&[f32]>,
    epi: Epilogue,
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= R * k);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let pp = panel.as_ptr();
    let xp = x.as_ptr();
    for kk in 0..k {
        // The panel (48 KB at k = 384) streams from L2 for every tile; asking for it 16
        // steps ahead: +6-8% (probe_gemm, alternating runs). A hint, so running past the
        // panel's end is harmless (wrapping_add: no out-of-bounds pointer arithmetic).
        let ahead = pp.wrapping_add((kk + PANEL_AHEAD) * NR) as *const i8;
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead.wrapping_add(64), _MM_HINT_T0);
        let w0 = _mm512_loadu_ps(pp.add(kk * NR));
        let w1 = _mm512_loadu_ps(pp.add(kk * NR + 16));
        for (r, acc) in acc.iter_mut().enumerate() {
            let v = _mm512_set1_ps(*xp.add(r * k + kk));
            acc[0] = _mm512_fmadd_ps(v, w0, acc[0]);
            acc[1] = _mm512_fmadd_ps(v, w1, acc[1]);
        }
    }
    let (j0, cols) = (at.j0, at.cols);
    let mut b = [0f32; NR];
    if let Some(bias) = bias {
        b[..cols].copy_from_slice(&bias[j0..j0 + cols]);
    }
    let b0 = _mm512_loadu_ps(b.as_ptr());
    let b1 = _mm512_loadu_ps(b.as_ptr().add(16));
    for (r, acc) in acc.iter().enumerate() {
        let dst = at.out.add((at.i0 + r) * at.n + j0);
        let v0 = _mm512_add_ps(acc[0], b0);
        let v1 = _mm512_add_ps(acc[1], b1);
        if cols == NR {
            _mm512_storeu_ps(dst, v0);
            _mm512_storeu_ps(dst.add(16), v1);
        } else {
            let mut tmp = [0f32; NR];
            _mm512_storeu_ps(tmp.as_mut_ptr(), v0);
            _mm512_storeu_ps(tmp.as_mut_ptr().add(16), v1);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
        }
        at.finish_row(r, epi);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512(_: &[f32], _: usize, _: &[f32], _: &TileAt, _: Option<&[f32]>, _: Epilogue) {
    unreachable!("checked by has_avx512")
}

#[cfg(test)]
mod packed_tests {
    use super::*;

    #[test]
    fn packed_product_matches_a_naive_one_on_ragged_shapes() {
        if !has_avx512() {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        // The last shape spans three blocks of rows (85 rows of 384 fit one), the last ragged.
        for (m, k, n) in [
            (1, 5, 3),
            (8, 64, 32),
            (13, 37, 70),
            (33, 384, 100),
            (203, 384, 70),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
            let got = linear_packed(&x, m, &PackedWeights::pack(&w, n, k), Some(&b));
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                        .sum::<f64>()
                        + b[j] as f64;
                    assert!(
                        (got[i * n + j] as f64 - want).abs() < 1e-3,
                        "{m}x{k}x{n} at {i},{j}: {} vs {want}",
                        got[i * n + j]
                    );
                }
            }
        }
    }

    #[test]
    fn epilogues_equal_the_separate_passes() {
        if !has_avx512() {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        let (m, k, n) = (203, 96, 70);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 11.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.3).collect();
        let res: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let pw = PackedWeights::pack(&w, n, k);
        let plain = linear_packed(&x, m, &pw, Some(&b));

        let mut gelu = plain.clone();
        gelu_erf_inplace(&mut gelu);
        assert_eq!(
            linear_packed_with(&x, m, &pw, Some(&b), Epilogue::Gelu),
            gelu
        );

        let added: Vec<f32> = plain.iter().zip(&res).map(|(a, r)| a + r).collect();
        let got = linear_packed_with(&x, m, &pw, Some(&b), Epilogue::Residual(&res));
        assert_eq!(got, added);
    }
}

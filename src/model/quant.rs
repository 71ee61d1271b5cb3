//! Int8 dense layers for CPU inference (`--dtype int8`), on AVX-512 VNNI.
//!
//! Why int8 and not bf16 on this CPU: measured here (a 2-vCPU Xeon with AVX-512 BF16, FP16 and
//! VNNI), one thread sustains ~160 GFLOP/s of f32 FMAs, but `vdpbf16ps` only ~70-80 (half of
//! f32: it issues at a quarter of the FMA rate), while `vpdpbusd` does ~550 G int8
//! multiply-adds/s, 3.5x the f32 rate. So reduced precision pays here only as int8.
//!
//! Scheme (dynamic quantisation, as ONNX Runtime's and PyTorch's dynamic int8 linear layers):
//! weights are quantised once at load, symmetric, one scale per output feature and group of
//! 128 inputs (see [`PackedI8`]); each input
//! row is quantised when the layer runs, per group of 128 inputs, asymmetric over the group's
//! min..max onto 0..=255 (GELU outputs are skewed, and a group's own range keeps one large
//! feature from costing the whole row its resolution). `vpdpbusd` multiplies the unsigned
//! activations by the signed weights four at a time into i32 accumulators, and each group is
//! folded into f32 with both scales and the offset:
//! `y = sum_g s_wg (s_xg sum(q_x q_w) + min_xg sum(q_w)) + b`.
//! LayerNorm, GELU, softmax and attention stay f32.

use super::kernels::{Epilogue, TileAt, PANEL_AHEAD};

/// Columns per packed panel.
const NR: usize = 32;
/// Rows per register tile (2 x 8 = 16 accumulators).
const MR: usize = 8;
/// Inputs per quantisation group: each row is quantised per group of 128 inputs with its own
/// scale and minimum, so one large feature costs resolution only in its own group.
pub const GROUP: usize = 128;
const G4: usize = GROUP / 4;
/// Bytes of quantised input rows per row block (see `run_tiles`).
const Q_BLOCK: usize = 8 * 1024;

/// Whether [`linear_i8`] can run here: AVX-512 with VNNI.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `W` `[n, k]` quantised to i8 with one scale per output feature and group of [`GROUP`]
/// inputs, packed as panels of 32 output features: for each group of 4 inputs, 32 x 4 bytes
/// (two zmm registers).
///
/// Why per group and not one scale per output feature: with one scale over all 1,536 inputs
/// of MiniLM's FFN down-projection, a few large weights coarsen every other step, and that
/// layer alone took the embeddings' cosine to f32 down to 0.9994 (simulated in PyTorch on 64
/// MTSamples notes; quantising its activations to 8 bits cost nothing: 0.99997). Per group
/// of 128 inputs: 0.99987. The kernel folds each group's i32 sums into f32 anyway, so the
/// per-group scale costs one multiply per group and row.
#[derive(Debug, Clone)]
pub struct PackedI8 {
    pub n: usize,
    pub k: usize,
    /// Groups of 4 inputs (`k` rounded up).
    k4: usize,
    data: Vec<i32>,
    /// Per panel and group, the 32 weight scales.
    gscale: Vec<f32>,
    /// Per panel and group, the 32 sums of quantised weights times their scale, for the
    /// activations' minimum term.
    colsum: Vec<f32>,
    groups: usize,
    /// Per input feature, what inputs are multiplied by before quantisation (the inverse of
    /// the smoothing folded into the weights); None: 1.
    inv_smooth: Option<Vec<f32>>,
}

impl PackedI8 {
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack_smoothed(w, n, k, None)
    }

    /// Packs `W diag(s)`; the inputs are then divided by `s` before quantisation, so the
    /// product is unchanged while the range of large input features moves into the weights
    /// (SmoothQuant's migration, with `s` derived from the weights alone).
    pub fn pack_smoothed(w: &[f32], n: usize, k: usize, smooth: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * k);
        let scaled;
        let w = match smooth {
            Some(sm) => {
                assert_eq!(sm.len(), k);
                scaled = w
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * sm[i % k])
                    .collect::<Vec<f32>>();
                &scaled[..]
            }
            None => w,
        };
        let k4 = k.div_ceil(4);
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(NR);
        let mut bytes = vec![0i8; panels * k4 * NR * 4];
        let mut gscale = vec![1f32; panels * groups * NR];
        let mut colsum = vec![0f32; panels * groups * NR];
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            let (p, c) = (j / NR, j % NR);
            for (g, part) in row.chunks(GROUP).enumerate() {
                let max = part.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = if max > 0.0 { max / 127.0 } else { 1.0 };
                let at = (p * groups + g) * NR + c;
                gscale[at] = s;
                let mut sum = 0f32;
                for (i, v) in part.iter().enumerate() {
                    let kk = g * GROUP + i;
                    let q = (v / s).round().clamp(-127.0, 127.0) as i8;
                    sum += q as f32;
                    bytes[((p * k4 + kk / 4) * NR + c) * 4 + kk % 4] = q;
                }
                colsum[at] = sum * s;
            }
        }
        let data = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]))
            .collect();
        PackedI8 {
            n,
            k,
            k4,
            data,
            gscale,
            colsum,
            groups,
            inv_smooth: smooth.map(|sm| sm.iter().map(|v| 1.0 / v).collect()),
        }
    }

    /// Bytes held (a quarter of the f32 weights, plus scales).
    pub fn bytes(&self) -> usize {
        (self.data.len() + self.gscale.len() + self.colsum.len()) * 4
    }
}

/// Each row of `x` `[m, k]`, per group of [`GROUP`] inputs, onto 0..=255 over the group's
/// own range: the packed bytes (groups of 4, zero-padded), and per row and group the scale
/// and the minimum (`[m, groups]`).
///
/// The words are laid out for the kernel's tiles of [`MR`] rows: per block of MR rows, word
/// `kk` of its rows side by side (`[m / MR, k4, MR]`, the last block zero-padded), so a
/// tile's step reads one 32-byte run instead of MR words a row apart (eight interleaved
/// streams, whose first load of each step showed as a quarter of the kernel's time in perf).
fn quantize_rows(
    x: &[f32],
    m: usize,
    k: usize,
    k4: usize,
    inv_smooth: Option<&[f32]>,
) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let groups = k.div_ceil(GROUP);
    let mut q = vec![0u32; m.div_ceil(MR) * MR * k4];
    let mut scales = vec![0f32; m * groups];
    let mut mins = vec![0f32; m * groups];
    // Rows are independent: split them across the pool (this is O(m k) against the
    // product's O(m k n), but serial it cost a third of the int8 layer time).
    let rows_per = 64;
    const { assert!(64 % MR == 0) };
    q.par_chunks_mut(k4 * rows_per)
        .zip(scales.par_chunks_mut(groups * rows_per))
        .zip(mins.par_chunks_mut(groups * rows_per))
        .enumerate()
        .for_each(|(c, ((q, scales), mins))| {
            let rows = scales.len() / groups;
            let x = &x[c * rows_per * k..(c * rows_per + rows) * k];
            quantize_block(x, rows, k, k4, inv_smooth, q, scales, mins);
        });
    (q, scales, mins)
}

/// [`quantize_rows`] for `rows` rows (a multiple of [`MR`] apart from the last block) on
/// the calling thread, into `q` (`rows.div_ceil(MR) * MR * k4` words), `scales` and `mins`.
#[allow(clippy::too_many_arguments)]
fn quantize_block(
    x: &[f32],
    rows: usize,
    k: usize,
    k4: usize,
    inv_smooth: Option<&[f32]>,
    q: &mut [u32],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    let groups = k.div_ceil(GROUP);
    #[cfg(not(target_arch = "x86_64"))]
    let mut smoothed = vec![0f32; if inv_smooth.is_some() { k } else { 0 }];
    let mut rq = vec![0u32; k4];
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        let (rs, rm) = (
            &mut scales[r * groups..(r + 1) * groups],
            &mut mins[r * groups..(r + 1) * groups],
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers asserted VNNI, which implies AVX-512F.
        unsafe {
            quantize_row_avx512(row, inv_smooth, &mut rq, rs, rm)
        };
        #[cfg(not(target_arch = "x86_64"))]
        quantize_row(row, inv_smooth, &mut smoothed, &mut rq, rs, rm);
        let block = &mut q[(r / MR) * MR * k4..];
        for (kk, word) in rq.iter().enumerate() {
            block[kk * MR + r % MR] = *word;
        }
    }
}

/// One row: smoothed (when `inv_smooth` is given, through the `smoothed` buffer), then per
/// group its range, scale and bytes. The portable definition; on x86 the kernel runs
/// [`quantize_row_avx512`], which a test holds to the same bytes.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn quantize_row(
    row: &[f32],
    inv_smooth: Option<&[f32]>,
    smoothed: &mut [f32],
    q: &mut [u32],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    let row = match inv_smooth {
        Some(inv) => {
            for ((d, v), s) in smoothed.iter_mut().zip(row).zip(inv) {
                *d = v * s;
            }
            &smoothed[..]
        }
        None => row,
    };
    // The packed words hold the bytes in input order (little endian).
    let bytes: &mut [u8] = bytemuck_bytes(q);
    for (g, part) in row.chunks(GROUP).enumerate() {
        let (lo, hi) = min_max(part);
        let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        scales[g] = s;
        mins[g] = lo;
        quantize_group(part, lo, 1.0 / s, &mut bytes[g * GROUP..]);
    }
}

/// [`quantize_row`] in AVX-512 intrinsics, with the same arithmetic (so the same bytes):
/// compiled from the portable code, the min/max reductions ended in scalar `f32::min`
/// chains with NaN handling, and quantisation was 11-12% of an int8 forward pass (perf).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_row_avx512(
    row: &[f32],
    inv_smooth: Option<&[f32]>,
    q: &mut [u32],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = row.len();
    let bytes: &mut [u8] = bytemuck_bytes(q);
    let mut v = [_mm512_setzero_ps(); GROUP / 16];
    for g in 0..k.div_ceil(GROUP) {
        let start = g * GROUP;
        let len = (k - start).min(GROUP);
        let chunks = len.div_ceil(16);
        let mut lo = _mm512_set1_ps(f32::INFINITY);
        let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
        for (c, vc) in v.iter_mut().enumerate().take(chunks) {
            let at = start + 16 * c;
            let n = (len - 16 * c).min(16);
            let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            let mut x = _mm512_maskz_loadu_ps(m, row.as_ptr().add(at));
            if let Some(inv) = inv_smooth {
                x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(m, inv.as_ptr().add(at)));
            }
            *vc = x;
            lo = _mm512_mask_min_ps(lo, m, lo, x);
            hi = _mm512_mask_max_ps(hi, m, hi, x);
        }
        let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        scales[g] = s;
        mins[g] = lo;
        let (vlo, vinv) = (_mm512_set1_ps(lo), _mm512_set1_ps(1.0 / s));
        for (c, vc) in v.iter().enumerate().take(chunks) {
            let at = start + 16 * c;
            let n = (len - 16 * c).min(16);
            let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            // Round to nearest (the default rounding mode) and narrow to bytes, saturating:
            // x - lo >= 0 exactly, so only rounding can overshoot 255, and the unsigned
            // saturation takes care of it (no clamps needed).
            let y = _mm512_mul_ps(_mm512_sub_ps(*vc, vlo), vinv);
            let qv = _mm512_cvtps_epi32(y);
            _mm512_mask_cvtusepi32_storeu_epi8(bytes.as_mut_ptr().add(at) as *mut i8, m, qv);
        }
    }
}

/// The bytes of a `u32` slice (x86 is little endian: byte `b` of word `i` is input `4 i + b`).
fn bytemuck_bytes(words: &mut [u32]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the words.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 4) }
}

#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn min_max(v: &[f32]) -> (f32, f32) {
    // Eight lanes so that the compiler vectorises the reduction.
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in chunks.remainder().iter().chain(&lo) {
        l = l.min(x);
    }
    for &x in chunks.remainder().iter().chain(&hi) {
        h = h.max(x);
    }
    (l, h)
}

/// `round((v - lo) * inv)` (ties to even, as the vector conversion) clamped to 0..=255,
/// into `out`.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn quantize_group(part: &[f32], lo: f32, inv: f32, out: &mut [u8]) {
    for (o, v) in out.iter_mut().zip(part) {
        *o = ((v - lo) * inv).round_ties_even().clamp(0.0, 255.0) as u8;
    }
}

/// `x` `[m, k]` times the quantised weights' transpose, plus `bias`: `[m, n]` row-major.
/// Panics without VNNI (check [`has_vnni`]).
pub fn linear_i8(x: &[f32], m: usize, w: &PackedI8, bias: Option<&[f32]>) -> Vec<f32> {
    linear_i8_with(x, m, w, bias, Epilogue::None)
}

/// [`linear_i8`] followed by `epi` on each output (see [`Epilogue`]).
pub fn linear_i8_with(
    x: &[f32],
    m: usize,
    w: &PackedI8,
    bias: Option<&[f32]>,
    epi: Epilogue,
) -> Vec<f32> {
    assert!(has_vnni(), "linear_i8 needs AVX-512 VNNI");
    let (n, k, k4) = (w.n, w.k, w.k4);
    assert_eq!(x.len(), m * k);
    if let Epilogue::Residual(r) = epi {
        assert_eq!(r.len(), m * n, "residual shape");
    }
    let (q, sx, mins) = quantize_rows(x, m, k, k4, w.inv_smooth.as_deref());
    let panels = n.div_ceil(NR);
    let mut out = Vec::<f32>::with_capacity(m * n);
    let quant = Quantised {
        q: &q,
        sx: &sx,
        mins: &mins,
    };
    super::kernels::for_each_panel_range(panels, out.as_mut_ptr(), |range, out| {
        // SAFETY: VNNI is present (asserted above); this thread's panels' columns of all m
        // rows: its own part of `out`.
        unsafe { run_tiles(&quant, 0..m, range, w, bias, epi, out) };
    });
    // SAFETY: the tiles above wrote every row of every panel's columns: all m x n values.
    unsafe { out.set_len(m * n) };
    out
}

/// Rows per block of [`ffn_i8`].
pub const FFN_ROWS: usize = 32;

/// A transformer feed-forward block in int8: `LN(x + down(gelu(up(x))))` over `x` `[m, h]`
/// (GELU in its erf form, BERT's); `ln` is LayerNorm's (gamma, beta, eps).
///
/// Why fused: as separate layers, the `[m, 4h]` GELU output (27 MB at batch 32 x 139) went
/// to memory and back for its quantisation, whose loads were then 12% of an int8 forward
/// pass. Here the rows are split across threads in blocks of [`FFN_ROWS`]; each thread
/// runs a block through both layers (their int8 weights, 1.2 MB for MiniLM, stay in its
/// L2), so the intermediate never leaves the cache and only quantised bytes are re-read.
/// Results equal the separate layers' exactly (same kernels, same arithmetic).
#[allow(clippy::too_many_arguments)]
pub fn ffn_i8(
    x: &[f32],
    m: usize,
    up: &PackedI8,
    up_bias: Option<&[f32]>,
    down: &PackedI8,
    down_bias: Option<&[f32]>,
    ln: (&[f32], &[f32], f32),
) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(has_vnni(), "ffn_i8 needs AVX-512 VNNI");
    let (h, inter) = (up.k, up.n);
    assert!(down.k == inter && down.n == h && x.len() == m * h);
    // Not zeroed first: every block writes all its rows (a zeroing pass was 2-3% of an int8
    // pass, with the page faults of a fresh buffer).
    let mut out = Vec::<f32>::with_capacity(m * h);
    let out_ptr = super::kernels::SendPtr(out.as_mut_ptr());
    (0..m.div_ceil(FFN_ROWS)).into_par_iter().for_each(|blk| {
        let rows = (m - blk * FFN_ROWS).min(FFN_ROWS);
        // SAFETY: block blk owns rows blk*FFN_ROWS.. of `out`, inside its capacity.
        let out = unsafe { out_ptr.get().add(blk * FFN_ROWS * h) };
        let xb = &x[blk * FFN_ROWS * h..][..rows * h];
        let quantise = |v: &[f32], w: &PackedI8| {
            let groups = w.k.div_ceil(GROUP);
            let mut q = vec![0u32; rows.div_ceil(MR) * MR * w.k4];
            let (mut sx, mut mins) = (vec![0f32; rows * groups], vec![0f32; rows * groups]);
            let inv = w.inv_smooth.as_deref();
            quantize_block(v, rows, w.k, w.k4, inv, &mut q, &mut sx, &mut mins);
            (q, sx, mins)
        };
        let (q, sx, mins) = quantise(xb, up);
        // Written whole by the tiles below before anything reads it.
        let mut hidden = Vec::<f32>::with_capacity(rows * inter);
        let x1 = Quantised {
            q: &q,
            sx: &sx,
            mins: &mins,
        };
        // SAFETY: VNNI asserted above; `hidden` and `out` are this block's own buffers,
        // [rows, inter] and [rows, h].
        unsafe {
            run_tiles(
                &x1,
                0..rows,
                0..inter.div_ceil(NR),
                up,
                up_bias,
                Epilogue::Gelu,
                hidden.as_mut_ptr(),
            )
        };
        // SAFETY: the up-projection's tiles wrote all rows x inter values.
        unsafe { hidden.set_len(rows * inter) };
        let (q, sx, mins) = quantise(&hidden, down);
        let x2 = Quantised {
            q: &q,
            sx: &sx,
            mins: &mins,
        };
        let res = Epilogue::Residual(xb);
        // SAFETY: as above.
        unsafe { run_tiles(&x2, 0..rows, 0..h.div_ceil(NR), down, down_bias, res, out) };
        // SAFETY: the tiles above wrote all rows x h values of this block.
        let out = unsafe { std::slice::from_raw_parts_mut(out, rows * h) };
        super::kernels::layer_norm_rows_serial(out, h, ln.0, ln.1, ln.2);
    });
    // SAFETY: every block wrote its rows: all m x h values.
    unsafe { out.set_len(m * h) };
    out
}

/// Quantised input rows: words in tile layout, per row and group the scale and minimum.
struct Quantised<'a> {
    q: &'a [u32],
    sx: &'a [f32],
    mins: &'a [f32],
}

/// Output rows `rows` x the columns of `panels` of `x w^T + bias`, then `epi`, into `out`
/// (`[.., w.n]`, row indices as in `x`).
///
/// Rows run in small blocks, each against all the panels before the next block, so the
/// block's bytes stay in L1 while the panels stream from L2. Blocks must stay small: with
/// 80 rows or more of 384 bytes (plus a 12 KB panel) L1 thrashed and the kernel ran at
/// 250-280 GOP/s instead of 700 (probe_gemm, batch 32 x 139).
///
/// # Safety
/// VNNI must be present; `out` must hold those rows and columns, written by no one else.
unsafe fn run_tiles(
    x: &Quantised,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    w: &PackedI8,
    bias: Option<&[f32]>,
    epi: Epilogue,
    out: *mut f32,
) {
    let (n, k, k4) = (w.n, w.k, w.k4);
    let mc = ((Q_BLOCK / k.max(1)) / MR).max(1) * MR;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let iend = (i0 + mc).min(rows.end);
        for p in panels.clone() {
            let panel = &w.data[p * k4 * NR..(p + 1) * k4 * NR];
            let cols = (n - p * NR).min(NR);
            let mut i = i0;
            while i < iend {
                let rows = (iend - i).min(MR);
                let tile = Tile {
                    q: x.q,
                    k4,
                    i0: i,
                    panel,
                    j0: p * NR,
                    cols,
                    n,
                    epi,
                };
                tile_i8(&tile, rows, out, x.sx, x.mins, w, bias);
                i += rows;
            }
        }
        i0 = iend;
    }
}

struct Tile<'a> {
    q: &'a [u32],
    k4: usize,
    i0: usize,
    panel: &'a [i32],
    j0: usize,
    cols: usize,
    n: usize,
    epi: Epilogue<'a>,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile_i8(
    t: &Tile,
    rows: usize,
    out: *mut f32,
    sx: &[f32],
    mins: &[f32],
    w: &PackedI8,
    bias: Option<&[f32]>,
) {
    match rows {
        8 => tile_rows::<8>(t, out, sx, mins, w, bias),
        7 => tile_rows::<7>(t, out, sx, mins, w, bias),
        6 => tile_rows::<6>(t, out, sx, mins, w, bias),
        5 => tile_rows::<5>(t, out, sx, mins, w, bias),
        4 => tile_rows::<4>(t, out, sx, mins, w, bias),
        3 => tile_rows::<3>(t, out, sx, mins, w, bias),
        2 => tile_rows::<2>(t, out, sx, mins, w, bias),
        _ => tile_rows::<1>(t, out, sx, mins, w, bias),
    }
}

/// R rows x 32 columns: per group, i32 dot products of the bytes (`vpdpbusd`), then folded
/// into f32 accumulators with the group's scale and minimum; the weight scale and the bias
/// at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn tile_rows<const R: usize>(
    t: &Tile,
    out: *mut f32,
    sx: &[f32],
    mins: &[f32],
    w: &PackedI8,
    bias: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    let groups = w.groups;
    let p = t.j0 / NR;
    let mut f = [[_mm512_setzero_ps(); 2]; R];
    let pp = t.panel.as_ptr();
    // The tile's block of MR rows (t.i0 is a multiple of MR), words interleaved by row.
    let qp = t.q.as_ptr().add(t.i0 * t.k4);
    for g in 0..groups {
        let mut a = [[_mm512_setzero_si512(); 2]; R];
        for kk in g * G4..((g + 1) * G4).min(t.k4) {
            // The panel streams from L2 as in the f32 kernel: ask for it ahead (+2-6%).
            let ahead = pp.wrapping_add((kk + PANEL_AHEAD) * NR) as *const i8;
            _mm_prefetch(ahead, _MM_HINT_T0);
            _mm_prefetch(ahead.wrapping_add(64), _MM_HINT_T0);
            let w0 = _mm512_loadu_si512(pp.add(kk * NR) as *const _);
            let w1 = _mm512_loadu_si512(pp.add(kk * NR + 16) as *const _);
            for (r, acc_r) in a.iter_mut().enumerate() {
                let v = _mm512_set1_epi32(*qp.add(kk * MR + r) as i32);
                acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], v, w0);
                acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], v, w1);
            }
        }
        let cs = w.colsum.as_ptr().add((p * groups + g) * NR);
        let (c0, c1) = (_mm512_loadu_ps(cs), _mm512_loadu_ps(cs.add(16)));
        let gs = w.gscale.as_ptr().add((p * groups + g) * NR);
        let (g0, g1) = (_mm512_loadu_ps(gs), _mm512_loadu_ps(gs.add(16)));
        for (r, (fr, ar)) in f.iter_mut().zip(&a).enumerate() {
            let idx = (t.i0 + r) * groups + g;
            let s = _mm512_set1_ps(sx[idx]);
            let mn = _mm512_set1_ps(mins[idx]);
            let d0 = _mm512_mul_ps(_mm512_cvtepi32_ps(ar[0]), g0);
            let d1 = _mm512_mul_ps(_mm512_cvtepi32_ps(ar[1]), g1);
            fr[0] = _mm512_fmadd_ps(d0, s, fr[0]);
            fr[1] = _mm512_fmadd_ps(d1, s, fr[1]);
            fr[0] = _mm512_fmadd_ps(c0, mn, fr[0]);
            fr[1] = _mm512_fmadd_ps(c1, mn, fr[1]);
        }
    }
    let mut b = [0f32; NR];
    if let Some(bias) = bias {
        b[..t.cols].copy_from_slice(&bias[t.j0..t.j0 + t.cols]);
    }
    let (b0, b1) = (
        _mm512_loadu_ps(b.as_ptr()),
        _mm512_loadu_ps(b.as_ptr().add(16)),
    );
    for (r, fr) in f.iter().enumerate() {
        let dst = out.add((t.i0 + r) * t.n + t.j0);
        let v0 = _mm512_add_ps(fr[0], b0);
        let v1 = _mm512_add_ps(fr[1], b1);
        if t.cols == NR {
            _mm512_storeu_ps(dst, v0);
            _mm512_storeu_ps(dst.add(16), v1);
        } else {
            let mut tmp = [0f32; NR];
            _mm512_storeu_ps(tmp.as_mut_ptr(), v0);
            _mm512_storeu_ps(tmp.as_mut_ptr().add(16), v1);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, t.cols);
        }
        let at = TileAt {
            out,
            n: t.n,
            i0: t.i0,
            rows: R,
            j0: t.j0,
            cols: t.cols,
        };
        at.finish_row(r, t.epi);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_i8(
    _: &Tile,
    _: usize,
    _: *mut f32,
    _: &[f32],
    _: &[f32],
    _: &PackedI8,
    _: Option<&[f32]>,
) {
    unreachable!("checked by has_vnni")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the exact product: the error stays within what 8-bit steps of each operand's
    /// range allow, on ragged shapes (partial panels, k not a multiple of 4, a constant row).
    #[test]
    fn int8_product_is_close_to_the_exact_one() {
        if !has_vnni() {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU");
            return;
        }
        for (m, k, n) in [(1, 5, 3), (9, 64, 32), (13, 37, 70), (33, 384, 100)] {
            let mut x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 4.0) / 5.0)
                .collect();
            x[..k].iter_mut().for_each(|v| *v = 0.5);
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
            let got = linear_i8(&x, m, &PackedI8::pack(&w, n, k), Some(&b));
            for i in 0..m {
                let xmax = x[i * k..(i + 1) * k]
                    .iter()
                    .fold(0f32, |a, v| a.max(v.abs()));
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                        .sum::<f64>()
                        + b[j] as f64;
                    let wmax = w[j * k..(j + 1) * k]
                        .iter()
                        .fold(0f32, |a, v| a.max(v.abs()));
                    // Each term's error is at most half a step of each operand.
                    let bound =
                        k as f64 * (xmax as f64 * wmax as f64) * (1.0 / 127.0 + 1.0 / 255.0);
                    let err = (got[i * n + j] as f64 - want).abs();
                    assert!(
                        err <= bound,
                        "{m}x{k}x{n} at {i},{j}: {} vs {want}",
                        got[i * n + j]
                    );
                    assert!(
                        err < 0.05 * (1.0 + want.abs()) || k < 8,
                        "{m}x{k}x{n} at {i},{j}: {} vs {want}",
                        got[i * n + j]
                    );
                }
            }
        }
    }
    #[test]
    fn vector_row_quantisation_gives_the_portable_bytes_scales_and_minimums() {
        if !has_vnni() {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU");
            return;
        }
        // Ragged lengths (a partial last group, a partial last vector), a constant row, with
        // and without smoothing.
        for k in [5usize, 128, 200, 384, 1536] {
            let mut row: Vec<f32> = (0..k)
                .map(|i| (((i * 37) % 101) as f32 - 40.0) / 13.0)
                .collect();
            if k == 5 {
                row.iter_mut().for_each(|v| *v = 0.25);
            }
            let smooth: Vec<f32> = (0..k).map(|i| 0.5 + (i % 5) as f32 * 0.3).collect();
            for inv in [None, Some(&smooth[..])] {
                let (k4, groups) = (k.div_ceil(4), k.div_ceil(GROUP));
                let run = |vector: bool| {
                    let mut sm = vec![0f32; k];
                    let (mut q, mut s, mut m) =
                        (vec![0u32; k4], vec![0f32; groups], vec![0f32; groups]);
                    if vector {
                        // SAFETY: VNNI (checked above) implies AVX-512F.
                        unsafe { quantize_row_avx512(&row, inv, &mut q, &mut s, &mut m) };
                    } else {
                        quantize_row(&row, inv, &mut sm, &mut q, &mut s, &mut m);
                    }
                    (q, s, m)
                };
                assert_eq!(run(true), run(false), "k {k}, smoothed {}", inv.is_some());
            }
        }
    }

    #[test]
    fn fused_feed_forward_block_equals_the_separate_layers() {
        if !has_vnni() {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU");
            return;
        }
        // 77 rows: two whole blocks of FFN_ROWS and a ragged one; h 64 and 256 inputs
        // to the down projection (two quantisation groups).
        let (m, h, inter) = (77, 64, 256);
        let gen = |n: usize, s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * s) % 31) as f32 - 15.0) / 11.0)
                .collect()
        };
        let x = gen(m * h, 7);
        let (wu, wd) = (gen(inter * h, 11), gen(h * inter, 13));
        let (bu, bd) = (gen(inter, 3), gen(h, 5));
        let smooth: Vec<f32> = (0..inter).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let up = PackedI8::pack(&wu, inter, h);
        let down = PackedI8::pack_smoothed(&wd, h, inter, Some(&smooth));
        let (g, b) = (gen(h, 17), gen(h, 19));
        let fused = ffn_i8(&x, m, &up, Some(&bu), &down, Some(&bd), (&g, &b, 1e-12));
        let hidden = linear_i8_with(&x, m, &up, Some(&bu), Epilogue::Gelu);
        let mut want = linear_i8_with(&hidden, m, &down, Some(&bd), Epilogue::Residual(&x));
        super::super::kernels::layer_norm_rows_inplace(&mut want, h, &g, &b, 1e-12);
        assert_eq!(fused, want);
    }

    #[test]
    fn int8_epilogues_equal_the_separate_passes() {
        if !has_vnni() {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU");
            return;
        }
        let (m, k, n) = (19, 128, 70);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 4.0) / 5.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let res: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let qw = PackedI8::pack(&w, n, k);
        let plain = linear_i8(&x, m, &qw, None);
        let mut gelu = plain.clone();
        super::super::kernels::gelu_erf_inplace(&mut gelu);
        assert_eq!(linear_i8_with(&x, m, &qw, None, Epilogue::Gelu), gelu);
        let added: Vec<f32> = plain.iter().zip(&res).map(|(a, r)| a + r).collect();
        assert_eq!(
            linear_i8_with(&x, m, &qw, None, Epilogue::Residual(&res)),
            added
        );
    }
}

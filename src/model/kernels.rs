//! CPU kernels of our own, for shapes candle's GEMM handles badly.
//!
//! A short query is a handful of tokens: every dense layer is then a `[m, k] x [k, n]`
//! product with m around 10. The GEMM back-end packs the weight matrix for every call and
//! wakes its thread pool, so one MiniLM query took 10-12 ms (about 19 GFLOP/s), most of it
//! overhead. With few rows the work is a set of dot products between each input row and each
//! weight row (both contiguous), bounded by reading the weights once: [`linear_rows`] does
//! exactly that, with AVX-512 or AVX2+FMA chosen at run time and a portable fallback.

/// Inputs with at most this many rows take [`linear_rows`].
pub const SMALL_ROWS: usize = 32;

/// `out[i, j] = sum_p x[i, p] * w[j, p] + bias[j]` for `x` `[m, k]` and `w` `[n, k]`, both
/// row-major and contiguous; returns `[m, n]` row-major.
pub fn linear_rows(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    // Reading the weights is the cost (tens of MB per forward pass, from DRAM): split the
    // weight rows across the thread pool so every core streams its share.
    let threads = rayon::current_num_threads().min(n / 64).max(1);
    if threads > 1 {
        let per = n.div_ceil(threads);
        let parts: Vec<(usize, Vec<f32>)> = {
            use rayon::prelude::*;
            (0..threads)
                .into_par_iter()
                .map(|t| {
                    let (j0, j1) = (t * per, ((t + 1) * per).min(n));
                    let part = linear_rows_one(
                        x,
                        m,
                        k,
                        &w[j0 * k..j1 * k],
                        j1 - j0,
                        bias.map(|b| &b[j0..j1]),
                    );
                    (j0, part)
                })
                .collect()
        };
        let mut out = vec![0f32; m * n];
        for (j0, part) in parts {
            let nj = part.len() / m.max(1);
            for i in 0..m {
                out[i * n + j0..i * n + j0 + nj].copy_from_slice(&part[i * nj..(i + 1) * nj]);
            }
        }
        return out;
    }
    linear_rows_one(x, m, k, w, n, bias)
}

/// [`linear_rows`] on the calling thread.
fn linear_rows_one(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the instructions the function is compiled with.
            unsafe { linear_rows_avx512(x, m, k, w, n, &mut out) };
            add_bias(&mut out, n, bias);
            return out;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            unsafe { linear_rows_avx2(x, m, k, w, n, &mut out) };
            add_bias(&mut out, n, bias);
            return out;
        }
    }
    linear_rows_portable(x, m, k, w, n, &mut out);
    add_bias(&mut out, n, bias);
    out
}

fn add_bias(out: &mut [f32], n: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in out.chunks_mut(n) {
            for (o, b) in row.iter_mut().zip(b) {
                *o += b;
            }
        }
    }
}

/// Lanes per accumulator: one AVX-512 register of f32 (two AVX2 registers).
const L: usize = 16;

/// Sums the lanes of an accumulator pairwise (a short dependency chain, vectorisable).
#[inline(always)]
fn reduce(a: [f32; L]) -> f32 {
    let mut h = [0f32; 8];
    for l in 0..8 {
        h[l] = a[l] + a[l + 8];
    }
    let mut q = [0f32; 4];
    for l in 0..4 {
        q[l] = h[l] + h[l + 4];
    }
    (q[0] + q[2]) + (q[1] + q[3])
}

/// Dot products of `R` input rows with `C` weight rows at once: R x C independent
/// accumulators keep the FMA units busy (one accumulator would wait on its own latency at
/// every step), and each loaded chunk of x or w is used C or R times.
#[inline(always)]
fn block<const R: usize, const C: usize>(
    x: &[f32],
    i0: usize,
    k: usize,
    w: &[f32],
    j0: usize,
    n: usize,
    out: &mut [f32],
) {
    let full = k / L * L;
    let mut acc = [[[0f32; L]; C]; R];
    let mut p = 0;
    while p < full {
        let mut ws = [[0f32; L]; C];
        for c in 0..C {
            ws[c].copy_from_slice(&w[(j0 + c) * k + p..(j0 + c) * k + p + L]);
        }
        for r in 0..R {
            let xs = &x[(i0 + r) * k + p..(i0 + r) * k + p + L];
            for c in 0..C {
                for l in 0..L {
                    acc[r][c][l] = xs[l].mul_add(ws[c][l], acc[r][c][l]);
                }
            }
        }
        p += L;
    }
    for r in 0..R {
        for c in 0..C {
            let mut s = reduce(acc[r][c]);
            for q in full..k {
                s = x[(i0 + r) * k + q].mul_add(w[(j0 + c) * k + q], s);
            }
            out[(i0 + r) * n + j0 + c] = s;
        }
    }
}

/// The body every variant shares: blocks of 4 rows x 2 weight rows, then the edges.
#[inline(always)]
fn body(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let mut j = 0;
    while j + 2 <= n {
        let mut i = 0;
        while i + 4 <= m {
            block::<4, 2>(x, i, k, w, j, n, out);
            i += 4;
        }
        while i < m {
            block::<1, 2>(x, i, k, w, j, n, out);
            i += 1;
        }
        j += 2;
    }
    if j < n {
        for i in 0..m {
            block::<1, 1>(x, i, k, w, j, n, out);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn linear_rows_avx512(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    body(x, m, k, w, n, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_rows_avx2(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    body(x, m, k, w, n, out)
}

fn linear_rows_portable(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    // Without FMA hardware, mul_add is a slow libm call: plain multiply-add instead.
    for j in 0..n {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            out[i * n + j] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_on_odd_shapes() {
        let (m, k, n) = (3, 37, 5);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let got = linear_rows(&x, m, k, &w, n, Some(&b));
        let mut portable = vec![0f32; m * n];
        linear_rows_portable(&x, m, k, &w, n, &mut portable);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>()
                    + b[j] as f64;
                assert!((got[i * n + j] as f64 - want).abs() < 1e-4, "{i},{j}");
                assert!((portable[i * n + j] as f64 + b[j] as f64 - want).abs() < 1e-4);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Element-wise kernels: GELU (erf form) and softmax, which candle computes with scalar libm
// calls (`erff`, `expf`): 13% and 7% of a batch's time in perf. Written branch-free so the
// compiler vectorises them (AVX-512 or AVX2 chosen at run time).

/// ln 2 in two parts for the exponential's range reduction (`LN2_HI` has trailing zero bits,
/// so `n * LN2_HI` is exact for the n that occur).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Taylor coefficients 1/k! of `e^r`, highest degree (6) first, for Horner's scheme on
/// |r| <= ln2/2: error < 3e-8 relative. Shared by [`exp_f32`] and the attention softmax.
const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `e^x` for f32, accurate to about 2 ulp on [-87, 88]: range reduction by ln 2 in two
/// parts, a degree-6 polynomial, and the exponent set by bits. Below the range it is 0 (as a
/// masked attention score must give), above it saturates.
#[inline(always)]
fn exp_f32(x_in: f32) -> f32 {
    let x = x_in.clamp(-87.3, 88.3);
    // Ties-to-even: one instruction (vrndscaleps); `round` would be a library call per lane.
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    // SAFETY: x was clamped, so n is a finite integer in [-126, 128]. (`as i32` would be a
    // saturating conversion, which does not vectorise.)
    let ni: i32 = unsafe { n.to_int_unchecked() };
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x_in < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// erf(x) by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), odd-extended.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut y = 1.061_405_4f32;
    y = y.mul_add(t, -1.453_152_1);
    y = y.mul_add(t, 1.421_413_8);
    y = y.mul_add(t, -0.284_496_72);
    y = y.mul_add(t, 0.254_829_6);
    let r = 1.0 - y * t * exp_f32(-a * a);
    r.copysign(x)
}

#[inline(always)]
fn gelu_body(v: &mut [f32]) {
    const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    for x in v.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf_f32(*x * INV_SQRT2));
    }
}

/// Float reductions are not reordered by the compiler (no fast-math), so max and sum keep
/// 16 lanes by hand; the exp pass is a plain map and vectorises.
#[inline(always)]
fn softmax_body(v: &mut [f32], n: usize) {
    for row in v.chunks_mut(n) {
        let mut lanes = [f32::NEG_INFINITY; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for l in 0..L {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, x| m.max(*x));
        for l in lanes {
            max = max.max(l);
        }
        for x in row.iter_mut() {
            *x = exp_f32(*x - max);
        }
        let mut acc = [0f32; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for l in 0..L {
                acc[l] += c[l];
            }
        }
        let sum = reduce(acc) + chunks.remainder().iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gelu_avx512(v: &mut [f32]) {
    gelu_body(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(v: &mut [f32]) {
    gelu_body(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_avx512(v: &mut [f32], n: usize) {
    softmax_body(v, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(v: &mut [f32], n: usize) {
    softmax_body(v, n)
}

/// Which vector unit the element-wise kernels use: 2 AVX-512, 1 AVX2+FMA, 0 neither.
fn simd_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return 2;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return 1;
        }
    }
    0
}

/// Whether [`gelu_erf_inplace`] and [`softmax_rows_inplace`] have a vector path here (without
/// FMA, `mul_add` is a slow library call and candle's own ops are the better choice).
pub fn fast_elementwise() -> bool {
    simd_level() > 0
}

/// GELU, erf form (BERT's "gelu"), in place; split across the thread pool for large inputs.
pub fn gelu_erf_inplace(v: &mut [f32]) {
    use rayon::prelude::*;
    let level = simd_level();
    let run = |c: &mut [f32]| match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features these functions are compiled with.
        2 => unsafe { gelu_avx512(c) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { gelu_avx2(c) },
        _ => gelu_body(c),
    };
    if v.len() >= 1 << 16 {
        v.par_chunks_mut(1 << 14).for_each(run);
    } else {
        run(v);
    }
}

/// Softmax over each row of `n` values, in place.
pub fn softmax_rows_inplace(v: &mut [f32], n: usize) {
    use rayon::prelude::*;
    let level = simd_level();
    let run = |c: &mut [f32]| match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        2 => unsafe { softmax_avx512(c, n) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { softmax_avx2(c, n) },
        _ => softmax_body(c, n),
    };
    let rows_per_task = ((1 << 14) / n.max(1)).max(1);
    if v.len() >= 1 << 16 {
        v.par_chunks_mut(rows_per_task * n).for_each(run);
    } else {
        run(v);
    }
}

#[cfg(test)]
mod elementwise_tests {
    use super::*;

    /// erf by Simpson's rule on its integral (std has no erf; this is accurate to 1e-9).
    fn erf64(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_accurate_across_the_range() {
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            assert!(
                ((got - want) / want).abs() < 5e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_f32(-1e30), 0.0);
    }

    #[test]
    fn gelu_matches_the_erf_definition() {
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let mut v = xs.clone();
        gelu_erf_inplace(&mut v);
        for (x, g) in xs.iter().zip(&v) {
            let x64 = *x as f64;
            let want = 0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
            assert!(
                (*g as f64 - want).abs() < 2e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_masked_entries() {
        let mut v = vec![1.0, 2.0, 3.0, -3.0e38, 0.5, 0.5, 0.5, 0.5];
        softmax_rows_inplace(&mut v, 4);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| (x - 3.0).exp()).collect();
        let s: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((v[i] as f64 - e[i] / s).abs() < 1e-6);
        }
        assert_eq!(v[3], 0.0);
        assert!((v[4..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}

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

/// Whether [`linear_packed`] can run here.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, which is `Sync`).
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint regions (see `for_each_panel_range`, `attention`, `ffn_i8`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

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

/// LayerNorm over each row of `n` values, in place (statistics in f32 like candle's op and
/// PyTorch's CPU kernel: mean, then the mean of squared deviations).
pub fn layer_norm_rows_inplace(v: &mut [f32], n: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    use rayon::prelude::*;
    let run = |rows: &mut [f32]| layer_norm_rows_serial(rows, n, gamma, beta, eps);
    let rows_per_task = (1 << 14) / n.max(1) + 1;
    if v.len() >= 1 << 16 {
        v.par_chunks_mut(rows_per_task * n).for_each(run);
    } else {
        run(v);
    }
}

/// [`layer_norm_rows_inplace`] on the calling thread.
pub(crate) fn layer_norm_rows_serial(
    v: &mut [f32],
    n: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    assert_eq!(gamma.len(), n);
    assert_eq!(beta.len(), n);
    match simd_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features these functions are compiled with.
        2 => unsafe { layer_norm_avx512(v, n, gamma, beta, eps) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { layer_norm_avx2(v, n, gamma, beta, eps) },
        _ => layer_norm_body(v, n, gamma, beta, eps),
    }
}

#[inline(always)]
fn layer_norm_body(v: &mut [f32], n: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for row in v.chunks_exact_mut(n) {
        let mut lanes = [0f32; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for (l, x) in lanes.iter_mut().zip(c) {
                *l += x;
            }
        }
        let mut sum = reduce(lanes);
        sum += chunks.remainder().iter().sum::<f32>();
        let mean = sum / n as f32;
        let mut lanes = [0f32; L];
        let mut chunks = row.chunks_exact(L);
        for c in &mut chunks {
            for (l, x) in lanes.iter_mut().zip(c) {
                *l += (x - mean) * (x - mean);
            }
        }
        let mut ss = reduce(lanes);
        ss += chunks
            .remainder()
            .iter()
            .map(|x| (x - mean) * (x - mean))
            .sum::<f32>();
        let inv = 1.0 / (ss / n as f32 + eps).sqrt();
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * inv * g + b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn layer_norm_avx512(v: &mut [f32], n: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    layer_norm_body(v, n, gamma, beta, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_avx2(v: &mut [f32], n: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    layer_norm_body(v, n, gamma, beta, eps)
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

    #[test]
    fn layer_norm_in_place_matches_the_definition() {
        let n = 70;
        let mut v: Vec<f32> = (0..203 * n)
            .map(|i| ((i * 13 % 29) as f32 - 9.0) * 0.7)
            .collect();
        let gamma: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
        let beta: Vec<f32> = (0..n).map(|i| i as f32 * -0.02).collect();
        let want: Vec<f64> = v
            .chunks(n)
            .flat_map(|row| {
                let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
                let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                let inv = 1.0 / (var + 1e-12).sqrt();
                row.iter()
                    .map(move |&x| (x as f64 - mean) * inv)
                    .collect::<Vec<_>>()
            })
            .enumerate()
            .map(|(i, y)| y * gamma[i % n] as f64 + beta[i % n] as f64)
            .collect();
        layer_norm_rows_inplace(&mut v, n, &gamma, &beta, 1e-12);
        for (i, (g, w)) in v.iter().zip(&want).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-5, "at {i}: {g} vs {w}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attention without the [batch, heads, t, t] score tensor: at 256 tokens and batch 32 that
// tensor is 100 MB per layer, allocated, page-faulted in and copied around (perf: 12% of the
// time in page faults). Here each task (a sequence with all its heads, or one (sequence,
// head) pair when there are fewer sequences than threads) keeps a block of 8 score rows at a
// time and writes its context vectors straight into the [batch, t, hidden] output, so no
// head split/merge copies are needed either.

/// Scaled dot-product self-attention for inference. `q`, `k`, `v` and the result are
/// `[b, t, heads * hd]` row-major; `mask` is `[b, t]` (non-zero: attend). Padded keys are
/// excluded, as the additive -inf mask does.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
) -> Vec<f32> {
    let h = heads * hd;
    assert!(k.len() == q.len() && v.len() == q.len() && q.len() == b * t * h);
    attention_strided(q, k, v, heads * hd, mask, b, t, heads, hd)
}

/// [`attention`] over inputs whose rows are `ld` apart (the columns of a fused
/// query/key/value projection: `q`, `k`, `v` are then the same buffer at offsets 0, h, 2h).
#[allow(clippy::too_many_arguments)]
pub fn attention_strided(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ld: usize,
    mask: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
) -> Vec<f32> {
    let h = heads * hd;
    let need = (b * t).saturating_sub(1) * ld + h;
    assert!(
        ld >= h && q.len() >= need && k.len() >= need && v.len() >= need && mask.len() == b * t
    );
    // A task per sequence needs a sequence per thread; below that (one query), per head.
    let per_sequence = b >= rayon::current_num_threads();
    attention_tasks(q, k, v, ld, mask, b, t, heads, hd, per_sequence)
}

/// [`attention_strided`] with the choice of tasks made: one per sequence (all its heads;
/// the vector path only) or one per (sequence, head).
#[allow(clippy::too_many_arguments)]
fn attention_tasks(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    ld: usize,
    mask: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    per_sequence: bool,
) -> Vec<f32> {
    use rayon::prelude::*;
    let h = heads * hd;
    // Every task writes all its rows' columns: no need to zero the buffer first (zeroing it
    // cost a pass over memory the tasks then miss on again).
    let mut out = Vec::<f32>::with_capacity(b * t * h);
    let ptr = SendPtr(out.as_mut_ptr());
    let level = simd_level();
    #[cfg(target_arch = "x86_64")]
    if level == 2 && hd.is_multiple_of(16) && per_sequence {
        (0..b).into_par_iter().for_each(|bi| {
            let p = ptr;
            // SAFETY: task bi writes only the rows of sequence bi, inside `out`.
            unsafe { attention_sequence_avx512(q, k, v, mask, bi, heads, t, h, ld, hd, p.0) }
        });
        // SAFETY: every sequence's rows were written, all columns.
        unsafe { out.set_len(b * t * h) };
        return out;
    }
    (0..b * heads).into_par_iter().for_each(|task| {
        let p = ptr;
        let (bi, head) = (task / heads, task % heads);
        // SAFETY: task (bi, head) writes only columns head*hd..(head+1)*hd of rows of
        // sequence bi: disjoint from every other task, inside `out`.
        unsafe {
            match level {
                #[cfg(target_arch = "x86_64")]
                2 if hd.is_multiple_of(16) => {
                    attention_tiled_avx512(q, k, v, mask, bi, head, t, h, ld, hd, p.0)
                }
                #[cfg(target_arch = "x86_64")]
                2 => attention_avx512(q, k, v, mask, bi, head, t, h, ld, hd, p.0),
                #[cfg(target_arch = "x86_64")]
                1 => attention_avx2(q, k, v, mask, bi, head, t, h, ld, hd, p.0),
                _ => attention_body(q, k, v, mask, bi, head, t, h, ld, hd, p.0),
            }
        }
    });
    // SAFETY: the tasks above wrote columns head*hd..(head+1)*hd of every row for every
    // head: all b x t x h values.
    unsafe { out.set_len(b * t * h) };
    out
}

/// One (sequence, head): the keys are transposed once (`hd x keys`) so that a row of scores
/// is `hd` vector FMAs across keys (no horizontal sums), the softmax is the vectorised row
/// kernel, and the context is a weighted sum of value rows, vectorised across `hd`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    bi: usize,
    head: usize,
    t: usize,
    h: usize,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let scale = 1.0 / (hd as f32).sqrt();
    let base = bi * t * ld + head * hd;
    let obase = bi * t * h + head * hd;
    let keys: Vec<usize> = (0..t).filter(|&j| mask[bi * t + j] != 0.0).collect();
    let nk = keys.len();
    let mut kt = vec![0f32; hd * nk];
    for (jj, &j) in keys.iter().enumerate() {
        let kj = &k[base + j * ld..base + j * ld + hd];
        for (c, x) in kj.iter().enumerate() {
            kt[c * nk + jj] = *x;
        }
    }
    let mut scores = vec![0f32; nk];
    let mut ctx = vec![0f32; hd];
    for i in 0..t {
        let qi = &q[base + i * ld..base + i * ld + hd];
        scores.iter_mut().for_each(|s| *s = 0.0);
        for (c, qc) in qi.iter().enumerate() {
            let qc = qc * scale;
            let row = &kt[c * nk..(c + 1) * nk];
            for (s, kv) in scores.iter_mut().zip(row) {
                *s = qc.mul_add(*kv, *s);
            }
        }
        softmax_body(&mut scores, nk);
        ctx.iter_mut().for_each(|x| *x = 0.0);
        for (w, &j) in scores.iter().zip(&keys) {
            let vj = &v[base + j * ld..base + j * ld + hd];
            for (c, x) in ctx.iter_mut().zip(vj) {
                *c = w.mul_add(*x, *c);
            }
        }
        std::ptr::copy_nonoverlapping(ctx.as_ptr(), out.add(obase + i * h), hd);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    bi: usize,
    head: usize,
    t: usize,
    h: usize,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    attention_body(q, k, v, mask, bi, head, t, h, ld, hd, out)
}

/// One (sequence, head) with register tiles: blocks of 8 query rows (then 4, 2, 1); scores
/// as an 8 x 32 tile per block of keys (two key loads and 8 query broadcasts per step of
/// `hd`), the context as an 8 x 32 tile per 32 columns of `hd`, 8 x 16 for a remaining 16
/// (see `context_cols`). The simple row-at-a-time version reloaded and stored its score row
/// (or context) on every step and ran at ~23 GFLOP/s, 40% of an int8 forward pass at 139
/// tokens.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_tiled_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    bi: usize,
    head: usize,
    t: usize,
    h: usize,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let keys: Vec<usize> = (0..t).filter(|&j| mask[bi * t + j] != 0.0).collect();
    let bufs = gather_heads(q, k, v, &keys, bi * t * ld, head..head + 1, t, ld, hd);
    attend_head(&bufs, 0, t, h, hd, out.add(bi * t * h + head * hd));
}

/// One whole sequence, all heads: the gathering reads the sequence's rows in order (each
/// 4.6 KB of fused projection for MiniLM, which the prefetchers follow) instead of one
/// head's 128-byte slice of every row, a stride on which every row was a cache miss.
/// For batches with a sequence per thread or more (tasks per (sequence, head) otherwise).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_sequence_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    bi: usize,
    heads: usize,
    t: usize,
    h: usize,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let keys: Vec<usize> = (0..t).filter(|&j| mask[bi * t + j] != 0.0).collect();
    let bufs = gather_heads(q, k, v, &keys, bi * t * ld, 0..heads, t, ld, hd);
    for head in 0..heads {
        attend_head(&bufs, head, t, h, hd, out.add(bi * t * h + head * hd));
    }
}

/// One sequence's queries (scaled by 1/sqrt(hd)), keys and values for a range of heads, in
/// the layouts the tiles read with unit stride: per head, queries `t x hd`, keys transposed
/// `hd x nkp` (zero-padded to a multiple of 32), values `nk x hd`.
struct HeadBufs {
    qa: Vec<f32>,
    kt: Vec<f32>,
    vv: Vec<f32>,
    nk: usize,
    nkp: usize,
}

/// Gathers [`HeadBufs`] for `heads` of the sequence whose rows start at `base`; only the
/// `keys` (the unmasked positions) are kept.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gather_heads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keys: &[usize],
    base: usize,
    heads: std::ops::Range<usize>,
    t: usize,
    ld: usize,
    hd: usize,
) -> HeadBufs {
    use std::arch::x86_64::*;
    let scale = _mm512_set1_ps(1.0 / (hd as f32).sqrt());
    let nh = heads.len();
    let nk = keys.len();
    let nkp = nk.div_ceil(32) * 32;
    let c0 = heads.start * hd;
    let width = nh * hd;
    // Queries, one sweep over the rows, asking for the rows a few ahead (their query, key
    // and value parts: the keys and values are then read from L2 below).
    const AHEAD: usize = 4;
    let mut qa = vec![0f32; nh * t * hd];
    for i in 0..t {
        if i + AHEAD < t {
            let row = base + (i + AHEAD) * ld + c0;
            prefetch_row(q.as_ptr().add(row), width);
            prefetch_row(k.as_ptr().add(row), width);
            prefetch_row(v.as_ptr().add(row), width);
        }
        let src = q.as_ptr().add(base + i * ld + c0);
        for hh in 0..nh {
            let dst = qa.as_mut_ptr().add((hh * t + i) * hd);
            for c in (0..hd).step_by(16) {
                let x = _mm512_loadu_ps(src.add(hh * hd + c));
                _mm512_storeu_ps(dst.add(c), _mm512_mul_ps(x, scale));
            }
        }
    }
    // Keys transposed in 16 x 16 register blocks (scalar stores were vectorised by the
    // compiler into scatters: 9% of the kernel), values copied.
    let mut kt = vec![0f32; nh * hd * nkp];
    let mut vv = vec![0f32; nh * nk * hd];
    for jb in (0..nk).step_by(16) {
        let n = (nk - jb).min(16);
        for hh in 0..nh {
            let col = c0 + hh * hd;
            for cb in (0..hd).step_by(16) {
                let mut rows = [_mm512_setzero_ps(); 16];
                for (r, row) in rows.iter_mut().enumerate().take(n) {
                    *row = _mm512_loadu_ps(k.as_ptr().add(base + keys[jb + r] * ld + col + cb));
                }
                let cols = transpose16(rows);
                let kth = kt.as_mut_ptr().add(hh * hd * nkp);
                for (c, x) in cols.iter().enumerate() {
                    _mm512_storeu_ps(kth.add((cb + c) * nkp + jb), *x);
                }
            }
            for r in 0..n {
                let src = v.as_ptr().add(base + keys[jb + r] * ld + col);
                let dst = vv.as_mut_ptr().add((hh * nk + jb + r) * hd);
                for c in (0..hd).step_by(16) {
                    _mm512_storeu_ps(dst.add(c), _mm512_loadu_ps(src.add(c)));
                }
            }
        }
    }
    HeadBufs {
        qa,
        kt,
        vv,
        nk,
        nkp,
    }
}

/// The context rows of head `hh` of `bufs` (all `t` queries), written at `out`, rows `h`
/// apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn attend_head(bufs: &HeadBufs, hh: usize, t: usize, h: usize, hd: usize, out: *mut f32) {
    let (nk, nkp) = (bufs.nk, bufs.nkp);
    let qa = &bufs.qa[hh * t * hd..(hh + 1) * t * hd];
    let kt = &bufs.kt[hh * hd * nkp..(hh + 1) * hd * nkp];
    let vv = &bufs.vv[hh * nk * hd..(hh + 1) * nk * hd];
    let mut sc = vec![0f32; 8 * nkp];
    let mut i = 0;
    while i < t {
        let step = match t - i {
            8.. => 8,
            4..=7 => 4,
            2..=3 => 2,
            _ => 1,
        };
        let (qa, sc) = (&qa[i * hd..], &mut sc[..]);
        let out = out.add(i * h);
        match step {
            8 => attention_rows::<8>(qa, h, hd, kt, vv, nk, nkp, sc, out),
            4 => attention_rows::<4>(qa, h, hd, kt, vv, nk, nkp, sc, out),
            2 => attention_rows::<2>(qa, h, hd, kt, vv, nk, nkp, sc, out),
            _ => attention_rows::<1>(qa, h, hd, kt, vv, nk, nkp, sc, out),
        }
        i += step;
    }
}

/// Asks for the cache lines of `len` floats at `p` (a hint: no fault if out of bounds).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_row(p: *const f32, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for off in (0..len).step_by(16) {
        _mm_prefetch(p.add(off) as *const i8, _MM_HINT_T0);
    }
}

/// The transpose of a 16 x 16 block held as 16 rows: pairs of rows interleaved (floats,
/// then pairs of floats), which leaves in 128-bit lane `l` of vector `4g + m` the column
/// `4l + m` of rows `4g..4g + 4`; then a 4 x 4 transpose of those lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a, b));
        let t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a, b));
        let t2 = _mm512_castps_pd(_mm512_unpacklo_ps(c, d));
        let t3 = _mm512_castps_pd(_mm512_unpackhi_ps(c, d));
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    let mut o = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let (a, b, c, d) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
        // Lanes (0, 2) and (1, 3) of each pair, then again: lane l of every input in order.
        let x0 = _mm512_shuffle_f32x4::<0x88>(a, b);
        let x1 = _mm512_shuffle_f32x4::<0xDD>(a, b);
        let y0 = _mm512_shuffle_f32x4::<0x88>(c, d);
        let y1 = _mm512_shuffle_f32x4::<0xDD>(c, d);
        o[m] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
        o[8 + m] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
        o[4 + m] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
        o[12 + m] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
    }
    o
}

/// R query rows (`qa`, scaled, rows `hd` apart) against all keys; the context rows are
/// written at `out`, `h` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn attention_rows<const R: usize>(
    qa: &[f32],
    h: usize,
    hd: usize,
    kt: &[f32],
    vv: &[f32],
    nk: usize,
    nkp: usize,
    sc: &mut [f32],
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // Scores: R x nkp, 32 keys at a time (2R independent accumulators: with R alone, the
    // FMAs' latency was barely covered).
    let ktp = kt.as_ptr();
    let qsp = qa.as_ptr();
    for jb in (0..nkp).step_by(32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for c in 0..hd {
            let k0 = _mm512_loadu_ps(ktp.add(c * nkp + jb));
            let k1 = _mm512_loadu_ps(ktp.add(c * nkp + jb + 16));
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*qsp.add(r * hd + c));
                a[0] = _mm512_fmadd_ps(qv, k0, a[0]);
                a[1] = _mm512_fmadd_ps(qv, k1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(sc.as_mut_ptr().add(r * nkp + jb), a[0]);
            _mm512_storeu_ps(sc.as_mut_ptr().add(r * nkp + jb + 16), a[1]);
        }
    }
    // Unnormalised probabilities; each context row is divided by its sum once at the end
    // (hd divisions instead of a pass over the keys).
    let mut inv = [0f32; R];
    for (r, inv) in inv.iter_mut().enumerate() {
        *inv = exp_shifted_row_avx512(sc.as_mut_ptr().add(r * nkp), nk);
    }
    // Context: R x hd, 32 columns at a time where hd allows (as above), else 16.
    let mut cb = 0;
    while cb + 32 <= hd {
        context_cols::<R, 2>(vv, sc, nk, nkp, hd, cb, &inv, out.add(cb), h);
        cb += 32;
    }
    while cb < hd {
        context_cols::<R, 1>(vv, sc, nk, nkp, hd, cb, &inv, out.add(cb), h);
        cb += 16;
    }
}

/// `e^(x - max)` over the `n` scores at `row`, in place; returns 1 / their sum. The
/// exponential is [`exp_f32`]'s (same constants: `LN2_HI`, `LN2_LO`, `EXP_POLY`) with the
/// power of two put in by `vscalefps`, which needs no integer conversion, bit shift or range
/// mask: 11 vector operations per 16 scores instead of ~17, and the sum is taken in the same
/// pass.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn exp_shifted_row_avx512(row: *mut f32, n: usize) -> f32 {
    use std::arch::x86_64::*;
    let tail = (1u32 << (n % 16)) as u16 - 1;
    let full = n - n % 16;
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    for j in (0..full).step_by(16) {
        mx = _mm512_max_ps(mx, _mm512_loadu_ps(row.add(j)));
    }
    if tail != 0 {
        mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_maskz_loadu_ps(tail, row.add(full)));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    let exp = |x: __m512| {
        // x - max <= 0; below -87.3 the result is 0 to f32 precision anyway, and the clamp
        // keeps the reduction exact.
        let x = _mm512_max_ps(_mm512_sub_ps(x, max), _mm512_set1_ps(-87.3));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        _mm512_scalef_ps(p, n)
    };
    let mut sum = _mm512_setzero_ps();
    for j in (0..full).step_by(16) {
        let e = exp(_mm512_loadu_ps(row.add(j)));
        _mm512_storeu_ps(row.add(j), e);
        sum = _mm512_add_ps(sum, e);
    }
    if tail != 0 {
        let e = exp(_mm512_maskz_loadu_ps(tail, row.add(full)));
        _mm512_mask_storeu_ps(row.add(full), tail, e);
        sum = _mm512_mask_add_ps(sum, tail, sum, e);
    }
    1.0 / _mm512_reduce_add_ps(sum)
}

/// Columns `cb..cb + 16 C` of R rows' context (unnormalised probabilities `sc` times the
/// values `vv`, times each row's `inv`), written at `out` with rows `h` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn context_cols<const R: usize, const C: usize>(
    vv: &[f32],
    sc: &[f32],
    nk: usize,
    nkp: usize,
    hd: usize,
    cb: usize,
    inv: &[f32; R],
    out: *mut f32,
    h: usize,
) {
    use std::arch::x86_64::*;
    let (vp, sp) = (vv.as_ptr(), sc.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for j in 0..nk {
        let mut v = [_mm512_setzero_ps(); C];
        for (c, vc) in v.iter_mut().enumerate() {
            *vc = _mm512_loadu_ps(vp.add(j * hd + cb + 16 * c));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let p = _mm512_set1_ps(*sp.add(r * nkp + j));
            for (ac, vc) in a.iter_mut().zip(&v) {
                *ac = _mm512_fmadd_ps(p, *vc, *ac);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let s = _mm512_set1_ps(inv[r]);
        for (c, ac) in a.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * h + 16 * c), _mm512_mul_ps(*ac, s));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    bi: usize,
    head: usize,
    t: usize,
    h: usize,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    attention_body(q, k, v, mask, bi, head, t, h, ld, hd, out)
}

#[cfg(test)]
mod attention_tests {
    use super::*;

    #[test]
    fn matches_softmax_of_scaled_scores_times_values_with_padding() {
        // hd 20: the row-at-a-time kernel; hd 32 and 48 with 13 and 21 tokens: the tiled one
        // (blocks of 8 rows, then 4, 2 and 1; keys padded to 32; 37: whole blocks of 16 keys
        // in the softmax plus a masked tail).
        for (t, hd) in [(5, 20), (13, 32), (21, 48), (37, 32)] {
            check_attention(2, t, 3, hd);
        }
    }

    fn check_attention(b: usize, t: usize, heads: usize, hd: usize) {
        let h = heads * hd;
        let gen = |s: usize| -> Vec<f32> {
            (0..b * t * h)
                .map(|i| (((i * s) % 29) as f32 - 14.0) / 9.0)
                .collect()
        };
        let (q, k, v) = (gen(7), gen(11), gen(13));
        // The second sequence has two padded positions.
        let mask: Vec<f32> = (0..b * t)
            .map(|i| if i >= t && i % t >= 3 { 0.0 } else { 1.0 })
            .collect();
        let got = attention(&q, &k, &v, &mask, b, t, heads, hd);
        // The same from one fused [rows, 3h] buffer (a fused query/key/value projection).
        let mut fused = vec![0f32; b * t * 3 * h];
        for row in 0..b * t {
            fused[row * 3 * h..row * 3 * h + h].copy_from_slice(&q[row * h..(row + 1) * h]);
            fused[row * 3 * h + h..row * 3 * h + 2 * h].copy_from_slice(&k[row * h..(row + 1) * h]);
            fused[row * 3 * h + 2 * h..(row + 1) * 3 * h]
                .copy_from_slice(&v[row * h..(row + 1) * h]);
        }
        let strided = attention_strided(
            &fused,
            &fused[h..],
            &fused[2 * h..],
            3 * h,
            &mask,
            b,
            t,
            heads,
            hd,
        );
        assert_eq!(strided, got, "t{t} hd{hd}: strided inputs");
        // Both ways of splitting the work (per sequence, per head) give the same result.
        for per_sequence in [false, true] {
            let split = attention_tasks(
                &fused,
                &fused[h..],
                &fused[2 * h..],
                3 * h,
                &mask,
                b,
                t,
                heads,
                hd,
                per_sequence,
            );
            assert_eq!(split, got, "t{t} hd{hd}: per sequence {per_sequence}");
        }
        for bi in 0..b {
            for head in 0..heads {
                for i in 0..t {
                    let idx = |pos: usize, c: usize| bi * t * h + pos * h + head * hd + c;
                    let keys: Vec<usize> = (0..t).filter(|&j| mask[bi * t + j] != 0.0).collect();
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            (0..hd)
                                .map(|c| q[idx(i, c)] as f64 * k[idx(j, c)] as f64)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..hd {
                        let want: f64 = keys
                            .iter()
                            .zip(&e)
                            .map(|(&j, w)| w / z * v[idx(j, c)] as f64)
                            .sum();
                        assert!(
                            (got[idx(i, c)] as f64 - want).abs() < 1e-5,
                            "t{t} hd{hd} b{bi} h{head} i{i} c{c}"
                        );
                    }
                }
            }
        }
    }
}

//! Attention without the score tensor.

use super::*;

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

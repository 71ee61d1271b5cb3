//! Dense layers with few rows.
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
pub(super) const L: usize = 16;

/// Sums the lanes of an accumulator pairwise (a short dependency chain, vectorisable).
#[inline(always)]
pub(super) fn reduce(a: [f32; L]) -> f32 {
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

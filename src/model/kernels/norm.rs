//! LayerNorm over rows.

use super::*;

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
mod tests {
    use super::*;

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

//! GELU (erf form) and softmax.

use super::*;

// ---------------------------------------------------------------------------------------
// Element-wise kernels: GELU (erf form) and softmax, which candle computes with scalar libm
// calls (`erff`, `expf`): 13% and 7% of a batch's time in perf. Written branch-free so the
// compiler vectorises them (AVX-512 or AVX2 chosen at run time).

/// ln 2 in two parts for the exponential's range reduction (`LN2_HI` has trailing zero bits,
/// so `n * LN2_HI` is exact for the n that occur).
pub(super) const LN2_HI: f32 = 0.693_145_75;
pub(super) const LN2_LO: f32 = 1.428_606_8e-6;
/// Taylor coefficients 1/k! of `e^r`, highest degree (6) first, for Horner's scheme on
/// |r| <= ln2/2: error < 3e-8 relative. Shared by [`exp_f32`] and the attention softmax.
pub(super) const EXP_POLY: [f32; 7] = [
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
pub(super) fn gelu_body(v: &mut [f32]) {
    const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    for x in v.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf_f32(*x * INV_SQRT2));
    }
}

/// The GELU derivative applied to a gradient: `g *= Phi(x) + x phi(x)` (the erf form).
#[inline(always)]
pub(super) fn gelu_grad_body(x: &[f32], g: &mut [f32]) {
    const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &x) in g.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf_f32(x * INV_SQRT2));
        let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
        *g *= x.mul_add(pdf, cdf);
    }
}

/// Float reductions are not reordered by the compiler (no fast-math), so max and sum keep
/// 16 lanes by hand; the exp pass is a plain map and vectorises.
#[inline(always)]
pub(super) fn softmax_body(v: &mut [f32], n: usize) {
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

/// The backward pass of [`gelu_erf_inplace`]: `g *= GELU'(x)`, element by element.
pub fn gelu_erf_grad_inplace(x: &[f32], g: &mut [f32]) {
    use rayon::prelude::*;
    assert_eq!(x.len(), g.len());
    let level = simd_level();
    let run = |(g, x): (&mut [f32], &[f32])| match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features these functions are compiled with.
        2 => unsafe { gelu_grad_avx512(x, g) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { gelu_grad_avx2(x, g) },
        _ => gelu_grad_body(x, g),
    };
    if g.len() >= 1 << 16 {
        g.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(run);
    } else {
        run((g, x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gelu_grad_avx512(x: &[f32], g: &mut [f32]) {
    gelu_grad_body(x, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_grad_avx2(x: &[f32], g: &mut [f32]) {
    gelu_grad_body(x, g)
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

//! Paired randomisation (permutation) test, two-sided, as recommended for IR evaluation by
//! Smucker, Allan and Carterette (CIKM 2007): under the null hypothesis the two systems are
//! exchangeable on each query, so the sign of each per-query difference is flipped at random
//! and the observed mean difference is compared with the resulting distribution. No normality
//! assumption (unlike the t-test), and it works with the few dozen queries of a local set.

/// Permutations drawn; the p-value's resolution is about 1e-4.
pub const PERMUTATIONS: usize = 10_000;

/// Two-sided p-value for the mean of paired differences `a[i] - b[i]`. Deterministic (fixed
/// seed), so a report does not change between runs. `(count + 1) / (n + 1)` keeps it above 0.
pub fn randomization_test(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    if d.is_empty() {
        return 1.0;
    }
    let n = d.len() as f64;
    let observed = (d.iter().sum::<f64>() / n).abs();
    // xorshift64*: small, seeded, good enough to draw random signs.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut extreme = 0usize;
    for _ in 0..PERMUTATIONS {
        let mut sum = 0.0;
        let mut bits = 0u64;
        for (i, x) in d.iter().enumerate() {
            if i % 64 == 0 {
                bits = next();
            }
            sum += if bits & (1 << (i % 64)) != 0 { *x } else { -*x };
        }
        if (sum / n).abs() >= observed - 1e-12 {
            extreme += 1;
        }
    }
    (extreme + 1) as f64 / (PERMUTATIONS + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_systems_are_not_significantly_different() {
        let a = vec![0.5, 0.2, 0.9, 0.1];
        assert!(randomization_test(&a, &a) > 0.99);
    }

    #[test]
    fn a_consistent_improvement_is_significant() {
        let a: Vec<f64> = (0..40).map(|i| 0.5 + (i % 7) as f64 * 0.01).collect();
        let b: Vec<f64> = a.iter().map(|x| x - 0.1).collect();
        assert!(randomization_test(&a, &b) < 0.001);
    }

    #[test]
    fn noise_is_not_significant() {
        let a: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 0.6 } else { 0.4 })
            .collect();
        let b: Vec<f64> = (0..30)
            .map(|i| if i % 2 == 0 { 0.4 } else { 0.6 })
            .collect();
        assert!(randomization_test(&a, &b) > 0.5);
    }
}

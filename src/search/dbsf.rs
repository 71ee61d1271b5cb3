//! Distribution-based score fusion (DBSF, as Qdrant fuses dense and sparse results).
//!
//! Each retriever's scores are mapped through the spread of its own candidate list: with `m`
//! the mean and `s` the standard deviation of the list's scores, a score `x` becomes
//! `(x - (m - 3s)) / 6s`, clamped to [0, 1], so the list's "normal range" `m +- 3s` spans the
//! unit interval: the scale comes from the whole list, not from its two extremes (min-max maps
//! the best and worst to 1 and 0 however close or far apart they are). A list of equal scores
//! maps to 0.5. The fused score is `alpha * semantic + (1 - alpha) * bm25`; a note
//! missing from a list gets 0 from it.

use super::Fused;

/// The mean and population standard deviation of a list's scores.
pub fn spread(list: &[(String, f32)]) -> (f32, f32) {
    if list.is_empty() {
        return (0.0, 0.0);
    }
    let n = list.len() as f32;
    let mean = list.iter().map(|(_, s)| s).sum::<f32>() / n;
    let var = list.iter().map(|(_, s)| (s - mean).powi(2)).sum::<f32>() / n;
    (mean, var.sqrt())
}

/// One score mapped by its list's spread.
pub fn normalise(x: f32, (mean, sd): (f32, f32)) -> f32 {
    if sd <= f32::EPSILON {
        return 0.5;
    }
    ((x - (mean - 3.0 * sd)) / (6.0 * sd)).clamp(0.0, 1.0)
}

/// Fused notes, best first; ties keep the order of first appearance (BM25 list first).
pub fn fuse(bm25: &[(String, f32)], semantic: &[(String, f32)], alpha: f32) -> Vec<Fused> {
    let (sb, ss) = (spread(bm25), spread(semantic));
    super::combine(bm25, semantic, |_, b, s| {
        (
            (1.0 - alpha) * b.map_or(0.0, |x| normalise(x, sb)),
            alpha * s.map_or(0.0, |x| normalise(x, ss)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[(&str, f32)]) -> Vec<(String, f32)> {
        v.iter().map(|(i, s)| (i.to_string(), *s)).collect()
    }

    #[test]
    fn scores_map_through_mean_plus_minus_three_deviations() {
        let list = l(&[("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        let (m, s) = spread(&list);
        assert!((m - 2.0).abs() < 1e-6 && (s - (2.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert!((normalise(2.0, (m, s)) - 0.5).abs() < 1e-6);
        assert!((normalise(3.0, (m, s)) - (0.5 + 1.0 / (6.0 * s))).abs() < 1e-6);
        assert_eq!(normalise(100.0, (m, s)), 1.0);
        assert_eq!(normalise(5.0, (5.0, 0.0)), 0.5);
    }

    #[test]
    fn a_list_is_mapped_by_its_spread_not_its_extremes() {
        // Min-max would give the best of any list 1 and the worst 0, however close their
        // scores; here evenly spaced scores land at 0.5 -+ 1.2247/6 whatever their scale.
        for scale in [0.01f32, 1.0, 100.0] {
            let list = l(&[("a", 3.0 * scale), ("b", 2.0 * scale), ("c", 1.0 * scale)]);
            let st = spread(&list);
            let top = normalise(3.0 * scale, st);
            assert!(
                (top - (0.5 + 1.224_745 / 6.0)).abs() < 1e-4,
                "{scale}: {top}"
            );
        }
    }

    #[test]
    fn contributions_add_up_to_the_fused_score_and_alpha_weighs_them() {
        let b = l(&[("a", 10.0), ("b", 5.0), ("c", 1.0)]);
        let s = l(&[("b", 0.9), ("c", 0.5), ("a", 0.1)]);
        for f in fuse(&b, &s, 0.3) {
            assert!((f.bm25 + f.semantic - f.score).abs() < 1e-6);
        }
        assert_eq!(fuse(&b, &s, 1.0)[0].id, "b");
        assert_eq!(fuse(&b, &s, 0.0)[0].id, "a");
    }
}

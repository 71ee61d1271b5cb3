//! Weighted score fusion with min-max normalisation.
//!
//! BM25 scores and cosines live on different scales, so each retriever's scores are first
//! mapped to [0, 1] over its own candidate list (best = 1, worst = 0; a list whose scores are
//! all equal maps to 1). The fused score is `alpha * semantic + (1 - alpha) * bm25`, and a
//! note missing from a list gets 0 from it.

use std::collections::HashMap;

/// Min-max normalised scores of one list.
pub fn normalise(list: &[(String, f32)]) -> HashMap<&str, f32> {
    let (lo, hi) = list
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
            (lo.min(*s), hi.max(*s))
        });
    let span = hi - lo;
    list.iter()
        .map(|(id, s)| {
            let v = if span > f32::EPSILON {
                (s - lo) / span
            } else {
                1.0
            };
            (id.as_str(), v)
        })
        .collect()
}

/// Fused notes with each retriever's share of every fused score, best first; ties keep the
/// order of first appearance (BM25 list first).
pub fn fuse(bm25: &[(String, f32)], semantic: &[(String, f32)], alpha: f32) -> Vec<super::Fused> {
    let nb = normalise(bm25);
    let ns = normalise(semantic);
    super::combine(bm25, semantic, |id, _, _| {
        (
            (1.0 - alpha) * nb.get(id).copied().unwrap_or(0.0),
            alpha * ns.get(id).copied().unwrap_or(0.0),
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
    fn scores_are_mapped_to_the_unit_interval_per_retriever() {
        let list = l(&[("a", 12.0), ("b", 7.0), ("c", 2.0)]);
        let n = normalise(&list);
        assert_eq!(n["a"], 1.0);
        assert_eq!(n["b"], 0.5);
        assert_eq!(n["c"], 0.0);
    }

    #[test]
    fn alpha_one_is_pure_semantic_and_alpha_zero_pure_bm25() {
        let b = l(&[("a", 10.0), ("b", 1.0)]);
        let s = l(&[("b", 0.9), ("a", 0.1)]);
        assert_eq!(fuse(&b, &s, 1.0)[0].id, "b");
        assert_eq!(fuse(&b, &s, 0.0)[0].id, "a");
    }

    #[test]
    fn a_single_candidate_is_not_divided_by_zero() {
        let f = fuse(&l(&[("a", 3.0)]), &[], 0.5);
        assert_eq!((f.len(), f[0].id.as_str(), f[0].score), (1, "a", 0.5));
    }
}

//! Z-score fusion: each retriever's scores standardised over its own candidate list.
//!
//! With `m` the mean and `s` the standard deviation of a list's scores, a score `x` becomes
//! `z = (x - m) / s` (0 for a list of equal scores). A note missing from a list is given that
//! list's lowest z (it ranked below every candidate the list kept), so a note found by one
//! retriever only is not rewarded over one both retrievers found. The fused score is
//! `alpha * z_semantic + (1 - alpha) * z_bm25`.

use super::dbsf::spread;
use super::Fused;

pub fn z(x: f32, (mean, sd): (f32, f32)) -> f32 {
    if sd <= f32::EPSILON {
        0.0
    } else {
        (x - mean) / sd
    }
}

/// Fused notes, best first; ties keep the order of first appearance (BM25 list first).
pub fn fuse(bm25: &[(String, f32)], semantic: &[(String, f32)], alpha: f32) -> Vec<Fused> {
    let (sb, ss) = (spread(bm25), spread(semantic));
    let floor = |list: &[(String, f32)], st| {
        list.iter()
            .map(|(_, x)| z(*x, st))
            .fold(f32::INFINITY, f32::min)
            .min(0.0)
    };
    let (fb, fs) = (floor(bm25, sb), floor(semantic, ss));
    super::combine(bm25, semantic, |_, b, s| {
        (
            (1.0 - alpha) * b.map_or(fb, |x| z(x, sb)),
            alpha * s.map_or(fs, |x| z(x, ss)),
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
    fn scores_are_standardised_per_list() {
        let b = l(&[("a", 3.0), ("b", 1.0)]);
        let st = spread(&b);
        assert!((z(3.0, st) - 1.0).abs() < 1e-6 && (z(1.0, st) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_note_missing_from_a_list_gets_that_lists_lowest_z() {
        let b = l(&[("a", 3.0), ("b", 1.0)]);
        let s = l(&[("a", 0.9), ("c", 0.1)]);
        let f = fuse(&b, &s, 0.5);
        let c = f.iter().find(|x| x.id == "c").unwrap();
        assert!((c.bm25 + 0.5).abs() < 1e-6, "{c:?}");
        assert_eq!(f[0].id, "a");
        for x in &f {
            assert!((x.bm25 + x.semantic - x.score).abs() < 1e-6);
        }
    }
}

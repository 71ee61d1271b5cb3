//! Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009).
//!
//! Each retriever contributes `1 / (k + rank)` (ranks from 1) for every note it returned; a
//! note missing from a list contributes nothing from it. Ranks, not scores, are added, so a
//! BM25 score (unbounded) never has to be compared with a cosine (in [-1, 1]). `k = 60` is the
//! value of the paper and of most engines; a smaller `k` lets the top ranks dominate.
//!
//! The weighted form multiplies each retriever's terms by a weight:
//! `2 (1 - alpha) / (k + rank_bm25) + 2 alpha / (k + rank_semantic)`, so `alpha = 0.5` is
//! plain RRF and `alpha` moves weight toward the semantic side as in the score fusions.

use std::collections::HashMap;

use super::Fused;

/// Weighted RRF of a BM25 and a semantic list (ids best first; `alpha = 0.5` is plain RRF),
/// with each retriever's share of every fused score.
pub fn fuse(bm25: &[String], semantic: &[String], k: f32, alpha: f32) -> Vec<Fused> {
    let rank = |list: &[String]| -> HashMap<String, usize> {
        list.iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i + 1))
            .collect()
    };
    let (rb, rs) = (rank(bm25), rank(semantic));
    let b: Vec<(String, f32)> = bm25.iter().map(|id| (id.clone(), 0.0)).collect();
    let s: Vec<(String, f32)> = semantic.iter().map(|id| (id.clone(), 0.0)).collect();
    super::combine(&b, &s, |id, _, _| {
        let term = |r: Option<&usize>, w: f32| r.map_or(0.0, |&r| w / (k + r as f32));
        (
            term(rb.get(id), 2.0 * (1.0 - alpha)),
            term(rs.get(id), 2.0 * alpha),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_note_found_by_both_retrievers_beats_one_found_by_one() {
        let a = ids(&["x", "y"]);
        let b = ids(&["z", "y"]);
        let fused = fuse(&a, &b, 60.0, 0.5);
        assert_eq!(fused[0].id, "y");
        assert!((fused[0].score - 2.0 / 62.0).abs() < 1e-7);
        assert_eq!(fused.len(), 3);
    }

    #[test]
    fn weighted_rrf_at_one_half_is_plain_rrf_and_weights_move_the_order() {
        let a = ids(&["x", "y", "w"]);
        let b = ids(&["z", "y", "x"]);
        // Plain RRF by hand: 1/(k + rank) summed over the lists.
        let rank = |l: &[String], id: &str| l.iter().position(|x| x == id).map(|i| i + 1);
        let half = fuse(&a, &b, 60.0, 0.5);
        for h in &half {
            let plain: f32 = [&a, &b]
                .iter()
                .filter_map(|l| rank(l, &h.id))
                .map(|r| 1.0 / (60.0 + r as f32))
                .sum();
            assert!((plain - h.score).abs() < 1e-7, "{}", h.id);
            assert!((h.bm25 + h.semantic - h.score).abs() < 1e-7);
        }
        assert_eq!(fuse(&a, &b, 60.0, 0.0)[0].id, "x");
        assert_eq!(fuse(&a, &b, 60.0, 1.0)[0].id, "z");
    }

    #[test]
    fn equal_scores_keep_first_appearance_order() {
        let a = ids(&["x"]);
        let b = ids(&["z"]);
        let fused = fuse(&a, &b, 60.0, 0.5);
        assert_eq!(fused[0].id, "x");
        assert_eq!(fused[1].id, "z");
    }
}

//! A search over shards ranks exactly as one data directory holding all their notes
//! (`clinsearch::search::shards`): the same notes in the same order with the same scores,
//! for BM25 and hybrid, with expansions, filters, grouping and paging. The Ray Serve router
//! runs these same four steps over HTTP (`python/tests/test_ray.py`).

use std::collections::HashMap;

use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::index::CollectionStats;
use clinsearch::ingest::{self, source, CsvMapping, Format, IngestOptions};
use clinsearch::model::Encoder;
use clinsearch::search::shards::Candidates;
use clinsearch::search::{Hit, Ranking, SearchRequest, SearchResponse, Searcher};
use clinsearch::store::{EmbeddedNote, ModelIdentity};

use crate::common::*;
use crate::ingest::tiny_encoder;

const SHARDS: usize = 3;

/// sample_corpus in one directory, and the same notes with the same vectors split over three
/// shards by patient (as `python -m clinsearch.ray ingest` splits them).
fn collections(tmp: &std::path::Path, enc: &Encoder) -> (Engine, Vec<Engine>) {
    let identity = ModelIdentity::from_info(enc.info());
    // f32 vectors: int8 candidates are rescored exactly, but which candidates the int8
    // graph offers depends on what else the index holds (the tiny model's vectors are nearly
    // alike, so int8 reorders them a lot), and a shard holds less than the whole.
    let opts = OpenOptions {
        vectors: clinsearch::index::VectorChoice {
            quantization: Some(clinsearch::index::Quantization::F32),
            ..Default::default()
        },
        ..Default::default()
    };
    let open = |name: &str| Engine::open(&tmp.join(name), Some(&identity), &opts).unwrap();
    let single = open("single");
    let notes = repo_root().join("sample_corpus/notes.jsonl");
    let sources = vec![source::read(&notes, Format::Auto, &CsvMapping::default())];
    let report = ingest::run(&single, enc, sources, None, &IngestOptions::default()).unwrap();
    assert_eq!(report.notes, 324);
    let shards: Vec<Engine> = (0..SHARDS).map(|i| open(&format!("shard-{i}"))).collect();
    let mut parts: Vec<Vec<EmbeddedNote>> = (0..SHARDS).map(|_| vec![]).collect();
    for stored in single.store.notes() {
        let stored = stored.unwrap();
        let chunks = single.store.chunks_of(&stored).unwrap();
        let patient = stored.note.patient_id.clone().unwrap();
        let shard = patient.bytes().map(usize::from).sum::<usize>() % SHARDS;
        let windows = chunks.into_iter().map(|c| c.into_window()).collect();
        parts[shard].push(EmbeddedNote::new(stored.note.clone(), windows));
    }
    for (engine, part) in shards.iter().zip(parts) {
        assert!(part.len() > 50, "every shard holds a share: {}", part.len());
        engine.apply(&part, &[]).unwrap();
    }
    (single, shards)
}

fn request(pairs: &[(&str, &str)]) -> SearchRequest {
    SearchRequest::from_params(pairs.iter().copied()).unwrap()
}

/// The search breadth for these tests: past the number of chunks, which makes the vector
/// side an exact scan on one directory and on every shard alike. The merge is exact; an
/// approximate index is not, and at a narrower breadth each graph misses its own neighbours.
const EXHAUSTIVE: usize = 8192;

fn single_searcher(e: &Engine) -> Searcher<'_> {
    let mut s = Searcher::new(e);
    s.ef = EXHAUSTIVE;
    s
}

/// A shard's searcher at breadth `ef`, told the collection's statistics.
fn searcher<'e>(e: &'e Engine, c: &CollectionStats, ef: usize) -> Searcher<'e> {
    let mut s = Searcher::new(e);
    s.ef = ef;
    s.collection = Some(std::sync::Arc::new(c.clone()));
    s
}

/// The router's four steps, run in process over `shards`; the replies put together by rank.
fn sharded(
    shards: &[Engine],
    req: &SearchRequest,
    qv: Option<&[f32]>,
    ef: usize,
) -> SearchResponse {
    let cooc: Vec<CollectionStats> = shards
        .iter()
        .map(|e| Searcher::new(e).shard_cooccurrence(req).unwrap())
        .collect();
    let cooc = CollectionStats::sum(&cooc);
    // Step 1 asks something exactly when the router would not skip it.
    assert_eq!(
        !cooc.cooccurrence.is_empty(),
        clinsearch::search::shards::asks_collection(req).unwrap(),
        "{}",
        req.q
    );
    let stats: Vec<CollectionStats> = shards
        .iter()
        .map(|e| searcher(e, &cooc, ef).shard_statistics(req).unwrap())
        .collect();
    let stats = CollectionStats::sum(std::iter::once(&cooc).chain(&stats));
    let cands = Candidates::merge(
        shards
            .iter()
            .map(|e| searcher(e, &stats, ef).shard_candidates(req, qv).unwrap())
            .collect(),
    );
    let replies: Vec<SearchResponse> = shards
        .iter()
        .map(|e| {
            searcher(e, &stats, ef)
                .search_merged(req, qv, &cands)
                .unwrap()
        })
        .collect();
    let mut out = replies[0].clone();
    for (r, ranking) in out.rankings.iter_mut().enumerate() {
        let mut hits: HashMap<String, Hit> = HashMap::new();
        for rep in &replies {
            for h in &rep.rankings[r].hits {
                hits.entry(h.id.clone()).or_insert_with(|| h.clone());
            }
        }
        let mut hits: Vec<Hit> = hits.into_values().collect();
        hits.sort_by_key(|h| h.rank);
        ranking.hits = hits;
    }
    out
}

fn ids(r: &Ranking) -> Vec<&str> {
    r.hits.iter().map(|h| h.id.as_str()).collect()
}

/// Scores equal but for the last bits (tantivy's sums run in an order that depends on the
/// segment: `clinsearch::index::bm25::rank_key`).
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// Everything a reader sees of a hit but the time it took.
fn assert_same_ranking(got: &Ranking, want: &Ranking, what: &str) {
    assert_eq!(got.mode, want.mode, "{what}");
    assert_eq!(got.candidates, want.candidates, "{what}: candidates");
    assert_eq!(ids(got), ids(want), "{what}: {:?}", got.mode);
    for (g, w) in got.hits.iter().zip(&want.hits) {
        assert_eq!(g.rank, w.rank, "{what}");
        assert!(
            close(g.score, w.score),
            "{what}: {} {} vs {}",
            g.id,
            g.score,
            w.score
        );
        assert_eq!(g.bm25.rank, w.bm25.rank, "{what}: {}", g.id);
        match (g.bm25.score, w.bm25.score) {
            (Some(a), Some(b)) => assert!(close(a, b), "{what}: {} bm25 {a} vs {b}", g.id),
            (a, b) => assert_eq!(a, b, "{what}: {}", g.id),
        }
        assert_eq!(g.semantic, w.semantic, "{what}: {}", g.id);
        assert_eq!(g.group, w.group, "{what}");
        assert_eq!(g.snippet, w.snippet, "{what}: {}", g.id);
        assert_eq!(g.window, w.window, "{what}: {}", g.id);
        assert_eq!(g.assertion, w.assertion, "{what}: {}", g.id);
    }
}

fn queries() -> Vec<String> {
    std::fs::read_to_string(repo_root().join("sample_corpus/queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn every_sample_query_over_shards_ranks_as_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let (single, shards) = collections(tmp.path(), &enc);
    // Recall@10 of the semantic ranking against the exact one, sharded and single.
    let (mut recall_sharded, mut recall_single) = (vec![], vec![]);
    for q in queries() {
        let qv = enc.embed(&[q.as_str()]).unwrap().remove(0);
        let req = request(&[("q", &q), ("mode", "compare"), ("k", "10")]);
        // Exhaustive vector search on both sides: all three rankings are equal.
        let want = single_searcher(&single).search(&req, Some(&qv)).unwrap();
        let got = sharded(&shards, &req, Some(&qv), EXHAUSTIVE);
        assert_eq!(got.expansions, want.expansions, "{q}");
        assert_eq!(got.rankings.len(), 3);
        for (g, w) in got.rankings.iter().zip(&want.rankings) {
            assert_same_ranking(g, w, &q);
        }
        let exact: std::collections::HashSet<String> = ids(&want.rankings[1])
            .into_iter()
            .map(String::from)
            .collect();
        let recall = |r: &Ranking| -> f64 {
            ids(r).iter().filter(|i| exact.contains(**i)).count() as f64 / exact.len() as f64
        };
        // At the recorded breadth each graph is approximate: BM25 still equal, the semantic
        // top 10 nearly so.
        let want = Searcher::new(&single).search(&req, Some(&qv)).unwrap();
        let got = sharded(
            &shards,
            &req,
            Some(&qv),
            single.vectors.settings().ef_search,
        );
        // (The semantic ranks its hits show are the approximate side's.)
        let (g, w) = (&got.rankings[0], &want.rankings[0]);
        assert_eq!(ids(g), ids(w), "{q}: BM25 at the recorded breadth");
        for (g, w) in g.hits.iter().zip(&w.hits) {
            assert_eq!(g.bm25.rank, w.bm25.rank, "{q}");
            assert!(close(g.bm25.score.unwrap(), w.bm25.score.unwrap()), "{q}");
        }
        recall_sharded.push(recall(&got.rankings[1]));
        recall_single.push(recall(&want.rankings[1]));
    }
    // Merging approximate lists is as good as one approximate index, within the scatter of
    // hnsw's own builds (parallel insertion makes every graph different: 0.976 to 0.99 over
    // runs here, for either side).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (sharded, single) = (mean(&recall_sharded), mean(&recall_single));
    assert!(
        sharded >= single - 0.05,
        "recall@10 sharded {sharded:.3}, single {single:.3}"
    );
    assert!(sharded >= 0.9, "recall@10 sharded {sharded:.3}");
}

#[test]
fn paging_grouping_filters_and_expansions_over_shards_equal_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let (single, shards) = collections(tmp.path(), &enc);
    let cases: &[&[(&str, &str)]] = &[
        &[
            ("q", "chest pain SOB"),
            ("mode", "hybrid"),
            ("k", "5"),
            ("offset", "5"),
        ],
        &[
            ("q", "chest pain SOB"),
            ("mode", "bm25"),
            ("k", "10"),
            ("group_by", "patient"),
        ],
        &[
            ("q", "CHF exacerbation"),
            ("mode", "hybrid"),
            ("k", "4"),
            ("group_by", "patient"),
            ("offset", "3"),
        ],
        &[
            ("q", "pneumonia"),
            ("mode", "hybrid"),
            ("k", "10"),
            ("note_type", "discharge summary"),
        ],
        &[
            ("q", "fever"),
            ("mode", "bm25"),
            ("k", "10"),
            ("assertion", "affirmed"),
        ],
        &[
            ("q", "fever"),
            ("mode", "hybrid"),
            ("k", "10"),
            ("assertion", "affirmed"),
        ],
        &[("q", "PE"), ("mode", "bm25"), ("k", "10")],
        &[
            ("q", "pt with MS"),
            ("mode", "hybrid"),
            ("k", "10"),
            ("note_score", "top2"),
        ],
        &[
            ("q", "heart failure"),
            ("mode", "bm25"),
            ("k", "10"),
            ("bm25_k1", "0.9"),
            ("bm25_b", "0.4"),
        ],
        &[
            ("q", "\"chest pain\" -fever"),
            ("syntax", "advanced"),
            ("mode", "hybrid"),
            ("k", "10"),
        ],
    ];
    let mut expanded = 0;
    for pairs in cases {
        let req = request(pairs);
        let qv = enc
            .embed(&[req.embedding_text().as_str()])
            .unwrap()
            .remove(0);
        let want = single_searcher(&single).search(&req, Some(&qv)).unwrap();
        let got = sharded(&shards, &req, Some(&qv), EXHAUSTIVE);
        let what = format!("{pairs:?}");
        assert!(
            !want.rankings[0].hits.is_empty(),
            "{what}: the case finds notes"
        );
        assert_eq!(got.expansions, want.expansions, "{what}");
        expanded += usize::from(!want.expansions.is_empty());
        for (g, w) in got.rankings.iter().zip(&want.rankings) {
            assert_same_ranking(g, w, &what);
        }
    }
    assert!(expanded >= 2, "the cases exercise abbreviation expansion");
}

#[test]
fn shard_statistics_add_up_to_the_single_index_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let (single, shards) = collections(tmp.path(), &enc);
    let req = request(&[("q", "chest pain with SOB"), ("mode", "bm25")]);
    let parts: Vec<CollectionStats> = shards
        .iter()
        .map(|e| Searcher::new(e).shard_statistics(&req).unwrap())
        .collect();
    let whole = Searcher::new(&single).shard_statistics(&req).unwrap();
    let sum = CollectionStats::sum(&parts);
    assert_eq!(sum.docs, 324);
    assert_eq!(sum.docs, whole.docs);
    assert_eq!(sum.tokens, whole.tokens);
    assert_eq!(sum.doc_freq, whole.doc_freq);
    assert!(whole.doc_freq.len() >= 4, "{:?}", whole.doc_freq);
    // A shard alone scores differently: the statistics are what makes the merge exact.
    assert!(parts.iter().all(|p| p.docs < whole.docs));
}

/// The BM25 index answers an abbreviation's co-occurrence questions in one pass per phrase
/// (bitmaps intersected); the numbers must be those of one count per question, which is what
/// a sharded router asks each shard and sums.
#[test]
fn the_one_pass_sense_counts_equal_one_count_per_question() {
    use clinsearch::clinical::abbrev::Cooccurrence;
    struct OneByOne<'a>(&'a dyn Cooccurrence);
    impl Cooccurrence for OneByOne<'_> {
        fn notes_with_all(&self, phrases: &[&str]) -> u64 {
            self.0.notes_with_all(phrases)
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let (single, shards) = collections(tmp.path(), &enc);
    let senses = [
        "pulmonary embolism",
        "physical examination",
        "no such phrase",
        "",
    ];
    let context = ["PE", "chest", "pain", "shortness of breath", "the", "x-ray"];
    let fast = single.bm25.sense_counts(&senses, &context);
    let slow = OneByOne(&single.bm25).sense_counts(&senses, &context);
    assert_eq!(fast, slow);
    assert_eq!(fast.all, 324);
    assert!(fast.pairs[0].iter().any(|&n| n > 0), "{fast:?}");
    assert!(
        fast.context.iter().filter(|&&n| n > 0).count() >= 4,
        "{fast:?}"
    );
    assert_eq!(fast.senses[2..], [0, 0]);
    // And over shards the sums are the whole's.
    let parts: Vec<_> = shards
        .iter()
        .map(|e| e.bm25.sense_counts(&senses, &context))
        .collect();
    let summed: Vec<u64> = (0..context.len())
        .map(|c| parts.iter().map(|p| p.pairs[0][c]).sum())
        .collect();
    assert_eq!(summed, fast.pairs[0]);
}

/// BM25 gives many notes one score (same words, same length): such a run straddling the
/// cut is ordered by note id, whatever order the notes arrived in and however many index
/// segments they sit in; the run is resolved by one more pass and the id column.
#[test]
fn a_tied_run_past_the_cut_is_ordered_by_note_id() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let engine = Engine::open(&tmp.path().join("d"), None, &Default::default()).unwrap();
    // 90 identical notes and one that scores higher, posted in three batches (three
    // segments), ids shuffled.
    let mut ids: Vec<usize> = (0..90).collect();
    ids.sort_by_key(|i| (i * 37) % 90);
    for (b, part) in ids.chunks(30).enumerate() {
        let path = tmp.path().join(format!("b{b}.jsonl"));
        let mut lines: Vec<String> = part
            .iter()
            .map(|i| format!(r#"{{"id": "tie-{i:03}", "text": "alpha beta gamma"}}"#))
            .collect();
        if b == 1 {
            lines.push(r#"{"id": "zz-best", "text": "alpha alpha"}"#.to_string());
        }
        std::fs::write(&path, lines.join("\n")).unwrap();
        let sources = vec![source::read(&path, Format::Auto, &CsvMapping::default())];
        ingest::run(&engine, &enc, sources, None, &IngestOptions::default()).unwrap();
    }
    let hits = engine.bm25.search("alpha", 6, &Default::default()).unwrap();
    let got: Vec<&str> = hits.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(
        got,
        ["zz-best", "tie-000", "tie-001", "tie-002", "tie-003", "tie-004"]
    );
    assert!(hits[1..].iter().all(|h| h.1 == hits[1].1), "{hits:?}");
    // Deeper: still the smallest ids, in order.
    let deep = engine
        .bm25
        .search("alpha", 40, &Default::default())
        .unwrap();
    let want: Vec<String> = std::iter::once("zz-best".to_string())
        .chain((0..39).map(|i| format!("tie-{i:03}")))
        .collect();
    assert_eq!(deep.iter().map(|h| h.0.clone()).collect::<Vec<_>>(), want);
}

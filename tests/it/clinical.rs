//! Queries as clinicians write them (issue 16): plain text by default, advanced syntax on
//! request with errors that name the position, and abbreviations expanded both ways. Over
//! sample_corpus/ in process, with the tiny fixture model (BM25 does not depend on it).

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};

use clinsearch::config::Layer;

use crate::server::{call, get, hits, ids, seeded_state, shared};

/// Percent-encodes a query-string value.
fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn bm25(q: &str, extra: &str) -> Value {
    let app = test::init_service(clinsearch::server::app(shared().state.clone())).await;
    let (s, v) = call(
        &app,
        get(&format!("/api/search?mode=bm25&k=20&q={}{extra}", enc(q))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{q}: {v}");
    v
}

fn scored(v: &Value) -> Vec<(String, String)> {
    hits(v, "bm25")
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                format!("{:.4}", h["bm25"]["score"].as_f64().unwrap()),
            )
        })
        .collect()
}

#[actix_web::test]
async fn a_pasted_list_with_bullets_ranks_exactly_as_the_same_words_without_them() {
    // Under tantivy's query parser "-" excluded the next word; in plain text it is nothing.
    let with = bm25(
        "- apixaban 5 mg - metoprolol tartrate - heparin",
        "&expand=false",
    )
    .await;
    let without = bm25("apixaban 5 mg metoprolol tartrate heparin", "&expand=false").await;
    assert!(!hits(&with, "bm25").is_empty());
    assert_eq!(scored(&with), scored(&without));
    // Nor do +, quotes, field prefixes or AND/OR/NOT change anything.
    let noisy = bm25(
        "+apixaban \"5 mg AND metoprolol OR tartrate NOT heparin text:",
        "&expand=false",
    )
    .await;
    let plain = bm25(
        "apixaban 5 mg AND metoprolol OR tartrate NOT heparin text",
        "&expand=false",
    )
    .await;
    assert_eq!(scored(&noisy), scored(&plain));
}

#[actix_web::test]
async fn advanced_syntax_requires_excludes_and_matches_phrases() {
    let v = bm25("+apixaban -heparin", "&syntax=advanced&expand=false").await;
    let found = hits(&v, "bm25");
    assert!(!found.is_empty());
    let app = test::init_service(clinsearch::server::app(shared().state.clone())).await;
    for h in &found {
        let id = h["id"].as_str().unwrap();
        let (_, d) = call(&app, get(&format!("/api/documents/{id}"))).await;
        let text = format!("{} {}", d["note"]["title"], d["note"]["text"]).to_lowercase();
        assert!(
            text.contains("apixaban") && !text.contains("heparin"),
            "{id}"
        );
    }
    // A phrase matches only consecutive words.
    let phrase = bm25("\"restricted diffusion\"", "&syntax=advanced&expand=false").await;
    let words = bm25("diffusion restricted", "&expand=false").await;
    assert!(ids(&hits(&phrase, "bm25")).len() <= ids(&hits(&words, "bm25")).len());
    assert_eq!(phrase["syntax"], "advanced");
}

#[actix_web::test]
async fn a_malformed_advanced_query_is_a_400_naming_the_position() {
    let app = test::init_service(clinsearch::server::app(shared().state.clone())).await;
    for (q, pos) in [("chest \"pain", "7"), ("ward:5 pain", "1"), ("-pain", "1")] {
        let (s, v) = call(
            &app,
            get(&format!("/api/search?syntax=advanced&q={}", enc(q))),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(v["error"]["param"], "q");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("character {pos}")), "{q}: {msg}");
        // The same text in plain syntax is an ordinary query.
        let (s, _) = call(&app, get(&format!("/api/search?mode=bm25&q={}", enc(q)))).await;
        assert_eq!(s, StatusCode::OK, "{q}");
    }
}

#[actix_web::test]
async fn queries_without_words_are_refused_and_a_pasted_note_is_capped_with_a_notice() {
    let app = test::init_service(clinsearch::server::app(shared().state.clone())).await;
    for q in ["   ", "?!- ..", "\"\"", "- - -"] {
        let (s, v) = call(&app, get(&format!("/api/search?q={}", enc(q)))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q:?}: {v}");
        assert_eq!(v["error"]["param"], "q");
    }
    // A note of 10,000 characters pasted as the query: answered, BM25 capped, and said so.
    let note = "Patient with chest pain and shortness of breath on apixaban 5 mg BID. ".repeat(143);
    assert!(note.len() >= 10_000);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/search")
            .set_json(json!({ "q": note, "mode": "hybrid" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let notices = v["notices"].as_array().unwrap();
    assert!(
        notices.iter().any(|n| n.as_str().unwrap().contains("512")),
        "{notices:?}"
    );
    assert!(!hits(&v, "hybrid").is_empty());
    // Over the byte limit is a 400 that says the limit.
    let huge = "x ".repeat(20_000);
    let (s, v) = call(
        &app,
        TestRequest::post()
            .uri("/api/search")
            .set_json(json!({ "q": huge })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("bytes"),
        "{v}"
    );
}

#[actix_web::test]
async fn abbreviations_expand_both_ways_and_the_reply_lists_them() {
    // "UTI": the notes write "urinary tract infection"; BM25 finds them only by expansion.
    let off = bm25("UTI", "&expand=false").await;
    assert!(hits(&off, "bm25").is_empty());
    assert_eq!(off["expansions"], json!([]));
    let on = bm25("UTI", "").await;
    assert_eq!(
        on["expansions"],
        json!([{ "from": "UTI", "to": ["urinary tract infection"], "kind": "abbreviation" }])
    );
    let found = hits(&on, "bm25");
    assert!(!found.is_empty());
    // The snippet marks what was searched: the expansion.
    let marked: String = found[0]["snippet"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["hl"] == true)
        .map(|s| s["text"].as_str().unwrap().to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(marked.contains("urinary"), "{marked}");

    // The other way: "blood urea nitrogen" also searches BUN, which is what the notes write.
    let off = bm25("blood urea nitrogen", "&expand=false").await;
    let on = bm25("blood urea nitrogen", "").await;
    assert_eq!(on["expansions"][0]["to"], json!(["bun"]));
    assert_eq!(on["expansions"][0]["kind"], "long_form");
    let with_bun = |v: &Value| {
        hits(v, "bm25")
            .iter()
            .take(10)
            .filter(|h| {
                h["snippet"].as_array().unwrap().iter().any(|s| {
                    s["hl"] == true && s["text"].as_str().unwrap().eq_ignore_ascii_case("bun")
                })
            })
            .count()
    };
    assert!(
        with_bun(&on) > with_bun(&off),
        "{} vs {}",
        with_bun(&on),
        with_bun(&off)
    );

    // An expansion the user removed is not applied; the others are.
    let v = bm25("UTI with BUN", "&expand_skip=uti").await;
    let froms: Vec<&str> = v["expansions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["from"].as_str().unwrap())
        .collect();
    assert!(
        !froms.contains(&"UTI") && froms.contains(&"BUN"),
        "{froms:?}"
    );
}

#[actix_web::test]
async fn expansions_are_weighted_below_the_words_typed() {
    // No note writes "MI": the query MI reaches the notes only through its expansion, and
    // the same phrase typed out scores higher than reached that way (weight 0.75).
    let typed = bm25("myocardial infarction", "&expand=false").await;
    let expanded = bm25("MI", "").await;
    let top = |v: &Value| hits(v, "bm25")[0]["bm25"]["score"].as_f64().unwrap();
    assert!(
        top(&expanded) < top(&typed),
        "{} vs {}",
        top(&expanded),
        top(&typed)
    );
    assert!(top(&expanded) > 0.5 * top(&typed));
}

#[actix_web::test]
async fn the_note_view_marks_what_the_search_searched() {
    let app = test::init_service(clinsearch::server::app(shared().state.clone())).await;
    let on = bm25("UTI", "").await;
    let id = hits(&on, "bm25")[0]["id"].as_str().unwrap().to_string();
    let (s, v) = call(&app, get(&format!("/api/documents/{id}?q=UTI"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!v["terms"].as_array().unwrap().is_empty());
    let (_, v) = call(
        &app,
        get(&format!("/api/documents/{id}?q=UTI&expand=false")),
    )
    .await;
    assert!(v["terms"].as_array().unwrap().is_empty(), "{v}");
    let (s, v) = call(
        &app,
        get(&format!("/api/documents/{id}?q=a%22b&syntax=advanced")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[test]
fn a_user_abbreviation_file_replaces_entries_and_a_bad_one_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("abbreviations.tsv");
    std::fs::write(&own, "# ours\nUTI\tbladder infection\n").unwrap();
    let state = seeded_state(
        &dir.path().join("data"),
        Layer {
            abbreviations: Some(own.clone()),
            ..Default::default()
        },
        None,
    );
    let e = state.abbreviations.expand("UTI", None);
    assert_eq!(e[0].targets(), vec!["bladder infection"]);

    std::fs::write(
        &own,
        "UTI\turinary tract infection\nsob shortness of breath\n",
    )
    .unwrap();
    let result = std::panic::catch_unwind(|| {
        seeded_state(
            &dir.path().join("data2"),
            Layer {
                abbreviations: Some(own.clone()),
                ..Default::default()
            },
            None,
        )
    });
    assert!(result.is_err(), "a malformed file must stop the start");
    let err = clinsearch::clinical::abbrev::Dictionary::load(Some(&own))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:2:", own.display())), "{err}");
    let missing =
        clinsearch::clinical::abbrev::Dictionary::load(Some(&dir.path().join("none.tsv")))
            .unwrap_err()
            .to_string();
    assert!(missing.contains("none.tsv"), "{missing}");
}

/// The annotator on the hand-labelled MTSamples development set (method in the fixture's
/// header). Published anchor: GenNegEx 1.2 on its own test set, accuracy 97.7% and
/// negated-class F1 0.946 (Chapman et al.).
#[test]
fn assertion_status_on_the_judged_mtsamples_sentences() {
    use clinsearch::clinical::assertion::{evaluate, read_pairs};
    let path = crate::common::fixture("assertion_dev.tsv");
    let pairs = read_pairs(
        &std::fs::read_to_string(&path).unwrap(),
        "assertion_dev.tsv",
    )
    .unwrap();
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
    let e = evaluate(&pairs);
    for c in &e.classes {
        eprintln!(
            "{:<13} support {:>3}  P {:.3}  R {:.3}  F1 {:.3}",
            c.status, c.support, c.precision, c.recall, c.f1
        );
    }
    eprintln!("accuracy {:.3} over {} pairs", e.accuracy, e.pairs);
    for (gold, got, sentence, concept) in &e.errors {
        eprintln!("  gold {gold:<12} got {got:<12} [{concept}] {sentence}");
    }
    let negated = e.classes.iter().find(|c| c.status == "negated").unwrap();
    assert!(negated.f1 >= 0.946, "negated F1 {:.3}", negated.f1);
    assert!(e.accuracy >= 0.90, "accuracy {:.3}", e.accuracy);
}

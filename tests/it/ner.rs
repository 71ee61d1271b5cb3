//! Named-entity tagging: fine-tuning a token classifier on the tiny fixture lowers the loss and
//! the saved folder reloads with the figures it was saved with; the metrics equal the seqeval
//! package's; the folder loads in transformers with the same logits; long texts are read in
//! windows with entities kept whole across their edges; bad input names the file and line.

use std::path::{Path, PathBuf};

use candle_core::Device;
use clinsearch::ner::data::{self, Scheme};
use clinsearch::ner::{self, seqeval, TokenClassifier};
use clinsearch::train::ner::{finetune, score, NerArgs};
use clinsearch::train::TrainOptions;

use crate::common::*;

const DISEASES: &[&str] = &[
    "pneumonia",
    "renal failure",
    "heart failure",
    "atrial fibrillation",
    "diabetes",
    "sepsis",
    "stroke",
    "asthma",
];
const DRUGS: &[&str] = &["aspirin", "warfarin", "heparin", "metoprolol", "insulin"];

/// Sentences in the tiny model's vocabulary with Disease and Chemical entities, as CoNLL
/// lines. Every third sentence uses IOB1 (an entity starts with I-).
fn sentences() -> Vec<Vec<(String, String)>> {
    let mut out = vec![];
    let tag = |words: &str, ty: Option<&str>, iob1: bool| -> Vec<(String, String)> {
        words
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                let t = match ty {
                    None => "O".to_string(),
                    Some(ty) if i == 0 && !iob1 => format!("B-{ty}"),
                    Some(ty) => format!("I-{ty}"),
                };
                (w.to_string(), t)
            })
            .collect()
    };
    for (i, d) in DISEASES.iter().enumerate() {
        for (j, c) in DRUGS.iter().enumerate().filter(|(j, _)| (i + j) % 2 == 0) {
            let iob1 = (i + j) % 3 == 0;
            let mut s = vec![];
            match (i + j) % 4 {
                0 => {
                    s.extend(tag("patient admitted with", None, false));
                    s.extend(tag(d, Some("Disease"), iob1));
                    s.extend(tag("started", None, false));
                    s.extend(tag(c, Some("Chemical"), iob1));
                }
                1 => {
                    s.extend(tag(c, Some("Chemical"), iob1));
                    s.extend(tag("daily for", None, false));
                    s.extend(tag(d, Some("Disease"), iob1));
                }
                2 => {
                    s.extend(tag("history of", None, false));
                    s.extend(tag(d, Some("Disease"), iob1));
                    s.extend(tag("on", None, false));
                    s.extend(tag(c, Some("Chemical"), iob1));
                    s.extend(tag(".", None, false));
                }
                _ => {
                    s.extend(tag("no evidence of", None, false));
                    s.extend(tag(d, Some("Disease"), iob1));
                    s.extend(tag("with", None, false));
                    s.extend(tag(c, Some("Chemical"), iob1));
                }
            }
            out.push(s);
        }
    }
    out
}

fn write_conll(path: &Path, sents: &[Vec<(String, String)>]) {
    let mut text = String::new();
    for s in sents {
        for (w, t) in s {
            text.push_str(&format!("{w}\t{t}\n"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn args(dir: &Path, epochs: usize) -> NerArgs {
    let train = dir.join("train.tsv");
    if !train.exists() {
        write_conll(&train, &sentences());
    }
    NerArgs {
        base: fixture("tiny-mlm-uncased").display().to_string(),
        train: train.clone(),
        dev: Some(train),
        strict: false,
        out: dir.join("tagger"),
        resume: None,
        device: Device::Cpu,
        options: TrainOptions {
            epochs,
            batch_size: 4,
            lr: 1e-2,
            warmup_ratio: 0.1,
            seed: 7,
            ..Default::default()
        },
    }
}

/// One trained tagger shared by the tests that only read it.
pub(crate) fn trained() -> &'static (
    tempfile::TempDir,
    PathBuf,
    Vec<clinsearch::train::EpochReport>,
) {
    static T: std::sync::OnceLock<(
        tempfile::TempDir,
        PathBuf,
        Vec<clinsearch::train::EpochReport>,
    )> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), 8);
        let outcome = finetune(&a, &mut |_| {}).unwrap();
        (dir, a.out, outcome.history)
    })
}

#[test]
fn training_lowers_the_loss_learns_the_entities_and_reloads_with_the_figures_it_saved() {
    let (dir, out, history) = trained();
    assert_eq!(history.len(), 8);
    let first = history.first().unwrap().train_loss;
    let last = history.last().unwrap().train_loss;
    assert!(last < first * 0.5, "loss {first} -> {last}");
    let f1 = history.last().unwrap().dev["f1"].as_f64().unwrap();
    assert!(f1 > 0.8, "dev F1 {f1}");
    // The saved folder: transformers' layout, IOB2 labels, and the last epoch's figures.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["0"], "O");
    assert_eq!(config["label2id"]["B-Disease"], 3);
    let tagger = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    assert_eq!(
        tagger.labels,
        vec!["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    );
    let dev = data::read(&dir.path().join("train.tsv"), Scheme::Lenient).unwrap();
    let (report, _) = score(&tagger, &dev).unwrap();
    assert!(
        (report.overall.f1 - f1).abs() < 1e-12,
        "{} vs {f1}",
        report.overall.f1
    );
    let ents = tagger
        .tag(&["patient admitted with renal failure started heparin"])
        .unwrap();
    let found: Vec<(&str, &str)> = ents[0]
        .iter()
        .map(|e| (e.entity_type.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![("Disease", "renal failure"), ("Chemical", "heparin")]
    );
    assert_eq!((ents[0][0].start, ents[0][0].end), (22, 35));
}

/// seqeval's default mode on the tagger's own predictions and on random tag sequences (IOB1,
/// broken IOB2, three types): every figure equal to 1e-9.
#[test]
fn the_metrics_equal_the_seqeval_package() {
    if !python_has("seqeval", "the seqeval comparison", "pip install seqeval") {
        return;
    }
    let (dir, out, _) = trained();
    let tagger = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    let dev = data::read(&dir.path().join("train.tsv"), Scheme::Lenient).unwrap();
    let words: Vec<Vec<String>> = dev.iter().map(|s| s.words.clone()).collect();
    let pred: Vec<Vec<String>> = tagger
        .predict_words(&words)
        .unwrap()
        .into_iter()
        .map(|s| s.into_iter().map(|(t, _)| t).collect())
        .collect();
    let gold: Vec<Vec<String>> = dev.iter().map(|s| s.tags.clone()).collect();
    let mut cases = vec![(gold, pred)];
    let mut rng = fastrand::Rng::with_seed(11);
    let tags = ["O", "O", "B-X", "I-X", "B-Y", "I-Y", "I-Z", "B-Z"];
    let random = |rng: &mut fastrand::Rng| -> Vec<Vec<String>> {
        (0..30)
            .map(|_| {
                (0..rng.usize(1..12))
                    .map(|_| tags[rng.usize(..tags.len())].to_string())
                    .collect()
            })
            .collect()
    };
    for _ in 0..5 {
        let g = random(&mut rng);
        // Predictions: the gold tags with about a third of them replaced.
        let p = g
            .iter()
            .map(|s| {
                s.iter()
                    .map(|t| {
                        if rng.usize(..3) == 0 {
                            tags[rng.usize(..tags.len())].to_string()
                        } else {
                            t.clone()
                        }
                    })
                    .collect()
            })
            .collect();
        cases.push((g, p));
    }
    for (i, (gold, pred)) in cases.iter().enumerate() {
        let ours = seqeval::evaluate(gold, pred);
        let py = python_json(
            &["seqeval"],
            &serde_json::json!({"gold": gold, "pred": pred}),
        );
        let close = |a: f64, b: &serde_json::Value, what: &str| {
            let b = b.as_f64().unwrap();
            assert!((a - b).abs() < 1e-9, "case {i} {what}: {a} vs seqeval {b}");
        };
        close(ours.overall.precision, &py["precision"], "precision");
        close(ours.overall.recall, &py["recall"], "recall");
        close(ours.overall.f1, &py["f1"], "f1");
        close(ours.token_accuracy, &py["accuracy"], "accuracy");
        let types = py["per_type"].as_object().unwrap();
        assert_eq!(types.len(), ours.per_type.len(), "case {i}: {types:?}");
        for (ty, p) in &ours.per_type {
            let t = &types[ty];
            close(p.precision, &t["precision"], &format!("{ty} precision"));
            close(p.recall, &t["recall"], &format!("{ty} recall"));
            close(p.f1, &t["f1"], &format!("{ty} f1"));
            assert_eq!(
                p.support as u64,
                t["support"].as_u64().unwrap(),
                "case {i} {ty}"
            );
        }
    }
}

fn python_json(args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(repo_root().join("tests/ner_reference.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// transformers' AutoModelForTokenClassification loads the folder and gives our logits and
/// labels.
#[test]
fn transformers_loads_the_tagger_with_the_same_logits() {
    if !python_has(
        "torch, transformers",
        "the transformers comparison",
        "pip install torch transformers",
    ) {
        return;
    }
    let (_, out, _) = trained();
    let tagger = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    let texts = [
        "patient admitted with sepsis started aspirin",
        "no evidence of stroke with warfarin daily",
    ];
    let mut seqs = vec![];
    for t in texts {
        let mut ids = vec![tagger.tokenizer.cls_id];
        ids.extend(tagger.tokenizer.encode(t).unwrap().ids);
        ids.push(tagger.tokenizer.sep_id);
        seqs.push(ids);
    }
    let py = python_json(
        &["transformers", &out.display().to_string()],
        &serde_json::json!({ "ids": seqs }),
    );
    assert_eq!(py["labels"], serde_json::json!(tagger.labels));
    for (i, ids) in seqs.iter().enumerate() {
        let t = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = t.ones_like().unwrap();
        let ours = tagger
            .logits(&t, &mask, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let theirs = py["logits"][i].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (pos, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let b = floats(b);
            assert!(
                max_abs_diff(a, &b) < 1e-4,
                "text {i} token {pos}: {a:?} vs {b:?}"
            );
            let arg = |v: &[f32]| (0..v.len()).max_by(|&x, &y| v[x].total_cmp(&v[y])).unwrap();
            assert_eq!(arg(a), arg(&b), "text {i} token {pos}: label");
        }
    }
}

/// A note longer than one window is read in overlapping windows of whole words: every word
/// is labelled from the window where it has the most context (its probabilities are those of
/// that window run alone), an entity cut by one window's edge is labelled whole from the
/// next, and with windows of a useful size the entities are those of a single pass.
#[test]
fn long_texts_are_tagged_in_windows_with_entities_whole_across_edges() {
    let (_, out, _) = trained();
    let load = |max_len| {
        let mut t = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
        t.max_len = max_len;
        t
    };
    let text = "patient admitted with renal failure started heparin . history of atrial fibrillation on warfarin . patient admitted with heart failure started metoprolol";
    let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    let narrow = load(13); // 11 sub-words a window
    let pieces = ner::word_pieces(&narrow.tokenizer, &words).unwrap();
    let counts: Vec<usize> = pieces.iter().map(Vec::len).collect();
    let wins = ner::windows(&counts, 11);
    assert_eq!(wins.len(), 3, "{wins:?}");
    // "atrial fibrillation" (words 10, 11): the first window's edge falls between them; both
    // words are labelled from the second window.
    assert!(wins[0].contains(&10) && !wins[0].contains(&11), "{wins:?}");
    let own = ner::owners(&wins, words.len());
    assert_eq!((own[10], own[11]), (1, 1));
    // Each word's probabilities are its owner window's, run alone.
    let probs = narrow
        .word_probabilities(std::slice::from_ref(&pieces))
        .unwrap()
        .remove(0);
    let inputs = ner::window_inputs(&narrow.tokenizer, &pieces, 13);
    for (k, w) in inputs.iter().enumerate() {
        let ids = candle_core::Tensor::new(w.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = narrow
            .logits(&ids, &ids.ones_like().unwrap(), None)
            .unwrap();
        let p = candle_nn::ops::softmax_last_dim(&logits)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for &(word, pos) in &w.heads {
            assert_eq!(own[word], k);
            assert!(max_abs_diff(&probs[word], &p[pos]) < 1e-6, "word {word}");
        }
    }
    assert_eq!(
        inputs.iter().map(|w| w.heads.len()).sum::<usize>(),
        words.len(),
        "every word labelled once"
    );
    // Windows of a useful size give the single pass's entities.
    let whole = load(512).tag(&[text]).unwrap().remove(0);
    let windowed = load(16).tag(&[text]).unwrap().remove(0);
    let spans = |v: &[ner::Entity]| -> Vec<(String, usize, usize)> {
        v.iter()
            .map(|e| (e.entity_type.clone(), e.start, e.end))
            .collect()
    };
    assert_eq!(whole.len(), 6, "{whole:?}");
    assert_eq!(spans(&whole), spans(&windowed));
}

#[test]
fn bad_input_is_refused_with_its_file_and_line_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("scheme.tsv", "chest\tO\npain\tS-Disease\n", "scheme.tsv:2:"),
        ("fields.tsv", "chest\tO\npain\n", "fields.tsv:2:"),
        ("only-o.tsv", "chest\tO\npain\tO\n", "no entity tags"),
        (
            "empty.jsonl",
            "{\"tokens\": [], \"tags\": []}\n",
            "empty.jsonl:1: empty sentence",
        ),
        (
            "lengths.jsonl",
            "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n",
            "lengths.jsonl:1: 2 tokens but 1 tags",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut a = args(dir.path(), 1);
        a.train = path;
        a.dev = None;
        let err = finetune(&a, &mut |_| {}).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(!a.out.exists(), "{name}: nothing written");
    }
    // Strict mode refuses the I- after O that the lenient reading takes as an entity start.
    let iob1 = dir.path().join("iob1.tsv");
    std::fs::write(&iob1, "no\tO\npneumonia\tI-Disease\n").unwrap();
    let mut a = args(dir.path(), 1);
    a.train = iob1.clone();
    a.dev = None;
    a.strict = true;
    let err = finetune(&a, &mut |_| {}).err().unwrap().to_string();
    assert!(
        err.contains("iob1.tsv:2:") && err.contains("strict"),
        "{err}"
    );
    // A dev tag the training file never has.
    let dev = dir.path().join("dev.tsv");
    std::fs::write(&dev, "aspirin\tB-Drug\n").unwrap();
    let mut a = args(dir.path(), 1);
    a.dev = Some(dev);
    let err = finetune(&a, &mut |_| {}).err().unwrap().to_string();
    assert!(
        err.contains("dev.tsv:1:") && err.contains("B-Drug"),
        "{err}"
    );
}

/// The command line end to end: `finetune ner --json` prints one line per epoch with
/// seqeval's figures; `tag --json` prints the entities with character spans.
#[test]
fn cli_fine_tunes_a_tagger_and_tags_texts() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let dir = tempfile::tempdir().unwrap();
    let a = args(dir.path(), 1);
    let run = Command::new(bin)
        .args(["finetune", "ner", "--base"])
        .arg(&a.base)
        .arg("--train")
        .arg(&a.train)
        .arg("--dev")
        .arg(&a.train)
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--json",
            "--out",
        ])
        .arg(&a.out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let epochs: Vec<serde_json::Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 2);
    for k in [
        "f1",
        "precision",
        "recall",
        "token_accuracy",
        "f1_Disease",
        "f1_Chemical",
    ] {
        assert!(epochs[1]["dev"][k].is_number(), "{k}: {}", epochs[1]);
    }
    assert!(stderr.contains("5 tags, 20 training sentences"), "{stderr}");
    let run = Command::new(bin)
        .args(["tag", "--json", "--model"])
        .arg(&a.out)
        .args(["history of sepsis on insulin"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["text"], "history of sepsis on insulin");
    for e in v["entities"].as_array().unwrap() {
        let (s, end) = (
            e["start"].as_u64().unwrap() as usize,
            e["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            &"history of sepsis on insulin"[s..end],
            e["text"].as_str().unwrap()
        );
        assert!(e["type"].is_string() && e["score"].is_number());
    }
    // A classifier folder is not a tagger.
    let run = Command::new(bin)
        .args(["tag", "--model"])
        .arg(fixture("tiny-mlm-uncased"))
        .arg("text")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("token-classification head"));
}

/// `POST /api/tag` serves the tagger: the same entities as the library, several texts at
/// once, and clear errors without a tagger or with bad input.
#[actix_web::test]
async fn the_server_tags_texts_with_the_configured_tagger() {
    use crate::server::call;
    use actix_web::http::StatusCode;
    use actix_web::test as atest;
    let (_, out, _) = trained();
    let dir = tempfile::tempdir().unwrap();
    let state = |tagger: Option<TokenClassifier>| tagged_state(dir.path(), tagger);
    let post = |body: serde_json::Value| atest::TestRequest::post().uri("/api/tag").set_json(body);
    {
        let app = atest::init_service(clinsearch::server::app(state(None))).await;
        let (s, v) = call(&app, post(serde_json::json!({"text": "heart failure"}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "no_tagger");
    }
    let tagger = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    let text = "patient admitted with renal failure started heparin";
    let want = tagger.tag(&[text]).unwrap().remove(0);
    let app = atest::init_service(clinsearch::server::app(state(Some(tagger)))).await;
    let (s, v) = call(
        &app,
        post(serde_json::json!({"texts": [text, "history of sepsis"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["types"], serde_json::json!(["Chemical", "Disease"]));
    // The same entities as the library (scores to float precision: the server batched two
    // texts, padded to the longer).
    let got = v["results"][0]["entities"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{v}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["type"], w.entity_type.as_str());
        assert_eq!(
            (
                g["start"].as_u64().unwrap() as usize,
                g["end"].as_u64().unwrap() as usize
            ),
            (w.start, w.end)
        );
        assert_eq!(g["text"], w.text.as_str());
        assert!((g["score"].as_f64().unwrap() - w.score as f64).abs() < 1e-5);
    }
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    for (body, code) in [
        (serde_json::json!({"text": "  "}), "invalid_parameter"),
        (
            serde_json::json!({"text": "a", "texts": ["b"]}),
            "invalid_parameter",
        ),
        (serde_json::json!({"text": "a", "top_k": 2}), "invalid_json"),
    ] {
        let (s, v) = call(&app, post(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
}

/// A server over an empty data directory in `dir`, with `tagger` configured.
fn tagged_state(
    dir: &Path,
    tagger: Option<TokenClassifier>,
) -> actix_web::web::Data<clinsearch::server::AppState> {
    use clinsearch::config::ServerConfig;
    use clinsearch::engine::{Engine, OpenOptions};
    use clinsearch::server::AppState;
    use clinsearch::store::ModelIdentity;
    use std::sync::Arc;
    let enc = crate::ingest::tiny_encoder();
    let data = dir.join("data");
    let engine = Engine::open(
        &data,
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    let config = ServerConfig::from_layer(clinsearch::config::Layer {
        data: Some(data),
        ..Default::default()
    })
    .unwrap();
    let s = AppState::new(Arc::new(engine), Arc::new(enc), config).unwrap();
    actix_web::web::Data::new(match tagger {
        Some(t) => s.with_tagger(t),
        None => s,
    })
}

/// Notes added with a tagger carry their entities (with the assertion status of each span);
/// `entity=type:value` filters both retrievers (AND across values), `assertion=affirmed`
/// leaves out negated mentions, and the facets count notes and patients per entity.
#[actix_web::test]
async fn entities_are_stored_filtered_on_in_both_retrievers_and_counted() {
    use crate::server::{call, get, hits, ids};
    use actix_web::http::StatusCode;
    use actix_web::test as atest;
    use std::collections::BTreeSet;
    let (_, out, _) = trained();
    let dir = tempfile::tempdir().unwrap();
    let tagger = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    let state = tagged_state(dir.path(), Some(tagger));
    let app = atest::init_service(clinsearch::server::app(state.clone())).await;
    let notes = serde_json::json!([
        {"id": "N1", "patient_id": "P1", "text": "patient admitted with pneumonia started aspirin"},
        {"id": "N2", "patient_id": "P1", "text": "history of renal failure on heparin ."},
        {"id": "N3", "patient_id": "P2", "text": "no evidence of pneumonia with warfarin"},
        {"id": "N4", "patient_id": "P3", "text": "patient admitted with sepsis started insulin"},
        {"id": "N5", "patient_id": "P2", "text": "history of pneumonia on heparin ."},
    ]);
    let (s, v) = call(
        &app,
        atest::TestRequest::post()
            .uri("/api/documents")
            .set_json(&notes),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let store = &state.engine.store;
    let stored = |id: &str| store.get(id).unwrap().unwrap();
    // What the tagger finds is what is stored, with the negation of N3's pneumonia.
    let n1 = stored("N1");
    let found: Vec<(&str, &str)> = n1
        .entities
        .iter()
        .map(|e| (e.entity_type.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![("Disease", "pneumonia"), ("Chemical", "aspirin")]
    );
    let n3 = stored("N3");
    let p3 = n3
        .entities
        .iter()
        .find(|e| e.value == "pneumonia")
        .expect("N3 mentions pneumonia");
    assert_eq!(
        p3.status,
        Some(clinsearch::clinical::assertion::Status::Negated)
    );
    assert!(n1.entities.iter().all(|e| e.status.is_none()));

    // The notes each filter must return, from the stored entities.
    let all = ["N1", "N2", "N3", "N4", "N5"];
    let expect = |keys: &[&str], affirmed: bool| -> BTreeSet<String> {
        all.iter()
            .filter(|id| {
                let n = stored(id);
                keys.iter().all(|k| {
                    n.entities.iter().any(|e| {
                        (!affirmed || e.affirmed())
                            && format!("{}:{}", e.entity_type.to_lowercase(), e.value) == *k
                    })
                })
            })
            .map(|s| s.to_string())
            .collect()
    };
    let pneumonia = expect(&["disease:pneumonia"], false);
    assert!(
        pneumonia.contains("N1") && pneumonia.contains("N3"),
        "{pneumonia:?}"
    );
    for mode in ["bm25", "semantic"] {
        let search = |extra: &str| {
            get(&format!(
                "/api/search?q=patient%20history%20pneumonia%20heparin&mode={mode}&k=10{extra}"
            ))
        };
        for (extra, keys, affirmed) in [
            (
                "&entity=disease:pneumonia",
                vec!["disease:pneumonia"],
                false,
            ),
            (
                "&entity=Disease:%20Pneumonia",
                vec!["disease:pneumonia"],
                false,
            ),
            (
                "&entity=disease:pneumonia&assertion=affirmed",
                vec!["disease:pneumonia"],
                true,
            ),
            (
                "&entity=disease:pneumonia&entity=chemical:heparin",
                vec!["disease:pneumonia", "chemical:heparin"],
                false,
            ),
            (
                "&entity=chemical:no-such-drug",
                vec!["chemical:no-such-drug"],
                false,
            ),
        ] {
            let (s, v) = call(&app, search(extra)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let got: BTreeSet<String> = ids(&hits(&v, mode)).into_iter().collect();
            if mode == "bm25" {
                // BM25 needs a query word in the note: compare within the notes it can match.
                assert!(
                    got.is_subset(&expect(&keys, affirmed)),
                    "{mode} {extra}: {got:?}"
                );
            } else {
                assert_eq!(got, expect(&keys, affirmed), "{mode} {extra}");
            }
        }
    }
    // Affirmed only: N3's negated pneumonia is not a match.
    let (_, v) = call(
        &app,
        get("/api/search?q=pneumonia&mode=semantic&entity=disease:pneumonia&assertion=affirmed"),
    )
    .await;
    assert!(!ids(&hits(&v, "semantic")).contains(&"N3".to_string()));

    // Facets: per type, notes and patients.
    let (s, v) = call(&app, get("/api/facets")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["counted"], "filter");
    let disease = v["entities"]["disease"].as_array().unwrap();
    let pn = disease.iter().find(|x| x["value"] == "pneumonia").unwrap();
    assert_eq!(pn["notes"].as_u64().unwrap() as usize, pneumonia.len());
    let patients: BTreeSet<String> = pneumonia
        .iter()
        .filter_map(|id| stored(id).note.patient_id)
        .collect();
    assert_eq!(pn["patients"].as_u64().unwrap() as usize, patients.len());
    // Affirmed only, and within a query's hits.
    let (_, v) = call(&app, get("/api/facets?assertion=affirmed")).await;
    let pn = v["entities"]["disease"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["value"] == "pneumonia")
        .cloned();
    assert_eq!(
        pn.map_or(0, |x| x["notes"].as_u64().unwrap() as usize),
        expect(&["disease:pneumonia"], true).len()
    );
    let (s, v) = call(&app, get("/api/facets?q=sepsis&mode=bm25")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["counted"], "hits");
    let (_, v2) = call(
        &app,
        get("/api/facets?q=sepsis&mode=bm25&entity=chemical:insulin"),
    )
    .await;
    assert!(v2["entities"].is_object());
    // Bad entity parameters name the parameter.
    for bad in ["pneumonia", "disease:", ":pneumonia"] {
        let (s, v) = call(&app, get(&format!("/api/search?q=x&entity={bad}"))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["param"], "entity", "{v}");
    }
}

/// Five notes in the tiny vocabulary, one with a negated pneumonia, ingested with the trained
/// tagger through `ingest::run` (the CLI's path), served with the tagger.
pub(crate) fn tagged_notes_state(dir: &Path) -> actix_web::web::Data<clinsearch::server::AppState> {
    let (_, out, _) = trained();
    let tagger = TokenClassifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    let state = tagged_state(dir, Some(tagger));
    let file = dir.join("notes.jsonl");
    let notes = [
        (
            "N1",
            "P1",
            "Pneumonia admission",
            "patient admitted with pneumonia started aspirin",
        ),
        (
            "N2",
            "P1",
            "Renal follow up",
            "history of renal failure on heparin .",
        ),
        (
            "N3",
            "P2",
            "Cough visit",
            "no evidence of pneumonia with warfarin",
        ),
        (
            "N4",
            "P3",
            "Sepsis admission",
            "patient admitted with sepsis started insulin",
        ),
        (
            "N5",
            "P2",
            "Pneumonia history",
            "history of pneumonia on heparin .",
        ),
    ];
    let text: String = notes
        .iter()
        .map(|(id, p, t, x)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "patient_id": p, "title": t, "text": x})
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let opts = clinsearch::ingest::IngestOptions {
        tagger: state.tagger.clone(),
        ..Default::default()
    };
    clinsearch::ingest::run(
        &state.engine,
        &state.encoder,
        vec![clinsearch::ingest::source::read(
            &file,
            clinsearch::ingest::Format::Jsonl,
            &Default::default(),
        )],
        None,
        &opts,
    )
    .unwrap();
    state
}

/// `ingest --tagger` records the tagger in the data directory: a later ingest without the
/// flag tags with it, `stats` names it, and `reindex --retag` tags every stored note again
/// (here with the same tagger after the entities were wiped) without re-embedding.
#[test]
fn the_cli_ingests_with_a_recorded_tagger_and_retags_without_reembedding() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let (_, out, _) = trained();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = fixture("tiny-mlm-uncased");
    let write = |name: &str, rows: &[(&str, &str)]| {
        let p = dir.path().join(name);
        let text: String = rows
            .iter()
            .map(|(id, t)| format!("{}\n", serde_json::json!({"id": id, "text": t})))
            .collect();
        std::fs::write(&p, text).unwrap();
        p
    };
    let ingest = |file: &Path, tagger: Option<&Path>| {
        let mut c = Command::new(bin);
        c.args([
            "ingest", "--quiet", "--window", "24", "--stride", "4", "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .env_remove("CLINSEARCH_TAGGER");
        if let Some(t) = tagger {
            c.arg("--tagger").arg(t);
        }
        let o = c.arg(file).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ingest(
        &write(
            "a.jsonl",
            &[("A1", "patient admitted with pneumonia started aspirin")],
        ),
        Some(out),
    );
    ingest(
        &write("b.jsonl", &[("B1", "history of sepsis on insulin")]),
        None,
    );
    let stats = Command::new(bin)
        .args(["stats", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        stats["tagger"]["types"],
        serde_json::json!(["Chemical", "Disease"])
    );
    let entities_of = |id: &str| -> Vec<String> {
        let engine = clinsearch::engine::Engine::open(&data, None, &Default::default()).unwrap();
        engine
            .store
            .get(id)
            .unwrap()
            .unwrap()
            .entities
            .iter()
            .map(|e| e.value.clone())
            .collect()
    };
    assert_eq!(entities_of("A1"), vec!["pneumonia", "aspirin"]);
    assert!(
        entities_of("B1").contains(&"sepsis".to_string()),
        "the recorded tagger tagged B1"
    );
    let vectors_of = |id: &str| -> Vec<Vec<f32>> {
        let engine = clinsearch::engine::Engine::open(&data, None, &Default::default()).unwrap();
        let (_, chunks) = engine.store.get_with_chunks(id).unwrap().unwrap();
        chunks.into_iter().map(|c| c.vector).collect()
    };
    let before = vectors_of("A1");
    // Wipe A1's entities through the write path, then retag.
    {
        let engine = clinsearch::engine::Engine::open(&data, None, &Default::default()).unwrap();
        let (stored, chunks) = engine.store.get_with_chunks("A1").unwrap().unwrap();
        let windows = chunks.into_iter().map(|c| c.into_window()).collect();
        engine
            .apply(
                &[clinsearch::store::EmbeddedNote::new(stored.note, windows)],
                &[],
            )
            .unwrap();
        engine.checkpoint().unwrap();
    }
    assert!(entities_of("A1").is_empty());
    let o = Command::new(bin)
        .args(["reindex", "--retag", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("retagged 2 notes"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(entities_of("A1"), vec!["pneumonia", "aspirin"]);
    assert_eq!(vectors_of("A1"), before, "no re-embedding");
    // The BM25 entity field follows: a filtered search finds A1, and only A1.
    let engine = clinsearch::engine::Engine::open(&data, None, &Default::default()).unwrap();
    let mut req = clinsearch::search::SearchRequest::from_params([
        ("q", "patient history"),
        ("mode", "bm25"),
        ("entity", "disease:pneumonia"),
    ])
    .unwrap();
    req.details = false;
    let resp = clinsearch::search::Searcher::new(&engine)
        .search(&req, None)
        .unwrap();
    let ids: Vec<&str> = resp.rankings[0]
        .hits
        .iter()
        .map(|h| h.id.as_str())
        .collect();
    assert_eq!(ids, vec!["A1"]);
}

//! Fine-tuning: gradients reach every encoder parameter, a few steps on a tiny model drive the
//! loss down deterministically, checkpoints resume to the same weights, saved folders reload
//! (in clinsearch and in Python transformers / sentence-transformers) with the same outputs,
//! and bad input is refused before training starts.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use clinsearch::model::bert::{BertModel, Dropout, Linear};
use clinsearch::model::config::BertConfig;
use clinsearch::model::weights::Weights;
use clinsearch::model::{Encoder, EncoderOptions};
use clinsearch::train::classify::{self, Classifier, ClassifyArgs};
use clinsearch::train::retrieval::{self, PairFields, RetrievalArgs};
use clinsearch::train::{TrainEvent, TrainOptions};

use crate::common::*;

const TINY: &str = "tiny-mlm-uncased";

fn tiny() -> String {
    fixture(TINY).display().to_string()
}

/// Two specialties in the tiny model's vocabulary.
const CARDIO: &[&str] = &[
    "atrial fibrillation on warfarin",
    "chest pain ecg normal",
    "heart failure chf on metoprolol",
    "myocardial infarction mi aspirin heparin",
    "afib rate on metoprolol",
    "chest pain echo normal",
    "heart rate afib ecg",
    "blood pressure hypertension lisinopril",
];
const PULM: &[&str] = &[
    "cough and shortness of breath",
    "copd on albuterol",
    "asthma with cough albuterol",
    "pneumonia chest xray lung",
    "sob copd lungs",
    "lung mass ct biopsy",
    "asthma sob albuterol prn",
    "pneumonia fever cough",
];

pub(crate) fn write_jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn labelled_rows() -> Vec<serde_json::Value> {
    let mut rows = vec![];
    for (c, p) in CARDIO.iter().zip(PULM) {
        rows.push(serde_json::json!({"text": c, "label": "cardiology"}));
        rows.push(serde_json::json!({"text": p, "label": "pulmonology"}));
    }
    rows
}

fn quick_options(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 4,
        // Large for BERT, right for a tiny random one (32 wide, 2 layers).
        lr: 1e-2,
        warmup_ratio: 0.1,
        seed: 7,
        ..Default::default()
    }
}

pub(crate) fn classify_args(dir: &Path, epochs: usize) -> ClassifyArgs {
    std::fs::create_dir_all(dir).unwrap();
    let train = dir.join("train.jsonl");
    if !train.exists() {
        write_jsonl(&train, &labelled_rows());
    }
    ClassifyArgs {
        base: tiny(),
        train: train.clone(),
        dev: Some(train),
        text_field: "text".into(),
        label_field: "label".into(),
        out: dir.join("out"),
        resume: None,
        device: Device::Cpu,
        options: quick_options(epochs),
    }
}

pub(crate) fn quiet(_: &TrainEvent) {}

/// The trap this guards against: candle's fused LayerNorm and softmax have no backward pass,
/// so a stock BERT trains only the head on top. Here every encoder tensor of the checkpoint
/// gets a non-zero gradient, under dropout, through a classification-style loss.
#[test]
fn every_encoder_parameter_receives_a_nonzero_gradient() {
    let dir = fixture(TINY);
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::load(&dir).unwrap();
    let mut model = BertModel::load(&weights, &config, DType::F32, &Device::Cpu).unwrap();
    let vars = model.make_trainable(0).unwrap();
    let encoder_tensors = weights.names().filter(|n| !n.starts_with("cls.")).count();
    assert_eq!(
        vars.len(),
        encoder_tensors,
        "every encoder tensor is trainable"
    );
    assert_eq!(vars.len(), 5 + 2 * 16);

    let tok = clinsearch::model::tokenizer::TextTokenizer::load(&dir).unwrap();
    let seqs: Vec<Vec<u32>> = [
        "chest pain on aspirin",
        "copd",
        "afib with heart failure chf",
    ]
    .iter()
    .map(|t| clinsearch::train::encode(&tok, t, 64).unwrap())
    .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let (ids, mask) = clinsearch::train::pad_batch(&refs, tok.pad_id, &Device::Cpu).unwrap();
    let dropout = Dropout::new(&config, 1);
    let hidden = model.forward_with(&ids, &mask, Some(&dropout)).unwrap();
    let head = Linear::new(
        Tensor::randn(0f32, 0.5, (2, 32), &Device::Cpu).unwrap(),
        Some(Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()),
    );
    let logits = head
        .forward(&hidden.i((.., 0, ..)).unwrap().contiguous().unwrap())
        .unwrap();
    let targets = Tensor::new(&[0u32, 1, 0], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
    let grads = loss.backward().unwrap();
    let mut missing = vec![];
    for (name, var) in &vars {
        let norm = grads
            .get(var.as_tensor())
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        // The position embeddings past the longest input and unused word rows get zero rows,
        // but every tensor as a whole must move.
        if norm <= 0.0 || !norm.is_finite() {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

/// Freezing keeps the embeddings and the lower layers out of the optimiser.
#[test]
fn freezing_lower_layers_trains_only_the_upper_ones() {
    let dir = fixture(TINY);
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::load(&dir).unwrap();
    let mut model = BertModel::load(&weights, &config, DType::F32, &Device::Cpu).unwrap();
    let vars = model.make_trainable(1).unwrap();
    assert_eq!(vars.len(), 16);
    assert!(vars.iter().all(|(n, _)| n.starts_with("encoder.layer.1.")));
    let mut model = BertModel::load(&weights, &config, DType::F32, &Device::Cpu).unwrap();
    let err = model.make_trainable(3).unwrap_err().to_string();
    assert!(
        err.contains("cannot freeze 3 layers: the model has 2"),
        "{err}"
    );
}

fn weights_of(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let w = Weights::load(dir).unwrap();
    let mut names: Vec<String> = w.names().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = w.get_any(&n).unwrap();
            (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

pub(crate) fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (wa, wb) = (weights_of(a), weights_of(b));
    assert_eq!(
        wa.iter().map(|x| &x.0).collect::<Vec<_>>(),
        wb.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    wa.iter()
        .zip(&wb)
        .map(|((_, x), (_, y))| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

#[test]
fn classification_training_lowers_the_loss_and_the_saved_model_reloads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let args = classify_args(tmp.path(), 6);
    let mut steps = vec![];
    let outcome = classify::finetune(&args, &mut |e| {
        if let TrainEvent::Step { loss, .. } = e {
            steps.push(*loss);
        }
    })
    .unwrap();
    assert_eq!(outcome.labels, ["cardiology", "pulmonology"]);
    assert_eq!(steps.len(), 6 * 4, "16 examples in batches of 4, 6 epochs");
    let h = &outcome.history;
    assert_eq!(h.len(), 6);
    let first = h[0].train_loss;
    let last = h[5].train_loss;
    assert!(
        last < 0.5 * first,
        "epoch losses {:?}",
        h.iter().map(|r| r.train_loss).collect::<Vec<_>>()
    );
    let dev = &h[5].dev;
    assert_eq!(dev["accuracy"].as_f64(), Some(1.0), "{dev:?}");

    // The same seed gives the same run.
    let tmp2 = tempfile::tempdir().unwrap();
    let again = classify::finetune(&classify_args(tmp2.path(), 6), &mut quiet).unwrap();
    for (a, b) in h.iter().zip(&again.history) {
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-6,
            "{} vs {}",
            a.train_loss,
            b.train_loss
        );
    }

    // Reloaded, the classifier scores the dev set exactly as training measured it.
    let out = &args.out;
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "trainer_state.json",
    ] {
        assert!(out.join(f).is_file(), "{f} in the output");
    }
    let clf = Classifier::load(&out.display().to_string(), &Device::Cpu).unwrap();
    assert_eq!(clf.labels, ["cardiology", "pulmonology"]);
    let texts: Vec<&str> = CARDIO
        .iter()
        .zip(PULM)
        .flat_map(|(c, p)| [*c, *p])
        .collect();
    let preds = clf.predict(&texts, 2).unwrap();
    let mut loss = 0.0;
    for (i, p) in preds.iter().enumerate() {
        let gold = if i % 2 == 0 {
            "cardiology"
        } else {
            "pulmonology"
        };
        assert_eq!(p.label, gold, "{}", texts[i]);
        let s = p.top.iter().find(|s| s.label == gold).unwrap().score;
        loss -= (s as f64).ln();
        assert!((p.top.iter().map(|s| s.score).sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let loss = loss / texts.len() as f64;
    let recorded = dev["loss"].as_f64().unwrap();
    assert!(
        (loss - recorded).abs() < 1e-5,
        "reloaded dev loss {loss} vs {recorded} in training"
    );
    // The final folder is the last epoch's checkpoint.
    assert_eq!(max_weight_diff(out, &out.join("checkpoints/epoch-6")), 0.0);
}

#[test]
fn resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = classify_args(&tmp.path().join("a"), 3);
    std::fs::create_dir_all(tmp.path().join("a")).unwrap();
    classify::finetune(&straight, &mut quiet).unwrap();

    // An interrupted run: what the straight run had written after its first epoch.
    let b = tmp.path().join("b");
    let mut first = classify_args(&b, 3);
    let ckpt = first.out.join("checkpoints/epoch-1");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in std::fs::read_dir(straight.out.join("checkpoints/epoch-1")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), ckpt.join(f.file_name())).unwrap();
    }
    first.options.max_steps = None;
    // A checkpoint without trainer_state.json (a crash while saving) is never resumed from.
    let partial = first.out.join("checkpoints/epoch-2");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        ckpt.join("optimizer.safetensors"),
        partial.join("optimizer.safetensors"),
    )
    .unwrap();

    let mut resumed = classify_args(&tmp.path().join("b"), 3);
    resumed.resume = Some(first.out.clone());
    let mut started_at = None;
    let outcome = classify::finetune(&resumed, &mut |e| {
        if let TrainEvent::Start { first_epoch, .. } = e {
            started_at = Some(*first_epoch);
        }
    })
    .unwrap();
    assert_eq!(started_at, Some(1), "resumed after epoch 1");
    assert_eq!(outcome.history.len(), 3, "history carries epoch 1 over");
    let diff = max_weight_diff(&straight.out, &resumed.out);
    assert!(diff < 1e-5, "resumed weights differ by {diff}");
}

#[test]
fn bad_classification_input_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = |args: &ClassifyArgs| {
        let err = classify::finetune(args, &mut quiet)
            .unwrap_err()
            .to_string();
        assert!(!args.out.exists(), "nothing written for: {err}");
        err
    };

    // A missing label field names the file, line and flag.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"copd\", \"label\": \"pulm\"}\n{\"text\": \"afib\", \"specialty\": \"cardio\"}\n").unwrap();
    let mut args = classify_args(dir, 1);
    args.train = bad.clone();
    args.dev = None;
    let err = run(&args);
    assert!(
        err.contains("bad.jsonl:2")
            && err.contains("no field \"label\"")
            && err.contains("--label-field"),
        "{err}"
    );
    assert!(
        err.contains("specialty, text"),
        "lists the fields there are: {err}"
    );

    // One class only.
    let one = dir.join("one.jsonl");
    write_jsonl(
        &one,
        &[
            serde_json::json!({"text": "copd", "label": "pulm"}),
            serde_json::json!({"text": "asthma", "label": "pulm"}),
        ],
    );
    args.train = one;
    let err = run(&args);
    assert!(err.contains("at least two classes"), "{err}");

    // An empty file.
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    args.train = empty;
    let err = run(&args);
    assert!(
        err.contains("empty.jsonl") && err.contains("no examples"),
        "{err}"
    );

    // Not JSON.
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, "{\"text\": \"copd\", \"label\": \"a\"}\nnot json\n").unwrap();
    args.train = junk;
    let err = run(&args);
    assert!(
        err.contains("junk.jsonl:2") && err.contains("not valid JSON"),
        "{err}"
    );

    // A dev label the training set never had.
    let mut args = classify_args(dir, 1);
    let dev = dir.join("dev.jsonl");
    write_jsonl(
        &dev,
        &[serde_json::json!({"text": "stroke tia", "label": "neurology"})],
    );
    args.dev = Some(dev);
    let err = run(&args);
    assert!(
        err.contains("dev.jsonl:1") && err.contains("\"neurology\""),
        "{err}"
    );

    // A CSV with the label column named differently.
    let csv = dir.join("notes.csv");
    std::fs::write(&csv, "text,specialty\ncopd,pulm\nafib,cardio\n").unwrap();
    let mut args = classify_args(dir, 1);
    args.train = csv;
    args.dev = None;
    let err = run(&args);
    assert!(
        err.contains("notes.csv:2") && err.contains("no field \"label\""),
        "{err}"
    );

    // Bad options.
    let mut args = classify_args(dir, 1);
    args.options.lr = 0.0;
    assert!(run(&args).contains("--lr"));
    let mut args = classify_args(dir, 1);
    args.options.freeze_layers = 5;
    assert!(run(&args).contains("cannot freeze 5 layers"));
}

#[test]
fn resuming_onto_a_different_base_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = classify_args(tmp.path(), 2);
    args.options.max_steps = Some(4);
    classify::finetune(&args, &mut quiet).unwrap();
    let mut other = args.clone();
    other.options.max_steps = None;
    other.base = fixture("tiny-mlm-cased-zip").display().to_string();
    other.resume = Some(args.out.join("checkpoints/epoch-1"));
    let err = classify::finetune(&other, &mut quiet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot resume") && err.contains("v239") && err.contains("v425"),
        "{err}"
    );
    // A classification checkpoint is not a retrieval one.
    let pairs = tmp.path().join("pairs.jsonl");
    write_jsonl(&pairs, &pair_rows());
    let mut r = retrieval_args(tmp.path(), &pairs, 2);
    r.resume = Some(args.out.clone());
    let err = retrieval::finetune(&r, &mut quiet).unwrap_err().to_string();
    assert!(err.contains("classify checkpoint, not retrieval"), "{err}");
}

pub(crate) fn pair_rows() -> Vec<serde_json::Value> {
    let pairs = [
        ("afib", "atrial fibrillation on warfarin and metoprolol"),
        ("copd", "copd with cough on albuterol"),
        (
            "mi",
            "myocardial infarction treated with aspirin and heparin",
        ),
        (
            "renal failure",
            "kidney failure creatinine and potassium up",
        ),
        ("stroke", "tia and stroke ct normal"),
        ("liver", "hepatic mass liver biopsy malignant"),
        ("diabetes", "glucose high on insulin daily"),
        ("sepsis", "fever wbc up sepsis on saline iv"),
    ];
    pairs
        .iter()
        .enumerate()
        .map(|(i, (q, p))| {
            let mut row = serde_json::json!({"query": q, "positive": p});
            if i % 2 == 0 {
                row["negative"] = serde_json::json!(pairs[(i + 3) % pairs.len()].1);
            }
            row
        })
        .collect()
}

pub(crate) fn retrieval_args(dir: &Path, pairs: &Path, epochs: usize) -> RetrievalArgs {
    RetrievalArgs {
        base: tiny(),
        pairs: pairs.to_path_buf(),
        dev: Some(pairs.to_path_buf()),
        fields: PairFields::default(),
        out: dir.join("retrieval-out"),
        resume: None,
        device: Device::Cpu,
        options: quick_options(epochs),
        temperature: 0.05,
        query_max_len: 16,
    }
}

#[test]
fn retrieval_tuning_learns_the_pairs_and_saves_a_model_the_encoder_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_jsonl(&pairs, &pair_rows());
    let args = retrieval_args(tmp.path(), &pairs, 8);
    let outcome = retrieval::finetune(&args, &mut quiet).unwrap();
    assert_eq!((outcome.pairs, outcome.with_negative), (8, 4));
    let h = &outcome.history;
    assert!(
        h[7].train_loss < 0.5 * h[0].train_loss,
        "{:?}",
        h.iter().map(|r| r.train_loss).collect::<Vec<_>>()
    );
    let mrr = h[7].dev["mrr@10"].as_f64().unwrap();
    assert!(mrr > h[0].dev["mrr@10"].as_f64().unwrap() || mrr == 1.0);
    assert!(
        h[7].dev["recall@1"].as_f64().unwrap() >= 0.75,
        "{:?}",
        h[7].dev
    );

    // The output is a sentence-transformers folder the encoder uses as is.
    for f in [
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
    ] {
        assert!(args.out.join(f).is_file(), "{f}");
    }
    let enc = Encoder::load(&args.out.display().to_string(), &EncoderOptions::default()).unwrap();
    assert_eq!(enc.info().pooling, clinsearch::model::Pooling::Mean);
    assert!(enc.info().normalize);
    // Recall@1 recomputed from the reloaded encoder equals what training measured.
    let rows = pair_rows();
    let queries: Vec<&str> = rows.iter().map(|r| r["query"].as_str().unwrap()).collect();
    let docs: Vec<&str> = rows
        .iter()
        .map(|r| r["positive"].as_str().unwrap())
        .collect();
    let q = enc.embed(&queries).unwrap();
    let d = enc.embed(&docs).unwrap();
    let hits = q
        .iter()
        .enumerate()
        .filter(|(i, qv)| {
            let own = clinsearch::search::cosine(qv, &d[*i]);
            d.iter()
                .enumerate()
                .all(|(j, v)| j == *i || clinsearch::search::cosine(qv, v) <= own)
        })
        .count();
    let r1 = h[7].dev["recall@1"].as_f64().unwrap();
    assert!(
        (hits as f64 / 8.0 - r1).abs() < 1e-9,
        "reloaded recall@1 {} vs {r1}",
        hits as f64 / 8.0
    );
}

#[test]
fn bad_retrieval_input_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs, "{\"query\": \"afib\", \"positive\": \"atrial fibrillation\"}\n{\"query\": \"copd\", \"text\": \"copd\"}\n").unwrap();
    let args = retrieval_args(tmp.path(), &pairs, 1);
    let err = retrieval::finetune(&args, &mut quiet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pairs.jsonl:2")
            && err.contains("no field \"positive\"")
            && err.contains("--positive-field"),
        "{err}"
    );
    let one = tmp.path().join("one.jsonl");
    std::fs::write(
        &one,
        "{\"query\": \"afib\", \"positive\": \"atrial fibrillation\"}\n",
    )
    .unwrap();
    let mut args = retrieval_args(tmp.path(), &one, 1);
    args.dev = None;
    let err = retrieval::finetune(&args, &mut quiet)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least two"), "{err}");
    assert!(!args.out.exists());
}

/// The saved folders load in Python's transformers (classification) and
/// sentence-transformers (retrieval) and give clinsearch's outputs.
#[test]
fn python_transformers_and_sentence_transformers_load_the_output_with_the_same_outputs() {
    if !python_has(
        "torch, transformers, sentence_transformers",
        "the Python comparison",
        "pip install torch transformers sentence-transformers",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut args = classify_args(tmp.path(), 2);
    args.options.max_steps = Some(6);
    classify::finetune(&args, &mut quiet).unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_jsonl(&pairs, &pair_rows());
    let mut rargs = retrieval_args(tmp.path(), &pairs, 2);
    rargs.options.max_steps = Some(3);
    retrieval::finetune(&rargs, &mut quiet).unwrap();

    let texts = [
        "chest pain on aspirin",
        "copd with cough",
        "the patient was admitted with sepsis and renal failure",
    ];
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/train_reference.py"))
        .arg(&args.out)
        .arg(&rargs.out)
        .args(texts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let clf = Classifier::load(&args.out.display().to_string(), &Device::Cpu).unwrap();
    let ours = clf.predict(&texts, 2).unwrap();
    assert_eq!(py["labels"], serde_json::json!(clf.labels));
    for (i, p) in ours.iter().enumerate() {
        let theirs = floats(&py["probabilities"][i]);
        for s in &p.top {
            let j = clf.labels.iter().position(|l| *l == s.label).unwrap();
            assert!(
                (s.score - theirs[j]).abs() < 1e-4,
                "text {i} {}: {} vs transformers {}",
                s.label,
                s.score,
                theirs[j]
            );
        }
    }
    let enc = Encoder::load(&rargs.out.display().to_string(), &EncoderOptions::default()).unwrap();
    let ours = enc.embed(&texts).unwrap();
    for (i, v) in ours.iter().enumerate() {
        let theirs = floats(&py["embeddings"][i]);
        let cos = clinsearch::search::cosine(v, &theirs);
        assert!(
            cos > 0.99999,
            "text {i}: cosine {cos} to sentence-transformers"
        );
        assert!(max_abs_diff(v, &theirs) < 1e-4);
    }
}

/// The command line end to end: `finetune classify` prints one JSON line per epoch, then
/// `classify` uses the folder; `finetune retrieval` makes a folder `embed --model` uses.
#[test]
fn cli_fine_tunes_and_classifies() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.jsonl");
    write_jsonl(&train, &labelled_rows());
    let out = tmp.path().join("clf");
    let run = Command::new(bin)
        .args(["finetune", "classify", "--base"])
        .arg(fixture(TINY))
        .arg("--train")
        .arg(&train)
        .arg("--dev")
        .arg(&train)
        .args([
            "--epochs",
            "6",
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--seed",
            "7",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let epochs: Vec<serde_json::Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 6);
    assert_eq!(epochs[5]["dev"]["accuracy"], 1.0, "{:?}", epochs[5]);
    assert!(
        stderr.contains("2 labels, 16 training and 16 dev examples"),
        "{stderr}"
    );

    let run = Command::new(bin)
        .args(["classify", "--top-k", "2", "--model"])
        .arg(&out)
        .args(["afib on warfarin", "copd with cough"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["predictions"][0]["label"], "cardiology", "{v}");
    assert_eq!(v["predictions"][1]["label"], "pulmonology", "{v}");
    assert_eq!(v["predictions"][0]["top"].as_array().unwrap().len(), 2);

    // A CLI error names the file and line, and nothing is written.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"copd\"}\n").unwrap();
    let run = Command::new(bin)
        .args(["finetune", "classify", "--base"])
        .arg(fixture(TINY))
        .arg("--train")
        .arg(&bad)
        .arg("--out")
        .arg(tmp.path().join("never"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("bad.jsonl:1") && stderr.contains("no field \"label\""),
        "{stderr}"
    );
    assert!(!tmp.path().join("never").exists());

    // A classification folder is refused where a classifier is not what it is.
    let run = Command::new(bin)
        .args(["classify", "--model"])
        .arg(fixture(TINY))
        .arg("afib")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("sequence-classification head"));

    let pairs = tmp.path().join("pairs.jsonl");
    write_jsonl(&pairs, &pair_rows());
    let emb = tmp.path().join("emb");
    let run = Command::new(bin)
        .args(["finetune", "retrieval", "--base"])
        .arg(fixture(TINY))
        .arg("--pairs")
        .arg(&pairs)
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
            "--out",
        ])
        .arg(&emb)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = Command::new(bin)
        .args(["embed", "--model"])
        .arg(&emb)
        .arg("afib")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["dim"], 32);
}

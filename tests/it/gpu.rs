//! The GPU back-ends (cargo features `cuda` and `metal`) against references: the encoder on
//! the GPU against PyTorch's golden outputs, and fine-tuning, ingest and ranking on the GPU
//! against the same work on the CPU (which the other tests pin to PyTorch).
//!
//! Compiled only with one of those features. A build with the feature on a machine without
//! the device skips each test with a message, unless CLINSEARCH_REQUIRE_GPU is set: then it
//! fails (use that where a GPU is known to be present, so a broken device path cannot pass
//! as "skipped").

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device};
use clinsearch::model::{EncoderOptions, WindowConfig};
use clinsearch::train::classify::{self, Classifier};
use clinsearch::train::{retrieval, TrainEvent};

use crate::common::*;
use crate::encoder::check_against_transformers_on;
use crate::train::{classify_args, pair_rows, quiet, retrieval_args, write_jsonl};

const SPEC: &str = if cfg!(feature = "cuda") {
    "cuda"
} else {
    "metal"
};

fn gpu() -> Option<Device> {
    match clinsearch::model::parse_device(SPEC) {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("CLINSEARCH_REQUIRE_GPU").is_none() => {
            eprintln!(
                "SKIPPED: this build has the `{SPEC}` feature but no {SPEC} device opened ({e}); \
                 CLINSEARCH_REQUIRE_GPU=1 makes this a failure"
            );
            None
        }
        Err(e) => panic!("CLINSEARCH_REQUIRE_GPU is set but no {SPEC} device opened: {e}"),
    }
}

fn on(device: &Device) -> EncoderOptions {
    EncoderOptions {
        device: device.clone(),
        ..Default::default()
    }
}

#[test]
fn gpu_encoder_matches_transformers_on_every_checkpoint_format() {
    let Some(dev) = gpu() else { return };
    for (dir, golden) in [
        ("tiny-mlm-uncased", "tiny-mlm-uncased.json"),
        ("tiny-mlm-cased-legacy", "tiny-mlm-cased.json"),
        ("tiny-mlm-cased-zip", "tiny-mlm-cased.json"),
    ] {
        check_against_transformers_on(dir, golden, &dev, 1e-4);
    }
}

/// f32 on the GPU gives sentence-transformers' vectors; f16 and bf16 (where a GPU earns its
/// keep) stay close to them.
#[test]
fn gpu_default_model_matches_sentence_transformers_in_f32_and_stays_close_in_f16_bf16() {
    let Some(dev) = gpu() else { return };
    let g = golden("minilm.json");
    let cases = g["embeddings"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (dtype, min_cos) in [
        (DType::F32, 0.9999),
        (DType::F16, 0.999),
        (DType::BF16, 0.99),
    ] {
        let enc = load(&default_model(), EncoderOptions { dtype, ..on(&dev) });
        let got = enc.embed(&texts).unwrap();
        for (case, v) in cases.iter().zip(&got) {
            let c = cosine(v, &floats(&case["embedding"]));
            assert!(
                c >= min_cos,
                "{dtype:?} on {SPEC}: cosine {c} to sentence-transformers for {:?}",
                case["text"]
            );
        }
    }
}

/// Windowing, padding and batching give the CPU's windows and vectors on the GPU.
#[test]
fn gpu_windows_and_padded_batches_match_the_cpu() {
    let Some(dev) = gpu() else { return };
    let window = WindowConfig {
        size: Some(16),
        stride: Some(4),
        max_windows: None,
        context: None,
    };
    let cpu = load(
        &fixture("tiny-mlm-uncased"),
        EncoderOptions {
            window: window.clone(),
            batch_size: 3,
            ..Default::default()
        },
    );
    let gpu = load(
        &fixture("tiny-mlm-uncased"),
        EncoderOptions {
            window,
            batch_size: 3,
            ..on(&dev)
        },
    );
    let texts = [
        "chest pain",
        "History of CHF, s/p MI in 2019; on metoprolol 25 mg BID. CT abdomen: no evidence of \
         acute appendicitis. Started on lisinopril for hypertension, follow up in 2 weeks.",
        "fever",
        "denies sob",
    ];
    let a = cpu.embed_windows(&texts).unwrap();
    let b = gpu.embed_windows(&texts).unwrap();
    assert!(a[1].len() >= 4, "the long text is windowed");
    for (wa, wb) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!((wa.start, wa.end, wa.tokens), (wb.start, wb.end, wb.tokens));
        let d = max_abs_diff(&wa.vector, &wb.vector);
        assert!(d < 1e-4, "window {} differs by {d}", wa.index);
    }
    assert_eq!(
        a.iter().map(Vec::len).collect::<Vec<_>>(),
        b.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

fn epoch_losses(h: &[clinsearch::train::EpochReport]) -> Vec<f64> {
    h.iter().map(|r| r.train_loss).collect()
}

/// The same seed on the GPU follows the CPU run (dropout masks are drawn on the host, so
/// only floating-point order differs), and the saved model gives the same probabilities
/// on either device.
#[test]
fn classification_fine_tuning_on_the_gpu_follows_the_cpu_run() {
    let Some(dev) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cpu_run =
        classify::finetune(&classify_args(&tmp.path().join("cpu"), 6), &mut quiet).unwrap();
    let mut args = classify_args(&tmp.path().join("gpu"), 6);
    args.device = dev.clone();
    let mut steps = 0;
    let gpu_run = classify::finetune(&args, &mut |e| {
        if let TrainEvent::Step { loss, .. } = e {
            assert!(loss.is_finite());
            steps += 1;
        }
    })
    .unwrap();
    assert_eq!(steps, 24);
    let (a, b) = (
        epoch_losses(&cpu_run.history),
        epoch_losses(&gpu_run.history),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() < 1e-3,
            "epoch losses cpu {a:?} vs {SPEC} {b:?}"
        );
    }
    assert!(b[5] < 0.5 * b[0], "{b:?}");
    assert_eq!(gpu_run.history[5].dev["accuracy"].as_f64(), Some(1.0));

    let out = args.out.to_str().unwrap();
    let texts = ["chest pain ecg normal", "copd on albuterol"];
    let on_gpu = Classifier::load(out, &dev)
        .unwrap()
        .predict(&texts, 2)
        .unwrap();
    let on_cpu = Classifier::load(out, &Device::Cpu)
        .unwrap()
        .predict(&texts, 2)
        .unwrap();
    let (pg, pc) = (
        serde_json::to_value(&on_gpu).unwrap(),
        serde_json::to_value(&on_cpu).unwrap(),
    );
    for (g, c) in pg.as_array().unwrap().iter().zip(pc.as_array().unwrap()) {
        assert_eq!(g["label"], c["label"]);
        let (g, c) = (&g["top"], &c["top"]);
        for (lg, lc) in g.as_array().unwrap().iter().zip(c.as_array().unwrap()) {
            assert_eq!(lg["label"], lc["label"]);
            let d = (lg["score"].as_f64().unwrap() - lc["score"].as_f64().unwrap()).abs();
            assert!(d < 1e-4, "{pg} vs {pc}");
        }
    }
}

#[test]
fn retrieval_tuning_on_the_gpu_follows_the_cpu_run() {
    let Some(dev) = gpu() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    write_jsonl(&pairs, &pair_rows());
    let cpu_run = retrieval::finetune(
        &retrieval_args(&tmp.path().join("cpu"), &pairs, 8),
        &mut quiet,
    )
    .unwrap();
    let mut args = retrieval_args(&tmp.path().join("gpu"), &pairs, 8);
    args.device = dev.clone();
    let gpu_run = retrieval::finetune(&args, &mut quiet).unwrap();
    let (a, b) = (
        epoch_losses(&cpu_run.history),
        epoch_losses(&gpu_run.history),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() < 1e-2 * x.abs().max(1.0),
            "epoch losses cpu {a:?} vs {SPEC} {b:?}"
        );
    }
    assert!(b[7] < 0.5 * b[0], "{b:?}");
    let r1 = |h: &[clinsearch::train::EpochReport]| h.last().unwrap().dev["recall@1"].as_f64();
    assert_eq!(r1(&gpu_run.history), r1(&cpu_run.history));
    // The tuned folder embeds the same on both devices.
    let cpu = load(&args.out, EncoderOptions::default());
    let gpu = load(&args.out, on(&dev));
    let t = ["kidney failure creatinine and potassium up"];
    let d = max_abs_diff(&cpu.embed(&t).unwrap()[0], &gpu.embed(&t).unwrap()[0]);
    assert!(
        d < 1e-4,
        "tuned model: cpu and {SPEC} vectors differ by {d}"
    );
}

/// `qid -> [(doc, score)]` from a TREC run file.
fn read_run(path: &Path) -> HashMap<String, Vec<(String, f64)>> {
    let mut runs: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        runs.entry(f[0].into())
            .or_default()
            .push((f[2].into(), f[4].parse().unwrap()));
    }
    runs
}

/// The CLI end to end with `--device`: ingest the sample corpus and evaluate it on the GPU
/// and on the CPU; every query's semantic ranking has the same scores rank by rank.
#[test]
fn cli_ingest_and_search_on_the_gpu_rank_like_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-mlm-uncased");
    let root = repo_root().join("sample_corpus");
    let mut runs = vec![];
    for device in ["cpu", SPEC] {
        let data = tmp.path().join(format!("data-{device}"));
        let common = |cmd: &mut Command| {
            cmd.args([
                "--window", "24", "--stride", "4", "--device", device, "--model",
            ])
            .arg(&model)
            .arg("--data")
            .arg(&data);
        };
        let mut ingest = Command::new(bin);
        ingest.args(["ingest", "-q"]);
        common(&mut ingest);
        run_ok(ingest.arg(root.join("notes.jsonl")));
        let dir = tmp.path().join(format!("runs-{device}"));
        let mut eval = Command::new(bin);
        eval.args(["eval", "--modes", "semantic"]);
        common(&mut eval);
        run_ok(
            eval.arg("--queries")
                .arg(root.join("queries.jsonl"))
                .arg("--qrels")
                .arg(root.join("qrels.tsv"))
                .arg("--runs-out")
                .arg(&dir),
        );
        runs.push(read_run(&dir.join("semantic.run")));
    }
    let (cpu, gpu) = (&runs[0], &runs[1]);
    assert_eq!(cpu.len(), gpu.len());
    assert!(cpu.len() >= 40, "{} queries", cpu.len());
    let mut same_top = 0;
    for (q, a) in cpu {
        let b = &gpu[q];
        assert_eq!(a.len(), b.len(), "query {q}");
        // The first ten scores agree rank by rank (whatever the order of ties). Deeper, the
        // vector index is approximate: graphs built from vectors that differ in the last
        // bits may each miss a different far neighbour, so the lists need only overlap.
        for (r, (x, y)) in a.iter().zip(b).take(10).enumerate() {
            assert!(
                (x.1 - y.1).abs() < 1e-4,
                "query {q} rank {}: {} vs {}",
                r + 1,
                x.1,
                y.1
            );
        }
        let docs: std::collections::HashSet<&String> = a.iter().map(|d| &d.0).collect();
        let shared = b.iter().filter(|d| docs.contains(&d.0)).count();
        assert!(
            shared * 10 >= a.len() * 9,
            "query {q}: {shared} of {} documents shared",
            a.len()
        );
        same_top += usize::from(a[0].0 == b[0].0);
    }
    // Ties aside, the top document is the same.
    assert!(
        same_top * 10 >= cpu.len() * 9,
        "{same_top} of {} top documents agree",
        cpu.len()
    );
}

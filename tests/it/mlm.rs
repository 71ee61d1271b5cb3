//! Domain-adaptive pretraining (`finetune mlm`): the held-out masked-token figures improve on
//! the tiny fixtures (with the base's head and with a new one), a resumed run reproduces the
//! uninterrupted one, the output loads in transformers with the same top-5 predictions, in
//! fill-mask, in the encoder and as a fine-tuning base, and bad input is refused before
//! anything is written.

use std::path::Path;

use candle_core::Device;
use clinsearch::model::{Encoder, EncoderOptions};
use clinsearch::train::mlm::{self, CorpusNote, MaskConfig, MlmArgs};
use clinsearch::train::{classify, TrainEvent, TrainOptions};

use crate::common::*;

/// Notes in the tiny fixtures' vocabulary with fixed phrases to learn ("atrial
/// fibrillation", "shortness of breath", "myocardial infarction").
const PHRASES: &[&str] = &[
    "patient with atrial fibrillation on warfarin.",
    "denies chest pain or shortness of breath.",
    "history of myocardial infarction on aspirin.",
    "copd with cough on albuterol prn.",
    "heart failure chf on metoprolol daily.",
    "blood pressure normal on lisinopril.",
    "renal failure with creatinine abnormal.",
    "pneumonia with fever and cough.",
];

fn notes(n: usize, offset: usize) -> Vec<CorpusNote> {
    (0..n)
        .map(|i| {
            let k = i + offset;
            let text = (0..4)
                .map(|j| PHRASES[(k * 3 + j * 5) % PHRASES.len()])
                .collect::<Vec<_>>()
                .join(" ");
            CorpusNote {
                text,
                origin: format!("note {k}"),
            }
        })
        .collect()
}

fn args(base: &str, out: &Path, epochs: usize) -> MlmArgs {
    MlmArgs {
        base: fixture(base).display().to_string(),
        notes: notes(48, 0),
        dev_notes: Some(notes(24, 100)),
        dev_fraction: 0.1,
        masking: MaskConfig::default(),
        out: out.to_path_buf(),
        resume: None,
        device: Device::Cpu,
        options: TrainOptions {
            epochs,
            batch_size: 4,
            lr: 1e-2,
            warmup_ratio: 0.1,
            seed: 11,
            max_len: Some(32),
            ..Default::default()
        },
    }
}

fn quiet(_: &TrainEvent) {}

fn dev_figure(m: &serde_json::Map<String, serde_json::Value>, k: &str) -> f64 {
    m[k].as_f64().unwrap()
}

#[test]
fn adaptation_raises_held_out_masked_token_accuracy_with_the_base_head_and_with_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    for (base, new_head) in [("tiny-mlm-uncased", false), ("tiny-st-sharded", true)] {
        let out = tmp.path().join(base);
        // A random tiny model memorises the phrases slowly: 60 short epochs (~10 s).
        let a = args(base, &out, 60);
        let mut losses = vec![];
        let outcome = mlm::finetune(&a, &mut |e| {
            if let TrainEvent::Step { loss, .. } = e {
                losses.push(*loss);
            }
        })
        .unwrap();
        assert_eq!(outcome.new_head, new_head, "{base}");
        assert_eq!((outcome.train_notes, outcome.dev_notes), (48, 24));
        // 8 tokens a phrase, 4 phrases a note: two notes fill a 32-token sequence at most.
        assert!(outcome.train_sequences >= 24, "{}", outcome.train_sequences);
        let before = dev_figure(&outcome.before, "loss");
        let last = &outcome.history.last().unwrap().dev;
        let after = dev_figure(last, "loss");
        assert!(
            after < 0.25 * before,
            "{base}: dev loss {before} -> {after}"
        );
        let (acc0, acc1) = (
            dev_figure(&outcome.before, "masked_accuracy"),
            dev_figure(last, "masked_accuracy"),
        );
        eprintln!("{base}: accuracy {acc0} -> {acc1}, loss {before} -> {after}");
        assert!(
            acc1 > acc0 + 0.5 && acc1 > 0.8,
            "{base}: accuracy {acc0} -> {acc1}"
        );
        assert_eq!(
            outcome.before["masked_tokens"], last["masked_tokens"],
            "the dev masks are the same every epoch"
        );
        let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
        let final3: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(
            final3 < 0.6 * first,
            "{base}: train loss {first} -> {final3}"
        );

        // The same seed gives the same run.
        let short = |dir: &str| {
            let o = mlm::finetune(&args(base, &tmp.path().join(dir), 2), &mut quiet).unwrap();
            o.history.last().unwrap().dev["loss"].clone()
        };
        assert_eq!(
            short("again-1"),
            short("again-2"),
            "{base}: not reproducible"
        );

        // fill-mask on the output completes a learnt phrase.
        let enc = load(&out, EncoderOptions::default());
        // A held-out note in which "breath" is masked (the standalone phrase, without a
        // note around it, is shorter than anything trained on).
        let note = notes(1, 100).remove(0).text;
        assert!(note.contains("shortness of breath. renal"), "{note}");
        let masked = note.replacen("breath", "[MASK]", 1);
        let p = enc.fill_mask(&masked, 3).unwrap();
        assert_eq!(p[0].candidates[0].token, "breath", "{base}: {:?}", p[0]);
    }
}

#[test]
fn resuming_reproduces_the_uninterrupted_run_and_another_corpus_is_stated() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = args("tiny-mlm-uncased", &tmp.path().join("a"), 3);
    mlm::finetune(&straight, &mut quiet).unwrap();

    let b = tmp.path().join("b");
    let ckpt = b.join("checkpoints/epoch-1");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in std::fs::read_dir(straight.out.join("checkpoints/epoch-1")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), ckpt.join(f.file_name())).unwrap();
    }
    let mut resumed = args("tiny-mlm-uncased", &b, 3);
    resumed.resume = Some(b.clone());
    let mut first_epoch = None;
    let outcome = mlm::finetune(&resumed, &mut |e| {
        if let TrainEvent::Start { first_epoch: f, .. } = e {
            first_epoch = Some(*f);
        }
    })
    .unwrap();
    assert_eq!(first_epoch, Some(1));
    assert!(!outcome.corpus_changed);
    let d = crate::train::max_weight_diff(&straight.out, &resumed.out);
    assert!(d < 1e-5, "the weights differ by {d} after resuming");

    // Other notes: allowed, and said.
    let mut other = args("tiny-mlm-uncased", &tmp.path().join("c"), 3);
    other.notes = notes(40, 7);
    other.resume = Some(straight.out.join("checkpoints/epoch-1"));
    let outcome = mlm::finetune(&other, &mut quiet).unwrap();
    assert!(outcome.corpus_changed);

    // Another base of the same shape: refused.
    let mut wrong = args("tiny-st-sharded", &tmp.path().join("d"), 3);
    wrong.resume = Some(straight.out.join("checkpoints/epoch-1"));
    let err = mlm::finetune(&wrong, &mut quiet).err().unwrap().to_string();
    assert!(err.contains("weights differ"), "{err}");
    assert!(!tmp.path().join("d").exists());
}

#[test]
fn bad_corpus_and_options_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let expect = |a: MlmArgs, what: &str| {
        let err = mlm::finetune(&a, &mut quiet).err().unwrap().to_string();
        assert!(err.contains(what), "expected {what:?} in: {err}");
        assert!(!out.exists(), "{what}: wrote output");
    };
    let mut a = args("tiny-mlm-uncased", &out, 1);
    a.notes = vec![];
    expect(a, "no notes");

    let mut a = args("tiny-mlm-uncased", &out, 1);
    a.notes = (0..5)
        .map(|i| CorpusNote {
            text: "no pain".into(),
            origin: format!("n{i}"),
        })
        .collect();
    expect(a, "all skipped as too short");

    let mut a = args("tiny-mlm-uncased", &out, 1);
    a.options.max_len = Some(65);
    expect(a, "exceeds the model's 64 positions");

    let mut a = args("tiny-mlm-uncased", &out, 1);
    a.masking.probability = 1.5;
    expect(a, "--mlm-probability");

    // A base folder without a tokenizer vocabulary.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-mlm-uncased").join(f), bare.join(f)).unwrap();
    }
    let mut a = args("tiny-mlm-uncased", &out, 1);
    a.base = bare.display().to_string();
    expect(a, "tokenizer");

    // Files: an empty one, and a record without the text field (file and line named).
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let err = mlm::read_corpus(&empty, "text").err().unwrap().to_string();
    assert!(
        err.contains("empty.jsonl") && err.contains("empty"),
        "{err}"
    );
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"chest pain\"}\n{\"body\": \"cough\"}\n").unwrap();
    let err = mlm::read_corpus(&bad, "text").err().unwrap().to_string();
    assert!(err.contains("bad.jsonl:2") && err.contains("body"), "{err}");
    let dir = tmp.path().join("nothing");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/readme.md"), "x").unwrap();
    let err = mlm::read_corpus(&dir, "text").err().unwrap().to_string();
    assert!(err.contains("no .txt"), "{err}");
}

/// The output folder is a BertForMaskedLM that transformers loads with the same top-5
/// predictions and probabilities as clinsearch's fill-mask, on sentences never trained on.
#[test]
fn transformers_loads_the_output_with_the_same_top_five_predictions() {
    if !python_has(
        "torch, transformers",
        "the transformers comparison",
        "pip install torch transformers",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("st");
    let mut a = args("tiny-st-sharded", &out, 1);
    a.options.max_steps = Some(5);
    mlm::finetune(&a, &mut quiet).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["BertForMaskedLM"])
    );
    let texts = [
        "the patient [MASK] chest pain.",
        "renal [MASK] with abnormal [MASK] labs.",
        "ct of the abdomen shows a liver [MASK].",
    ];
    let run = std::process::Command::new("python3")
        .arg(repo_root().join("tests/mlm_reference.py"))
        .arg(&out)
        .args(texts)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let enc = load(&out, EncoderOptions::default());
    for (i, text) in texts.iter().enumerate() {
        let ours = enc.fill_mask(text, 5).unwrap();
        let theirs = py[i].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "text {i}: masks");
        for (m, t) in ours.iter().zip(theirs) {
            let tokens: Vec<&str> = m.candidates.iter().map(|c| c.token.as_str()).collect();
            let their_tokens: Vec<&str> = t["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(tokens, their_tokens, "text {i} mask {}", m.mask_index);
            for (c, s) in m.candidates.iter().zip(floats(&t["scores"])) {
                assert!(
                    (c.score - s).abs() < 1e-4,
                    "text {i} {}: {} vs transformers {s}",
                    c.token,
                    c.score
                );
            }
        }
    }
}

/// The adapted folder is a base for the other tasks and a model for `ingest`/`embed`, and
/// the command line trains one end to end.
#[test]
fn the_cli_adapts_a_model_that_every_other_command_accepts() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("notes");
    std::fs::create_dir_all(&corpus).unwrap();
    let rows: String = notes(30, 0)
        .iter()
        .map(|n| format!("{}\n", serde_json::json!({"body": n.text})))
        .collect();
    std::fs::write(corpus.join("a.jsonl"), rows).unwrap();
    std::fs::write(
        corpus.join("b.txt"),
        "pneumonia with fever and cough on albuterol.",
    )
    .unwrap();
    std::fs::write(corpus.join("c.txt"), "ok").unwrap();
    let out = tmp.path().join("adapted");
    let run = run_ok(
        Command::new(bin)
            .args(["finetune", "mlm", "--base"])
            .arg(fixture("tiny-st-sharded"))
            .arg("--corpus")
            .arg(&corpus)
            .args(["--text-field", "body", "--whole-word", "--max-len", "32"])
            .args([
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--lr",
                "5e-3",
                "--json",
                "--out",
            ])
            .arg(&out),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    let epochs: Vec<serde_json::Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 2);
    assert!(
        epochs[1]["dev"]["masked_accuracy"].is_number(),
        "{:?}",
        epochs[1]
    );
    assert!(
        stderr.contains("32 notes (1 skipped as shorter than 5 tokens)"),
        "{stderr}"
    );
    assert!(stderr.contains("new MLM head"), "{stderr}");

    let fm = run_ok(
        Command::new(bin)
            .args(["fill-mask", "--model"])
            .arg(&out)
            .arg("denies chest [MASK]."),
    );
    let v: serde_json::Value = serde_json::from_slice(&fm.stdout).unwrap();
    assert_eq!(
        v["masks"][0]["candidates"].as_array().unwrap().len(),
        5,
        "{v}"
    );

    // The encoder embeds with the base's pooling (its sentence-transformers files came along).
    assert!(out.join("1_Pooling/config.json").is_file());
    let enc = Encoder::load(&out.display().to_string(), &EncoderOptions::default()).unwrap();
    assert_eq!(enc.embed(&["chest pain"]).unwrap()[0].len(), 32);

    // A fine-tuning base.
    let train = tmp.path().join("train.jsonl");
    crate::train::write_jsonl(
        &train,
        &[
            serde_json::json!({"text": "atrial fibrillation on warfarin", "label": "cardio"}),
            serde_json::json!({"text": "copd with cough", "label": "pulm"}),
        ],
    );
    let mut cargs = crate::train::classify_args(&tmp.path().join("clf"), 1);
    cargs.base = out.display().to_string();
    cargs.train = train;
    cargs.dev = None;
    classify::finetune(&cargs, &mut quiet).unwrap();
    classify::Classifier::load(&cargs.out.display().to_string(), &Device::Cpu).unwrap();

    // `ingest --model` embeds notes with it.
    let notes_file = tmp.path().join("ingest.jsonl");
    crate::train::write_jsonl(
        &notes_file,
        &[
            serde_json::json!({"id": "N1", "text": "patient with atrial fibrillation on warfarin."}),
            serde_json::json!({"id": "N2", "text": "copd with cough on albuterol prn."}),
        ],
    );
    run_ok(
        Command::new(bin)
            .args(["ingest", "--quiet", "--model"])
            .arg(&out)
            .arg("--data")
            .arg(tmp.path().join("data"))
            .arg(&notes_file),
    );
    let stats = run_ok(
        Command::new(bin)
            .args(["stats", "--data"])
            .arg(tmp.path().join("data")),
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["notes"], 2, "{stats}");

    // `--from-data` trains on the notes stored there (the server's adapt job, offline).
    let run = run_ok(
        Command::new(bin)
            .args(["finetune", "mlm", "--base"])
            .arg(fixture("tiny-mlm-uncased"))
            .arg("--from-data")
            .arg(tmp.path().join("data"))
            .args([
                "--dev-fraction",
                "0",
                "--max-steps",
                "1",
                "--epochs",
                "1",
                "--out",
            ])
            .arg(tmp.path().join("from-data")),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("2 notes (0 skipped"), "{stderr}");
    let run = Command::new(bin)
        .args(["finetune", "mlm", "--base"])
        .arg(fixture("tiny-mlm-uncased"))
        .arg("--from-data")
        .arg(tmp.path().join("nowhere"))
        .arg("--out")
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("nowhere") && stderr.contains("not a clinsearch data directory"),
        "{stderr}"
    );
}

/// A server whose embedding model has no MLM head offers to adapt one on its notes: only an
/// unrestricted write key may start the job, one runs at a time, its progress is the
/// owner's, the result answers fill-mask (not to a key restricted to part of the notes),
/// the start is audited, and a restarted server serves the same model.
#[actix_web::test]
async fn the_server_adapts_a_fill_mask_model_on_its_notes_and_serves_it() {
    use actix_web::http::StatusCode;
    use actix_web::test::{self, TestRequest};
    use clinsearch::auth::{sha256_hex, KeyEntry, Role};
    use clinsearch::config::{Layer, ServerConfig};
    use clinsearch::engine::{Engine, OpenOptions};
    use clinsearch::index::Filter;
    use clinsearch::server::{self, fill_mask, AppState};
    use clinsearch::store::ModelIdentity;
    use serde_json::{json, Value};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let enc = Arc::new(load(&fixture("tiny-st-sharded"), EncoderOptions::default()));
    assert!(!enc.has_mlm_head());
    let engine = Engine::open(
        dir.path(),
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    let rows: Vec<serde_json::Value> = notes(40, 0)
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let specialty = if i % 2 == 0 { "Cardiology" } else { "Oncology" };
            json!({"id": format!("N{i}"), "specialty": specialty, "text": n.text})
        })
        .collect();
    let file = dir.path().join("notes.jsonl");
    crate::train::write_jsonl(&file, &rows);
    clinsearch::ingest::run(
        &engine,
        &enc,
        vec![clinsearch::ingest::source::read(
            &file,
            clinsearch::ingest::Format::Jsonl,
            &Default::default(),
        )],
        None,
        &Default::default(),
    )
    .unwrap();
    let key = |name: &str, role: Role, filter: Option<Filter>| KeyEntry {
        name: name.into(),
        role,
        sha256: sha256_hex(format!("key-of-{name}").as_bytes()),
        filter,
    };
    let oncology = || {
        Some(Filter {
            specialty: Some("Oncology".into()),
            ..Default::default()
        })
    };
    let config = ServerConfig::from_layer(Layer {
        data: Some(dir.path().into()),
        model: Some(fixture("tiny-st-sharded").display().to_string()),
        keys: Some(vec![
            key("alice", Role::Read, None),
            key("wendy", Role::Write, None),
            key("olga", Role::Write, oncology()),
            key("otto", Role::Read, oncology()),
        ]),
        ..Default::default()
    })
    .unwrap();
    let state =
        actix_web::web::Data::new(AppState::new(Arc::new(engine), enc.clone(), config).unwrap());
    let app = test::init_service(server::app(state.clone())).await;
    let call = |req: TestRequest, who: &str| {
        let req = req
            .insert_header(("authorization", format!("Bearer key-of-{who}")))
            .to_request();
        let app = &app;
        async move {
            let res = test::call_service(app, req).await;
            let status = res.status();
            let body = test::read_body(res).await;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (status, v)
        }
    };
    let post = |uri: &str, body: Value| TestRequest::post().uri(uri).set_json(body);

    // Nothing answers fill-mask yet; a write key is offered the job and its command line.
    let (s, v) = call(TestRequest::get().uri("/api/fill-mask/model"), "wendy").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["model"], Value::Null);
    assert_eq!(v["can_adapt"], true);
    assert_eq!(v["notes"], 40);
    let cli = v["cli"].as_str().unwrap();
    assert!(
        cli.starts_with("clinsearch finetune mlm --base ") && cli.contains("--from-data"),
        "{cli}"
    );
    let (_, v) = call(TestRequest::get().uri("/api/fill-mask/model"), "alice").await;
    assert_eq!((v["can_adapt"].clone(), v.get("cli")), (json!(false), None));
    let (s, v) = call(
        post("/api/fill-mask", json!({"text": "chest [MASK]"})),
        "alice",
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("no_mlm_head"))
    );

    // Who may not start one, and bad budgets.
    let small = json!({"max_steps": 12, "batch_size": 8, "max_len": 32, "lr": 5e-3});
    for who in ["alice", "olga", "otto", "nobody"] {
        let (s, v) = call(post("/api/fill-mask/adapt", small.clone()), who).await;
        assert!(
            s == StatusCode::FORBIDDEN || s == StatusCode::UNAUTHORIZED,
            "{who}: {s} {v}"
        );
    }
    for (body, param) in [
        (json!({"max_steps": 0}), "max_steps"),
        (json!({"max_steps": 100000}), "max_steps"),
        (json!({"max_len": 4096}), "max_len"),
        (json!({"lr": -1.0}), "lr"),
    ] {
        let (s, v) = call(post("/api/fill-mask/adapt", body.clone()), "wendy").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (s, v) = call(post("/api/fill-mask/adapt", json!({"epochs": 9})), "wendy").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(state.fill_mask.latest().is_none(), "no job was started");

    // The job: one at a time, progress for its owner only.
    let (s, job) = call(post("/api/fill-mask/adapt", small.clone()), "wendy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let (s, v) = call(post("/api/fill-mask/adapt", small.clone()), "wendy").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_jobs"))
    );
    let (s, _) = call(
        TestRequest::get().uri(&format!("/api/fill-mask/adapt/{id}")),
        "alice",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let started = std::time::Instant::now();
    let done = loop {
        let (s, v) = call(
            TestRequest::get().uri(&format!("/api/fill-mask/adapt/{id}")),
            "wendy",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["state"] != "running" {
            break v;
        }
        assert!(
            started.elapsed().as_secs() < 300,
            "the job did not end: {v}"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["notes"], 40);
    assert!(done["step"].as_u64().unwrap() >= 1, "{done}");
    let (before, after) = (
        done["accuracy_before"].as_f64().unwrap(),
        done["accuracy"].as_f64().unwrap(),
    );
    assert!(after > before, "held-out accuracy {before} -> {after}");
    let out = std::path::PathBuf::from(done["out"].as_str().unwrap());
    assert!(
        out.starts_with(dir.path()),
        "the model stays in the data directory: {out:?}"
    );
    assert!(!out.join("checkpoints").exists());

    // It answers fill-mask, and the page names it; a restricted key may not query it.
    let (s, v) = call(
        post(
            "/api/fill-mask",
            json!({"text": "patient with atrial [MASK].", "top_k": 3}),
        ),
        "alice",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["source"], "adapted");
    assert_eq!(v["masks"][0]["candidates"].as_array().unwrap().len(), 3);
    let (_, m) = call(TestRequest::get().uri("/api/fill-mask/model"), "alice").await;
    assert_eq!(m["model"], done["out"]);
    let (s, v) = call(
        post("/api/fill-mask", json!({"text": "atrial [MASK]."})),
        "otto",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // The audit names who started it.
    let (events, _) =
        clinsearch::audit::search(&dir.path().join("audit"), &Default::default(), 10_000).unwrap();
    let adapts: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|e| e["action"] == "adapt" && e["status"] == 202)
        .collect();
    assert_eq!(adapts.len(), 1, "{adapts:?}");
    assert_eq!(adapts[0]["principal"], "wendy");

    // A restarted server serves it again; --mlm-model wins over it.
    let again =
        fill_mask::FillMask::resolve(None, dir.path(), &enc, &EncoderOptions::default()).unwrap();
    let served = again.served().unwrap();
    assert_eq!(
        (served.source, served.spec.as_str()),
        (fill_mask::Source::Adapted, done["out"].as_str().unwrap())
    );
    let spec = fixture("tiny-mlm-uncased").display().to_string();
    let configured =
        fill_mask::FillMask::resolve(Some(&spec), dir.path(), &enc, &EncoderOptions::default())
            .unwrap();
    assert_eq!(
        configured.served().unwrap().source,
        fill_mask::Source::Configured
    );
    let err = fill_mask::FillMask::resolve(
        Some(&fixture("tiny-st-sharded").display().to_string()),
        dir.path(),
        &enc,
        &EncoderOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no masked-language-model head"), "{err}");
}

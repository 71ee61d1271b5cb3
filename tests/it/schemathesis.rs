//! The OpenAPI description against the real binary, tested by a third-party tester as a new
//! user would: schemathesis (PyPI) with its coverage, fuzzing and stateful phases and every
//! check, over sample_corpus, with an admin key (every operation reachable), a classifier
//! and a tagger (every model endpoint live). Bounded in time; it must end with no failure.
//! The few checks configured per operation, each for a deliberate design, are in
//! `tests/schemathesis.toml` with their reasons.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Examples per operation and phase: enough for the coverage phase's boundary values and a
/// fuzzing pass, inside a few minutes on two cores.
const MAX_EXAMPLES: &str = "20";
/// The whole run stops by itself after this (schemathesis's own limit, then ours).
const RUN_SECONDS: u64 = 180;

#[test]
fn schemathesis_finds_the_server_as_its_openapi_description_says() {
    if !python_has(
        "schemathesis",
        "the schemathesis run against the OpenAPI description",
        "pip install schemathesis",
    ) {
        return;
    }
    let _heavy = heavy();
    let bin = env!("CARGO_BIN_EXE_clinsearch");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("clinsearch.toml");
    let model = fixture("tiny-mlm-uncased");
    let key = String::from_utf8(
        run_ok(
            Command::new(bin)
                .args(["keys", "new", "tester", "--role", "admin", "--config"])
                .arg(&config),
        )
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    run_ok(
        Command::new(bin)
            .args(["ingest", "--quiet", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg(repo_root().join("sample_corpus/notes.jsonl")),
    );
    // One job of each kind at a time, so that the jobs the run starts (ingest, evaluation,
    // tuning, adaptation) leave the machine to the other tests; more is 429, documented.
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[limits]\nmax_jobs_per_principal = 1\nmax_jobs = 1\n");
    std::fs::write(&config, toml).unwrap();
    // The judged set the description's examples name (five queries: evaluation and tuning
    // jobs stay short), so evaluation and tuning run.
    let queries = dir.path().join("queries.jsonl");
    let all = std::fs::read_to_string(repo_root().join("sample_corpus/queries.jsonl")).unwrap();
    let five: Vec<&str> = all.lines().take(5).collect();
    std::fs::write(&queries, five.join("\n")).unwrap();
    run_ok(
        Command::new(bin)
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--queries")
            .arg(&queries)
            .arg("--qrels")
            .arg(repo_root().join("sample_corpus/qrels.tsv"))
            .args(["--save-set", "sample"]),
    );
    // A classifier (one quick epoch) and the shared tagger, so classify and tag answer.
    let train = dir.path().join("train.jsonl");
    let rows: Vec<serde_json::Value> = [
        ("chest pain and atrial fibrillation", "cardiology"),
        ("cough and wheeze on inhaler", "pulmonology"),
        ("palpitations, on warfarin", "cardiology"),
        ("copd exacerbation", "pulmonology"),
    ]
    .iter()
    .map(|(t, l)| serde_json::json!({"text": t, "label": l}))
    .collect();
    crate::train::write_jsonl(&train, &rows);
    let classifier = dir.path().join("clf");
    run_ok(
        Command::new(bin)
            .args(["finetune", "classify", "--base"])
            .arg(&model)
            .arg("--train")
            .arg(&train)
            .args(["--epochs", "1", "--batch-size", "4", "--out"])
            .arg(&classifier),
    );
    let tagger = &crate::ner::trained().1;

    let mut child = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg("--classifier")
        .arg(&classifier)
        .arg("--tagger")
        .arg(tagger)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = served_addr(&mut child);
    let _server = Kill(child);
    let url = format!("http://{addr}");

    let mut run = Command::new("timeout")
        .arg(format!("{}", RUN_SECONDS + 60))
        .args(["python3", "-m", "schemathesis.cli"])
        .arg("--config-file")
        .arg(repo_root().join("tests/schemathesis.toml"))
        .args(["run", &format!("{url}/api/openapi.json")])
        .args(["--url", &url])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", &RUN_SECONDS.to_string()])
        .args(["--seed", "1"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--request-timeout", "60"])
        .env("NO_COLOR", "1")
        // Its example cache (.schemathesis/) goes to the temporary folder, not the checkout.
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs schemathesis");
    let out = wait_output(&mut run, Duration::from_secs(RUN_SECONDS + 120));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{}",
        failures(&text)
    );
    // It ran every operation (none skipped for a schema it could not read).
    assert!(
        !text.contains("Schema Errors") && !text.contains("Unsupported"),
        "{}",
        tail(&text, 10_000)
    );
    eprintln!("{}", tail(&text, 3_000));
}

/// The report's failures and summary, each line cut short (generated URLs run long).
fn failures(text: &str) -> String {
    let start = text
        .find("= FAILURES =")
        .or(text.find("= ERRORS ="))
        .unwrap_or(0);
    text[start..]
        .lines()
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[start..]
}

/// The child's output, killing it after `limit`.
fn wait_output(child: &mut std::process::Child, limit: Duration) -> std::process::Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut b = vec![];
        std::io::Read::read_to_end(&mut stdout, &mut b).ok();
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = vec![];
        std::io::Read::read_to_end(&mut stderr, &mut b).ok();
        b
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::process::Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

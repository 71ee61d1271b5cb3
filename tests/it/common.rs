//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use clinsearch::model::{Encoder, EncoderOptions};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests").join("fixtures").join(name)
}

pub fn golden(name: &str) -> serde_json::Value {
    let path = fixture("goldens").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn ints(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub fn load(dir: &std::path::Path, opts: EncoderOptions) -> Encoder {
    Encoder::load(dir.to_str().unwrap(), &opts)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Runs `cmd` and returns its output, failing the test with its standard error unless it
/// succeeded.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The default model folder; the README's test command fetches it first.
pub fn default_model() -> PathBuf {
    let dir = repo_root().join("models").join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "the default model is missing at {}: run `make model` (the README's test command does)",
        dir.display()
    );
    dir
}

/// Whether `python3` can import `modules` (comma-separated). When it cannot: a panic naming
/// `install` if the run requires the test dependencies (`make test` sets
/// CLINSEARCH_REQUIRE_TEST_DEPS), otherwise a SKIPPED message naming `what` and false.
pub fn python_has(modules: &str, what: &str, install: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CLINSEARCH_REQUIRE_TEST_DEPS").is_some() {
            panic!("python3 with {modules} is required ({install}; make test does)");
        }
        eprintln!(
            "SKIPPED: {what} needs python3 with {modules} ({install}; make test installs it)"
        );
    }
    ok
}

/// Waits for a started `clinsearch serve` (its stderr piped) to print the address it serves
/// on, and returns it; the server's stderr is drained from then on, so it never blocks on a
/// full pipe.
pub fn served_addr(child: &mut std::process::Child) -> String {
    let stderr = child.stderr.take().expect("serve's stderr is piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let line = lines.next().expect("server exited before serving").unwrap();
        if let Some(a) = line.strip_prefix("clinsearch serving on http://") {
            break a.trim_end_matches('/').to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    addr
}

/// Held by the tests whose work is bounded in time and CPU-heavy (the schemathesis run, and
/// the fusion tuning the browser and server tests wait for), so that on two cores they do not
/// run at once and push each other past their bounds.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A started process, killed (and reaped) when the test ends, however it ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

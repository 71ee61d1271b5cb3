//! The Hub code path against a mock Hub: a local HTTP server that serves a fixture model at
//! the Hub's URL layout (`/api/models/{repo}/revision/{rev}` and
//! `/{repo}/resolve/{rev}/{file}` with ranged GETs, ETag and X-Repo-Commit), reached through
//! `HF_ENDPOINT` by the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct MockHub {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockHub {
    /// Serves the files of `dir` as the repository `repo` (any revision).
    pub fn start(repo: &'static str, dir: std::path::PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        requests2.fetch_add(1, Ordering::SeqCst);
                        stream.set_nonblocking(false).unwrap();
                        let _ = serve(stream, repo, &dir);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        MockHub {
            url,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn files_of(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for e in walk(dir) {
        out.push(
            e.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/"),
        );
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn serve(mut stream: TcpStream, repo: &str, dir: &std::path::Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                let spec = v.trim().trim_start_matches("bytes=");
                let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
                range = Some((a.parse().unwrap_or(0), b.parse().ok()));
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let api_prefix = format!("/api/models/{repo}/revision/");
    let resolve_prefix = format!("/{repo}/resolve/");
    let respond = |stream: &mut TcpStream,
                   status: &str,
                   headers: &[(String, String)],
                   body: &[u8],
                   head: bool| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        stream.write_all(out.as_bytes())?;
        if !head {
            stream.write_all(body)?;
        }
        stream.flush()
    };
    if path.starts_with(&api_prefix) {
        let siblings: Vec<_> = files_of(dir)
            .into_iter()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body =
            serde_json::json!({ "id": repo, "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type".into(), "application/json".into())],
            body.as_bytes(),
            false,
        );
    }
    if let Some(rest) = path.strip_prefix(&resolve_prefix) {
        let file = rest.split_once('/').map(|(_, f)| f).unwrap_or("");
        let full = dir.join(file);
        if file.contains("..") || !full.is_file() {
            return respond(
                &mut stream,
                "404 Not Found",
                &[("X-Error-Code".into(), "EntryNotFound".into())],
                b"",
                false,
            );
        }
        let mut data = vec![];
        std::fs::File::open(&full)?.read_to_end(&mut data)?;
        // A content hash as the ETag, as the Hub gives for LFS files.
        let etag = format!("{:016x}{:016x}", fnv(&data), data.len());
        let size = data.len() as u64;
        let mut headers = vec![
            ("ETag".to_string(), format!("\"{etag}\"")),
            ("X-Repo-Commit".to_string(), COMMIT.to_string()),
            ("Accept-Ranges".to_string(), "bytes".to_string()),
        ];
        let head = method == "HEAD";
        return match range {
            Some((a, b)) if size > 0 => {
                let end = b.unwrap_or(size - 1).min(size - 1);
                headers.push(("Content-Range".into(), format!("bytes {a}-{end}/{size}")));
                respond(
                    &mut stream,
                    "206 Partial Content",
                    &headers,
                    &data[a as usize..=end as usize],
                    head,
                )
            }
            _ => respond(&mut stream, "200 OK", &headers, &data, head),
        };
    }
    respond(&mut stream, "404 Not Found", &[], b"", false)
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn clinsearch(hf_home: &std::path::Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clinsearch"));
    cmd.env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("CLINSEARCH_MODEL");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn hub_model_downloads_once_then_loads_from_the_cache_with_the_hub_gone() {
    let hf_home = tempfile::tempdir().unwrap();
    let mut hub = MockHub::start("clinsearch-test/tiny-bert", fixture("tiny-mlm-uncased"));

    // First load: listed and downloaded into the standard cache layout.
    let dir = run_ok(clinsearch(hf_home.path(), &hub.url).args([
        "model",
        "fetch",
        "clinsearch-test/tiny-bert",
    ]));
    let dir = std::path::PathBuf::from(dir.trim());
    let snapshot = hf_home
        .path()
        .join("hub/models--clinsearch-test--tiny-bert/snapshots")
        .join(COMMIT);
    assert_eq!(dir, snapshot);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} downloaded");
    }
    assert_eq!(
        std::fs::read_to_string(
            hf_home
                .path()
                .join("hub/models--clinsearch-test--tiny-bert/refs/main")
        )
        .unwrap(),
        COMMIT
    );
    assert!(hub.requests.load(Ordering::SeqCst) >= 5);

    // Second load: the server is gone; everything comes from the cache.
    hub.stop();
    let out = run_ok(clinsearch(hf_home.path(), &hub.url).args([
        "embed",
        "--model",
        "clinsearch-test/tiny-bert",
        "chest pain",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 32);

    // The downloaded model is the fixture: same vector as loading the folder directly.
    let direct = run_ok(clinsearch(hf_home.path(), &hub.url).args([
        "embed",
        "--model",
        fixture("tiny-mlm-uncased").to_str().unwrap(),
        "chest pain",
    ]));
    let d: serde_json::Value = serde_json::from_str(&direct).unwrap();
    assert_eq!(v["embeddings"], d["embeddings"]);
}

#[test]
fn hub_revision_and_sharded_weights_are_fetched() {
    let hf_home = tempfile::tempdir().unwrap();
    let hub = MockHub::start("clinsearch-test/tiny-st", fixture("tiny-st-sharded"));
    let out = run_ok(clinsearch(hf_home.path(), &hub.url).args([
        "model",
        "info",
        "--json",
        "--model",
        "clinsearch-test/tiny-st@v1.0",
    ]));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["revision"], "v1.0");
    assert_eq!(info["commit"], COMMIT);
    assert_eq!(info["pooling"], "cls", "1_Pooling/config.json came along");
    assert_eq!(info["weight_format"], "sharded_safetensors");
    assert!(hf_home
        .path()
        .join("hub/models--clinsearch-test--tiny-st/refs/v1.0")
        .is_file());
}

#[test]
fn hf_hub_offline_uses_only_the_cache() {
    let hf_home = tempfile::tempdir().unwrap();
    let hub = MockHub::start("clinsearch-test/tiny-offline", fixture("tiny-mlm-uncased"));
    let out = clinsearch(hf_home.path(), &hub.url)
        .env("HF_HUB_OFFLINE", "1")
        .args(["model", "fetch", "clinsearch-test/tiny-offline"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        0,
        "offline mode made a request"
    );
}

#[test]
fn missing_hub_repository_is_a_clear_error() {
    let hf_home = tempfile::tempdir().unwrap();
    let hub = MockHub::start("clinsearch-test/exists", fixture("tiny-mlm-uncased"));
    let out = clinsearch(hf_home.path(), &hub.url)
        .args(["model", "fetch", "clinsearch-test/does-not-exist"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clinsearch-test/does-not-exist"), "{err}");
}

//! Ingest jobs: an uploaded file (JSONL, CSV or text) ingested in the background through the
//! same pipeline as `clinsearch ingest`, with progress and per-record errors the UI polls.
//!
//! The upload is written to a private folder of the data directory so the file readers
//! report `file:line` positions, and is removed when the job ends (it is patient data).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::engine::Engine;
use crate::ingest::{self, source, CsvMapping, Format, IngestOptions, OnError};
use crate::model::Encoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// What a client sees of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub filename: String,
    pub state: JobState,
    /// Records in the upload (None when they could not be counted).
    pub total: Option<u64>,
    /// Notes durably stored so far.
    pub stored: usize,
    pub chunks: usize,
    /// `filename:line: reason` for each record skipped.
    pub errors: Vec<String>,
    /// Why the job failed, when it did.
    pub failure: Option<String>,
    pub seconds: f64,
}

struct Job {
    status: Mutex<JobStatus>,
    stored: Arc<AtomicUsize>,
    started: Instant,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
}

/// Jobs remembered (running ones are never forgotten).
const KEEP_FINISHED: usize = 50;

/// Forgets the oldest finished jobs beyond [`KEEP_FINISHED`].
fn forget_finished<J>(jobs: &mut BTreeMap<u64, Arc<J>>, running: impl Fn(&J) -> bool) {
    while jobs.len() > KEEP_FINISHED {
        match jobs.iter().find(|(_, j)| !running(j)).map(|(k, _)| *k) {
            Some(k) => {
                jobs.remove(&k);
            }
            None => break,
        }
    }
}

impl Jobs {
    /// Starts ingesting `body` (named `filename`, in `format`) into `engine`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        engine: Arc<Engine>,
        encoder: Arc<Encoder>,
        metrics: Arc<dyn Fn(usize, usize, usize) + Send + Sync>,
        filename: &str,
        format: Format,
        mapping: CsvMapping,
        body: &[u8],
    ) -> crate::Result<JobStatus> {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("job-{n}");
        let folder = engine
            .dir
            .join("uploads")
            .join(format!("{}-{n}", std::process::id()));
        std::fs::create_dir_all(&folder).map_err(|e| crate::Error::io(&folder, e))?;
        let path = folder.join(filename);
        std::fs::write(&path, body).map_err(|e| crate::Error::io(&path, e))?;
        let total = source::count(&path, format);
        let status = JobStatus {
            id: id.clone(),
            filename: filename.to_string(),
            state: JobState::Running,
            total,
            stored: 0,
            chunks: 0,
            errors: vec![],
            failure: None,
            seconds: 0.0,
        };
        let job = Arc::new(Job {
            status: Mutex::new(status.clone()),
            stored: Arc::new(AtomicUsize::new(0)),
            started: Instant::now(),
            thread: Mutex::new(None),
        });
        let j = job.clone();
        let prefix = format!("{}/", folder.display());
        let handle = std::thread::Builder::new()
            .name(id.clone())
            .spawn(move || {
                let opts = IngestOptions {
                    batch_size: 32,
                    on_error: OnError::Skip,
                    progress: false,
                    acks: None,
                    stored: Some(j.stored.clone()),
                };
                let sources = vec![source::read(&path, format, &mapping)];
                let result = ingest::run(&engine, &encoder, sources, total, &opts)
                    .and_then(|r| engine.checkpoint().map(|_| r));
                let _ = std::fs::remove_dir_all(&folder);
                let mut st = j.status.lock().unwrap();
                st.seconds = j.started.elapsed().as_secs_f64();
                match result {
                    Ok(report) => {
                        st.state = JobState::Done;
                        st.stored = report.notes;
                        st.chunks = report.chunks;
                        // Positions are reported against the user's file name, not our folder.
                        st.errors = report
                            .errors
                            .iter()
                            .map(|e| e.replace(&prefix, ""))
                            .collect();
                        metrics(report.notes, report.chunks, report.errors.len());
                    }
                    Err(e) => {
                        st.state = JobState::Failed;
                        st.stored = j.stored.load(Ordering::SeqCst);
                        st.failure = Some(e.to_string().replace(&prefix, ""));
                    }
                }
            })
            .map_err(|e| crate::Error::io("ingest job thread", e))?;
        *job.thread.lock().unwrap() = Some(handle);
        let mut jobs = self.jobs.lock().unwrap();
        jobs.insert(n, job);
        // Forget the oldest finished jobs.
        forget_finished(&mut jobs, |j| {
            j.status.lock().unwrap().state == JobState::Running
        });
        Ok(status)
    }

    pub fn status(&self, id: &str) -> Option<JobStatus> {
        let n: u64 = id.strip_prefix("job-")?.parse().ok()?;
        let jobs = self.jobs.lock().unwrap();
        let job = jobs.get(&n)?;
        let mut st = job.status.lock().unwrap().clone();
        if st.state == JobState::Running {
            st.stored = job.stored.load(Ordering::SeqCst);
            st.seconds = job.started.elapsed().as_secs_f64();
        }
        Some(st)
    }

    pub fn list(&self) -> Vec<JobStatus> {
        let ids: Vec<u64> = self.jobs.lock().unwrap().keys().rev().copied().collect();
        ids.into_iter()
            .filter_map(|n| self.status(&format!("job-{n}")))
            .collect()
    }

    /// Waits for running jobs (at shutdown).
    pub fn wait_all(&self) {
        let handles: Vec<_> = self
            .jobs
            .lock()
            .unwrap()
            .values()
            .filter_map(|j| j.thread.lock().unwrap().take())
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A safe file name for an upload: its last path component, restricted to plain characters,
/// with the extension the format expects.
pub fn upload_name(name: Option<&str>, format: Format) -> String {
    let base = name
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect::<String>();
    let base = base.trim_start_matches('.');
    let stem = if base.is_empty() { "upload" } else { base };
    let ext = match format {
        Format::Csv => "csv",
        Format::Txt => "txt",
        _ => "jsonl",
    };
    let lower = stem.to_ascii_lowercase();
    if lower.ends_with(&format!(".{ext}")) {
        stem.to_string()
    } else {
        format!("{stem}.{ext}")
    }
}

/// Infers a format from a file name when the client did not say.
pub fn format_of(name: Option<&str>, asked: Option<&str>) -> Result<Format, String> {
    match asked.map(|s| s.to_ascii_lowercase()) {
        Some(f) => match f.as_str() {
            "jsonl" | "ndjson" | "json" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "txt" | "text" => Ok(Format::Txt),
            other => Err(format!("unknown format {other:?}: use jsonl, csv or txt")),
        },
        None => {
            let n = name.unwrap_or("").to_ascii_lowercase();
            Ok(if n.ends_with(".csv") {
                Format::Csv
            } else if n.ends_with(".txt") {
                Format::Txt
            } else {
                Format::Jsonl
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_cannot_escape_the_upload_folder() {
        assert_eq!(
            upload_name(Some("../../etc/passwd"), Format::Txt),
            "passwd.txt"
        );
        assert_eq!(
            upload_name(Some("notes.jsonl"), Format::Jsonl),
            "notes.jsonl"
        );
        assert_eq!(upload_name(Some(".."), Format::Csv), "upload.csv");
        assert_eq!(upload_name(None, Format::Jsonl), "upload.jsonl");
    }
}

/// Evaluation jobs: an evaluation runs on its own thread; clients poll its progress and get
/// the report when it is done.
#[derive(Default)]
pub struct EvalJobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<EvalJob>>>,
}

struct EvalJob {
    done: AtomicUsize,
    total: usize,
    started: Instant,
    result: Mutex<(JobState, Option<serde_json::Value>, Option<String>)>,
}

impl EvalJobs {
    /// Starts `run` (given a progress counter) on a new thread; returns the job id.
    pub fn start(
        &self,
        total: usize,
        run: impl FnOnce(&AtomicUsize) -> crate::Result<serde_json::Value> + Send + 'static,
    ) -> crate::Result<String> {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let job = Arc::new(EvalJob {
            done: AtomicUsize::new(0),
            total,
            started: Instant::now(),
            result: Mutex::new((JobState::Running, None, None)),
        });
        let j = job.clone();
        std::thread::Builder::new()
            .name(format!("eval-{n}"))
            .spawn(move || {
                let r = run(&j.done);
                let mut st = j.result.lock().unwrap();
                *st = match r {
                    Ok(v) => (JobState::Done, Some(v), None),
                    Err(e) => (JobState::Failed, None, Some(e.to_string())),
                };
            })
            .map_err(|e| crate::Error::io("eval job thread", e))?;
        let mut jobs = self.jobs.lock().unwrap();
        jobs.insert(n, job);
        forget_finished(&mut jobs, |j| {
            j.result.lock().unwrap().0 == JobState::Running
        });
        Ok(format!("eval-{n}"))
    }

    /// `{id, state, done, total, seconds, report?, failure?}`.
    pub fn status(&self, id: &str) -> Option<serde_json::Value> {
        let n: u64 = id.strip_prefix("eval-")?.parse().ok()?;
        let job = self.jobs.lock().unwrap().get(&n)?.clone();
        let st = job.result.lock().unwrap();
        let mut v = serde_json::json!({
            "id": id,
            "state": st.0,
            "done": job.done.load(Ordering::SeqCst),
            "total": job.total,
            "seconds": job.started.elapsed().as_secs_f64(),
        });
        if let Some(r) = &st.1 {
            v["report"] = r.clone();
        }
        if let Some(f) = &st.2 {
            v["failure"] = serde_json::json!(f);
        }
        Some(v)
    }
}

//! Ingest jobs: an uploaded file (JSONL, CSV or text) ingested in the background through the
//! same pipeline as `clinsearch ingest`, with progress and per-record errors the UI polls.
//!
//! The upload is written to a private folder of the data directory so the file readers
//! report `file:line` positions, and is removed when the job ends (it is patient data).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::engine::Engine;
use crate::ingest::{self, source, CsvMapping, Format, IngestOptions, OnError};
use crate::model::Encoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// Running jobs per principal, bounded per principal and in all (`[limits]`). A [`Slot`] is
/// held for as long as its job runs.
#[derive(Default)]
pub struct Slots {
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One running job's place; given back when dropped.
pub struct Slot {
    held: Arc<Mutex<HashMap<String, usize>>>,
    owner: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self.held.lock().unwrap();
        if let Some(n) = h.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                h.remove(&self.owner);
            }
        }
    }
}

impl Slots {
    /// A place for one more job of `owner`, or 429 with `Retry-After` when `owner` already
    /// runs `per_owner` jobs or the server runs `total`.
    pub fn reserve(
        &self,
        what: &str,
        owner: &str,
        per_owner: usize,
        total: usize,
    ) -> Result<Slot, super::ApiError> {
        let mut h = self.held.lock().unwrap();
        let mine = h.get(owner).copied().unwrap_or(0);
        let all: usize = h.values().sum();
        if mine >= per_owner || all >= total {
            let why = if mine >= per_owner {
                format!(
                    "{owner:?} already runs {mine} {what} jobs (the limit per key is {per_owner})"
                )
            } else {
                format!("the server already runs {all} {what} jobs (its limit is {total})")
            };
            return Err(super::ApiError::too_many_requests(
                "too_many_jobs",
                format!("{why}; try again when one has finished"),
                5,
            ));
        }
        *h.entry(owner.to_string()).or_default() += 1;
        Ok(Slot {
            held: self.held.clone(),
            owner: owner.to_string(),
        })
    }
}

/// What a client sees of a job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub id: String,
    /// The principal that started it: only they (and admins) see it.
    pub owner: String,
    pub filename: String,
    pub state: JobState,
    /// Records in the upload (None when they could not be counted).
    pub total: Option<u64>,
    /// Notes durably stored so far.
    pub stored: usize,
    pub chunks: usize,
    /// `filename:line: reason` for the first records skipped (`max_job_errors` of them).
    pub errors: Vec<String>,
    /// Every record skipped, including those beyond the list.
    pub error_count: usize,
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
    slots: Slots,
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
        tagger: Option<Arc<crate::ner::TokenClassifier>>,
        metrics: Arc<dyn Fn(usize, usize, usize) + Send + Sync>,
        owner: &str,
        limits: &crate::config::Limits,
        filename: &str,
        format: Format,
        mapping: CsvMapping,
        body: &[u8],
    ) -> Result<JobStatus, super::ApiError> {
        let slot = self.slots.reserve(
            "ingest",
            owner,
            limits.max_jobs_per_principal,
            limits.max_jobs,
        )?;
        let max_errors = limits.max_job_errors;
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
            owner: owner.to_string(),
            filename: filename.to_string(),
            state: JobState::Running,
            total,
            stored: 0,
            chunks: 0,
            errors: vec![],
            error_count: 0,
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
                let _slot = slot;
                let opts = IngestOptions {
                    batch_size: 32,
                    on_error: OnError::Skip,
                    progress: false,
                    acks: None,
                    stored: Some(j.stored.clone()),
                    tagger: tagger.clone(),
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
                        st.error_count = report.errors.len();
                        st.errors = report
                            .errors
                            .iter()
                            .take(max_errors)
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

/// What a client sees of an evaluation (or tuning) job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EvalStatus {
    pub id: String,
    pub owner: String,
    pub state: JobState,
    /// Queries evaluated so far, of `total`.
    pub done: usize,
    pub total: usize,
    pub seconds: f64,
    /// The report, once done: per mode and query, the metrics (see `clinsearch eval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Evaluation jobs: an evaluation runs on its own thread; clients poll its progress and get
/// the report when it is done.
#[derive(Default)]
pub struct EvalJobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<EvalJob>>>,
    slots: Slots,
}

struct EvalJob {
    owner: String,
    done: AtomicUsize,
    total: usize,
    started: Instant,
    result: Mutex<(JobState, Option<serde_json::Value>, Option<String>)>,
}

impl EvalJobs {
    /// A place for one more evaluation of `owner` (429 when the limits are reached); held by
    /// an evaluation that runs in the request, or handed to [`Self::start`].
    pub fn reserve(
        &self,
        owner: &str,
        limits: &crate::config::Limits,
    ) -> Result<Slot, super::ApiError> {
        self.slots.reserve(
            "evaluation",
            owner,
            limits.max_jobs_per_principal,
            limits.max_jobs,
        )
    }

    /// Starts `run` (given a progress counter) on a new thread; returns the job id.
    pub fn start(
        &self,
        slot: Slot,
        total: usize,
        run: impl FnOnce(&AtomicUsize) -> crate::Result<serde_json::Value> + Send + 'static,
    ) -> crate::Result<String> {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let job = Arc::new(EvalJob {
            owner: slot.owner.clone(),
            done: AtomicUsize::new(0),
            total,
            started: Instant::now(),
            result: Mutex::new((JobState::Running, None, None)),
        });
        let j = job.clone();
        std::thread::Builder::new()
            .name(format!("eval-{n}"))
            .spawn(move || {
                let _slot = slot;
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

    pub fn status(&self, id: &str) -> Option<EvalStatus> {
        let n: u64 = id.strip_prefix("eval-")?.parse().ok()?;
        let job = self.jobs.lock().unwrap().get(&n)?.clone();
        let st = job.result.lock().unwrap();
        Some(EvalStatus {
            id: id.to_string(),
            owner: job.owner.clone(),
            state: st.0,
            done: job.done.load(Ordering::SeqCst),
            total: job.total,
            seconds: job.started.elapsed().as_secs_f64(),
            report: st.1.clone(),
            failure: st.2.clone(),
        })
    }
}

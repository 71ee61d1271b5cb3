//! Ingest: files or API payloads -> validated notes -> windows embedded in batches -> the
//! engine (sled, then BM25 and vectors). The steps are in [`batch`], the one write path;
//! [`run`] runs them over files on three threads joined by bounded channels, so they overlap.

pub mod batch;
pub mod source;
pub mod vectors;

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use batch::{count_windows, embed_notes, Outcome};
pub use source::{CsvMapping, Format, Item, Record, RecordError};

use crate::engine::Engine;
use crate::error::Result;
use crate::model::Encoder;

/// What to do with a bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Report it and go on with the next record.
    Skip,
    /// Stop before anything of the batch holding it is stored.
    Abort,
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Notes per batch (one sled transaction and one index commit each).
    pub batch_size: usize,
    pub on_error: OnError,
    pub progress: bool,
    /// Appends the ids of each durably stored batch to this file (for scripts and the crash
    /// test: an id listed there survives any crash).
    pub acks: Option<PathBuf>,
    /// Notes durably stored so far, updated after each batch (the server's ingest jobs
    /// report progress from it).
    pub stored: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Tags every note's named entities (stored with the note, indexed for filters and
    /// facets).
    pub tagger: Option<std::sync::Arc<crate::ner::TokenClassifier>>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            batch_size: 64,
            on_error: OnError::Abort,
            progress: false,
            acks: None,
            stored: None,
            tagger: None,
        }
    }
}

/// Seconds spent per stage (stages overlap, so they add up to more than the wall time).
#[derive(Debug, Default, Clone, Serialize)]
pub struct StageTimes {
    pub parse: f64,
    pub embed: f64,
    /// Assertion scopes of each note (inside `embed`: the same thread).
    pub annotate: f64,
    /// Named-entity tagging (inside `embed`: the same thread; 0 without a tagger).
    pub tag: f64,
    pub sled: f64,
    pub tantivy: f64,
    pub hnsw: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct IngestReport {
    pub notes: usize,
    pub chunks: usize,
    /// Records reported and skipped (`file:line: reason`).
    pub errors: Vec<String>,
    /// Set when `--on-error abort` stopped the run: the record that stopped it.
    pub aborted: Option<String>,
    /// Notes whose tail was not embedded because of the window cap.
    pub capped: usize,
    pub seconds: f64,
    pub stages: StageTimes,
}

enum Parsed {
    Batch(Vec<Item>),
    Abort(String),
}

/// Runs the pipeline over `sources` into `engine`.
pub fn run(
    engine: &Engine,
    encoder: &Encoder,
    sources: Vec<Box<dyn Iterator<Item = source::Item> + Send>>,
    total: Option<u64>,
    opts: &IngestOptions,
) -> Result<IngestReport> {
    let started = Instant::now();
    let batch_size = opts.batch_size.max(1);
    let bar = if opts.progress {
        let pb = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} notes  {msg}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut acks = batch::Acks::new(opts.acks.as_deref(), opts.stored.clone())?;

    let (parsed_tx, parsed_rx) = sync_channel::<Parsed>(2);
    let (embedded_tx, embedded_rx) = sync_channel::<batch::Prepared>(2);
    let on_error = opts.on_error;
    let tagger = opts.tagger.as_deref();

    std::thread::scope(|s| -> Result<IngestReport> {
        // Stage 1: parse and validate.
        let parser = s.spawn(move || {
            let t0 = Instant::now();
            let mut errors = vec![];
            let mut checker = batch::Checker::default();
            let mut batch = Vec::with_capacity(batch_size);
            let mut waited = Duration::ZERO;
            'outer: for src in sources {
                for item in src {
                    match checker.check(item) {
                        Ok(rec) => {
                            batch.push(Ok(rec));
                            if batch.len() == batch_size {
                                let w = Instant::now();
                                if parsed_tx
                                    .send(Parsed::Batch(std::mem::take(&mut batch)))
                                    .is_err()
                                {
                                    break 'outer;
                                }
                                waited += w.elapsed();
                            }
                        }
                        Err(e) => match on_error {
                            OnError::Skip => errors.push(e.to_string()),
                            OnError::Abort => {
                                batch.clear();
                                let _ = parsed_tx.send(Parsed::Abort(e.to_string()));
                                return (errors, (t0.elapsed() - waited).as_secs_f64());
                            }
                        },
                    }
                }
            }
            if !batch.is_empty() {
                let w = Instant::now();
                let _ = parsed_tx.send(Parsed::Batch(batch));
                waited += w.elapsed();
            }
            (errors, (t0.elapsed().saturating_sub(waited)).as_secs_f64())
        });

        // Stage 2: embed (tokenisation happens inside the encoder).
        let embedder = s.spawn(move || -> (f64, Vec<String>, Option<String>, Result<()>) {
            let mut busy = 0.0;
            let mut errors = vec![];
            for msg in parsed_rx {
                let batch = match msg {
                    Parsed::Batch(b) => b,
                    Parsed::Abort(reason) => return (busy, errors, Some(reason), Ok(())),
                };
                let t = Instant::now();
                let mut prepared = match batch::prepare(encoder, tagger, batch) {
                    Ok(p) => p,
                    Err(e) => return (busy, errors, None, Err(e)),
                };
                if on_error == OnError::Abort {
                    if let Some(e) = prepared.first_rejection() {
                        return (busy, errors, Some(e.to_string()), Ok(()));
                    }
                }
                prepared.outcomes.retain(|o| match o {
                    batch::Outcome::Rejected(e) => {
                        errors.push(e.to_string());
                        false
                    }
                    batch::Outcome::Stored { .. } => true,
                });
                let out = prepared;
                busy += t.elapsed().as_secs_f64();
                if embedded_tx.send(out).is_err() {
                    break;
                }
            }
            (busy, errors, None, Ok(()))
        });

        // Stage 3: write (this thread).
        let mut report = IngestReport::default();
        let mut write_err = None;
        for batch in embedded_rx {
            match batch::commit(engine, &batch, &mut acks) {
                Ok(times) => {
                    report.stages.sled += times.store.as_secs_f64();
                    report.stages.tantivy += times.bm25.as_secs_f64();
                    report.stages.hnsw += times.vectors.as_secs_f64();
                    report.stages.annotate += batch.annotate_secs;
                    report.stages.tag += batch.tag_secs;
                    report.notes += batch.notes.len();
                    report.chunks += batch.notes.iter().map(|n| n.windows.len()).sum::<usize>();
                    report.capped += batch.notes.iter().filter(|n| n.windows_capped).count();
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_position(report.notes as u64);
                    bar.set_message(format!(
                        "{:.1} notes/s  {:.1} chunks/s",
                        report.notes as f64 / secs,
                        report.chunks as f64 / secs
                    ));
                }
                Err(e) => {
                    write_err = Some(e);
                    break;
                }
            }
        }
        let (mut parse_errors, parse_secs) = parser.join().expect("parser thread");
        let (embed_secs, embed_errors, aborted, embed_result) =
            embedder.join().expect("embedder thread");
        bar.finish_and_clear();
        if let Some(e) = write_err {
            return Err(e);
        }
        embed_result?;
        parse_errors.extend(embed_errors);
        report.errors = parse_errors;
        report.aborted = aborted;
        report.stages.parse = parse_secs;
        report.stages.embed = embed_secs;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    })
}

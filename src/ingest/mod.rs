//! Ingest: files or API payloads -> validated notes -> windows embedded in batches -> the
//! engine (sled, then BM25 and vectors). Parsing, embedding and writing run on three threads
//! joined by bounded channels, so they overlap.

pub mod source;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use source::{CsvMapping, Format, Record, RecordError};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Encoder;
use crate::store::EmbeddedNote;

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
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            batch_size: 64,
            on_error: OnError::Abort,
            progress: false,
            acks: None,
            stored: None,
        }
    }
}

/// Seconds spent per stage (stages overlap, so they add up to more than the wall time).
#[derive(Debug, Default, Clone, Serialize)]
pub struct StageTimes {
    pub parse: f64,
    pub embed: f64,
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
    Batch(Vec<Record>),
    Abort(String),
}

/// Validates a record (text, id, date) in place.
fn validate(rec: Record) -> std::result::Result<Record, RecordError> {
    let origin = rec.origin.clone();
    match rec.note.validate() {
        Ok(note) => Ok(Record { note, origin }),
        Err(e) => Err(RecordError {
            origin,
            reason: match e {
                Error::InvalidInput(m) => m,
                other => other.to_string(),
            },
        }),
    }
}

/// What a note is embedded from: its title (when it has one) on a first line, then its text,
/// as sentence-transformers and BEIR/MTEB embed "title text": a title such as "ED note -
/// NSTEMI" carries much of a note's meaning. Returns the input and the length of the title
/// prefix in bytes and characters.
pub fn embedding_input(note: &crate::note::Note) -> (std::borrow::Cow<'_, str>, usize, usize) {
    match note
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(title) => {
            let prefix = format!("{title}\n");
            let (bytes, chars) = (prefix.len(), prefix.chars().count());
            (std::borrow::Cow::Owned(prefix + &note.text), bytes, chars)
        }
        None => (std::borrow::Cow::Borrowed(note.text.as_str()), 0, 0),
    }
}

/// Embeds the windows of each note (title included, see [`embedding_input`]); window spans
/// point into the note's text. A note the encoder rejects gets its own error; the others are
/// still embedded.
/// The windows [`embed_notes`] would embed for `notes`, without running the model.
pub fn count_windows(encoder: &Encoder, notes: &[&crate::note::Note]) -> Result<usize> {
    let inputs: Vec<std::borrow::Cow<'_, str>> =
        notes.iter().map(|n| embedding_input(n).0).collect();
    let texts: Vec<&str> = inputs.iter().map(|t| t.as_ref()).collect();
    encoder.count_windows(&texts)
}

pub fn embed_notes(
    encoder: &Encoder,
    notes: &[&crate::note::Note],
) -> Result<Vec<Result<Vec<crate::model::Window>>>> {
    let inputs: Vec<(std::borrow::Cow<'_, str>, usize, usize)> =
        notes.iter().map(|n| embedding_input(n)).collect();
    let texts: Vec<&str> = inputs.iter().map(|(t, _, _)| t.as_ref()).collect();
    let raw: Vec<Result<Vec<crate::model::Window>>> = match encoder.embed_windows(&texts) {
        Ok(w) => w.into_iter().map(Ok).collect(),
        // One text the encoder rejects: find it by embedding one at a time.
        Err(Error::InvalidInput(_)) => texts
            .iter()
            .map(|t| encoder.embed_windows(&[t]).map(|mut v| v.remove(0)))
            .collect(),
        Err(e) => return Err(e),
    };
    Ok(raw
        .into_iter()
        .zip(&inputs)
        .map(|(r, (_, pb, pc))| {
            r.map(|ws| {
                ws.into_iter()
                    .map(|mut w| {
                        w.start = w.start.saturating_sub(*pb);
                        w.end = w.end.saturating_sub(*pb);
                        w.char_start = w.char_start.saturating_sub(*pc);
                        w.char_end = w.char_end.saturating_sub(*pc);
                        w
                    })
                    .collect()
            })
        })
        .collect())
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
    let mut acks = match &opts.acks {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(p, e))?,
        ),
        None => None,
    };

    let (parsed_tx, parsed_rx) = sync_channel::<Parsed>(2);
    let (embedded_tx, embedded_rx) = sync_channel::<Vec<EmbeddedNote>>(2);
    let on_error = opts.on_error;

    std::thread::scope(|s| -> Result<IngestReport> {
        // Stage 1: parse and validate.
        let parser = s.spawn(move || {
            let t0 = Instant::now();
            let mut errors = vec![];
            let mut seen: HashMap<String, source::Origin> = HashMap::new();
            let mut batch = Vec::with_capacity(batch_size);
            let mut waited = Duration::ZERO;
            'outer: for src in sources {
                for item in src {
                    let checked = item.and_then(validate).and_then(|rec| {
                        if let Some(first) = seen.get(&rec.note.id) {
                            return Err(RecordError {
                                origin: rec.origin.clone(),
                                reason: format!(
                                    "duplicate id {:?} (first at {first})",
                                    rec.note.id
                                ),
                            });
                        }
                        seen.insert(rec.note.id.clone(), rec.origin.clone());
                        Ok(rec)
                    });
                    match checked {
                        Ok(rec) => {
                            batch.push(rec);
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
                let notes: Vec<&crate::note::Note> = batch.iter().map(|r| &r.note).collect();
                let windows = match embed_notes(encoder, &notes) {
                    Ok(w) => w,
                    Err(e) => return (busy, errors, None, Err(e)),
                };
                let mut out = Vec::with_capacity(batch.len());
                for (rec, w) in batch.into_iter().zip(windows) {
                    match w {
                        Ok(windows) => out.push(EmbeddedNote::new(rec.note, windows)),
                        Err(e) => {
                            let msg = format!("{}: {e}", rec.origin);
                            if on_error == OnError::Abort {
                                return (busy, errors, Some(msg), Ok(()));
                            }
                            errors.push(msg);
                        }
                    }
                }
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
            match engine.apply(&batch, &[]) {
                Ok((_, times)) => {
                    report.stages.sled += times.store.as_secs_f64();
                    report.stages.tantivy += times.bm25.as_secs_f64();
                    report.stages.hnsw += times.vectors.as_secs_f64();
                    report.notes += batch.len();
                    report.chunks += batch.iter().map(|n| n.windows.len()).sum::<usize>();
                    report.capped += batch.iter().filter(|n| n.windows_capped).count();
                    if let Some(f) = acks.as_mut() {
                        let ids: String =
                            batch.iter().map(|n| format!("{}\n", n.note.id)).collect();
                        let _ = f.write_all(ids.as_bytes()).and_then(|_| f.flush());
                    }
                    if let Some(c) = &opts.stored {
                        c.store(report.notes, std::sync::atomic::Ordering::SeqCst);
                    }
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

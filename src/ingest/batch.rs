//! The one write path. Every way a note gets in (the `ingest` command, upload jobs,
//! `POST /api/documents`, `reindex --reembed`) goes through these three steps, so validation,
//! windowing and acknowledgement cannot drift apart between them:
//!
//! 1. [`Checker::check`]: the note is valid (id, text, date) and its id is new in this run;
//! 2. [`prepare`]: its windows are embedded (title included); a note the encoder rejects is
//!    rejected on its own and the others go on;
//! 3. [`commit`]: the batch is stored in one engine transaction (durable on return), then the
//!    stored ids are acknowledged ([`Acks`]).
//!
//! `POST /api/documents` runs the three in turn for one request (with the caller's checks
//! between 1 and 2); [`super::run`] runs them on three threads joined by bounded channels so
//! they overlap.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::source::{Item, Origin, Record, RecordError};
use crate::engine::{ApplyTimes, Engine};
use crate::error::{Error, Result};
use crate::model::Encoder;
use crate::note::Note;
use crate::store::EmbeddedNote;

/// Step 1: validation and duplicate ids within one run (one file set, one request).
#[derive(Default)]
pub struct Checker {
    seen: HashMap<String, Origin>,
}

impl Checker {
    /// The record, validated in place, or why it is refused. The first of two records with
    /// the same id is kept; the second is refused naming the first.
    pub fn check(&mut self, item: Item) -> Item {
        let rec = item?;
        let origin = rec.origin;
        let note = rec.note.validate().map_err(|e| RecordError {
            origin: origin.clone(),
            reason: match e {
                Error::InvalidInput(m) => m,
                other => other.to_string(),
            },
        })?;
        if let Some(first) = self.seen.get(&note.id) {
            return Err(RecordError {
                reason: format!("duplicate id {:?} (first at {first})", note.id),
                origin,
            });
        }
        self.seen.insert(note.id.clone(), origin.clone());
        Ok(Record {
            note,
            origin,
            chunks: rec.chunks,
        })
    }
}

/// What happened to one record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Durably stored (once [`commit`] returned).
    Stored {
        id: String,
        chunks: usize,
        /// The window cap left the note's tail unembedded.
        capped: bool,
    },
    Rejected(RecordError),
}

/// A batch after step 2: the notes ready to store and every record's outcome, in input order.
pub struct Prepared {
    pub notes: Vec<EmbeddedNote>,
    pub outcomes: Vec<Outcome>,
    /// Seconds spent finding the notes' assertion scopes (part of step 2).
    pub annotate_secs: f64,
    /// Seconds spent tagging the notes' entities (part of step 2; 0 without a tagger).
    pub tag_secs: f64,
}

impl Prepared {
    /// The first rejection, if any (`--on-error abort` stops at it).
    pub fn first_rejection(&self) -> Option<&RecordError> {
        self.outcomes.iter().find_map(|o| match o {
            Outcome::Rejected(e) => Some(e),
            Outcome::Stored { .. } => None,
        })
    }
}

/// Embeds the windows of each note with the context the encoder's
/// [`crate::model::WindowContext`] asks for (the title, and section headings found by
/// [`crate::clinical::sections`]); window spans point into the note's text. A note the
/// encoder rejects gets its own error; the others are still embedded.
pub fn embed_notes(
    encoder: &Encoder,
    notes: &[&Note],
) -> Result<Vec<Result<Vec<crate::model::Window>>>> {
    if notes.is_empty() {
        return Ok(vec![]);
    }
    let headings = headings_of(encoder, notes);
    let docs = contexts(notes, &headings);
    Ok(match encoder.embed_windows_in_context(&docs) {
        Ok(w) => w.into_iter().map(Ok).collect(),
        // One text the encoder rejects: find it by embedding one at a time.
        Err(Error::InvalidInput(_)) => docs
            .iter()
            .map(|d| {
                encoder
                    .embed_windows_in_context(&[*d])
                    .map(|mut v| v.remove(0))
            })
            .collect(),
        Err(e) => return Err(e),
    })
}

/// The windows [`embed_notes`] would embed for `notes`, without running the model (the
/// server refuses a request that would take too many before doing any work).
pub fn count_windows(encoder: &Encoder, notes: &[&Note]) -> Result<usize> {
    let headings = headings_of(encoder, notes);
    encoder.count_windows_in_context(&contexts(notes, &headings))
}

/// Each note's section headings as (byte offset, label), when the encoder carries them.
fn headings_of(encoder: &Encoder, notes: &[&Note]) -> Vec<Vec<(usize, String)>> {
    notes
        .iter()
        .map(|n| {
            if encoder.window_context() != crate::model::WindowContext::Heading {
                return vec![];
            }
            crate::clinical::sections::headings(&n.text)
                .iter()
                .map(|h| (h.start, h.label(&n.text)))
                .collect()
        })
        .collect()
}

fn contexts<'a>(
    notes: &[&'a Note],
    headings: &'a [Vec<(usize, String)>],
) -> Vec<crate::model::ContextText<'a>> {
    notes
        .iter()
        .zip(headings)
        .map(|(n, h)| crate::model::ContextText {
            title: n.title.as_deref(),
            text: &n.text,
            headings: h,
        })
        .collect()
}

/// Step 2: embeds the checked records of a batch. Records refused by step 1 keep their
/// rejection; a record the encoder rejects is rejected alone. An error of the model itself
/// (not of one note) fails the whole batch.
pub fn prepare(
    encoder: &Encoder,
    tagger: Option<&crate::ner::TokenClassifier>,
    items: Vec<Item>,
) -> Result<Prepared> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(items.len());
    let mut valid: Vec<(usize, Record)> = vec![];
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ok(rec) => {
                valid.push((i, rec));
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Outcome::Rejected(e))),
        }
    }
    // Notes that brought their vectors are checked, not embedded; the others are embedded
    // together.
    let to_embed: Vec<&Note> = valid
        .iter()
        .filter(|(_, r)| r.chunks.is_none())
        .map(|(_, r)| &r.note)
        .collect();
    let mut embedded = embed_notes(encoder, &to_embed)?.into_iter();
    let (dim, normalize) = (encoder.dim(), encoder.info().normalize);
    let windows: Vec<Result<Vec<crate::model::Window>>> = valid
        .iter()
        .map(|(_, r)| match &r.chunks {
            Some(chunks) => super::vectors::windows_of(&r.note, chunks, dim, normalize)
                .map_err(Error::InvalidInput),
            None => embedded.next().expect("one result per embedded note"),
        })
        .collect();
    let mut ready = Vec::with_capacity(valid.len());
    let mut annotate_secs = 0.0;
    for ((i, rec), w) in valid.into_iter().zip(windows) {
        outcomes[i] = Some(match w {
            Ok(windows) => {
                // `new` annotates the text (assertion scopes), the only work it does.
                let t = std::time::Instant::now();
                let e = EmbeddedNote::new(rec.note, windows);
                annotate_secs += t.elapsed().as_secs_f64();
                let o = Outcome::Stored {
                    id: e.note.id.clone(),
                    chunks: e.windows.len(),
                    capped: e.windows_capped,
                };
                ready.push(e);
                o
            }
            Err(e) => Outcome::Rejected(RecordError {
                origin: rec.origin,
                reason: e.to_string(),
            }),
        });
    }
    // Entities of the notes that embedded: one batched pass of the tagger over their texts.
    let t = std::time::Instant::now();
    if let Some(tagger) = tagger {
        let texts: Vec<&str> = ready.iter().map(|e| e.note.text.as_str()).collect();
        let found = tagger.tag(&texts)?;
        ready = ready
            .into_iter()
            .zip(found)
            .map(|(e, f)| e.with_entities(f))
            .collect();
    }
    let tag_secs = t.elapsed().as_secs_f64();
    Ok(Prepared {
        annotate_secs,
        tag_secs,
        notes: ready,
        outcomes: outcomes
            .into_iter()
            .map(|o| o.expect("every record has an outcome"))
            .collect(),
    })
}

/// Where acknowledgements go once a batch is durable: an append-only file of ids (for
/// scripts and the crash test: an id listed there survives any crash) and a running count
/// (the server's upload jobs report progress from it). Both optional.
#[derive(Default)]
pub struct Acks {
    file: Option<std::fs::File>,
    stored: Option<Arc<AtomicUsize>>,
    count: usize,
}

impl Acks {
    pub fn new(file: Option<&Path>, stored: Option<Arc<AtomicUsize>>) -> Result<Acks> {
        let file = match file {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(p, e))?,
            ),
            None => None,
        };
        Ok(Acks {
            file,
            stored,
            count: 0,
        })
    }

    fn record(&mut self, notes: &[EmbeddedNote]) {
        self.count += notes.len();
        if let Some(f) = self.file.as_mut() {
            let ids: String = notes.iter().map(|n| format!("{}\n", n.note.id)).collect();
            // The notes are stored already; a full disk must not turn that into an error.
            let _ = f.write_all(ids.as_bytes()).and_then(|_| f.flush());
        }
        if let Some(c) = &self.stored {
            c.store(self.count, Ordering::SeqCst);
        }
    }
}

/// Step 3: stores the batch's notes in one engine transaction and acknowledges them. On
/// error nothing is acknowledged (on [`Error::Degraded`] the notes are stored but not yet
/// searchable; the engine catches up by itself).
pub fn commit(engine: &Engine, batch: &Prepared, acks: &mut Acks) -> Result<ApplyTimes> {
    if batch.notes.is_empty() {
        return Ok(ApplyTimes::default());
    }
    let (_, times) = engine.apply(&batch.notes, &[])?;
    acks.record(&batch.notes);
    Ok(times)
}

/// The origin of the `i`-th note of a request body, for messages: `request:3` is the third.
pub fn request_origin(i: usize) -> Origin {
    Origin {
        file: PathBuf::from("request"),
        line: i + 1,
    }
}

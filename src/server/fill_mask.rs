//! The model behind `/api/fill-mask`, and the job that adapts one on the stored notes.
//!
//! Search keeps its embedding model; fill-mask is answered by a second model when one is
//! served: `serve --mlm-model DIR` (config `mlm_model`) first, else the last model adapted
//! on this data directory (recorded in `DATA/mlm/served.json`), else the embedding model
//! when it has an MLM head, else none. With none, a write key may start an *adapt job*:
//! `finetune mlm` on every stored note with a bounded budget, on its own thread; when it
//! ends the result answers fill-mask at once and after a restart.
//!
//! A model adapted on the notes may have memorised fragments of them, so it is stored in
//! the data directory (with the notes it came from), only unrestricted keys may start a job,
//! and a key restricted to part of the notes (a `filter`) may not query an adapted model:
//! its predictions draw on notes outside that key's filter.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::jobs::{JobState, Slot, Slots};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderOptions};
use crate::train::mlm::{CorpusNote, MaskConfig, MlmArgs};
use crate::train::{TrainEvent, TrainOptions};

/// Steps an adapt job takes unless asked otherwise: about ten minutes of all-MiniLM-L6-v2
/// on two CPU cores at 16 x 128 tokens a step.
pub const DEFAULT_ADAPT_STEPS: usize = 200;
/// The most steps one job may ask for.
pub const MAX_ADAPT_STEPS: usize = 5000; // the schema of `AdaptRequest` states it too

/// Where the fill-mask model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `--mlm-model` / `mlm_model`.
    Configured,
    /// Adapted on this data directory's notes by an adapt job.
    Adapted,
    /// The embedding model itself has an MLM head.
    Embedding,
}

/// The model answering fill-mask.
pub struct Served {
    pub encoder: Arc<Encoder>,
    /// The folder or Hub id it was loaded from.
    pub spec: String,
    pub source: Source,
}

/// What `DATA/mlm/served.json` records of the last adapt job's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    dir: PathBuf,
    base: String,
    notes: usize,
    steps: usize,
    finished: String,
}

fn record_path(data: &Path) -> PathBuf {
    data.join("mlm").join("served.json")
}

/// The knobs of an adapt job (`POST /api/fill-mask/adapt`), bounded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptRequest {
    /// Optimiser steps (default 200); [`Self::check`] holds the same bounds.
    #[schema(minimum = 1, maximum = 5000)]
    #[serde(deserialize_with = "crate::server::api::whole::int")]
    pub max_steps: usize,
    /// Sequences per step (default 16).
    #[schema(minimum = 1, maximum = 64)]
    #[serde(deserialize_with = "crate::server::api::whole::int")]
    pub batch_size: usize,
    /// Tokens per sequence; None: 128, or the model's positions when it has fewer.
    #[schema(minimum = 16, maximum = 512)]
    #[serde(deserialize_with = "crate::server::api::whole::opt_int")]
    pub max_len: Option<usize>,
    /// Learning rate (default 1e-4), in (0, 0.01].
    #[schema(exclusive_minimum = 0.0, maximum = 0.01)]
    pub lr: f64,
    /// Seed of the masking and the order of the notes (default 42).
    #[serde(deserialize_with = "crate::server::api::whole::int")]
    pub seed: u64,
}

impl Default for AdaptRequest {
    fn default() -> Self {
        AdaptRequest {
            max_steps: DEFAULT_ADAPT_STEPS,
            batch_size: 16,
            max_len: None,
            // A new head learns from scratch: higher than the 5e-5 of continued pretraining.
            lr: 1e-4,
            seed: 42,
        }
    }
}

impl AdaptRequest {
    /// The first out-of-range field, as `(param, message)`.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let bad = |p: &str, m: String| Err((p.to_string(), format!("{p}: {m}")));
        if !(1..=MAX_ADAPT_STEPS).contains(&self.max_steps) {
            return bad(
                "max_steps",
                format!("must be between 1 and {MAX_ADAPT_STEPS}"),
            );
        }
        if !(1..=64).contains(&self.batch_size) {
            return bad("batch_size", "must be between 1 and 64".into());
        }
        if self.max_len.is_some_and(|n| !(16..=512).contains(&n)) {
            return bad("max_len", "must be between 16 and 512".into());
        }
        if !(self.lr > 0.0 && self.lr <= 1e-2) {
            return bad("lr", "must be in (0, 0.01]".into());
        }
        Ok(())
    }

    /// The command line that runs the same training (with the server stopped: the data
    /// directory is opened by one process at a time).
    pub fn cli(&self, base: &str, data: &Path, out: &Path) -> String {
        let max_len = self
            .max_len
            .map(|n| format!(" --max-len {n}"))
            .unwrap_or_default();
        format!(
            "clinsearch finetune mlm --base {base} --from-data {} --max-steps {} --epochs {} --batch-size {}{max_len} --lr {} --seed {} --out {}",
            data.display(),
            self.max_steps,
            ADAPT_EPOCHS,
            self.batch_size,
            self.lr,
            self.seed,
            out.display()
        )
    }
}

/// Epochs an adapt job may take: the step budget is what binds on a large collection; on a
/// small one this stops it from passing over the same notes many times.
const ADAPT_EPOCHS: usize = 3;

/// What a client sees of an adapt job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdaptStatus {
    pub id: String,
    pub owner: String,
    pub state: JobState,
    pub base: String,
    /// Notes read from the store (before short ones are skipped).
    pub notes: usize,
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub last_loss: Option<f64>,
    /// Held-out masked-token accuracy before training and after the latest epoch.
    pub accuracy_before: Option<f64>,
    pub accuracy: Option<f64>,
    pub seconds: f64,
    pub out: String,
    pub cli: String,
    pub failure: Option<String>,
}

struct AdaptJob {
    status: Mutex<AdaptStatus>,
    step: AtomicUsize,
    started: Instant,
}

/// The served fill-mask model and the adapt jobs of one server.
pub struct FillMask {
    served: RwLock<Option<Arc<Served>>>,
    jobs: Mutex<Vec<Arc<AdaptJob>>>,
    next: AtomicU64,
    slots: Slots,
}

impl FillMask {
    /// The model a server starts with (see the module doc for the order).
    pub fn resolve(
        configured: Option<&str>,
        data: &Path,
        embedding: &Arc<Encoder>,
        opts: &EncoderOptions,
    ) -> Result<FillMask> {
        let served = if let Some(spec) = configured {
            let enc = load_mlm(spec, opts)?;
            Some(Served {
                encoder: Arc::new(enc),
                spec: spec.to_string(),
                source: Source::Configured,
            })
        } else if let Some(rec) = read_record(data) {
            let spec = rec.dir.display().to_string();
            match load_mlm(&spec, opts) {
                Ok(enc) => Some(Served {
                    encoder: Arc::new(enc),
                    spec,
                    source: Source::Adapted,
                }),
                Err(e) => {
                    tracing::warn!(
                        "the adapted fill-mask model {spec} does not load ({e}); not serving it"
                    );
                    None
                }
            }
        } else {
            None
        };
        let served = served.or_else(|| {
            embedding.has_mlm_head().then(|| Served {
                encoder: embedding.clone(),
                spec: embedding.info().id.clone(),
                source: Source::Embedding,
            })
        });
        Ok(FillMask {
            served: RwLock::new(served.map(Arc::new)),
            jobs: Mutex::new(vec![]),
            next: AtomicU64::new(0),
            slots: Slots::default(),
        })
    }

    pub fn served(&self) -> Option<Arc<Served>> {
        self.served.read().unwrap().clone()
    }

    /// A place for an adapt job: one at a time on a server (it takes every core).
    pub fn reserve(&self, owner: &str) -> std::result::Result<Slot, super::ApiError> {
        self.slots.reserve("adapt", owner, 1, 1)
    }

    /// Starts adapting `base` on every note of `engine` (see [`AdaptRequest`]).
    pub fn start(
        self: &Arc<Self>,
        slot: Slot,
        owner: &str,
        engine: Arc<Engine>,
        base: &str,
        opts: &EncoderOptions,
        req: AdaptRequest,
    ) -> Result<AdaptStatus> {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("adapt-{n}");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let out = engine.dir.join("mlm").join(format!("adapted-{stamp}-{n}"));
        let status = AdaptStatus {
            id: id.clone(),
            owner: owner.to_string(),
            state: JobState::Running,
            base: base.to_string(),
            notes: engine.store.note_count(),
            step: 0,
            total_steps: req.max_steps,
            epoch: 0,
            last_loss: None,
            accuracy_before: None,
            accuracy: None,
            seconds: 0.0,
            out: out.display().to_string(),
            cli: req.cli(base, &engine.dir, &out),
            failure: None,
        };
        let job = Arc::new(AdaptJob {
            status: Mutex::new(status.clone()),
            step: AtomicUsize::new(0),
            started: Instant::now(),
        });
        let (j, me, base, opts) = (job.clone(), self.clone(), base.to_string(), opts.clone());
        std::thread::Builder::new()
            .name(id.clone())
            .spawn(move || {
                let _slot = slot;
                let result = adapt(&engine, &base, &out, &opts, &req, &j);
                let mut st = j.status.lock().unwrap();
                st.seconds = j.started.elapsed().as_secs_f64();
                st.step = j.step.load(Ordering::SeqCst);
                match result {
                    Ok(served) => {
                        st.state = JobState::Done;
                        *me.served.write().unwrap() = Some(Arc::new(served));
                    }
                    Err(e) => {
                        st.state = JobState::Failed;
                        st.failure = Some(e.to_string());
                        let _ = std::fs::remove_dir_all(&out);
                    }
                }
            })
            .map_err(|e| Error::io("adapt job thread", e))?;
        let mut jobs = self.jobs.lock().unwrap();
        jobs.push(job);
        if jobs.len() > 20 {
            jobs.remove(0);
        }
        Ok(status)
    }

    pub fn status(&self, id: &str) -> Option<AdaptStatus> {
        let jobs = self.jobs.lock().unwrap();
        let job = jobs.iter().find(|j| j.status.lock().unwrap().id == id)?;
        let mut st = job.status.lock().unwrap().clone();
        if st.state == JobState::Running {
            st.step = job.step.load(Ordering::SeqCst);
            st.seconds = job.started.elapsed().as_secs_f64();
        }
        Some(st)
    }

    /// The newest job, running or not.
    pub fn latest(&self) -> Option<AdaptStatus> {
        let id = self
            .jobs
            .lock()
            .unwrap()
            .last()
            .map(|j| j.status.lock().unwrap().id.clone())?;
        self.status(&id)
    }
}

fn read_record(data: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(data)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Loads `spec` as a fill-mask model, refusing one without an MLM head.
fn load_mlm(spec: &str, opts: &EncoderOptions) -> Result<Encoder> {
    let opts = EncoderOptions {
        device: opts.device.clone(),
        dtype: opts.dtype,
        int8: opts.int8,
        ..EncoderOptions::default()
    };
    let enc = Encoder::load(spec, &opts)?;
    if !enc.has_mlm_head() {
        return Err(Error::InvalidInput(format!(
            "the fill-mask model {spec} has no masked-language-model head: give a BertForMaskedLM (one made by `clinsearch finetune mlm`, for example)"
        )));
    }
    Ok(enc)
}

/// The stored notes as a training corpus.
pub fn stored_notes(engine: &Engine) -> Result<Vec<CorpusNote>> {
    stored_notes_of(&engine.store)
}

/// The notes of `store` as a training corpus, in key order.
pub fn stored_notes_of(store: &crate::store::Store) -> Result<Vec<CorpusNote>> {
    store
        .notes()
        .map(|n| {
            n.map(|n| CorpusNote {
                origin: format!("note {}", n.note.id),
                text: n.note.text,
            })
        })
        .collect()
}

/// The job's work: train, then load the result and record it as the served model.
fn adapt(
    engine: &Engine,
    base: &str,
    out: &Path,
    opts: &EncoderOptions,
    req: &AdaptRequest,
    job: &AdaptJob,
) -> Result<Served> {
    let notes = stored_notes(engine)?;
    job.status.lock().unwrap().notes = notes.len();
    let n_notes = notes.len();
    let args = MlmArgs {
        base: base.to_string(),
        notes,
        dev_notes: None,
        dev_fraction: 0.1,
        masking: MaskConfig::default(),
        out: out.to_path_buf(),
        resume: None,
        device: opts.device.clone(),
        options: TrainOptions {
            epochs: ADAPT_EPOCHS,
            batch_size: req.batch_size,
            lr: req.lr,
            max_len: req.max_len,
            seed: req.seed,
            max_steps: Some(req.max_steps),
            ..TrainOptions::default()
        },
    };
    let outcome = crate::train::mlm::finetune(&args, &mut |e| match e {
        TrainEvent::Start {
            epochs,
            steps_per_epoch,
            ..
        } => {
            let mut st = job.status.lock().unwrap();
            st.total_steps = (epochs * steps_per_epoch).min(req.max_steps);
        }
        TrainEvent::Step {
            step, epoch, loss, ..
        } => {
            job.step.store(*step, Ordering::SeqCst);
            let mut st = job.status.lock().unwrap();
            st.epoch = *epoch;
            st.last_loss = Some(*loss);
        }
        TrainEvent::Epoch(r) => {
            let mut st = job.status.lock().unwrap();
            st.accuracy = r.dev.get("masked_accuracy").and_then(|v| v.as_f64());
        }
    })?;
    {
        let mut st = job.status.lock().unwrap();
        st.accuracy_before = outcome
            .before
            .get("masked_accuracy")
            .and_then(|v| v.as_f64());
    }
    // The per-epoch checkpoints are for resuming a CLI run; the job keeps the final model.
    let _ = std::fs::remove_dir_all(out.join("checkpoints"));
    let spec = out.display().to_string();
    let enc = load_mlm(&spec, opts)?;
    let rec = Record {
        dir: out.to_path_buf(),
        base: base.to_string(),
        notes: n_notes,
        steps: job.step.load(Ordering::SeqCst),
        finished: crate::audit::now_rfc3339(),
    };
    let path = record_path(&engine.dir);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(&rec).map_err(|e| Error::Index(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(Served {
        encoder: Arc::new(enc),
        spec,
        source: Source::Adapted,
    })
}

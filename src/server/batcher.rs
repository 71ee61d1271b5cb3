//! Query embedding with dynamic batching, as text-embeddings-inference does it: one worker
//! thread owns the forward passes; requests queue on a channel; each pass takes every query
//! waiting (up to `max_batch`). Under load the batch grows by itself, so eight concurrent
//! queries cost about one padded forward pass instead of eight; alone, a query waits for
//! nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::model::Encoder;

struct Job {
    /// The model input (`[CLS] ... [SEP]`, one window).
    seq: Vec<u32>,
    normalize: bool,
    /// The query text (test builds' failure injection matches on it); empty for token ids.
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub queries: AtomicU64,
    pub largest: AtomicU64,
    pub busy_us: AtomicU64,
}

fn panicked() -> Error {
    tracing::error!("a query embedding pass panicked; the worker goes on");
    Error::Index("the query embedding pass failed (a panic, logged)".into())
}

#[derive(Clone)]
pub struct QueryEmbedder {
    tx: Sender<Job>,
    encoder: Arc<Encoder>,
    pub stats: Arc<BatchStats>,
    /// Queries sent and not yet answered; above `max_queued` new ones are refused (429).
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_queued: usize,
}

impl QueryEmbedder {
    /// Starts the worker; it stops when the last handle is dropped.
    pub fn start(encoder: Arc<Encoder>, max_batch: usize, max_queued: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let stats = Arc::new(BatchStats::default());
        let st = stats.clone();
        let worker = encoder.clone();
        std::thread::Builder::new()
            .name("query-embedder".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < max_batch.max(1) {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let t = std::time::Instant::now();
                    // One pass per normalisation asked for (the search always asks the
                    // model's; the embedding endpoints let the client choose).
                    let mut results: Vec<Option<Result<Vec<f32>>>> =
                        jobs.iter().map(|_| None).collect();
                    for normalize in [true, false] {
                        let idx: Vec<usize> = (0..jobs.len())
                            .filter(|&i| jobs[i].normalize == normalize)
                            .collect();
                        if idx.is_empty() {
                            continue;
                        }
                        for (i, r) in idx.iter().zip(run_pass(&worker, &jobs, &idx, normalize)) {
                            results[*i] = Some(r);
                        }
                    }
                    let results: Vec<Result<Vec<f32>>> = results
                        .into_iter()
                        .map(|r| r.unwrap_or_else(|| Err(panicked())))
                        .collect();
                    st.busy_us
                        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    st.batches.fetch_add(1, Ordering::Relaxed);
                    st.queries.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    st.largest.fetch_max(jobs.len() as u64, Ordering::Relaxed);
                    for (job, r) in jobs.into_iter().zip(results) {
                        // The requester may have gone away; nothing to do then.
                        let _ = job.reply.send(r);
                    }
                }
            })
            .expect("spawn the query embedding thread");
        QueryEmbedder {
            tx,
            encoder,
            stats,
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_queued: max_queued.max(1),
        }
    }

    /// The query's vector, embedded together with whatever other queries are waiting.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let seq = self.encoder.sequence_of(text)?;
        self.embed_sequence(seq, self.encoder.info().normalize, text)
            .await
    }

    /// The vector of a model input made by [`Encoder::sequence_of`] or
    /// [`Encoder::sequence_of_ids`], normalised or not; `text` is its text when it has one.
    pub async fn embed_sequence(
        &self,
        seq: Vec<u32>,
        normalize: bool,
        text: &str,
    ) -> Result<Vec<f32>> {
        self.submit(seq, normalize, text)?.await
    }

    /// Queues a model input now and returns the wait for its vector: submitting several
    /// before awaiting any puts them in the same forward pass.
    pub fn submit(
        &self,
        seq: Vec<u32>,
        normalize: bool,
        text: &str,
    ) -> Result<impl std::future::Future<Output = Result<Vec<f32>>>> {
        struct Queued(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Queued {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Busy(format!(
                "{} queries are waiting to be embedded; try again in a moment",
                self.max_queued
            )));
        }
        let queued = Queued(self.queued.clone());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                seq,
                normalize,
                text: text.to_string(),
                reply,
            })
            .map_err(|_| Error::Index("the query embedding worker stopped".into()))?;
        Ok(async move {
            let _queued = queued;
            rx.await
                .map_err(|_| Error::Index("the query embedding worker stopped".into()))?
        })
    }
}

/// One forward pass over the jobs `idx` (all with the same `normalize`), supervised: a
/// panic fails that pass's requests and the worker goes on with the next (it is never left
/// dead); when the pass fails, the jobs are embedded one by one so one bad input does not
/// fail the others.
fn run_pass(
    encoder: &Encoder,
    jobs: &[Job],
    idx: &[usize],
    normalize: bool,
) -> Vec<Result<Vec<f32>>> {
    let one = |j: &Job| -> Result<Vec<f32>> {
        // Test builds: `query-embed` with `@TEXT` fails the pass holding TEXT.
        crate::failpoint::inject("query-embed", std::path::Path::new(&j.text))?;
        encoder
            .embed_sequences(std::slice::from_ref(&j.seq), normalize)
            .map(|mut v| v.remove(0))
    };
    let pass = || -> Result<Vec<Vec<f32>>> {
        for &i in idx {
            crate::failpoint::inject("query-embed", std::path::Path::new(&jobs[i].text))?;
        }
        let seqs: Vec<Vec<u32>> = idx.iter().map(|&i| jobs[i].seq.clone()).collect();
        encoder.embed_sequences(&seqs, normalize)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(pass)) {
        Ok(Ok(v)) => v.into_iter().map(Ok).collect(),
        Ok(Err(_)) => idx
            .iter()
            .map(|&i| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&jobs[i])))
                    .unwrap_or_else(|_| Err(panicked()))
            })
            .collect(),
        Err(_) => idx.iter().map(|_| Err(panicked())).collect(),
    }
}

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
                    let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
                    let one = |t: &str| -> Result<Vec<f32>> {
                        // Test builds: `query-embed` with `@TEXT` fails the pass holding TEXT.
                        crate::failpoint::inject("query-embed", std::path::Path::new(t))?;
                        encoder.embed(&[t]).map(|mut v| v.remove(0))
                    };
                    let pass = || -> Result<Vec<Vec<f32>>> {
                        for t in &texts {
                            crate::failpoint::inject("query-embed", std::path::Path::new(t))?;
                        }
                        encoder.embed(&texts)
                    };
                    // Supervised: a panic in a forward pass fails that pass's requests and the
                    // worker goes on with the next (it is never left dead).
                    let results: Vec<Result<Vec<f32>>> =
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(pass)) {
                            Ok(Ok(v)) => v.into_iter().map(Ok).collect(),
                            // One bad text must not fail the others: embed them one by one.
                            Ok(Err(_)) => texts
                                .iter()
                                .map(|t| {
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        one(t)
                                    }))
                                    .unwrap_or_else(|_| Err(panicked()))
                                })
                                .collect(),
                            Err(_) => texts.iter().map(|_| Err(panicked())).collect(),
                        };
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
            stats,
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_queued: max_queued.max(1),
        }
    }

    /// The query's vector, embedded together with whatever other queries are waiting.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Queued<'_> {
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
        let _queued = Queued(&self.queued);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                text: text.to_string(),
                reply,
            })
            .map_err(|_| Error::Index("the query embedding worker stopped".into()))?;
        rx.await
            .map_err(|_| Error::Index("the query embedding worker stopped".into()))?
    }
}

//! Prometheus metrics in the text exposition format: request counts per endpoint and status,
//! latency histograms per endpoint, ingest counters, query batching and index sizes.
//! Endpoints are labelled by route pattern (`/api/documents/{id}`), never by the raw path,
//! so note ids and query text never reach the metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The method as a metric label, from a closed set: any other method string (methods are
/// free-form tokens in HTTP) folds into `other`, so a client cannot grow the label space.
pub fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        _ => "other",
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    pub notes_ingested: AtomicU64,
    pub notes_rejected: AtomicU64,
    pub chunks_ingested: AtomicU64,
    pub notes_deleted: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, endpoint: &str, method: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((endpoint.to_string(), method.to_string(), status))
            .or_default() += 1;
        let mut lat = self.latency.lock().unwrap();
        let h = lat
            .entry((endpoint.to_string(), method.to_string()))
            .or_default();
        h.count += 1;
        h.sum += seconds;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
    }

    /// The exposition text; `extra` are `(name, help, type, value)` read at scrape time
    /// (index sizes, batching counters).
    pub fn render(&self, extra: &[(&str, &str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP clinsearch_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE clinsearch_http_requests_total counter\n");
        for ((e, m, s), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "clinsearch_http_requests_total{{endpoint=\"{e}\",method=\"{m}\",status=\"{s}\"}} {n}"
            );
        }
        out.push_str("# HELP clinsearch_http_request_duration_seconds Request latency by route and method.\n");
        out.push_str("# TYPE clinsearch_http_request_duration_seconds histogram\n");
        for ((e, m), h) in self.latency.lock().unwrap().iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "clinsearch_http_request_duration_seconds_bucket{{endpoint=\"{e}\",method=\"{m}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "clinsearch_http_request_duration_seconds_bucket{{endpoint=\"{e}\",method=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "clinsearch_http_request_duration_seconds_sum{{endpoint=\"{e}\",method=\"{m}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "clinsearch_http_request_duration_seconds_count{{endpoint=\"{e}\",method=\"{m}\"}} {}",
                h.count
            );
        }
        for (name, help, v) in [
            (
                "clinsearch_ingested_notes_total",
                "Notes stored through the API.",
                &self.notes_ingested,
            ),
            (
                "clinsearch_rejected_notes_total",
                "Notes refused by the API (bad input).",
                &self.notes_rejected,
            ),
            (
                "clinsearch_ingested_chunks_total",
                "Chunks embedded and stored through the API.",
                &self.chunks_ingested,
            ),
            (
                "clinsearch_deleted_notes_total",
                "Notes deleted through the API.",
                &self.notes_deleted,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, kind, v) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

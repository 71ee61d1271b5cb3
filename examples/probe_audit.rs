//! What the access audit costs a request: appends through `AuditLog` (one `fdatasync` per
//! batch of concurrent appends) from 1 and from 8 concurrent clients, against the naive peer
//! measured in the same run on the same disk: one write + `fdatasync` per event.
//!
//! `cargo run --release --example probe_audit [DIR]` (default: a temporary folder; pass a
//! folder on the disk the data directory will live on).

use std::io::Write;
use std::time::Instant;

use clinsearch::audit::{AuditLog, Draft};

fn draft(i: usize) -> Draft {
    Draft {
        request_id: format!("r{i}"),
        principal: Some("alice".into()),
        role: Some("read".into()),
        client: Some("127.0.0.1:50000".into()),
        action: "search",
        status: 200,
        note_ids: (0..10).map(|n| format!("P{i}-{n:02}")).collect(),
        patient_ids: vec![format!("P{i}")],
        query_sha256: Some(clinsearch::auth::sha256_hex(b"chest pain")),
        query_text: None,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let n = 400;
    // Peer: one write and one fdatasync per event.
    let peer_path = base.join("peer.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&peer_path)
        .unwrap();
    let mut lat = vec![];
    let t = Instant::now();
    for i in 0..n {
        let t1 = Instant::now();
        let line = serde_json::to_string(&format!("{:?}", draft(i))).unwrap();
        f.write_all(line.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        f.sync_data().unwrap();
        lat.push(t1.elapsed().as_secs_f64() * 1e3);
    }
    let peer_rate = n as f64 / t.elapsed().as_secs_f64();
    let peer_p50 = median(&mut lat);
    println!("peer (write + fdatasync per event): p50 {peer_p50:.3} ms, {peer_rate:.0} events/s");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for clients in [1usize, 8, 32] {
        let dir = base.join(format!("audit-{clients}"));
        let log = std::sync::Arc::new(AuditLog::open(&dir).unwrap());
        let t = Instant::now();
        let lats: Vec<f64> = rt.block_on(async {
            let mut handles = vec![];
            for c in 0..clients {
                let log = log.clone();
                handles.push(tokio::spawn(async move {
                    let mut l = vec![];
                    for i in 0..n / clients.min(n) {
                        let t1 = Instant::now();
                        log.append(draft(c * n + i)).await.unwrap();
                        l.push(t1.elapsed().as_secs_f64() * 1e3);
                    }
                    l
                }));
            }
            let mut all = vec![];
            for h in handles {
                all.extend(h.await.unwrap());
            }
            all
        });
        let rate = lats.len() as f64 / t.elapsed().as_secs_f64();
        let mut l = lats;
        println!(
            "AuditLog, {clients:>2} clients: p50 {:.3} ms, {rate:.0} events/s ({:.2}x the peer's rate)",
            median(&mut l),
            rate / peer_rate
        );
        assert!(clinsearch::audit::verify(&dir).unwrap().broken.is_none());
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("CPU: {cpu}; folder: {}", base.display());
}

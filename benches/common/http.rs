//! A keep-alive HTTP/1.1 load client for the benchmarks that drive the real server on
//! loopback (serve, scale): latency percentiles and requests/s per configuration.

#![allow(dead_code)] // each benchmark uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn encode(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    pub fn get(&mut self, path: &str) -> (u16, usize) {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).unwrap();
        (status, len)
    }
}

pub struct Run {
    pub p50: f64,
    pub p99: f64,
    pub rps: f64,
}

pub fn load(addr: SocketAddr, queries: &[String], mode: &str, clients: usize, secs: f64) -> Run {
    let paths: Arc<Vec<String>> = Arc::new(
        queries
            .iter()
            .map(|q| format!("/api/search?q={}&mode={mode}&k=10", encode(q)))
            .collect(),
    );
    // Warm-up: every query once.
    let mut c = Conn::new(addr);
    for p in paths.iter() {
        assert_eq!(c.get(p).0, 200, "{p}");
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let paths = paths.clone();
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut lat = vec![];
                let mut i = t * 7;
                while Instant::now() < deadline {
                    let p = &paths[i % paths.len()];
                    let t0 = Instant::now();
                    let (status, _) = c.get(p);
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(status, 200);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Run {
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        rps: all.len() as f64 / wall,
    }
}

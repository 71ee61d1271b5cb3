//! The access audit: one JSON line for every request that touches patient data, as ASTM
//! E2147 and the ONC certification criteria ask of an EHR (when, who, what action, which
//! patient, which data), in append-only files under `DATA/audit/` (one per UTC day, never
//! rewritten).
//!
//! * Written before the reply leaves: the server waits for [`AuditLog::append`] and answers
//!   503 `audit_unavailable` when it fails, rather than serving unaudited. Appends of
//!   concurrent requests share one write and one `fdatasync` (group commit, as the query
//!   embedding worker shares forward passes), so auditing costs one disk flush per batch, not
//!   per request.
//! * Tamper evidence: each line carries `seq` (1, 2, 3 ... across files) and `prev_sha256`,
//!   the SHA-256 of the previous line's bytes (64 zeros for the first), so a changed, removed
//!   or reordered line breaks the chain at that line. `HEAD.json` records the last line's
//!   sequence and hash after every batch, so lines cut from the end are found too.
//!   [`verify`] walks the chain; `clinsearch audit verify` reports the first broken line.
//! * Note text never enters the audit. Queries are recorded by their SHA-256 unless the
//!   configuration asks for the text (`audit_query_text = true`: the audit store is as
//!   protected as the notes).
//! * A torn last line (a crash in the middle of a write, never acknowledged) is cut off when
//!   the log is next opened; nothing acknowledged is ever changed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The actions an event records.
pub const ACTIONS: &[&str] = &[
    "search",
    "facets",
    "read_note",
    "ingest",
    "delete",
    "embed",
    "fill_mask",
    "adapt",
    "classify",
    "tag",
    "annotate",
    "eval",
    "export",
    "audit",
    "denied",
];

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    /// Position in the chain, from 1, across files.
    pub seq: u64,
    pub request_id: String,
    /// The key's name; null when no valid key was presented.
    pub principal: Option<String>,
    pub role: Option<String>,
    /// The peer address.
    pub client: Option<String>,
    pub action: String,
    pub status: u16,
    /// Every note returned or read.
    pub note_ids: Vec<String>,
    pub patient_ids: Vec<String>,
    pub query_sha256: Option<String>,
    /// Only with `audit_query_text = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_text: Option<String>,
    pub prev_sha256: String,
}

/// What a request contributes; the log adds the time, the sequence and the chain.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub request_id: String,
    pub principal: Option<String>,
    pub role: Option<String>,
    pub client: Option<String>,
    pub action: &'static str,
    pub status: u16,
    pub note_ids: Vec<String>,
    pub patient_ids: Vec<String>,
    pub query_sha256: Option<String>,
    pub query_text: Option<String>,
}

/// The last line written: where the chain continues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    sha256: String,
}

struct Pending {
    draft: Draft,
    reply: tokio::sync::oneshot::Sender<Result<()>>,
}

/// The writer: owns the files on its thread; requests wait for their line to be durable.
pub struct AuditLog {
    dir: PathBuf,
    tx: Mutex<Sender<Pending>>,
}

impl AuditLog {
    /// Opens (creating) the log in `dir` (normally `DATA/audit`), cutting a torn last line,
    /// and starts the writer thread.
    pub fn open(dir: &Path) -> Result<AuditLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let head = recover(dir)?;
        let (tx, rx) = channel::<Pending>();
        let d = dir.to_path_buf();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(d, head, rx))
            .map_err(|e| Error::io("audit writer thread", e))?;
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            tx: Mutex::new(tx),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one event and returns once it is on disk (or failed to get there).
    pub async fn append(&self, draft: Draft) -> Result<()> {
        self.send(draft)?
            .await
            .map_err(|_| Error::Store("the audit writer stopped".into()))?
    }

    /// [`Self::append`] for callers outside an async runtime (the CLI, the Python package):
    /// blocks until the line is on disk.
    pub fn append_blocking(&self, draft: Draft) -> Result<()> {
        self.send(draft)?
            .blocking_recv()
            .map_err(|_| Error::Store("the audit writer stopped".into()))?
    }

    fn send(&self, draft: Draft) -> Result<tokio::sync::oneshot::Receiver<Result<()>>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.lock().unwrap().send(Pending { draft, reply });
        if sent.is_err() {
            return Err(Error::Store("the audit writer stopped".into()));
        }
        Ok(rx)
    }
}

impl Draft {
    /// An access by a local user with the data directory's files (the command line, the
    /// Python package), not through the server: the principal is `<client>:<USER>`, the
    /// request id names the process, the query is kept as its hash.
    pub fn local(
        action: &'static str,
        client: &str,
        note_ids: Vec<String>,
        patient_ids: Vec<String>,
        query: Option<&str>,
    ) -> Draft {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let prefix = if client == "command line" {
            "cli"
        } else {
            client
        };
        Draft {
            request_id: format!("{prefix}-{}", std::process::id()),
            principal: Some(format!("{prefix}:{user}")),
            role: None,
            client: Some(client.into()),
            action,
            status: 200,
            note_ids,
            patient_ids,
            query_sha256: query.map(|q| crate::auth::sha256_hex(q.as_bytes())),
            query_text: None,
        }
    }
}

/// Day files in order.
fn day_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 16 && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn line_hash(line: &[u8]) -> String {
    crate::auth::sha256_hex(line)
}

/// The chain's head after the last complete line; a torn final line is cut off.
fn recover(dir: &Path) -> Result<Head> {
    let files = day_files(dir)?;
    let Some(last) = files.last() else {
        return Ok(Head {
            seq: 0,
            sha256: GENESIS.into(),
        });
    };
    let bytes = std::fs::read(last).map_err(|e| Error::io(last, e))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            file = %last.display(),
            bytes = bytes.len() - complete,
            "cutting a torn, unacknowledged last audit line"
        );
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(last)
            .map_err(|e| Error::io(last, e))?;
        f.set_len(complete as u64)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(last, e))?;
    }
    let body = &bytes[..complete];
    let line = body[..body.len().saturating_sub(1)]
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap_or(&[]);
    if line.is_empty() {
        // An empty newest file: the head is in the one before.
        let _ = std::fs::remove_file(last);
        return recover(dir);
    }
    let ev: Event = serde_json::from_slice(line).map_err(|e| {
        Error::Store(format!(
            "{}: the last audit line is not an audit event ({e}); run clinsearch audit verify",
            last.display()
        ))
    })?;
    Ok(Head {
        seq: ev.seq,
        sha256: line_hash(line),
    })
}

struct Open {
    name: String,
    file: std::fs::File,
    len: u64,
}

fn writer(dir: PathBuf, mut head: Head, rx: Receiver<Pending>) {
    let mut open: Option<Open> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            batch.push(p);
            if batch.len() >= 4096 {
                break;
            }
        }
        let result = write_batch(&dir, &mut head, &mut open, &batch);
        for p in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::Store(format!("audit log: {e}"))),
            };
            let _ = p.reply.send(r);
        }
    }
}

/// Writes the batch's lines with one write and one flush. On failure the file is cut back to
/// where the batch began and the head is unchanged, so the next batch continues a valid
/// chain (a disk that filled up recovers by itself once space is freed).
fn write_batch(
    dir: &Path,
    head: &mut Head,
    open: &mut Option<Open>,
    batch: &[Pending],
) -> Result<()> {
    let time = now_rfc3339();
    let name = format!("{}.jsonl", &time[..10]);
    if open.as_ref().is_none_or(|o| o.name != name) {
        let path = dir.join(&name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        *open = Some(Open { name, file, len });
        // The new file's entry must survive a crash too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let o = open.as_mut().expect("opened above");
    let mut next = head.clone();
    let mut buf = Vec::with_capacity(batch.len() * 256);
    for p in batch {
        let d = &p.draft;
        next.seq += 1;
        let ev = Event {
            time: time.clone(),
            seq: next.seq,
            request_id: d.request_id.clone(),
            principal: d.principal.clone(),
            role: d.role.clone(),
            client: d.client.clone(),
            action: d.action.to_string(),
            status: d.status,
            note_ids: d.note_ids.clone(),
            patient_ids: d.patient_ids.clone(),
            query_sha256: d.query_sha256.clone(),
            query_text: d.query_text.clone(),
            prev_sha256: next.sha256.clone(),
        };
        let line = serde_json::to_vec(&ev).map_err(|e| Error::Store(e.to_string()))?;
        next.sha256 = line_hash(&line);
        buf.extend_from_slice(&line);
        buf.push(b'\n');
    }
    let path = dir.join(&o.name);
    let written = fail_point(dir)
        .and_then(|_| o.file.write_all(&buf))
        .and_then(|_| o.file.sync_data());
    if let Err(e) = written {
        // Cut back whatever part of the batch reached the file; reopen on the next batch.
        let _ = o.file.set_len(o.len);
        let _ = o.file.sync_data();
        *open = None;
        return Err(Error::io(path, e));
    }
    o.len += buf.len() as u64;
    *head = next;
    // The anchor for lines cut from the end. Written after the lines are durable, so it is
    // never ahead of them; a crash may leave it one batch behind, which verify accepts.
    let anchor = dir.join("HEAD.json");
    let tmp = dir.join("HEAD.json.tmp");
    let text = serde_json::to_string(&*head).expect("head serialises");
    if std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &anchor))
        .is_err()
    {
        tracing::warn!("could not update the audit anchor {}", anchor.display());
    }
    Ok(())
}

/// `audit-append` (see [`crate::failpoint`]): an injected I/O failure of the audit write.
fn fail_point(dir: &Path) -> std::io::Result<()> {
    crate::failpoint::inject("audit-append", dir).map_err(|e| std::io::Error::other(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// Time

/// Now in UTC as RFC 3339 with milliseconds: `2026-12-02T09:15:03.250Z`.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(d.as_secs() as i64, d.subsec_millis())
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn format_utc(secs: i64, ms: u32) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Reads `YYYY-MM-DD`, or RFC 3339 (`YYYY-MM-DDTHH:MM[:SS[.fff]]` with `Z` or `±HH:MM`), into
/// the log's own form in UTC, so that times compare as strings. A bare date is its midnight.
pub fn parse_time(s: &str) -> Result<String> {
    let bad = || {
        Error::InvalidInput(format!(
            "time {s:?}: use YYYY-MM-DD or RFC 3339 (2026-12-02T09:15:00Z)"
        ))
    };
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    // The calendar check is the note dates' own.
    crate::note::date_key(&s[..10]).map_err(|_| bad())?;
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    let (mut secs, mut ms) = (0i64, 0u32);
    let mut offset = 0i64;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 16 || b[13] != b':' {
            return Err(bad());
        }
        let (h, mi) = (num(11..13)?, num(14..16)?);
        let mut i = 16;
        let mut sec = 0;
        if b.get(i) == Some(&b':') {
            sec = num(i + 1..i + 3)?;
            i += 3;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end].is_ascii_digit() {
                    end += 1;
                }
                if end == start {
                    return Err(bad());
                }
                let frac = &s[start..end.min(start + 3)];
                ms = format!("{frac:0<3}").parse().map_err(|_| bad())?;
                i = end;
            }
        }
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        secs = h * 3600 + mi * 60 + sec;
        match s.get(i..) {
            Some("Z") | Some("z") | Some("") => {}
            Some(z)
                if z.len() == 6
                    && (z.starts_with('+') || z.starts_with('-'))
                    && &z[3..4] == ":" =>
            {
                let oh = num(i + 1..i + 3)?;
                let om = num(i + 4..i + 6)?;
                offset = (oh * 3600 + om * 60) * if z.starts_with('-') { -1 } else { 1 };
            }
            _ => return Err(bad()),
        }
    }
    let total = days_from_civil(y, mo, d) * 86_400 + secs - offset;
    Ok(format_utc(total, ms))
}

// ---------------------------------------------------------------------------------------
// Reading: reports and verification

/// Which events a report asks for; every field that is set must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub patient: Option<String>,
    pub principal: Option<String>,
    pub note: Option<String>,
    pub action: Option<String>,
    /// Inclusive, in the log's UTC form (see [`parse_time`]).
    pub since: Option<String>,
    /// Exclusive.
    pub until: Option<String>,
}

impl Query {
    /// Checks the action name and puts the times in the log's form.
    pub fn normalized(mut self) -> Result<Query> {
        if let Some(a) = &self.action {
            if !ACTIONS.contains(&a.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "action {a:?}: one of {}",
                    ACTIONS.join(", ")
                )));
            }
        }
        self.since = self.since.as_deref().map(parse_time).transpose()?;
        self.until = self.until.as_deref().map(parse_time).transpose()?;
        Ok(self)
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.patient
            .as_ref()
            .is_none_or(|p| e.patient_ids.contains(p))
            && self
                .principal
                .as_ref()
                .is_none_or(|p| e.principal.as_ref() == Some(p))
            && self.note.as_ref().is_none_or(|n| e.note_ids.contains(n))
            && self.action.as_ref().is_none_or(|a| &e.action == a)
            && self
                .since
                .as_ref()
                .is_none_or(|s| e.time.as_str() >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|u| e.time.as_str() < u.as_str())
    }
}

/// The events matching `q`, oldest first; at most `limit` (the newest ones), and how many
/// matched in all. Files outside the time range are not read.
pub fn search(dir: &Path, q: &Query, limit: usize) -> Result<(Vec<Event>, usize)> {
    let mut out = std::collections::VecDeque::new();
    let mut matched = 0;
    if !dir.is_dir() {
        return Ok((vec![], 0));
    }
    for f in day_files(dir)? {
        let day = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if q.since.as_deref().is_some_and(|s| day < &s[..10])
            || q.until.as_deref().is_some_and(|u| day > &u[..10])
        {
            continue;
        }
        let file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| Error::io(&f, e))?;
            if line.is_empty() {
                continue;
            }
            let Ok(ev) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if q.matches(&ev) {
                matched += 1;
                out.push_back(ev);
                if out.len() > limit {
                    out.pop_front();
                }
            }
        }
    }
    Ok((out.into_iter().collect(), matched))
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verified {
    pub lines: u64,
    pub files: usize,
    /// `file:line: what is wrong`, for the first broken line; None for an intact log.
    pub broken: Option<String>,
}

/// Walks the chain across every file: each line must parse, follow its predecessor's
/// sequence number, and carry its predecessor's hash; the anchor must match the line it
/// names and no line it counts may be missing.
pub fn verify(dir: &Path) -> Result<Verified> {
    let files = if dir.is_dir() {
        day_files(dir)?
    } else {
        vec![]
    };
    let mut prev_hash = GENESIS.to_string();
    let mut prev_time = String::new();
    let mut seq = 0u64;
    let mut hashes_at: Option<(u64, String)> = None;
    let anchor: Option<Head> = std::fs::read_to_string(dir.join("HEAD.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let nfiles = files.len();
    let broken = |seq: u64, f: &Path, n: usize, why: String| -> Result<Verified> {
        Ok(Verified {
            lines: seq,
            files: nfiles,
            broken: Some(format!("{}:{n}: {why}", f.display())),
        })
    };
    for f in &files {
        let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| Error::io(f, e))?;
            let n = i + 1;
            let ev: Event = match serde_json::from_slice(&line) {
                Ok(ev) => ev,
                Err(e) => return broken(seq, f, n, format!("not an audit event ({e})")),
            };
            if ev.seq != seq + 1 {
                let why = if ev.seq > seq + 1 {
                    format!(
                        "sequence {} follows {seq}: {} line(s) before it were removed or moved",
                        ev.seq,
                        ev.seq - seq - 1
                    )
                } else {
                    format!(
                        "sequence {} follows {seq}: lines were reordered or copied",
                        ev.seq
                    )
                };
                return broken(seq, f, n, why);
            }
            if ev.prev_sha256 != prev_hash {
                return broken(
                    seq,
                    f,
                    n,
                    if n > 1 {
                        format!(
                            "prev_sha256 does not match line {}: that line was changed",
                            n - 1
                        )
                    } else {
                        "prev_sha256 does not match the last line of the previous file: that line was changed".into()
                    },
                );
            }
            if ev.time < prev_time {
                return broken(
                    seq,
                    f,
                    n,
                    "time goes backwards: lines were reordered".into(),
                );
            }
            seq = ev.seq;
            prev_hash = line_hash(&line);
            prev_time = ev.time;
            if anchor.as_ref().is_some_and(|a| a.seq == seq) {
                hashes_at = Some((seq, prev_hash.clone()));
            }
        }
    }
    if let Some(a) = &anchor {
        match &hashes_at {
            Some((_, h)) if *h == a.sha256 => {}
            Some(_) => {
                return Ok(Verified {
                    lines: seq,
                    files: files.len(),
                    broken: Some(format!(
                        "{}: line {} does not match the anchor: it was changed",
                        dir.join("HEAD.json").display(),
                        a.seq
                    )),
                })
            }
            None => {
                return Ok(Verified {
                    lines: seq,
                    files: files.len(),
                    broken: Some(format!(
                        "{}: the log ends at line {seq} but {} were written: lines were removed from the end",
                        dir.join("HEAD.json").display(),
                        a.seq
                    )),
                })
            }
        }
    }
    Ok(Verified {
        lines: seq,
        files: files.len(),
        broken: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(principal: &str, action: &'static str, notes: &[&str], patients: &[&str]) -> Draft {
        Draft {
            request_id: "r".into(),
            principal: Some(principal.into()),
            role: Some("read".into()),
            client: Some("127.0.0.1:5000".into()),
            action,
            status: 200,
            note_ids: notes.iter().map(|s| s.to_string()).collect(),
            patient_ids: patients.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn write(dir: &Path, n: usize) {
        let log = AuditLog::open(dir).unwrap();
        rt().block_on(async {
            for i in 0..n {
                let note = format!("N{i}");
                log.append(draft("alice", "read_note", &[&note], &["P1"]))
                    .await
                    .unwrap();
            }
        });
    }

    fn the_file(dir: &Path) -> PathBuf {
        day_files(dir).unwrap().pop().unwrap()
    }

    #[test]
    fn times_are_utc_with_milliseconds_and_parse_back() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc(951_782_400 + 3_723, 45),
            "2000-02-29T01:02:03.045Z"
        );
        assert_eq!(
            parse_time("2026-12-02").unwrap(),
            "2026-12-02T00:00:00.000Z"
        );
        assert_eq!(
            parse_time("2026-12-02T01:30:00+02:00").unwrap(),
            "2026-12-01T23:30:00.000Z"
        );
        assert_eq!(
            parse_time("2026-12-02T09:15:03.25Z").unwrap(),
            "2026-12-02T09:15:03.250Z"
        );
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "yesterday",
            "2026-12-02T25:00",
            "2026-12-02Tx",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        let now = now_rfc3339();
        assert_eq!(parse_time(&now).unwrap(), now);
    }

    #[test]
    fn an_intact_log_verifies_and_continues_its_chain_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 3);
        write(dir.path(), 2);
        let v = verify(dir.path()).unwrap();
        assert_eq!(v.broken, None);
        assert_eq!(v.lines, 5);
        let (events, n) = search(dir.path(), &Query::default(), 100).unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn a_changed_removed_or_reordered_line_is_named() {
        let lines = |dir: &Path| -> Vec<String> {
            std::fs::read_to_string(the_file(dir))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        };
        let put =
            |dir: &Path, l: &[String]| std::fs::write(the_file(dir), l.join("\n") + "\n").unwrap();
        // Changed: alice's read of N1 rewritten as bob's.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 4);
        let mut l = lines(d.path());
        l[1] = l[1].replace("alice", "bob");
        put(d.path(), &l);
        let b = verify(d.path()).unwrap().broken.unwrap();
        assert!(b.contains(":3: prev_sha256 does not match line 2"), "{b}");
        // Removed from the middle.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 4);
        let mut l = lines(d.path());
        l.remove(1);
        put(d.path(), &l);
        let b = verify(d.path()).unwrap().broken.unwrap();
        assert!(b.contains(":2: sequence 3 follows 1"), "{b}");
        // Removed from the end: only the anchor knows.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 4);
        let mut l = lines(d.path());
        l.pop();
        put(d.path(), &l);
        let b = verify(d.path()).unwrap().broken.unwrap();
        assert!(b.contains("removed from the end"), "{b}");
        // Reordered.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 4);
        let mut l = lines(d.path());
        l.swap(1, 2);
        put(d.path(), &l);
        let b = verify(d.path()).unwrap().broken.unwrap();
        assert!(b.contains(":2: sequence 3 follows 1"), "{b}");
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_chain_goes_on() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 2);
        let f = the_file(d.path());
        let mut text = std::fs::read(&f).unwrap();
        text.extend_from_slice(b"{\"time\":\"2026-");
        std::fs::write(&f, text).unwrap();
        write(d.path(), 1);
        let v = verify(d.path()).unwrap();
        assert_eq!(v.broken, None);
        assert_eq!(v.lines, 3);
    }

    #[test]
    fn reports_filter_by_patient_principal_note_action_and_time() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path()).unwrap();
        rt().block_on(async {
            log.append(draft("alice", "search", &["N1", "N2"], &["P1", "P2"]))
                .await
                .unwrap();
            log.append(draft("bob", "read_note", &["N2"], &["P2"]))
                .await
                .unwrap();
            log.append(draft("alice", "read_note", &["N3"], &["P3"]))
                .await
                .unwrap();
        });
        let q = |q: Query| {
            search(d.path(), &q.normalized().unwrap(), 100)
                .unwrap()
                .0
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            q(Query {
                patient: Some("P2".into()),
                ..Default::default()
            }),
            [1, 2]
        );
        assert_eq!(
            q(Query {
                principal: Some("alice".into()),
                ..Default::default()
            }),
            [1, 3]
        );
        assert_eq!(
            q(Query {
                note: Some("N3".into()),
                ..Default::default()
            }),
            [3]
        );
        assert_eq!(
            q(Query {
                action: Some("read_note".into()),
                ..Default::default()
            }),
            [2, 3]
        );
        assert_eq!(
            q(Query {
                since: Some("2999-01-01".into()),
                ..Default::default()
            }),
            Vec::<u64>::new()
        );
        assert_eq!(
            q(Query {
                until: Some("2999-01-01".into()),
                ..Default::default()
            })
            .len(),
            3
        );
        assert!(Query {
            action: Some("peek".into()),
            ..Default::default()
        }
        .normalized()
        .is_err());
        let (last, n) = search(d.path(), &Query::default(), 1).unwrap();
        assert_eq!(
            (last[0].seq, n),
            (3, 3),
            "the newest events within the limit"
        );
    }
}

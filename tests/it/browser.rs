//! The browser UI in a real browser: headless Chromium driven over the W3C WebDriver protocol
//! (Debian's chromium + chromium-driver), against the real server on loopback.
//!
//! `make test` installs Chromium and sets CLINSEARCH_REQUIRE_TEST_DEPS=1, so there these tests
//! fail rather than skip when the browser is missing; a bare `cargo test` skips them with a
//! message.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use clinsearch::server;

use crate::common::*;
use crate::server::sample_state;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    base: String,
    agent: ureq::Agent,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// A fresh headless Chromium session, or None (with a message) when the browser is not
    /// installed and the test run does not require it.
    fn start() -> Option<Browser> {
        let driver_bin =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if !std::path::Path::new(&driver_bin).exists() || !std::path::Path::new(&chromium).exists()
        {
            if std::env::var_os("CLINSEARCH_REQUIRE_TEST_DEPS").is_some() {
                panic!("{driver_bin} or {chromium} is missing: install Debian's chromium and chromium-driver (make test does)");
            }
            eprintln!("SKIPPED: browser tests need {chromium} and {driver_bin} (apt-get install chromium chromium-driver; `make test` installs them)");
            return None;
        }
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        loop {
            let ready = agent
                .get(&format!("{root}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let mut res = agent
            .post(&format!("{root}/session"))
            .send_json(&caps)
            .unwrap();
        let v: Value = res.body_mut().read_json().unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Some(Browser {
            base: format!("{root}/session/{session}"),
            agent,
            driver,
            _profile: profile,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let res = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let v: Value = res
            .map_err(|e| e.to_string())?
            .body_mut()
            .read_json()
            .map_err(|e| e.to_string())?;
        if let Some(err) = v["value"]["error"].as_str() {
            return Err(format!("{err}: {}", v["value"]["message"]));
        }
        Ok(v["value"].clone())
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).unwrap();
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| e[ELEMENT].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Waits until `css` matches, then returns the first match.
    fn wait(&self, css: &str) -> String {
        self.wait_for(css, Duration::from_secs(90))
    }

    /// [`Self::wait`] with its own bound (a background job the page polls).
    fn wait_for(&self, css: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            if t.elapsed() > limit {
                let html = self.script("return document.body.innerText", vec![]);
                panic!("timed out waiting for {css}; page text: {html}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` contains `needle`; returns the text.
    fn wait_text(&self, css: &str, needle: &str) -> String {
        let t = Instant::now();
        loop {
            let e = self.wait(css);
            let text = self.text(&e);
            if text.contains(needle) {
                return text;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "{css} never showed {needle:?}; it shows {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self, el: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/text"), None)
            .map(|v| v.as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    fn attr(&self, el: &str, name: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/attribute/{name}"), None)
            .map(|v| v.as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    fn click(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/click"), None)
            .unwrap();
    }

    fn send_keys(&self, el: &str, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .unwrap();
    }

    fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .unwrap()
    }

    fn screenshot(&self, name: &str) {
        if let Ok(v) = self.cmd("GET", "/screenshot", None) {
            if let Some(b64) = v.as_str() {
                let dir = repo_root().join("target").join("screenshots");
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(dir.join(format!("{name}.png.b64")), b64);
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A server over sample_corpus/ (tiny fixture model) on a free loopback port.
fn serve() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let state = sample_state(dir.path());
    let (addr, _handle) = server::spawn(state, "127.0.0.1:0").unwrap();
    (dir, format!("http://{addr}"))
}

#[test]
fn search_shows_three_columns_then_a_note_opens_with_its_matches() {
    let Some(b) = Browser::start() else { return };
    let (_dir, url) = serve();
    b.goto(&format!("{url}/#/search?q=chest%20pain%20with%20troponin"));
    b.wait(".column[data-mode=hybrid] .hit");
    for mode in ["bm25", "semantic", "hybrid"] {
        let hits = b.find_all(&format!(".column[data-mode={mode}] .hit"));
        assert_eq!(hits.len(), 10, "{mode} column");
    }
    // Notes found by more than one ranking are marked.
    assert!(!b.find_all(".hit.in-2, .hit.in-3").is_empty());
    assert!(
        !b.find_all(".column[data-mode=bm25] .snippet mark")
            .is_empty(),
        "BM25 snippets highlight terms"
    );
    b.screenshot("search");

    // Export: every hit of the search as a file, the count shown.
    b.click(&b.wait("#export-csv"));
    let status = b.wait_text("#export-status", "rows exported");
    let n: usize = status.split_whitespace().next().unwrap().parse().unwrap();
    assert!(n > 10, "{status}: more than the page");

    // The keyboard: a new query typed into the box and submitted with Enter.
    let q = b.wait("#q");
    b.script("arguments[0].value = ''", vec![json!({ELEMENT: q})]);
    b.send_keys(&q, "shortness of breath\u{E007}");
    b.wait_text("#summary", "ms");
    let hash = b.script("return location.hash", vec![]);
    assert!(hash.as_str().unwrap().contains("shortness"), "{hash}");

    // The fused list toggle.
    let fused = b.wait("button[data-view=fused]");
    b.click(&fused);
    b.wait(".columns.single .hit");

    // Open the top hybrid hit: its note, the matched terms and the same patient's notes.
    let link = b.wait(".column[data-mode=hybrid] .hit a.title");
    let title = b.text(&link);
    b.click(&link);
    let shown = b.text(&b.wait("#note-title"));
    assert_eq!(shown, title);
    b.wait("#note-text mark");
    b.wait("#note-text .chunk-best");
    b.wait("#same-patient li a");
    b.screenshot("note");
}

#[test]
fn a_note_ingested_through_the_ui_is_then_found() {
    let Some(b) = Browser::start() else { return };
    let (_dir, url) = serve();
    b.goto(&format!("{url}/#/ingest"));
    let area = b.wait("#ingest-text");
    let note = json!({"id": "ui-1", "title": "Zygoma fracture follow-up", "patient_id": "P7777", "note_type": "progress note",
        "text": "Patient seen after a zygomatic arch fracture from a cycling accident. Swelling improving."});
    b.send_keys(&area, &note.to_string());
    b.click(&b.wait("#ingest-submit"));
    b.wait_text("#ingest-summary", "Stored 1 note");

    // A file upload with one bad record: progress to done, the bad line reported.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"ui-2\", \"text\": \"Scaphoid fracture in a thumb spica cast.\"}\n{\"id\": \"ui-3\", \"text\": \"\"}\n",
    )
    .unwrap();
    b.send_keys(&b.wait("#ingest-file"), file.to_str().unwrap());
    let upload = b.find_all("form button.primary")[1].clone();
    b.click(&upload);
    b.wait_text("#upload-progress", "Done: 1 notes");
    let err = b.text(&b.wait("#upload-errors li"));
    assert!(err.starts_with("batch.jsonl:2:"), "{err}");

    b.goto(&format!("{url}/#/search?q=zygomatic"));
    let top = b.text(&b.wait(".column[data-mode=bm25] .hit a.title"));
    assert_eq!(top, "Zygoma fracture follow-up");
    b.goto(&format!("{url}/#/search?q=scaphoid"));
    let top = b.text(&b.wait(".column[data-mode=bm25] .hit a.title"));
    assert_eq!(top, "ui-2");
}

#[test]
fn the_fill_mask_playground_predicts_and_slash_focuses_search() {
    let Some(b) = Browser::start() else { return };
    let (_dir, url) = serve();
    b.goto(&format!("{url}/#/fill-mask"));
    let area = b.wait("#mask-text");
    b.script("arguments[0].value = ''", vec![json!({ELEMENT: area})]);
    b.send_keys(&area, "the patient has [MASK] pain");
    b.click(&b.wait("form button.primary"));
    b.wait("#mask-out table tr");
    assert_eq!(b.find_all("#mask-out table tr").len(), 5);

    // "/" anywhere but a text field jumps to the search box.
    let body = b.wait("body");
    b.script("document.activeElement.blur()", vec![]);
    b.send_keys(&body, "/");
    let t = Instant::now();
    loop {
        let id = b.script(
            "return document.activeElement && document.activeElement.id",
            vec![],
        );
        if id == "q" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "focus is on {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With an embedding model without an MLM head, the Fill-mask page offers an adapt job on
/// the stored notes, shows its progress and the command line, and then predicts with it.
#[test]
fn the_fill_mask_page_adapts_a_model_on_the_stored_notes_then_predicts() {
    let Some(b) = Browser::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let notes = repo_root().join("sample_corpus/notes.jsonl");
    let state = crate::server::seeded_state_with(
        dir.path(),
        &fixture("tiny-st-sharded"),
        clinsearch::config::Layer::default(),
        Some(&notes),
    );
    let (addr, _handle) = server::spawn(state, "127.0.0.1:0").unwrap();
    b.goto(&format!("http://{addr}/#/fill-mask"));
    b.wait_text("#fill-mask-unavailable", "no masked-language-model head");
    b.wait_text("#adapt-cli", "clinsearch finetune mlm --base");
    let steps = b.wait("#adapt-steps");
    b.script("arguments[0].value = '3'", vec![json!({ELEMENT: steps})]);
    b.click(&b.wait("#adapt-start"));
    b.wait("#adapt-out progress");
    b.screenshot("fill-mask-adapt");
    // When the job ends the page names the adapted model and predicts with it.
    b.wait_text("#fill-mask-model", "adapted on this server's notes");
    let area = b.wait("#mask-text");
    b.script("arguments[0].value = ''", vec![json!({ELEMENT: area})]);
    b.send_keys(&area, "the patient has [MASK] pain");
    b.click(&b.wait("form button.primary"));
    b.wait("#mask-out table tr");
    assert_eq!(b.find_all("#mask-out table tr").len(), 5);
}

#[test]
fn the_evaluation_page_plots_recall_and_opens_a_query_side_by_side() {
    let _heavy = crate::common::heavy();
    let Some(b) = Browser::start() else { return };
    let (_dir, url) = serve();
    b.goto(&format!("{url}/#/eval"));
    b.click(&b.wait("#eval-run"));
    b.wait("#recall-chart");
    // One recall curve per mode, the metrics table and the pairwise comparison.
    assert_eq!(b.find_all("#recall-chart polyline").len(), 3);
    assert_eq!(b.find_all("#eval-metrics tbody tr").len(), 3);
    assert_eq!(b.find_all("#eval-pairs tbody tr").len(), 3);
    let rows = b.find_all("#eval-per-query tbody tr");
    assert_eq!(rows.len(), 45);
    b.screenshot("eval");
    // Open a query: three rankings side by side, relevant notes marked, missing ones listed.
    b.click(&rows[0]);
    b.wait("#eval-detail .column[data-mode=hybrid] .hit");
    assert_eq!(b.find_all("#eval-detail .column").len(), 3);
    let marked = b.find_all("#eval-detail .hit.relevant").len();
    let missing = b.find_all("#eval-detail ul.missing li").len();
    assert!(
        marked + missing > 0,
        "the judged relevant notes appear, in the rankings or as missing"
    );
    let heading = b.text(&b.wait("#eval-detail h2"));
    assert!(heading.starts_with("Query q01"), "{heading}");
    b.screenshot("eval-query");

    // Tuning the fusion from the page: the held-out figure against RRF, the stored choice.
    b.script("window.scrollTo(0, 0)", vec![]);
    b.click(&b.wait("#eval-tune"));
    // Tuning runs the 45 queries under every note score and cross-validates: on two cores
    // shared with the rest of the suite it can take a few minutes.
    b.wait_for("#tune-result", Duration::from_secs(300));
    let result = b.wait_text("#tune-result", "Held-out hybrid nDCG@10");
    assert!(result.contains("45 queries of set sample"), "{result}");
    assert!(result.contains("RRF k=60"), "{result}");
    let choice = b.text(&b.wait("#tune-choice"));
    assert!(
        choice.contains("stored as this collection's default"),
        "{choice}"
    );
    assert_eq!(
        b.find_all("#tune-result tbody tr").len(),
        5,
        "one row per fold"
    );
    b.screenshot("eval-tune");
}

#[test]
fn with_keys_the_ui_asks_for_one_and_shows_the_audit_to_admins_only() {
    use clinsearch::auth::{sha256_hex, KeyEntry, Role};
    let Some(b) = Browser::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, role, k: &str| KeyEntry {
        name: name.into(),
        role,
        sha256: sha256_hex(k.as_bytes()),
        filter: None,
    };
    let layer = clinsearch::config::Layer {
        keys: Some(vec![
            key("alice", Role::Read, "alice-key"),
            key("ada", Role::Admin, "ada-key"),
        ]),
        ..Default::default()
    };
    let notes = repo_root().join("sample_corpus").join("notes.jsonl");
    let state = crate::server::seeded_state(dir.path(), layer, Some(&notes));
    let (addr, _handle) = server::spawn(state, "127.0.0.1:0").unwrap();
    let url = format!("http://{addr}");
    b.goto(&format!("{url}/#/search?q=chest%20pain"));
    let input = b.wait("#key-dialog[open] #key-input");
    b.send_keys(&input, "alice-key\u{E007}");
    b.wait(".column[data-mode=hybrid] .hit");
    let hidden =
        |b: &Browser| b.script("return document.getElementById('nav-audit').hidden", vec![]);
    assert_eq!(hidden(&b), json!(true), "a read key sees no Audit page");
    // The admin's view of what alice just did.
    b.script(
        "sessionStorage.setItem('clinsearch-key', 'ada-key'); location.reload()",
        vec![],
    );
    b.wait(".column[data-mode=hybrid] .hit");
    let t = Instant::now();
    while hidden(&b) != json!(false) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the admin never saw the Audit link"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.goto(&format!("{url}/#/audit?principal=alice&action=search"));
    let rows = b.wait_text("#audit-table tbody", "alice");
    assert!(rows.contains("search") && rows.contains("200"), "{rows}");
    assert!(
        b.wait_text("#audit-count", "event").starts_with('1'),
        "one search by alice"
    );
    b.screenshot("audit");
}

#[test]
fn expansions_show_under_the_box_and_the_affirmed_toggle_marks_and_mutes_negations() {
    let Some(b) = Browser::start() else { return };
    let (_dir, url) = serve();
    // UTI: the notes write "urinary tract infection"; the reply's expansion shows as a chip.
    b.goto(&format!("{url}/#/search?q=UTI%20BUN"));
    let chips = b.wait_text("#expansions", "urinary tract infection");
    assert!(chips.contains("BUN"), "{chips}");
    assert!(!b.find_all(".column[data-mode=bm25] .hit").is_empty());
    b.screenshot("expansions");
    // Removing one expansion searches again without it, and keeps it removed.
    let remove = b.wait(".expansion[data-from=UTI] button.remove");
    b.click(&remove);
    b.wait_text("#summary", "ms");
    let hash = b.script("return location.hash", vec![]);
    assert!(hash.as_str().unwrap().contains("expand_skip=uti"), "{hash}");
    let chips = b.text(&b.wait("#expansions"));
    assert!(
        !chips.contains("urinary") && chips.contains("BUN"),
        "{chips}"
    );

    // "melena": most notes only deny it; the badge says so, and the toggle leaves them out.
    b.goto(&format!("{url}/#/search?q=melena&view=fused"));
    b.wait(".columns.single .hit");
    assert!(
        !b.find_all(".badge.assertion.negated").is_empty(),
        "negated hits are badged"
    );
    let toggle = b.wait("#affirmed");
    b.click(&toggle);
    let submit = b.wait("#search-form button[type=submit]");
    b.click(&submit);
    b.wait_text("#summary", "ms");
    let hash = b.script("return location.hash", vec![]);
    assert!(
        hash.as_str().unwrap().contains("assertion=affirmed"),
        "{hash}"
    );
    b.wait(".columns.single .hit");
    let badges = b.find_all(".columns.single .hit:nth-child(-n+3) .badge.assertion.negated");
    assert!(badges.is_empty(), "the first hits affirm melena");
    b.screenshot("affirmed");

    // A note that denies melena: its negated scope is muted with the trigger in bold.
    b.goto(&format!("{url}/#/note/P1000-01?q=melena"));
    b.wait("#note-text .scope.negated");
    let trigger = b.text(&b.wait("#note-text .trigger.negated"));
    assert!(!trigger.is_empty());
    // Advanced syntax: an unclosed quote is an error naming the position.
    b.goto(&format!("{url}/#/search?q=%22chest%20pain&syntax=advanced"));
    let err = b.wait_text("#results", "character");
    assert!(err.contains("never closed"), "{err}");
}

#[test]
fn entity_chips_filter_the_search_facets_count_and_the_note_marks_entities() {
    let Some(b) = Browser::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = crate::ner::tagged_notes_state(dir.path());
    let (addr, _handle) = server::spawn(state, "127.0.0.1:0").unwrap();
    let url = format!("http://{addr}");
    b.goto(&format!("{url}/#/search?q=pneumonia%20heparin&view=fused"));
    b.wait(".column[data-mode=hybrid] .hit .chip");
    let facets = b.wait_text("#entity-facets", "Entities in the results");
    assert!(
        facets.contains("pneumonia") && facets.contains("patients"),
        "{facets}"
    );
    b.screenshot("entities-search");
    // A chip on a hit adds its entity filter: only notes mentioning it remain.
    let chip = b.wait(".hit .chip[data-entity='disease:pneumonia']");
    b.click(&chip);
    b.wait_text("#entity-filters", "disease:pneumonia");
    let t = Instant::now();
    loop {
        let ids: Vec<String> = b
            .find_all(".column[data-mode=hybrid] .hit")
            .iter()
            .map(|h| b.attr(h, "data-id"))
            .collect();
        if !ids.is_empty() && ids.iter().all(|i| ["N1", "N3", "N5"].contains(&i.as_str())) {
            assert!(!ids.contains(&"N2".to_string()));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "still {ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The note view marks entities by type, the negated one muted.
    b.goto(&format!("{url}/#/note/N3"));
    let ent = b.wait("#note-text .entity.ent-disease");
    assert_eq!(b.text(&ent), "pneumonia");
    assert!(
        b.attr(&ent, "class").contains("unaffirmed"),
        "{}",
        b.attr(&ent, "class")
    );
    b.screenshot("entities-note");
}

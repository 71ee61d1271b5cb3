//! Ingest and storage: sled as the source of truth, BM25 and vectors derived from it.

use std::path::Path;

use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::index::Filter;
use clinsearch::ingest::{self, source, CsvMapping, Format, IngestOptions, OnError};
use clinsearch::model::{Encoder, EncoderOptions, WindowConfig};
use clinsearch::store::ModelIdentity;

use crate::common::*;

pub fn tiny_encoder() -> Encoder {
    load(&fixture("tiny-mlm-uncased"), tiny_options())
}

/// The small windows the ingest and server tests use with the tiny fixtures.
pub fn tiny_options() -> EncoderOptions {
    EncoderOptions {
        window: WindowConfig {
            size: Some(24),
            stride: Some(4),
            max_windows: Some(16),
            context: None,
        },
        ..Default::default()
    }
}

fn open(dir: &Path, enc: &Encoder) -> Engine {
    Engine::open(
        dir,
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap()
}

fn ingest_file(
    engine: &Engine,
    enc: &Encoder,
    path: &Path,
    on_error: OnError,
) -> ingest::IngestReport {
    let sources = vec![source::read(path, Format::Auto, &CsvMapping::default())];
    ingest::run(
        engine,
        enc,
        sources,
        None,
        &IngestOptions {
            batch_size: 4,
            on_error,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Opens `dir` and ingests the three notes of `NOTES` into it.
fn seeded(tmp: &Path, dir: &Path, enc: &Encoder) -> Engine {
    let engine = open(dir, enc);
    let report = ingest_file(
        &engine,
        enc,
        &write(tmp, "seed.jsonl", NOTES.as_bytes()),
        OnError::Abort,
    );
    assert_eq!(report.notes, 3);
    engine
}

fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

const NOTES: &str = r#"{"id": "n1", "title": "Discharge summary", "text": "Admitted for NSTEMI, started on heparin and aspirin 81 mg daily.", "patient_id": "P1", "note_type": "discharge summary", "date": "2024-03-02"}
{"id": "n2", "text": "Chest x-ray shows right lower lobe pneumonia. Started ceftriaxone.", "patient_id": "P2", "note_type": "radiology report", "date": "2024-03-05"}
{"id": "n3", "text": "Denies chest pain. Metoprolol 25 mg BID continued for atrial fibrillation.", "patient_id": "P1", "note_type": "progress note", "date": "2024-04-01"}
"#;

#[test]
fn ingested_notes_are_in_sled_bm25_and_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let engine = open(&tmp.path().join("data"), &enc);
    let report = ingest_file(
        &engine,
        &enc,
        &write(tmp.path(), "notes.jsonl", NOTES.as_bytes()),
        OnError::Abort,
    );
    assert_eq!(report.notes, 3);
    assert!(report.chunks >= 3);
    for id in ["n1", "n2", "n3"] {
        assert_eq!(engine.presence(id).unwrap(), (true, true, true), "{id}");
    }
    let hits = engine
        .bm25
        .search("pneumonia", 10, &Filter::default())
        .unwrap();
    assert_eq!(hits[0].0, "n2");
    let filtered = engine
        .bm25
        .search(
            "chest",
            10,
            &Filter {
                patient_id: Some("p1".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(filtered.iter().all(|(id, _)| id == "n1" || id == "n3"));
    let q = enc.embed(&["pneumonia on chest x-ray"]).unwrap().remove(0);
    let near = engine.vectors.search(&q, 3, 64, None);
    assert!(!near.is_empty());
    let stored = engine.store.get("n1").unwrap().unwrap();
    assert_eq!(stored.note.date.as_deref(), Some("2024-03-02"));
    // Chunk spans map back into the note text.
    for c in engine.store.chunks_of(&stored).unwrap() {
        assert!(c.end <= stored.note.text.len() && c.start < c.end);
        assert_eq!(c.vector.len(), 32);
    }
}

#[test]
fn reingesting_an_id_replaces_it_everywhere_and_delete_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let engine = open(&tmp.path().join("data"), &enc);
    let file = write(tmp.path(), "a.jsonl", NOTES.as_bytes());
    ingest_file(&engine, &enc, &file, OnError::Abort);
    let chunks_before = engine.store.chunk_count();
    ingest_file(&engine, &enc, &file, OnError::Abort);
    assert_eq!(engine.store.note_count(), 3);
    assert_eq!(
        engine.store.chunk_count(),
        chunks_before,
        "old chunks are replaced"
    );
    assert_eq!(engine.bm25.num_docs(), 3, "no duplicate in BM25");
    assert_eq!(
        engine.vectors.len(),
        chunks_before,
        "no duplicate live vectors"
    );
    let changed = write(
        tmp.path(),
        "b.jsonl",
        br#"{"id": "n2", "text": "Renal ultrasound: hydronephrosis."}"#,
    );
    ingest_file(&engine, &enc, &changed, OnError::Abort);
    assert!(engine
        .bm25
        .search("pneumonia", 10, &Filter::default())
        .unwrap()
        .is_empty());
    assert_eq!(
        engine
            .bm25
            .search("hydronephrosis", 10, &Filter::default())
            .unwrap()[0]
            .0,
        "n2"
    );

    assert_eq!(engine.delete(&["n1".into(), "missing".into()]).unwrap(), 1);
    assert_eq!(engine.presence("n1").unwrap(), (false, false, false));
    let q = enc.embed(&["NSTEMI heparin aspirin"]).unwrap().remove(0);
    assert!(engine
        .vectors
        .search(&q, 10, 64, None)
        .iter()
        .all(|h| &*h.note_id != "n1"));
}

#[test]
fn indexes_catch_up_or_rebuild_from_the_store_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let enc = tiny_encoder();
    {
        let _engine = seeded(tmp.path(), &dir, &enc);
        // No checkpoint: the vector dump is missing, as after a crash.
    }
    {
        let engine = open(&dir, &enc);
        for id in ["n1", "n2", "n3"] {
            assert_eq!(
                engine.presence(id).unwrap(),
                (true, true, true),
                "{id} after reopen"
            );
        }
        engine.checkpoint().unwrap();
    }
    // Both derived indexes lost: rebuilt from the stored vectors.
    std::fs::remove_dir_all(dir.join("bm25")).unwrap();
    std::fs::write(dir.join("vectors").join("vectors.json"), b"{ not json").unwrap();
    let engine = open(&dir, &enc);
    for id in ["n1", "n2", "n3"] {
        assert_eq!(
            engine.presence(id).unwrap(),
            (true, true, true),
            "{id} after rebuild"
        );
    }
    assert_eq!(
        engine
            .bm25
            .search("ceftriaxone", 5, &Filter::default())
            .unwrap()[0]
            .0,
        "n2"
    );
}

#[test]
fn opening_a_data_directory_with_another_model_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let enc = tiny_encoder();
    drop(open(&dir, &enc));
    let other = load(&fixture("tiny-st-sharded"), EncoderOptions::default());
    let err = Engine::open(
        &dir,
        Some(&ModelIdentity::from_info(other.info())),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("another model"), "{err}");
}

#[test]
fn malformed_lines_are_reported_with_file_and_line_and_abort_stores_nothing_of_their_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let mut content = String::new();
    for i in 0..6 {
        content.push_str(&format!(
            "{{\"id\": \"ok{i}\", \"text\": \"fever and cough day {i}\"}}\n"
        ));
    }
    content.push_str("{\"id\": \"bad\", \"text\": \n"); // line 7
    content.push_str("{\"id\": \"after\", \"text\": \"never stored in abort mode\"}\n");
    let file = write(tmp.path(), "notes.jsonl", content.as_bytes());

    let engine = open(&tmp.path().join("abort"), &enc);
    let report = ingest_file(&engine, &enc, &file, OnError::Abort);
    let reason = report.aborted.expect("aborted");
    assert!(
        reason.starts_with(&format!("{}:7: invalid JSON", file.display())),
        "{reason}"
    );
    // Batches of 4: the first batch (ok0..ok3) is stored, the batch holding line 7 is not.
    assert_eq!(engine.store.note_count(), 4);
    assert!(engine.store.get("ok4").unwrap().is_none());

    let engine = open(&tmp.path().join("skip"), &enc);
    let report = ingest_file(&engine, &enc, &file, OnError::Skip);
    assert_eq!(report.notes, 7);
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].contains(":7:"));
}

#[test]
fn bad_records_of_every_kind_are_reported_not_half_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"id\": \"a\", \"text\": \"chest pain\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"utf\", \"text\": \"bad \xff\xfe bytes\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"empty\", \"text\": \"   \"}\n");
    bytes.extend_from_slice(b"{\"id\": \"a\", \"text\": \"duplicate id\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"date\", \"text\": \"x\", \"date\": \"2024-02-30\"}\n");
    bytes.extend_from_slice(b"{\"id\": \"notext\"}\n");
    bytes.extend_from_slice(b"[1, 2]\n");
    let big = format!(
        "{{\"id\": \"huge\", \"text\": \"{}\"}}\n",
        "patient denies chest pain ".repeat(20_000)
    );
    bytes.extend_from_slice(big.as_bytes());
    let file = write(tmp.path(), "bad.jsonl", &bytes);
    let engine = open(&tmp.path().join("data"), &enc);
    let report = ingest_file(&engine, &enc, &file, OnError::Skip);
    let lines: Vec<&str> = report
        .errors
        .iter()
        .map(|e| e.split_once(".jsonl:").unwrap().1)
        .collect();
    assert_eq!(report.errors.len(), 6, "{:#?}", report.errors);
    for (line, what) in [
        ("2", "UTF-8"),
        ("3", "empty"),
        ("4", "duplicate"),
        ("5", "date"),
        ("6", "text"),
        ("7", "object"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(line) && l.contains(what)),
            "line {line} ({what}): {lines:?}"
        );
    }
    assert_eq!(report.notes, 2);
    assert_eq!(
        report.capped, 1,
        "the enormous note is capped at the window limit"
    );
    let huge = engine.store.get("huge").unwrap().unwrap();
    assert!(huge.windows_capped);
    assert_eq!(huge.chunk_ids.len(), 16);
    assert_eq!(engine.presence("huge").unwrap(), (true, true, true));
}

#[test]
fn csv_with_column_mapping_and_txt_folders_are_ingested() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let csv = write(
        tmp.path(),
        "notes.csv",
        b"note_id,description,medical_specialty,transcription\n7,Knee pain,Orthopedic,\"Left knee pain, worse with stairs.\nMRI ordered.\"\n8,Cough,Pulmonology,Chronic cough with wheezing.\n",
    );
    let engine = open(&tmp.path().join("data"), &enc);
    let mapping = CsvMapping {
        text_col: "transcription".into(),
        id_col: Some("note_id".into()),
        title_col: Some("description".into()),
        meta_cols: source::parse_meta_cols(&["medical_specialty=specialty".into()]).unwrap(),
    };
    let report = ingest::run(
        &engine,
        &enc,
        vec![source::read(&csv, Format::Auto, &mapping)],
        None,
        &IngestOptions::default(),
    )
    .unwrap();
    assert_eq!(report.notes, 2);
    let n7 = engine.store.get("7").unwrap().unwrap().note;
    assert_eq!(n7.title.as_deref(), Some("Knee pain"));
    assert_eq!(n7.specialty.as_deref(), Some("Orthopedic"));
    assert!(n7.text.contains("MRI ordered"));

    let folder = tmp.path().join("txt");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(
        folder.join("op-note-1.txt"),
        "Laparoscopic appendectomy without complication.",
    )
    .unwrap();
    std::fs::write(
        folder.join("sub").join("path-2.txt"),
        "Benign appendix with acute inflammation.",
    )
    .unwrap();
    std::fs::write(folder.join("skip.md"), "not a note").unwrap();
    let report = ingest_file(&engine, &enc, &folder, OnError::Abort);
    assert_eq!(report.notes, 2);
    assert!(engine.store.get("op-note-1").unwrap().is_some());
    assert!(engine.store.get("sub/path-2").unwrap().is_some());

    let bad = write(
        tmp.path(),
        "bad.csv",
        b"id,text\n1,fine\n2,too,many,fields\n",
    );
    let report = ingest_file(&engine, &enc, &bad, OnError::Skip);
    assert_eq!(report.notes, 1);
    assert!(
        report.errors[0].contains("bad.csv:3: malformed CSV row"),
        "{:?}",
        report.errors
    );
}

#[test]
fn searches_keep_working_while_an_ingest_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let engine = seeded(tmp.path(), &tmp.path().join("data"), &enc);
    let mut big = String::new();
    for i in 0..400 {
        big.push_str(&format!("{{\"id\": \"bulk{i}\", \"text\": \"progress note {i}: fever, cough, started ceftriaxone\"}}\n"));
    }
    let file = write(tmp.path(), "bulk.jsonl", big.as_bytes());
    let q = enc.embed(&["aspirin heparin"]).unwrap().remove(0);
    std::thread::scope(|s| {
        let writer = s.spawn(|| ingest_file(&engine, &enc, &file, OnError::Abort));
        let mut searches = 0;
        while !writer.is_finished() || searches < 20 {
            let hits = engine
                .bm25
                .search("aspirin", 5, &Filter::default())
                .unwrap();
            assert_eq!(hits[0].0, "n1");
            assert!(!engine.vectors.search(&q, 5, 64, None).is_empty());
            searches += 1;
        }
        assert_eq!(writer.join().unwrap().notes, 400);
    });
    assert_eq!(engine.store.note_count(), 403);
}

#[test]
fn reembedding_with_another_model_replaces_every_vector_and_keeps_every_note() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let enc = tiny_encoder();
    {
        let engine = seeded(tmp.path(), &dir, &enc);
        engine.checkpoint().unwrap();
    }
    let other = load(&fixture("tiny-st-sharded"), EncoderOptions::default());
    let report = clinsearch::engine::reembed(&dir, &other).unwrap();
    assert_eq!(report.notes, 3);
    let engine = Engine::open(
        &dir,
        Some(&ModelIdentity::from_info(other.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(
        engine.identity().unwrap().unwrap(),
        ModelIdentity::from_info(other.info())
    );
    for id in ["n1", "n2", "n3"] {
        assert_eq!(engine.presence(id).unwrap(), (true, true, true), "{id}");
        let stored = engine.store.get(id).unwrap().unwrap();
        assert!(stored.note.patient_id.is_some(), "metadata kept");
    }
    // The old model no longer opens it.
    assert!(Engine::open(
        &dir,
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default()
    )
    .is_err());
}

#[test]
fn a_title_is_embedded_with_its_note_and_spans_still_point_into_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let engine = open(tmp.path(), &enc);
    let mut note = clinsearch::note::Note::new(
        "t1",
        "Troponin peaked at 6.6; cardiology consulted for catheterisation.",
    );
    note.title = Some("ED note - NSTEMI".into());
    let windows = ingest::embed_notes(&enc, &[&note])
        .unwrap()
        .remove(0)
        .unwrap();
    engine
        .apply(
            &[clinsearch::store::EmbeddedNote::new(
                note.clone(),
                windows.clone(),
            )],
            &[],
        )
        .unwrap();
    let stored = engine.store.get("t1").unwrap().unwrap();
    let chunks = engine.store.chunks_of(&stored).unwrap();
    // The vector is the embedding of "title\ntext"'s first window...
    let direct = enc
        .embed_windows(&[
            "ED note - NSTEMI\nTroponin peaked at 6.6; cardiology consulted for catheterisation.",
        ])
        .unwrap();
    assert!(max_abs_diff(&chunks[0].vector, &direct[0][0].vector) < 1e-6);
    // ...and the spans are in the note's text, not in the title-prefixed input.
    assert_eq!(chunks[0].start, 0);
    let last = chunks.last().unwrap();
    assert_eq!(last.end, note.text.len());
    assert_eq!(
        &note.text[chunks[1].start..chunks[1].end],
        &note.text[windows[1].start..windows[1].end]
    );
    assert_eq!(engine.identity().unwrap().unwrap().input, "title+text");
}

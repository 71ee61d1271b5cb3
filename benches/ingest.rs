//! Ingest throughput on MTSamples (../shared/data/mtsamples/mtsamples.csv, 4,999 real
//! transcribed reports) into a fresh data directory: notes/s, chunks/s and the time of each
//! stage (parse, embed, sled, tantivy, hnsw). Goal: everything but embedding at most 10% of the
//! wall time. `BENCH_NOTES=N` ingests only the first N notes (default: all); `BENCH_DTYPE`
//! picks the encoder's precision (f32 by default, or int8, f16, bf16). `BENCH_TAGGER=DIR`
//! (a folder made by `finetune ner`, e.g. `target/ner-bench/ncbi_disease-finetuned` after
//! `cargo bench --bench ner`) also tags every note: the `tag` stage is the tagging overhead,
//! a second forward pass per window of the tagger's own (512-token) windows.
//!
//! `cargo bench --bench ingest`.

use clinsearch::engine::{Engine, OpenOptions};
use clinsearch::ingest::{self, source, CsvMapping, Format, IngestOptions, OnError};
use clinsearch::model::{parse_precision, tune_allocator, Encoder, EncoderOptions, WindowConfig};
use clinsearch::store::ModelIdentity;

fn main() {
    tune_allocator();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let csv = root.join("../shared/data/mtsamples/mtsamples.csv");
    if !csv.is_file() {
        eprintln!("skipped: {} is absent", csv.display());
        return;
    }
    let model = std::env::var("BENCH_MODEL")
        .unwrap_or_else(|_| root.join("models/all-MiniLM-L6-v2").display().to_string());
    let limit: Option<usize> = std::env::var("BENCH_NOTES")
        .ok()
        .and_then(|s| s.parse().ok());
    let (dtype, int8) =
        parse_precision(&std::env::var("BENCH_DTYPE").unwrap_or_else(|_| "f32".into()))
            .expect("BENCH_DTYPE");
    let enc = Encoder::load(
        &model,
        &EncoderOptions {
            window: WindowConfig {
                max_windows: Some(256),
                ..Default::default()
            },
            dtype,
            int8,
            ..Default::default()
        },
    )
    .expect("load the model (make model)");
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        tmp.path(),
        Some(&ModelIdentity::from_info(enc.info())),
        &OpenOptions::default(),
    )
    .unwrap();
    let mapping = CsvMapping {
        text_col: "transcription".into(),
        id_col: Some("note_id".into()),
        title_col: Some("description".into()),
        meta_cols: vec![("medical_specialty".into(), "specialty".into())],
    };
    let records = source::read(&csv, Format::Csv, &mapping);
    let records: Box<dyn Iterator<Item = source::Item> + Send> = match limit {
        Some(n) => Box::new(records.take(n)),
        None => records,
    };
    let tagger = std::env::var("BENCH_TAGGER").ok().map(|t| {
        std::sync::Arc::new(
            clinsearch::ner::TokenClassifier::load(&t, &candle_core::Device::Cpu)
                .expect("load BENCH_TAGGER"),
        )
    });
    let report = ingest::run(
        &engine,
        &enc,
        vec![records],
        None,
        &IngestOptions {
            on_error: OnError::Skip,
            tagger: tagger.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let t = std::time::Instant::now();
    engine.checkpoint().unwrap();
    let checkpoint = t.elapsed().as_secs_f64();
    let s = &report.stages;
    let wall = report.seconds;
    println!(
        "MTSamples ingest ({}): {} notes, {} chunks, {} skipped (empty transcriptions)",
        enc.info().dtype,
        report.notes,
        report.chunks,
        report.errors.len()
    );
    println!(
        "wall {wall:.1} s: {:.2} notes/s, {:.2} chunks/s",
        report.notes as f64 / wall,
        report.chunks as f64 / wall
    );
    println!("{:<10} {:>9} {:>8}", "stage", "seconds", "of wall");
    for (name, secs) in [
        ("parse", s.parse),
        ("embed", s.embed),
        ("  annotate", s.annotate),
        ("  tag", s.tag),
        ("sled", s.sled),
        ("tantivy", s.tantivy),
        ("hnsw", s.hnsw),
        ("hnsw dump", checkpoint),
    ] {
        println!("{name:<10} {secs:>9.2} {:>7.1}%", 100.0 * secs / wall);
    }
    let non_embed = s.parse + s.sled + s.tantivy + s.hnsw + checkpoint;
    println!(
        "everything but embedding: {:.1}% of the wall time (goal <= 10%)",
        100.0 * non_embed / wall
    );
    println!(
        "assertion annotation: {:.2}% of the wall time (goal < 5%)",
        100.0 * s.annotate / wall
    );
    if let Some(t) = &tagger {
        let entities: usize = engine
            .store
            .notes()
            .map(|n| n.map(|n| n.entities.len()).unwrap_or(0))
            .sum();
        println!(
            "tagging with {}: {:.1} s, {:.1}% of the wall time, {:.2}x the embedding time; {entities} entities",
            t.spec,
            s.tag,
            100.0 * s.tag / wall,
            s.tag / (s.embed - s.tag - s.annotate).max(1e-9)
        );
    }
}

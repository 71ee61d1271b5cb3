//! `clinsearch export`: a search's every hit as CSV or JSON Lines from the command line, as
//! `/api/search/export` gives it, recorded in the data directory's access audit.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::{DataArgs, ModelArgs};
use crate::search::export::{self, ExportFormat};
use crate::search::{GroupBy, SearchRequest, Searcher};

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Loaded for semantic and hybrid searches (the data directory's model).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The query, as typed in the search box.
    #[arg(long)]
    pub q: String,
    /// bm25, semantic or hybrid.
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// csv or jsonl.
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// note (one row per note) or patient (one row per patient).
    #[arg(long, default_value = "note")]
    pub group_by: String,
    /// Most rows [default: 10000].
    #[arg(long, default_value_t = 10_000)]
    pub max_rows: usize,
    #[arg(long)]
    pub note_type: Option<String>,
    #[arg(long)]
    pub specialty: Option<String>,
    #[arg(long)]
    pub patient_id: Option<String>,
    /// YYYY-MM-DD, inclusive.
    #[arg(long)]
    pub date_from: Option<String>,
    #[arg(long)]
    pub date_to: Option<String>,
    /// TYPE:VALUE, repeatable (all must match).
    #[arg(long)]
    pub entity: Vec<String>,
    /// Any other search parameter as NAME=VALUE (fusion=rrf, assertion=affirmed, ...).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// A TSV of abbreviations laid over the shipped dictionary (as the server's).
    #[arg(long, env = "CLINSEARCH_ABBREVIATIONS")]
    pub abbreviations: Option<std::path::PathBuf>,
}

/// The most rows an export may have (the search's deepest page).
pub const MAX_EXPORT_ROWS: usize = 10_000;

pub fn run(args: ExportArgs) -> Result<()> {
    let format: ExportFormat = args.format.parse()?;
    let mut pairs: Vec<(String, String)> = vec![
        ("q".into(), args.q.clone()),
        ("mode".into(), args.mode.clone()),
        ("group_by".into(), args.group_by.clone()),
    ];
    for (k, v) in [
        ("note_type", &args.note_type),
        ("specialty", &args.specialty),
        ("patient_id", &args.patient_id),
        ("date_from", &args.date_from),
        ("date_to", &args.date_to),
    ] {
        if let Some(v) = v {
            pairs.push((k.into(), v.clone()));
        }
    }
    for e in &args.entity {
        pairs.push(("entity".into(), e.clone()));
    }
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?}: write NAME=VALUE"))?;
        pairs.push((k.trim().into(), v.into()));
    }
    let req = SearchRequest::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    export::check(&req, args.max_rows, MAX_EXPORT_ROWS)?;
    req.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        args.data.dir.join("sled").is_dir(),
        "{}: no data directory here (ingest notes first)",
        args.data.dir.display()
    );
    let encoder = if req.mode.needs_vector() {
        Some(args.model.load_for(&args.data.dir)?)
    } else {
        None
    };
    let identity = encoder
        .as_ref()
        .map(|e| crate::store::ModelIdentity::from_info(e.info()));
    let engine = crate::engine::Engine::open(
        &args.data.dir,
        identity.as_ref(),
        &crate::engine::OpenOptions::default(),
    )
    .with_context(|| format!("opening data directory {}", args.data.dir.display()))?;
    let qv = match &encoder {
        Some(e) => Some(e.embed(&[&req.embedding_text()])?.remove(0)),
        None => None,
    };
    let mut searcher = Searcher::new(&engine);
    searcher.abbreviations =
        crate::clinical::abbrev::Dictionary::load(args.abbreviations.as_deref())?;

    // Pass 1: the notes the export holds, recorded in the audit before any is written.
    let cohort = export::find(&searcher, &req, qv.as_deref(), args.max_rows)?;
    audit(
        &args.data.dir,
        &cohort.notes,
        &cohort.patients,
        Some(&req.q),
    )?;

    // Pass 2: the rows.
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut io_error = None;
    let rows = export::write_rows(
        &searcher,
        &req,
        qv.as_deref(),
        args.max_rows,
        &cohort,
        format,
        &mut |line| match out.write_all(line.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                io_error = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = io_error {
        return Err(e).context("writing the export");
    }
    out.flush()?;
    let unit = if req.group_by == GroupBy::Patient {
        "patients"
    } else {
        "notes"
    };
    eprintln!(
        "exported {rows} {unit} ({} notes of {} patients recorded in the access audit)",
        cohort.notes.len(),
        cohort.patients.len()
    );
    Ok(())
}

/// One `export` line in the data directory's access audit, as the server writes for its
/// export route: who (the operating-system user), which notes and patients, the query's hash
/// (`export` and `export-vectors` write it before any note leaves the store).
pub(crate) fn audit(
    data: &std::path::Path,
    notes: &[String],
    patients: &[String],
    query: Option<&str>,
) -> Result<()> {
    let log = crate::audit::AuditLog::open(&data.join("audit"))?;
    let draft = crate::audit::Draft::local(
        "export",
        "command line",
        notes.to_vec(),
        patients.to_vec(),
        query,
    );
    log.append_blocking(draft)
        .context("writing the access audit (nothing was exported)")
}

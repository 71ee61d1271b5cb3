//! `clinsearch ingest --vectors` / `--npy` (the checks made before anything is stored) and
//! `clinsearch export-vectors`. The formats are [`crate::ingest::vectors`]'s.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cli::DataArgs;
use crate::ingest::source::{self, Format, Item};
use crate::ingest::vectors::{self, Header, NpyMatrix, RowsUsed};
use crate::store::ModelIdentity;

type Source = Box<dyn Iterator<Item = Item> + Send>;

/// What an import checked up front: every JSONL header against the data directory's model,
/// and the NumPy matrix (its dimension), so that a mismatch stops the run before it stores a
/// note.
pub struct ImportChecks {
    npy: RefCell<Option<NpyMatrix>>,
    npy_path: Option<PathBuf>,
    rows: u64,
    used: Arc<RowsUsed>,
}

impl ImportChecks {
    pub fn new(
        paths: &[PathBuf],
        format: Format,
        npy: Option<&Path>,
        identity: &ModelIdentity,
    ) -> Result<ImportChecks> {
        for p in paths {
            if !matches!(source::detect(p, format), Format::Jsonl | Format::Beir) || p.is_dir() {
                continue;
            }
            if let Some(h) = Header::read(p)? {
                h.check(identity)
                    .map_err(|e| anyhow::anyhow!("{}:1: {e}; nothing was stored", p.display()))?;
            }
        }
        let matrix = match npy {
            None => None,
            Some(m) => {
                if paths.len() != 1 || source::detect(&paths[0], format) != Format::Jsonl {
                    bail!("--npy goes with one JSONL file of notes (its chunk map)");
                }
                let matrix = NpyMatrix::open(m)?;
                if matrix.dim() != identity.dim {
                    bail!(
                        "{}: the vectors have {} dimensions; the data directory's model ({}) makes {}; nothing was stored",
                        m.display(),
                        matrix.dim(),
                        identity.model,
                        identity.dim
                    );
                }
                Some(matrix)
            }
        };
        Ok(ImportChecks {
            rows: matrix.as_ref().map_or(0, NpyMatrix::rows),
            npy: RefCell::new(matrix),
            npy_path: npy.map(Path::to_path_buf),
            used: Arc::default(),
        })
    }

    /// The records of one input with their vectors: rows of the matrix filled in, and with
    /// `strict` (`--vectors`, implied by `--npy`) a note without vectors refused.
    pub fn wrap(&self, src: Source, strict: bool) -> Result<Source> {
        Ok(match self.npy.borrow_mut().take() {
            Some(m) => vectors::with_rows(src, Box::new(m), self.used.clone()),
            None if strict || self.npy_path.is_some() => vectors::require_vectors(src),
            None => src,
        })
    }

    /// Says so on standard error when the matrix held rows no note used.
    pub fn report_unused_rows(&self) {
        let used = self.used.count.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = &self.npy_path {
            if used < self.rows {
                eprintln!(
                    "warning: {} rows of {} were used by no stored note ({used} of {})",
                    self.rows - used,
                    p.display(),
                    self.rows
                );
            }
        }
    }
}

/// How the vector index is built (`ingest` records them in a new data directory; `reindex`
/// changes them, rebuilding the graph from the stored vectors).
#[derive(Args, Debug, Clone, Default)]
pub struct VectorArgs {
    /// Precision of the vectors the graph holds: f32, or int8 (a quarter of the memory; the
    /// candidates are rescored with the stored f32 vectors).
    #[arg(long, value_enum)]
    pub quantization: Option<crate::index::Quantization>,
    /// hnsw links per point and layer (M).
    #[arg(long)]
    pub hnsw_m: Option<usize>,
    /// hnsw candidates explored while linking a point.
    #[arg(long)]
    pub hnsw_ef_construction: Option<usize>,
    /// hnsw candidates explored per search (the default of `serve` and `eval`).
    #[arg(long)]
    pub hnsw_ef_search: Option<usize>,
}

impl VectorArgs {
    pub fn choice(&self) -> crate::index::VectorChoice {
        crate::index::VectorChoice {
            quantization: self.quantization,
            m: self.hnsw_m,
            ef_construction: self.hnsw_ef_construction,
            ef_search: self.hnsw_ef_search,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ExportVectorsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The JSONL to write (a header line, then one note per line with its chunks).
    #[arg(long)]
    pub out: PathBuf,
    /// Write the vectors as this NumPy float32 matrix instead (each chunk names its row).
    #[arg(long)]
    pub npy: Option<PathBuf>,
}

pub fn export(args: ExportVectorsArgs) -> Result<()> {
    let dir = &args.data.dir;
    crate::engine::require_existing(dir)?;
    anyhow::ensure!(
        dir.join("sled").is_dir(),
        "{}: no data directory",
        dir.display()
    );
    let store = crate::store::Store::open(dir)
        .with_context(|| format!("opening data directory {}", dir.display()))?;
    let identity = store
        .model_identity()?
        .with_context(|| format!("{} holds no notes yet", dir.display()))?;
    // Every note leaves the store: recorded in the access audit first, as `export` does.
    let mut notes = vec![];
    let mut patients = std::collections::BTreeSet::new();
    for n in store.notes() {
        let n = n?;
        patients.extend(n.note.patient_id.clone());
        notes.push(n.note.id);
    }
    let patients: Vec<String> = patients.into_iter().collect();
    crate::cli_export::audit(dir, &notes, &patients, None)?;
    let report = vectors::export(&store, &identity, &args.out, args.npy.as_deref())?;
    eprintln!(
        "exported {} notes ({} chunks) to {}{} in {:.1}s",
        report.notes,
        report.chunks,
        args.out.display(),
        args.npy
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default(),
        report.seconds
    );
    Ok(())
}

//! The command line. `main.rs` calls [`main`]; each subcommand is a thin call into the library.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::model::{self, Encoder, EncoderOptions, Pooling, WindowConfig};

/// Where `make run` puts the offline default model (sentence-transformers/all-MiniLM-L6-v2).
pub const DEFAULT_MODEL: &str = "models/all-MiniLM-L6-v2";

#[derive(Parser, Debug)]
#[command(
    name = "clinsearch",
    version,
    about = "Semantic search for clinical documents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Embed texts and print the vectors as JSON.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// Split long texts into overlapping windows and print one vector per window.
        #[arg(long)]
        windows: bool,
        /// Texts to embed ("-" reads one text per line from standard input).
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Predict the tokens behind each [MASK] (needs a checkpoint with an MLM head).
    FillMask {
        #[command(flatten)]
        model: ModelArgs,
        /// Candidates per mask.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// A text with one or more [MASK] tokens.
        text: String,
    },
    /// Ingest notes from JSONL, CSV, BEIR corpus.jsonl or folders of .txt files.
    Ingest {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// Files or folders to ingest.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        format: crate::ingest::Format,
        /// CSV column holding the note text.
        #[arg(long, default_value = "text")]
        text_col: String,
        /// CSV column holding the note id (default: a column named "id", else derived).
        #[arg(long)]
        id_col: Option<String>,
        /// CSV column holding the title.
        #[arg(long)]
        title_col: Option<String>,
        /// CSV metadata column, COLUMN=FIELD (patient_id, note_type, specialty, date, or any name).
        #[arg(long = "meta-col")]
        meta_cols: Vec<String>,
        /// skip: report bad records and go on; abort: stop before storing the batch holding one.
        #[arg(long, value_enum, default_value = "abort")]
        on_error: crate::ingest::OnError,
        /// Notes per batch (one durable commit each).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// At most this many windows per note; the rest of an enormous note is not embedded.
        #[arg(long, default_value_t = 256)]
        max_windows: usize,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Append the ids of each durably stored batch to this file.
        #[arg(long)]
        acks: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Tag every note's named entities with this folder made by `finetune ner` (recorded
        /// in the data directory: later ingests use it unless given another).
        #[arg(long, env = "CLINSEARCH_TAGGER")]
        tagger: Option<String>,
        /// Every note carries its chunks' vectors, embedded elsewhere (`chunks` with
        /// `char_start`, `char_end` and `vector`, or one `vector`): stored as given, checked
        /// against the data directory's model; a note without them is refused. (Notes with
        /// vectors are imported as given even without this flag.)
        #[arg(long)]
        vectors: bool,
        /// A NumPy matrix (float32/float64, chunks x dimensions) holding the vectors of the
        /// one JSONL given: each chunk names its `row` or takes the next one. Implies --vectors.
        #[arg(long)]
        npy: Option<std::path::PathBuf>,
        #[command(flatten)]
        index: crate::cli_vectors::VectorArgs,
    },
    /// Write every stored note with its chunks and vectors (JSONL, or JSONL plus a NumPy
    /// matrix), in the format `ingest --vectors` reads: a collection moves without re-embedding.
    ExportVectors(crate::cli_vectors::ExportVectorsArgs),
    /// Delete notes everywhere (store, BM25, vectors).
    Delete {
        #[command(flatten)]
        data: DataArgs,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Rebuild the BM25 and vector indexes from the stored notes and vectors (no re-embedding),
    /// or with --reembed, embed every stored note again with --model (another model).
    Reindex {
        #[command(flatten)]
        data: DataArgs,
        /// Re-embed all notes with --model into a fresh directory, then swap it in.
        #[arg(long)]
        reembed: bool,
        /// Tag every stored note again with --tagger (or the directory's recorded tagger),
        /// without re-embedding.
        #[arg(long, conflicts_with = "reembed")]
        retag: bool,
        /// The tagger for --retag (a folder made by `finetune ner`).
        #[arg(long, requires = "retag")]
        tagger: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        /// New vector index settings: recorded, then the graph is rebuilt with them.
        #[command(flatten)]
        index: crate::cli_vectors::VectorArgs,
    },
    /// Serve the HTTP API and the browser UI (loopback only unless an API key is set).
    Serve(ServeArgs),
    /// Evaluate BM25, semantic and hybrid search on judged queries (Recall@k, nDCG@10,
    /// MRR@10, MAP@100, wins and losses, significance), optionally writing TREC run files.
    Eval {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        eval: EvalArgs,
        /// Queries: BEIR queries.jsonl or `qid<TAB>text`.
        #[arg(long, required_unless_present = "set")]
        queries: Option<std::path::PathBuf>,
        /// Judgments: BEIR qrels TSV (or its folder: test.tsv) or TREC `qid 0 docid grade`.
        #[arg(long, required_unless_present = "set")]
        qrels: Option<std::path::PathBuf>,
        /// A query set stored in the data directory (see --save-set) instead of files.
        #[arg(long, conflicts_with_all = ["queries", "qrels"])]
        set: Option<String>,
        /// Also store the queries and judgments in the data directory under this name, for
        /// the API and the UI's Evaluation page.
        #[arg(long)]
        save_set: Option<String>,
    },
    /// Choose the hybrid fusion (method, weight, RRF k, candidate depth) on a stored judged
    /// set by 5-fold cross-validation and store it as the data directory's default.
    Tune {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// The stored query set (see `eval --save-set`).
        #[arg(long)]
        set: String,
        /// Report, but do not store the choice.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks over public data sets.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Counts and sizes of a data directory.
    Stats {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Fine-tune a model: a classification head, or the embedding model for retrieval.
    Finetune {
        #[command(subcommand)]
        command: crate::cli_train::FinetuneCommand,
    },
    /// Assertion status of clinical text: negated, possible, historical, family and
    /// hypothetical scopes, with their triggers.
    Annotate(crate::cli_clinical::AnnotateArgs),
    /// A search's every hit (up to --max-rows) as CSV or JSON Lines, one row per note or per
    /// patient (a cohort); recorded in the data directory's access audit.
    Export(crate::cli_export::ExportArgs),
    /// Classify texts with a model made by `finetune classify`; prints JSON.
    Classify {
        /// The fine-tuned classification folder (or Hub id).
        #[arg(long)]
        model: String,
        /// Labels with probabilities per text.
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// cpu, cuda, cuda:N or metal.
        #[arg(long, env = "CLINSEARCH_DEVICE", default_value = "cpu")]
        device: String,
        /// Texts to classify ("-" reads one text per line from standard input).
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Named entities of texts with a model made by `finetune ner`: type, character span,
    /// text and score.
    Tag {
        /// The fine-tuned token-classification folder (or Hub id).
        #[arg(long)]
        model: String,
        /// cpu, cuda, cuda:N or metal.
        #[arg(long, env = "CLINSEARCH_DEVICE", default_value = "cpu")]
        device: String,
        /// One JSON object per text instead of lines.
        #[arg(long)]
        json: bool,
        /// Score the tagger on a tagged file (CoNLL TSV or JSON Lines, as `finetune ner`
        /// reads) instead of tagging texts: seqeval's figures as JSON.
        #[arg(long, conflicts_with = "texts")]
        eval: Option<std::path::PathBuf>,
        /// Texts to tag ("-" reads one text per line from standard input).
        #[arg(required_unless_present = "eval")]
        texts: Vec<String>,
    },
    /// Manage the server's API keys (named principals with roles) in its configuration file.
    Keys {
        #[command(subcommand)]
        command: crate::cli_access::KeysCommand,
    },
    /// Who accessed which notes: report from the access audit of a data directory, or
    /// `audit verify` to check its hash chain.
    Audit(crate::cli_access::AuditArgs),
    /// Inspect or download models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Ingest a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) into a data directory and
    /// evaluate it in one go. An existing data directory is completed, not re-embedded.
    Beir {
        /// The BEIR folder.
        dir: std::path::PathBuf,
        /// Data directory [default: data-beir-<name of the set>].
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Qrels split (qrels/<split>.tsv).
        #[arg(long, default_value = "test")]
        split: String,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        eval: EvalArgs,
    },
    /// nDCG@10 of every retrieval option (BM25 settings, note scores, fusions, tuned fusion)
    /// on one judged set, each with a paired test against its retriever's default. The
    /// window context is the data directory's own: one run per directory.
    Options {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        queries: std::path::PathBuf,
        #[arg(long)]
        qrels: std::path::PathBuf,
        /// The set's name in the report [default: the queries file's stem].
        #[arg(long)]
        name: Option<String>,
        /// Skip the BM25 settings other than the default (they do not depend on the window
        /// context).
        #[arg(long)]
        no_bm25: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Options shared by `eval` and `bench beir`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Modes to evaluate.
    #[arg(long, default_value = "bm25,semantic,hybrid")]
    pub modes: String,
    /// Recall cut-offs.
    #[arg(long = "k", default_value = "1,5,10,20,100")]
    pub ks: String,
    /// Hybrid fusion: default (weighted RRF, k 60, semantic 0.3: see the README's quality
    /// table), rrf (equal weights unless --alpha), weighted (min-max), dbsf (mean +- 3 sd),
    /// zscore, or tuned (what `clinsearch tune` stored for this data directory; the default
    /// when nothing was tuned).
    #[arg(long, default_value = "default")]
    pub fusion: String,
    /// RRF constant.
    #[arg(long, default_value_t = 60.0)]
    pub rrf_k: f32,
    /// Weight of the semantic side (score fusions; with rrf, other than 0.5: weighted RRF).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Write one TREC run file per mode into this folder.
    #[arg(long)]
    pub runs_out: Option<std::path::PathBuf>,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Expand abbreviations and long forms in the queries (as searches do by default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub expand: bool,
    /// Weight of the expansions' BM25 clauses relative to the words typed.
    #[arg(long, default_value_t = crate::search::EXPANSION_WEIGHT)]
    pub expansion_weight: f32,
    /// A TSV of abbreviations laid over the shipped dictionary.
    #[arg(long)]
    pub abbreviations: Option<std::path::PathBuf>,
    /// Choose among an ambiguous abbreviation's senses with the collection's co-occurrences
    /// (false: the dictionary's frequencies alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub sense_context: bool,
    /// Which mentions count: any, or affirmed (not negated, possible, hypothetical or about
    /// the family).
    #[arg(long, default_value = "any")]
    pub assertion: String,
    /// A note's semantic score from its windows: max (best window), first, max_first
    /// (best + 0.1 first) or top2 (mean of the two best).
    #[arg(long, default_value = "max")]
    pub note_score: String,
    /// BM25 query words: keep every word, or drop common English words.
    #[arg(long, default_value = "keep")]
    pub stopwords: String,
    /// BM25's term-frequency saturation k1 (default: the engine's, see the README's table).
    #[arg(long)]
    pub bm25_k1: Option<f32>,
    /// BM25's length normalisation b, between 0 and 1.
    #[arg(long)]
    pub bm25_b: Option<f32>,
    /// With --assertion affirmed, demote semantic hits matched in negated or family sentences.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub demote_unaffirmed: bool,
}

impl EvalArgs {
    fn options(&self) -> Result<crate::eval::EvalOptions> {
        let use_tuned = self.fusion == "tuned";
        let fusion = if use_tuned {
            crate::search::Fusion::default()
        } else {
            crate::search::Fusion::from_parts(&self.fusion, self.rrf_k, self.alpha)
                .map_err(|e| anyhow::anyhow!("--fusion: {e}"))?
        };
        Ok(crate::eval::EvalOptions {
            modes: crate::eval::parse_modes(&self.modes)
                .map_err(|e| anyhow::anyhow!("--modes: {e}"))?,
            ks: crate::eval::parse_ks(&self.ks).map_err(|e| anyhow::anyhow!("--k: {e}"))?,
            fusion,
            expand: self.expand,
            use_tuned,
            note_score: self
                .note_score
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--note-score {e}"))?,
            drop_stopwords: match self.stopwords.as_str() {
                "keep" => false,
                "drop" => true,
                other => anyhow::bail!("--stopwords {other:?}: use keep or drop"),
            },
            bm25: {
                let d = crate::index::bm25_scorer::Bm25Params::default();
                let p = crate::index::bm25_scorer::Bm25Params {
                    k1: self.bm25_k1.unwrap_or(d.k1),
                    b: self.bm25_b.unwrap_or(d.b),
                };
                p.check()
                    .map_err(|e| anyhow::anyhow!("--bm25-k1/--bm25-b: {e}"))?;
                p
            },
            expansion_weight: self.expansion_weight,
            sense_context: self.sense_context,
            assertion: match self.assertion.as_str() {
                "any" => crate::search::Assertion::Any,
                "affirmed" => crate::search::Assertion::Affirmed,
                other => anyhow::bail!("--assertion {other:?}: use any or affirmed"),
            },
            demote_unaffirmed: self.demote_unaffirmed,
            abbreviations: Some(crate::clinical::abbrev::Dictionary::load(
                self.abbreviations.as_deref(),
            )?),
            ..Default::default()
        })
    }
}

/// Runs an evaluation with a progress bar and prints or writes what was asked.
fn run_eval(
    engine: &crate::engine::Engine,
    encoder: Option<&Encoder>,
    set: &crate::eval::QuerySet,
    args: &EvalArgs,
) -> Result<()> {
    let opts = args.options()?;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !args.json {
        indicatif::ProgressBar::new(set.queries.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "evaluating {bar:30} {pos}/{len} queries  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let embed = |texts: &[&str]| -> crate::Result<Vec<Vec<f32>>> {
        match encoder {
            Some(e) => e.embed(texts),
            None => Err(crate::Error::InvalidInput(
                "these modes need --model".into(),
            )),
        }
    };
    let (report, runs) = crate::eval::evaluate(engine, &embed, set, &opts, &|done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if let Some(dir) = &args.runs_out {
        for p in crate::eval::write_runs(dir, &runs)? {
            eprintln!("wrote {}", p.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} judged queries{} in {:.1} s\n",
            report.queries,
            if report.unjudged_queries > 0 {
                format!(" ({} without judgments skipped)", report.unjudged_queries)
            } else {
                String::new()
            },
            report.seconds
        );
        print!("{}", crate::eval::format_table(&report));
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        if report.empty_queries > 0 || report.unknown_documents > 0 {
            eprintln!(
                "{} queries without text (scored 0), {} judged documents not in the collection",
                report.empty_queries, report.unknown_documents
            );
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Architecture, sizes, pooling, heads and files of a model.
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a Hub model into the HF cache (or check a local folder) and print its path.
    Fetch {
        /// Folder or Hub id (org/name[@revision]).
        model: String,
    },
}

/// `clinsearch serve`: every setting may also come from a TOML file (--config) or the
/// environment (CLINSEARCH_ADDR, CLINSEARCH_API_KEY, ...); flags beat the environment, which
/// beats the file. Keys are read from the file or the environment only, never from flags
/// (flags are visible to every user of the machine in the process list).
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML configuration file (same names as the flags, with underscores).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub addr: Option<String>,
    /// Data directory [default: data].
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Model folder or Hub id [default: models/all-MiniLM-L6-v2].
    #[arg(long)]
    pub model: Option<String>,
    /// mean or cls [default: the model's sentence-transformers pooling config, else mean].
    #[arg(long)]
    pub pooling: Option<String>,
    /// cpu, cuda[:N] or metal [default: cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16, bf16 or int8 (int8 dense layers, CPU with AVX-512 VNNI) [default: f32].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Sequences per forward pass when ingesting [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Largest request body in bytes [default: 33554432].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Most queries embedded together by the batching worker [default: 32].
    #[arg(long)]
    pub query_batch: Option<usize>,
    /// HTTP worker threads [default: 2].
    #[arg(long)]
    pub workers: Option<usize>,
    /// hnsw search breadth [default: 64].
    #[arg(long)]
    pub ef_search: Option<usize>,
    /// A folder made by `finetune classify`, served at POST /api/classify.
    #[arg(long)]
    pub classifier: Option<String>,
    /// A folder made by `finetune ner`, served at POST /api/tag.
    #[arg(long)]
    pub tagger: Option<String>,
    /// A model with a masked-language-model head (one made by `finetune mlm`, say) that
    /// answers fill-mask while search keeps --model.
    #[arg(long)]
    pub mlm_model: Option<String>,
}

impl ServeArgs {
    pub fn layer(&self) -> crate::config::Layer {
        crate::config::Layer {
            addr: self.addr.clone(),
            data: self.data.clone(),
            model: self.model.clone(),
            pooling: self.pooling.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            batch_size: self.batch_size,
            max_body_bytes: self.max_body_bytes,
            api_key: None,
            read_api_key: None,
            query_batch: self.query_batch,
            workers: self.workers,
            ef_search: self.ef_search,
            classifier: self.classifier.clone(),
            tagger: self.tagger.clone(),
            mlm_model: self.mlm_model.clone(),
            ..Default::default()
        }
    }
}

/// Where the data directory is.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data directory (sled store, BM25 and vector indexes).
    #[arg(long = "data", env = "CLINSEARCH_DATA", default_value = "data")]
    pub dir: std::path::PathBuf,
}

impl DataArgs {
    fn open(
        &self,
        identity: Option<&crate::store::ModelIdentity>,
    ) -> Result<crate::engine::Engine> {
        self.open_with(identity, crate::index::VectorChoice::default())
    }

    /// [`Self::open`] asking for vector index settings (recorded by a new directory).
    fn open_with(
        &self,
        identity: Option<&crate::store::ModelIdentity>,
        vectors: crate::index::VectorChoice,
    ) -> Result<crate::engine::Engine> {
        let opts = crate::engine::OpenOptions {
            vectors,
            ..Default::default()
        };
        crate::engine::Engine::open(&self.dir, identity, &opts)
            .with_context(|| format!("opening data directory {}", self.dir.display()))
    }
}

/// Options shared by every command that loads an encoder. Each can also come from the
/// environment (`CLINSEARCH_MODEL`, ...).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder or Hugging Face Hub id (org/name[@revision]).
    #[arg(long, env = "CLINSEARCH_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// mean or cls (default: the model's sentence-transformers pooling config, else mean).
    #[arg(long, env = "CLINSEARCH_POOLING")]
    pub pooling: Option<String>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, env = "CLINSEARCH_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, f16, bf16 or int8 (int8 dense layers, CPU with AVX-512 VNNI).
    #[arg(long, env = "CLINSEARCH_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Tokens per window including [CLS]/[SEP] (default: the model's limit).
    #[arg(long, env = "CLINSEARCH_WINDOW")]
    pub window: Option<usize>,
    /// Tokens shared by consecutive windows (default 32, less for tiny windows).
    #[arg(long, env = "CLINSEARCH_STRIDE")]
    pub stride: Option<usize>,
    /// What later windows of a note carry: none (the title in the first window only),
    /// title, or heading (the title and the section heading in force). Recorded in the data
    /// directory at the first ingest.
    #[arg(long, env = "CLINSEARCH_WINDOW_CONTEXT")]
    pub window_context: Option<String>,
    /// Sequences per forward pass.
    #[arg(long, env = "CLINSEARCH_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,
    /// Do not L2-normalise vectors.
    #[arg(long)]
    pub no_normalize: bool,
}

impl ModelArgs {
    pub fn options(&self) -> Result<EncoderOptions> {
        Ok(EncoderOptions {
            pooling: self
                .pooling
                .as_deref()
                .map(str::parse::<Pooling>)
                .transpose()?,
            normalize: Some(!self.no_normalize),
            window: WindowConfig {
                size: self.window,
                stride: self.stride,
                max_windows: None,
                context: self
                    .window_context
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| anyhow::anyhow!("--window-context: {e}"))?,
            },
            batch_size: self.batch_size,
            device: model::parse_device(&self.device)?,
            dtype: model::parse_precision(&self.dtype)?.0,
            int8: model::parse_precision(&self.dtype)?.1,
        })
    }

    /// [`Self::load`] with the encoder settings the data directory `dir` was built with.
    pub fn load_for(&self, dir: &std::path::Path) -> Result<Encoder> {
        let mut opts = self.options()?;
        crate::engine::fill_profile(dir, &mut opts)?;
        self.load_with(opts)
    }

    pub fn load(&self) -> Result<Encoder> {
        self.load_with(self.options()?)
    }

    fn load_with(&self, opts: EncoderOptions) -> Result<Encoder> {
        let hint = if self.model == DEFAULT_MODEL && !std::path::Path::new(DEFAULT_MODEL).exists() {
            " (the default model is fetched by `make model` or scripts/fetch_model.sh)"
        } else {
            ""
        };
        Encoder::load(&self.model, &opts)
            .with_context(|| format!("loading model {}{hint}", self.model))
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLINSEARCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    model::tune_allocator();
    crate::failpoint::setup_from_env();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn read_texts(texts: Vec<String>) -> Result<Vec<String>> {
    if texts.len() == 1 && texts[0] == "-" {
        use std::io::BufRead;
        let stdin = std::io::stdin();
        let mut out = vec![];
        for (i, line) in stdin.lock().lines().enumerate() {
            out.push(line.with_context(|| format!("<stdin>:{}: not valid UTF-8", i + 1))?);
        }
        Ok(out)
    } else {
        Ok(texts)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Embed {
            model,
            windows,
            texts,
        } => {
            let texts = read_texts(texts)?;
            let enc = model.load()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let head = json!({
                "model": enc.info().id,
                "dim": enc.dim(),
                "pooling": enc.info().pooling,
                "normalized": enc.info().normalize,
            });
            let mut out = head.as_object().cloned().unwrap_or_default();
            if windows {
                out.insert(
                    "windows".into(),
                    serde_json::to_value(enc.embed_windows(&refs)?)?,
                );
            } else {
                out.insert(
                    "embeddings".into(),
                    serde_json::to_value(enc.embed(&refs)?)?,
                );
            }
            println!("{}", serde_json::Value::Object(out));
        }
        Command::FillMask { model, top_k, text } => {
            let enc = model.load()?;
            let preds = enc.fill_mask(&text, top_k)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "model": enc.info().id, "masks": preds }))?
            );
        }
        Command::Ingest {
            data,
            model,
            paths,
            format,
            text_col,
            id_col,
            title_col,
            meta_cols,
            on_error,
            batch,
            max_windows,
            quiet,
            acks,
            json,
            tagger,
            vectors,
            npy,
            index,
        } => {
            use crate::ingest::{self, source};
            let mut opts = model.options()?;
            opts.window.max_windows = Some(max_windows);
            crate::engine::fill_profile(&data.dir, &mut opts)?;
            let encoder = Encoder::load(&model.model, &opts)
                .with_context(|| format!("loading model {}", model.model))?;
            let identity = crate::store::ModelIdentity::from_info(encoder.info());
            let engine = data.open_with(Some(&identity), index.choice())?;
            let tagger = crate::ner::for_data_dir(&data.dir, tagger.as_deref(), &opts.device)
                .context("loading the tagger")?;
            if let Some(t) = &tagger {
                crate::ner::record(&data.dir, t)?;
            }
            let tagger = tagger.map(std::sync::Arc::new);
            let mapping = source::CsvMapping {
                text_col,
                id_col,
                title_col,
                meta_cols: source::parse_meta_cols(&meta_cols).map_err(anyhow::Error::msg)?,
            };
            for p in &paths {
                anyhow::ensure!(p.exists(), "{}: no such file or folder", p.display());
            }
            let progress = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let total = if progress {
                paths
                    .iter()
                    .map(|p| source::count(p, format))
                    .sum::<Option<u64>>()
            } else {
                None
            };
            let imported =
                crate::cli_vectors::ImportChecks::new(&paths, format, npy.as_deref(), &identity)?;
            let sources = paths
                .iter()
                .map(|p| imported.wrap(source::read(p, format, &mapping), vectors))
                .collect::<Result<Vec<_>>>()?;
            let report = ingest::run(
                &engine,
                &encoder,
                sources,
                total,
                &ingest::IngestOptions {
                    batch_size: batch,
                    on_error,
                    progress,
                    acks,
                    stored: None,
                    tagger,
                },
            )?;
            engine.checkpoint()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if !quiet {
                for e in &report.errors {
                    eprintln!("skipped {e}");
                }
                let s = &report.stages;
                eprintln!(
                    "ingested {} notes ({} chunks) in {:.1}s: {:.1} notes/s, {:.1} chunks/s; stages (s): parse {:.2}, embed {:.2} (of which assertions {:.2}), sled {:.2}, tantivy {:.2}, hnsw {:.2}{}",
                    report.notes,
                    report.chunks,
                    report.seconds,
                    report.notes as f64 / report.seconds.max(1e-9),
                    report.chunks as f64 / report.seconds.max(1e-9),
                    s.parse,
                    s.embed,
                    s.annotate,
                    s.sled,
                    s.tantivy,
                    s.hnsw,
                    if report.capped > 0 { format!("; {} notes capped at {max_windows} windows", report.capped) } else { String::new() }
                );
            }
            imported.report_unused_rows();
            if let Some(reason) = report.aborted {
                anyhow::bail!("{reason} (stopped; the {} notes before this batch are stored; --on-error skip goes on past bad records)", report.notes);
            }
        }
        Command::ExportVectors(args) => crate::cli_vectors::export(args)?,
        Command::Delete { data, ids } => {
            let engine = data.open(None)?;
            let n = engine.delete(&ids)?;
            engine.checkpoint()?;
            println!("deleted {n} of {} notes", ids.len());
        }
        Command::Reindex {
            data,
            reembed,
            retag,
            tagger,
            model,
            index,
        } => {
            if !index.choice().is_empty() {
                anyhow::ensure!(
                    !reembed && !retag,
                    "vector index options go alone with reindex"
                );
                let t0 = std::time::Instant::now();
                let settings = crate::engine::change_vector_settings(&data.dir, &index.choice())?;
                let engine = data.open(None)?;
                engine.checkpoint()?;
                println!(
                    "rebuilt the vector index of {} chunks with {settings} in {:.1}s",
                    engine.vectors.len(),
                    t0.elapsed().as_secs_f64()
                );
            } else if retag {
                crate::engine::require_existing(&data.dir)?;
                let device = model::parse_device(&model.device)?;
                let tagger = crate::ner::for_data_dir(&data.dir, tagger.as_deref(), &device)
                    .context("loading the tagger")?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--retag needs --tagger DIR: {} has no recorded tagger",
                            data.dir.display()
                        )
                    })?;
                let engine = data.open(None)?;
                let started = std::time::Instant::now();
                let n = crate::ner::retag(&engine, &tagger, 64, &|d, t| {
                    eprint!("\rretagged {d} of {t} notes")
                })?;
                eprintln!();
                println!(
                    "retagged {n} notes with {} in {:.1} s (no re-embedding)",
                    tagger.spec,
                    started.elapsed().as_secs_f64()
                );
            } else if reembed {
                let mut opts = model.options()?;
                opts.window.max_windows = Some(256);
                let encoder = Encoder::load(&model.model, &opts)
                    .with_context(|| format!("loading model {}", model.model))?;
                let report = crate::engine::reembed(&data.dir, &encoder)?;
                println!(
                    "re-embedded {} notes ({} chunks) with {}",
                    report.notes, report.chunks, model.model
                );
            } else {
                crate::engine::require_existing(&data.dir)?;
                let engine = data.open(None)?;
                engine.reindex()?;
                println!(
                    "reindexed {} notes, {} chunks",
                    engine.store.note_count(),
                    engine.store.chunk_count()
                );
            }
        }
        Command::Serve(args) => {
            let env = crate::config::Layer::from_env(|k| std::env::var(k).ok())?;
            let config =
                crate::config::ServerConfig::resolve(args.config.as_deref(), env, args.layer())?;
            crate::server::run(config)?;
        }
        Command::Eval {
            data,
            model,
            eval,
            queries,
            qrels,
            set,
            save_set,
        } => {
            let modes = crate::eval::parse_modes(&eval.modes)
                .map_err(|e| anyhow::anyhow!("--modes: {e}"))?;
            let encoder = if modes.iter().any(|m| m.needs_vector()) {
                Some(model.load_for(&data.dir)?)
            } else {
                None
            };
            let identity = encoder
                .as_ref()
                .map(|e| crate::store::ModelIdentity::from_info(e.info()));
            anyhow::ensure!(
                data.dir.join("sled").is_dir(),
                "{}: no data directory here (ingest notes first)",
                data.dir.display()
            );
            let engine = data.open(identity.as_ref())?;
            let qset = match (&set, &queries, &qrels) {
                (Some(name), _, _) => crate::eval::load_set(&data.dir, name)?,
                (None, Some(q), Some(r)) => match &save_set {
                    Some(name) => crate::eval::save_set(&data.dir, name, q, r)?,
                    None => crate::eval::QuerySet::load(q, r)?,
                },
                _ => anyhow::bail!("give --queries and --qrels, or --set NAME"),
            };
            run_eval(&engine, encoder.as_ref(), &qset, &eval)?;
        }
        Command::Tune {
            data,
            model,
            set,
            dry_run,
            json,
        } => {
            let encoder = model.load_for(&data.dir)?;
            let identity = crate::store::ModelIdentity::from_info(encoder.info());
            let engine = data.open(Some(&identity))?;
            let qset = crate::eval::load_set(&data.dir, &set)?;
            let embed = |t: &[&str]| encoder.embed(t);
            let runs = crate::eval::tune::collect_runs(
                &engine,
                &embed,
                &qset,
                &crate::eval::EvalOptions::default(),
                &|_, _| {},
            )?;
            let tuned = crate::eval::tune::tune(&set, &qset, &runs)?;
            if !dry_run {
                engine.set_tuned(&tuned)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&tuned)?);
            } else {
                println!(
                    "{} queries, {}-fold cross-validation: held-out hybrid nDCG@10 {:.4} against {:.4} for RRF k=60 (gain {:+.4}, paired randomisation test p = {:.4})",
                    tuned.queries,
                    crate::eval::tune::FOLDS,
                    tuned.cv_ndcg_10,
                    tuned.baseline_ndcg_10,
                    tuned.cv_ndcg_10 - tuned.baseline_ndcg_10,
                    tuned.p_value
                );
                println!(
                    "chosen on all queries: {} (candidate depth {}, note score {:?}){}",
                    serde_json::to_string(&tuned.choice.fusion)?,
                    tuned.choice.depth,
                    tuned.choice.note_score,
                    if dry_run {
                        "; not stored (--dry-run)"
                    } else {
                        "; stored as this data directory's default fusion"
                    }
                );
                for (i, c) in tuned.fold_choices.iter().enumerate() {
                    println!(
                        "  fold {}: {} depth {} note score {:?}",
                        i + 1,
                        serde_json::to_string(&c.fusion)?,
                        c.depth,
                        c.note_score
                    );
                }
            }
        }
        Command::Bench {
            command:
                BenchCommand::Beir {
                    dir,
                    data,
                    split,
                    model,
                    eval,
                },
        } => bench_beir(&dir, data, &split, &model, &eval)?,
        Command::Bench {
            command:
                BenchCommand::Options {
                    data,
                    model,
                    queries,
                    qrels,
                    name,
                    no_bm25,
                    json,
                },
        } => {
            let encoder = model.load_for(&data.dir)?;
            let identity = crate::store::ModelIdentity::from_info(encoder.info());
            let engine = data.open(Some(&identity))?;
            let set = crate::eval::QuerySet::load(&queries, &qrels)?;
            let name = name.unwrap_or_else(|| {
                queries
                    .file_stem()
                    .map_or("queries".into(), |s| s.to_string_lossy().into_owned())
            });
            let embed = |t: &[&str]| encoder.embed(t);
            let table = crate::eval::options::option_table(
                &engine,
                &embed,
                &name,
                &set,
                !no_bm25,
                &|what| eprintln!("{name}: {what}"),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                println!(
                    "{} ({} queries, window context {}): nDCG@10",
                    table.set, table.queries, table.window_context
                );
                for r in &table.rows {
                    println!(
                        "  {:<9} {:<44} {:.4}  {}",
                        r.retriever,
                        r.option,
                        r.ndcg_10,
                        if r.default {
                            "(default)".to_string()
                        } else {
                            format!("p = {:.4}", r.p_value)
                        }
                    );
                }
            }
        }
        Command::Stats { data } => {
            let engine = data.open(None)?;
            println!("{}", serde_json::to_string_pretty(&engine.stats()?)?);
        }
        Command::Finetune { command } => crate::cli_train::run(command)?,
        Command::Classify {
            model,
            top_k,
            device,
            texts,
        } => {
            let texts = read_texts(texts)?;
            let device = model::parse_device(&device)?;
            let clf = crate::train::classify::Classifier::load(&model, &device)
                .with_context(|| format!("loading classifier {model}"))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let preds = clf.predict(&refs, top_k)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "model": model,
                    "labels": clf.labels,
                    "predictions": preds,
                }))?
            );
        }
        Command::Tag {
            model,
            device,
            json,
            eval,
            texts,
        } => {
            if let Some(path) = eval {
                let device = model::parse_device(&device)?;
                let tagger = crate::ner::TokenClassifier::load(&model, &device)
                    .with_context(|| format!("loading tagger {model}"))?;
                let sentences = crate::ner::data::read(&path, crate::ner::data::Scheme::Lenient)?;
                let started = std::time::Instant::now();
                let (report, loss) = crate::train::ner::score(&tagger, &sentences)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "file": path,
                        "sentences": sentences.len(),
                        "loss": loss,
                        "seconds": started.elapsed().as_secs_f64(),
                        "report": report,
                    }))?
                );
                return Ok(());
            }
            let texts = read_texts(texts)?;
            anyhow::ensure!(
                texts.iter().all(|t| !t.trim().is_empty()),
                "a text to tag is empty"
            );
            let device = model::parse_device(&device)?;
            let tagger = crate::ner::TokenClassifier::load(&model, &device)
                .with_context(|| format!("loading tagger {model}"))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (text, ents) in refs.iter().zip(tagger.tag(&refs)?) {
                if json {
                    println!("{}", json!({ "text": text, "entities": ents }));
                    continue;
                }
                println!("{} entities in {:?}", ents.len(), truncate_chars(text, 60));
                for e in ents {
                    println!(
                        "  {:<12} {:>5}..{:<5} {:.3}  {}",
                        e.entity_type, e.start, e.end, e.score, e.text
                    );
                }
            }
        }
        Command::Export(args) => crate::cli_export::run(args)?,
        Command::Annotate(mut args) => {
            let texts = if args.eval.is_some() {
                vec![]
            } else {
                read_texts(std::mem::take(&mut args.texts))?
            };
            crate::cli_clinical::run(args, texts)?
        }
        Command::Keys { command } => crate::cli_access::keys(command)?,
        Command::Audit(args) => crate::cli_access::audit(args)?,
        Command::Model { command } => match command {
            ModelCommand::Info { model, json } => {
                let enc = model.load()?;
                let info = enc.info();
                if json {
                    println!("{}", serde_json::to_string_pretty(info)?);
                } else {
                    print_info(info);
                }
            }
            ModelCommand::Fetch { model } => {
                let resolved =
                    model::resolve_model(&model).with_context(|| format!("fetching {model}"))?;
                println!("{}", resolved.dir.display());
            }
        },
    }
    Ok(())
}

fn print_info(i: &model::ModelInfo) {
    let rows: Vec<(&str, String)> = vec![
        ("model", i.id.clone()),
        ("folder", i.dir.display().to_string()),
        (
            "revision",
            match (&i.revision, &i.commit) {
                (Some(r), Some(c)) => format!("{r} ({c})"),
                (Some(r), None) => r.clone(),
                _ => "-".into(),
            },
        ),
        (
            "architecture",
            format!("{} {}", i.model_type, i.architectures.join(", ")),
        ),
        ("hidden size", i.hidden_size.to_string()),
        ("layers", i.num_layers.to_string()),
        ("attention heads", i.num_heads.to_string()),
        ("vocabulary", i.vocab_size.to_string()),
        ("max positions", i.max_position_embeddings.to_string()),
        ("activation", i.hidden_act.clone()),
        (
            "pooling",
            format!(
                "{}{}",
                i.pooling,
                if i.normalize { " + L2 normalise" } else { "" }
            ),
        ),
        (
            "window",
            format!(
                "{} tokens, stride {}, context {}",
                i.window_size, i.stride, i.window_context
            ),
        ),
        (
            "heads",
            if i.heads.is_empty() {
                "encoder only".into()
            } else {
                format!("encoder + {}", i.heads.join(", "))
            },
        ),
        ("weights", format!("{:?}", i.weight_format)),
        (
            "tokenizer",
            format!(
                "{} ({})",
                i.tokenizer,
                if i.lowercase { "uncased" } else { "cased" }
            ),
        ),
        ("dtype / device", format!("{} / {}", i.dtype, i.device)),
        ("files", i.files.join(", ")),
    ];
    for (k, v) in rows {
        println!("{k:>16}  {v}");
    }
}

/// `clinsearch bench beir DIR`: ingest (or complete) and evaluate.
fn bench_beir(
    dir: &std::path::Path,
    data: Option<std::path::PathBuf>,
    split: &str,
    model: &ModelArgs,
    eval: &EvalArgs,
) -> Result<()> {
    use crate::ingest::{self, source, Format};
    let corpus = dir.join("corpus.jsonl");
    anyhow::ensure!(
        corpus.is_file(),
        "{}: no corpus.jsonl (not a BEIR folder)",
        dir.display()
    );
    let qrels = dir.join("qrels").join(format!("{split}.tsv"));
    anyhow::ensure!(qrels.is_file(), "{}: no such qrels split", qrels.display());
    let name = {
        let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let last = canon
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if last == "beir" {
            canon
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(last)
        } else {
            last
        }
    };
    let data = data.unwrap_or_else(|| std::path::PathBuf::from(format!("data-beir-{name}")));
    let mut opts = model.options()?;
    opts.window.max_windows = Some(256);
    crate::engine::fill_profile(&data, &mut opts)?;
    let encoder = Encoder::load(&model.model, &opts)
        .with_context(|| format!("loading model {}", model.model))?;
    let identity = crate::store::ModelIdentity::from_info(encoder.info());
    let engine = crate::engine::Engine::open(
        &data,
        Some(&identity),
        &crate::engine::OpenOptions::default(),
    )
    .with_context(|| format!("opening {}", data.display()))?;
    let total = source::count(&corpus, Format::Beir).unwrap_or(0);
    let have = engine.store.note_count() as u64;
    if have < total {
        eprintln!(
            "ingesting {} ({} of {total} documents already in {})",
            corpus.display(),
            have,
            data.display()
        );
        let store = &engine.store;
        let todo: Vec<source::Item> =
            source::read(&corpus, Format::Beir, &crate::ingest::CsvMapping::default())
                .filter(|r| match r {
                    Ok(rec) => !matches!(store.get(&rec.note.id), Ok(Some(_))),
                    Err(_) => true,
                })
                .collect();
        let n = todo.len() as u64;
        let report = ingest::run(
            &engine,
            &encoder,
            vec![Box::new(todo.into_iter())],
            Some(n),
            &ingest::IngestOptions {
                on_error: ingest::OnError::Skip,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                ..Default::default()
            },
        )?;
        engine.checkpoint()?;
        eprintln!(
            "ingested {} documents ({} chunks) in {:.0} s; {} skipped",
            report.notes,
            report.chunks,
            report.seconds,
            report.errors.len()
        );
    }
    let set = crate::eval::QuerySet::load(&dir.join("queries.jsonl"), &qrels)?;
    println!(
        "{name} ({split} split): {} documents, model {}",
        engine.store.note_count(),
        encoder.info().id
    );
    run_eval(&engine, Some(&encoder), &set, eval)
}

/// The first `n` characters of `text` (with an ellipsis when cut).
fn truncate_chars(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(n).collect::<String>())
    }
}

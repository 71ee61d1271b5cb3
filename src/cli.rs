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
    /// Inspect or download models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
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
    /// f32, f16 or bf16.
    #[arg(long, env = "CLINSEARCH_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Tokens per window including [CLS]/[SEP] (default: the model's limit).
    #[arg(long, env = "CLINSEARCH_WINDOW")]
    pub window: Option<usize>,
    /// Tokens shared by consecutive windows (default 32, less for tiny windows).
    #[arg(long, env = "CLINSEARCH_STRIDE")]
    pub stride: Option<usize>,
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
            },
            batch_size: self.batch_size,
            device: model::parse_device(&self.device)?,
            dtype: model::parse_dtype(&self.dtype)?,
        })
    }

    pub fn load(&self) -> Result<Encoder> {
        let opts = self.options()?;
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_texts(texts: Vec<String>) -> Result<Vec<String>> {
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
            format!("{} tokens, stride {}", i.window_size, i.stride),
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

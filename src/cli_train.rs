//! `clinsearch finetune classify|mlm|ner|retrieval`: flags, a progress bar, one line per epoch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::model;
use crate::train::{classify, mlm, ner, retrieval, TrainEvent, TrainOptions};

#[derive(Subcommand, Debug)]
pub enum FinetuneCommand {
    /// Train a classification head (BertForSequenceClassification) on labelled texts.
    Classify {
        /// Base model folder or Hub id.
        #[arg(long)]
        base: String,
        /// Training file: JSON Lines, or CSV with a header.
        #[arg(long)]
        train: PathBuf,
        /// Dev file (same format): accuracy and macro-F1 after each epoch.
        #[arg(long)]
        dev: Option<PathBuf>,
        #[arg(long, default_value = "text")]
        text_field: String,
        #[arg(long, default_value = "label")]
        label_field: String,
        #[command(flatten)]
        common: TrainArgs,
    },
    /// Continue masked-language-model pretraining on notes (domain adaptation); the output
    /// is a BertForMaskedLM folder for fill-mask, `finetune --base` and `ingest --model`.
    Mlm {
        /// Base model folder or Hub id (one without an MLM head gets a new one).
        #[arg(long)]
        base: String,
        /// Notes: JSON Lines or CSV (the text in --text-field), or a folder of such files
        /// and .txt files (one note each).
        #[arg(
            long,
            required_unless_present = "from_data",
            conflicts_with = "from_data"
        )]
        corpus: Option<PathBuf>,
        /// Train on every note stored in this data directory instead (what the server's
        /// adapt job does; the directory must not be open in a running server).
        #[arg(long)]
        from_data: Option<PathBuf>,
        #[arg(long, default_value = "text")]
        text_field: String,
        /// Dev notes (same formats) instead of holding out --dev-fraction of the corpus.
        #[arg(long)]
        dev: Option<PathBuf>,
        /// Share of the corpus's notes held out for the dev figures (never trained on).
        #[arg(long, default_value_t = 0.1)]
        dev_fraction: f64,
        /// Mask whole words (a token and its ## pieces) instead of single tokens.
        #[arg(long)]
        whole_word: bool,
        /// Share of tokens predicted.
        #[arg(long, default_value_t = 0.15)]
        mlm_probability: f64,
        #[command(flatten)]
        common: TrainArgs,
    },
    /// Train a named-entity tagger (BertForTokenClassification) on IOB-tagged sentences.
    Ner {
        /// Base model folder or Hub id.
        #[arg(long)]
        base: String,
        /// Training file: CoNLL-style TSV (token<TAB>tag, a blank line between sentences)
        /// or JSON Lines with "tokens" and "tags"; IOB1 or IOB2 tags of any entity types.
        #[arg(long)]
        train: PathBuf,
        /// Dev file (same format): seqeval's entity precision, recall and F1 after each epoch.
        #[arg(long)]
        dev: Option<PathBuf>,
        /// IOB2 only: an I- tag after O or another type is an error, not an entity start.
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        common: TrainArgs,
    },
    /// Tune the embedding model on (query, relevant note[, hard negative]) pairs with
    /// in-batch negatives; the output is a model folder for `ingest/serve --model`.
    Retrieval {
        /// Base model folder or Hub id.
        #[arg(long)]
        base: String,
        /// Pairs file: JSON Lines, or CSV with a header.
        #[arg(long)]
        pairs: PathBuf,
        /// Dev pairs: MRR@10 and recall over the dev notes after each epoch.
        #[arg(long)]
        dev: Option<PathBuf>,
        #[arg(long, default_value = "query")]
        query_field: String,
        #[arg(long, default_value = "positive")]
        positive_field: String,
        /// Optional hard negative per pair.
        #[arg(long, default_value = "negative")]
        negative_field: String,
        /// Softmax temperature over cosine similarities (0.05 = sentence-transformers' scale 20).
        #[arg(long, default_value_t = 0.05)]
        temperature: f64,
        /// Tokens per query, including [CLS]/[SEP].
        #[arg(long, default_value_t = 64)]
        query_max_len: usize,
        #[command(flatten)]
        common: TrainArgs,
    },
}

/// Flags both tasks share.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Output folder (Hugging Face layout; checkpoints under checkpoints/epoch-N).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// Fraction of the steps spent warming up (then linear decay to 0).
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the global gradient norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Keep the embeddings and the first N transformer layers fixed.
    #[arg(long, default_value_t = 0)]
    freeze_layers: usize,
    /// Tokens per text including [CLS]/[SEP] [default: the model's window; mlm: 128].
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this many optimiser steps (0: measure the dev figures and save the
    /// starting point, a base with a new head, without training).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Resume from a checkpoint folder, or from an output folder's latest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// auto (a GPU when this build has its feature and the machine has one, else the CPU),
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, env = "CLINSEARCH_DEVICE", default_value = "auto")]
    device: String,
    /// Print one JSON object per epoch instead of a progress bar.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    fn options(&self) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup_ratio: self.warmup_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            freeze_layers: self.freeze_layers,
            max_len: self.max_len,
            seed: self.seed,
            no_dropout: false,
            max_steps: self.max_steps,
        }
    }
}

/// Draws the progress bar and prints each epoch's summary.
struct Reporter {
    bar: indicatif::ProgressBar,
    json: bool,
    running: f64,
}

impl Reporter {
    fn new(json: bool) -> Self {
        Reporter {
            bar: indicatif::ProgressBar::hidden(),
            json,
            running: f64::NAN,
        }
    }

    fn on(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Start {
                epochs,
                steps_per_epoch,
                first_epoch,
                trainable,
                frozen,
            } => {
                eprintln!(
                    "training {trainable} parameter tensors ({frozen} frozen), {steps_per_epoch} steps per epoch, epochs {}..={epochs}",
                    first_epoch + 1
                );
                if !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    self.bar = indicatif::ProgressBar::new(
                        (steps_per_epoch * (epochs - first_epoch)) as u64,
                    );
                    self.bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                }
            }
            TrainEvent::Step {
                epoch, loss, lr, ..
            } => {
                self.running = if self.running.is_nan() {
                    *loss
                } else {
                    0.95 * self.running + 0.05 * loss
                };
                self.bar.set_message(format!(
                    "epoch {epoch}  loss {:.4}  lr {lr:.2e}",
                    self.running
                ));
                self.bar.inc(1);
            }
            TrainEvent::Epoch(r) => {
                if self.json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                    return;
                }
                let dev: Vec<String> = r
                    .dev
                    .iter()
                    .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect();
                let line = format!(
                    "epoch {}: train loss {:.4}{}  ({:.0} s, {} steps) -> {}",
                    r.epoch,
                    r.train_loss,
                    if dev.is_empty() {
                        String::new()
                    } else {
                        format!(", dev {}", dev.join(", "))
                    },
                    r.seconds,
                    r.steps,
                    r.checkpoint.display()
                );
                if self.bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    self.bar.println(line);
                }
            }
        }
    }
}

pub fn run(command: FinetuneCommand) -> Result<()> {
    // This process only trains: keep the memory each step frees for the next one.
    model::keep_freed_memory();
    match command {
        FinetuneCommand::Classify {
            base,
            train,
            dev,
            text_field,
            label_field,
            common,
        } => {
            let args = classify::ClassifyArgs {
                base,
                train,
                dev,
                text_field,
                label_field,
                out: common.out.clone(),
                resume: common.resume.clone(),
                device: model::parse_device(&common.device)?,
                options: common.options(),
            };
            let mut rep = Reporter::new(common.json);
            let outcome = classify::finetune(&args, &mut |e| rep.on(e))
                .context("fine-tuning the classifier")?;
            rep.bar.finish_and_clear();
            eprintln!(
                "{} labels, {} training and {} dev examples; model saved to {} (clinsearch classify --model {} TEXT)",
                outcome.labels.len(),
                outcome.train_examples,
                outcome.dev_examples,
                args.out.display(),
                args.out.display()
            );
        }
        FinetuneCommand::Mlm {
            base,
            corpus,
            from_data,
            text_field,
            dev,
            dev_fraction,
            whole_word,
            mlm_probability,
            common,
        } => {
            let notes = match (&corpus, &from_data) {
                (Some(c), _) => mlm::read_corpus(c, &text_field)?,
                (None, Some(d)) => {
                    crate::engine::require_existing(d)?;
                    if !d.join("sled").is_dir() {
                        anyhow::bail!("{} is not a clinsearch data directory", d.display());
                    }
                    let store = crate::store::Store::open(d)
                        .with_context(|| format!("opening data directory {}", d.display()))?;
                    crate::server::fill_mask::stored_notes_of(&store)?
                }
                (None, None) => unreachable!("clap requires --corpus or --from-data"),
            };
            let dev_notes = dev
                .as_deref()
                .map(|d| mlm::read_corpus(d, &text_field))
                .transpose()?;
            let args = mlm::MlmArgs {
                base,
                notes,
                dev_notes,
                dev_fraction,
                masking: mlm::MaskConfig {
                    probability: mlm_probability,
                    whole_word,
                },
                out: common.out.clone(),
                resume: common.resume.clone(),
                device: model::parse_device(&common.device)?,
                options: common.options(),
            };
            let mut rep = Reporter::new(common.json);
            let outcome = mlm::finetune(&args, &mut |e| rep.on(e))
                .context("masked-language-model training")?;
            rep.bar.finish_and_clear();
            if outcome.corpus_changed {
                eprintln!("note: resumed from a checkpoint trained on other notes; training continues on this corpus");
            }
            let fig = |m: &serde_json::Map<String, serde_json::Value>| match (
                m.get("masked_accuracy"),
                m.get("perplexity"),
            ) {
                (Some(a), Some(p)) => format!(
                    "accuracy {:.4}, perplexity {:.2}",
                    a.as_f64().unwrap_or(f64::NAN),
                    p.as_f64().unwrap_or(f64::NAN)
                ),
                _ => "no dev notes".into(),
            };
            let after = outcome
                .history
                .last()
                .map(|r| fig(&r.dev))
                .unwrap_or_else(|| "no training".into());
            eprintln!(
                "{} notes ({} skipped as shorter than {} tokens): {} training notes in {} sequences of up to {} tokens, {} dev notes ({} masked tokens); {}; dev masked-token {} before, {} after; {:.0} training tokens/s ({:.2} s a step); model saved to {} (clinsearch fill-mask --model {} TEXT)",
                outcome.notes,
                outcome.skipped_short,
                mlm::MIN_NOTE_TOKENS,
                outcome.train_notes,
                outcome.train_sequences,
                outcome.max_len,
                outcome.dev_notes,
                outcome.dev_masked_tokens,
                if outcome.new_head { "new MLM head" } else { "the base's MLM head continued" },
                fig(&outcome.before),
                after,
                outcome.tokens_per_second,
                outcome.seconds_per_step,
                args.out.display(),
                args.out.display()
            );
        }
        FinetuneCommand::Ner {
            base,
            train,
            dev,
            strict,
            common,
        } => {
            let args = ner::NerArgs {
                base,
                train,
                dev,
                strict,
                out: common.out.clone(),
                resume: common.resume.clone(),
                device: model::parse_device(&common.device)?,
                options: common.options(),
            };
            let mut rep = Reporter::new(common.json);
            let outcome =
                ner::finetune(&args, &mut |e| rep.on(e)).context("fine-tuning the tagger")?;
            rep.bar.finish_and_clear();
            eprintln!(
                "{} tags, {} training sentences ({} windows), {} dev sentences; model saved to {} (clinsearch tag --model {} TEXT)",
                outcome.labels.len(),
                outcome.train_sentences,
                outcome.train_windows,
                outcome.dev_sentences,
                args.out.display(),
                args.out.display()
            );
        }
        FinetuneCommand::Retrieval {
            base,
            pairs,
            dev,
            query_field,
            positive_field,
            negative_field,
            temperature,
            query_max_len,
            common,
        } => {
            let args = retrieval::RetrievalArgs {
                base,
                pairs,
                dev,
                fields: retrieval::PairFields {
                    query: query_field,
                    positive: positive_field,
                    negative: negative_field,
                },
                out: common.out.clone(),
                resume: common.resume.clone(),
                device: model::parse_device(&common.device)?,
                options: common.options(),
                temperature,
                query_max_len,
            };
            let mut rep = Reporter::new(common.json);
            let outcome = retrieval::finetune(&args, &mut |e| rep.on(e))
                .context("tuning the embedding model")?;
            rep.bar.finish_and_clear();
            eprintln!(
                "{} pairs ({} with a hard negative), {} dev pairs; model saved to {} (use it with --model {})",
                outcome.pairs,
                outcome.with_negative,
                outcome.dev_pairs,
                args.out.display(),
                args.out.display()
            );
        }
    }
    Ok(())
}

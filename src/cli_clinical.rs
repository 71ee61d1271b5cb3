//! `clinsearch annotate`: the assertion status of clinical text, from the command line.

use anyhow::{Context, Result};

use crate::clinical::assertion::{annotate, evaluate, read_pairs, Annotation};

#[derive(clap::Args, Debug)]
pub struct AnnotateArgs {
    /// Print JSON (per text: sentences and assertion scopes as character offsets).
    #[arg(long)]
    pub json: bool,
    /// Score the annotator on a judged file (`note_id<TAB>concept<TAB>status<TAB>sentence`,
    /// e.g. tests/fixtures/assertion_dev.tsv) instead: precision, recall and F1 per status.
    #[arg(long, conflicts_with = "texts")]
    pub eval: Option<std::path::PathBuf>,
    /// Texts to annotate ("-" reads one text per line from standard input).
    #[arg(required_unless_present = "eval")]
    pub texts: Vec<String>,
}

pub fn run(args: AnnotateArgs, texts: Vec<String>) -> Result<()> {
    if let Some(path) = &args.eval {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let pairs = read_pairs(&text, &path.display().to_string()).map_err(anyhow::Error::msg)?;
        let e = evaluate(&pairs);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&e)?);
            return Ok(());
        }
        println!(
            "{:<13} {:>7} {:>9} {:>7} {:>7}",
            "status", "support", "precision", "recall", "F1"
        );
        for c in &e.classes {
            println!(
                "{:<13} {:>7} {:>9.3} {:>7.3} {:>7.3}",
                c.status, c.support, c.precision, c.recall, c.f1
            );
        }
        println!(
            "accuracy {:.3} over {} pairs ({} errors)",
            e.accuracy,
            e.pairs,
            e.errors.len()
        );
        return Ok(());
    }
    let annotations: Vec<Annotation> = texts.iter().map(|t| annotate(t)).collect();
    if args.json {
        let v: Vec<serde_json::Value> = annotations
            .iter()
            .map(|a| serde_json::json!({ "sentences": a.sentences, "assertions": a.assertions }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (text, a) in texts.iter().zip(&annotations) {
        println!("{text}");
        if a.assertions.is_empty() {
            println!("  (nothing negated, possible, historical, family or hypothetical)");
        }
        for s in &a.assertions {
            let scope: String = text.chars().skip(s.start).take(s.end - s.start).collect();
            println!(
                "  {:<12} {:?}  (trigger {:?} at {}..{}; scope {}..{})",
                s.status.as_str(),
                scope,
                s.trigger.text,
                s.trigger.start,
                s.trigger.end,
                s.start,
                s.end
            );
        }
    }
    Ok(())
}

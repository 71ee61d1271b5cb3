//! `clinsearch keys ...` and `clinsearch audit ...`: managing who may call the server, and
//! answering who accessed which notes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::auth::Role;
use crate::index::Filter;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key for a principal: prints the key once (it is stored only as a hash) and
    /// appends its [[keys]] entry to the configuration file.
    New {
        /// The principal's name, as the audit log will record it.
        name: String,
        /// read (search, read notes, embed, evaluate), write (also ingest and delete) or
        /// admin (also the audit and everyone's jobs).
        #[arg(long)]
        role: Role,
        #[arg(long, default_value = "clinsearch.toml")]
        config: PathBuf,
        /// Document-level restriction: the key sees only notes of this specialty.
        #[arg(long)]
        specialty: Option<String>,
        /// ... of this note type.
        #[arg(long)]
        note_type: Option<String>,
        /// ... of this patient.
        #[arg(long)]
        patient_id: Option<String>,
    },
    /// The configured keys: names, roles, restrictions (never the hashes in full).
    List {
        #[arg(long, default_value = "clinsearch.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove a key: a running server refuses it within seconds.
    Revoke {
        name: String,
        #[arg(long, default_value = "clinsearch.toml")]
        config: PathBuf,
    },
}

pub fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::New {
            name,
            role,
            config,
            specialty,
            note_type,
            patient_id,
        } => {
            let filter = Filter {
                specialty,
                note_type,
                patient_id,
                ..Default::default()
            };
            let key = crate::auth::add_key(&config, &name, role, Some(&filter))?;
            eprintln!(
                "added the key of {name:?} ({}) to {}; it is shown once, here:",
                role.as_str(),
                config.display()
            );
            println!("{key}");
        }
        KeysCommand::List { config, json } => {
            let keys = crate::auth::list_keys(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else if keys.is_empty() {
                println!("no [[keys]] in {}", config.display());
            } else {
                println!("{:<24} {:<6} {:<10} restriction", "name", "role", "sha256");
                for k in keys {
                    let r = k
                        .filter
                        .map(|f| serde_json::to_string(&f).unwrap_or_default())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<24} {:<6} {:<10} {r}",
                        k.name,
                        k.role,
                        k.sha256_prefix + "…"
                    );
                }
            }
        }
        KeysCommand::Revoke { name, config } => {
            crate::auth::revoke_key(&config, &name)?;
            println!("revoked the key of {name:?} in {}", config.display());
        }
    }
    Ok(())
}

/// `clinsearch audit [filters] [--json]` or `clinsearch audit verify`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub data: crate::cli::DataArgs,
    /// Events naming this patient.
    #[arg(long)]
    pub patient: Option<String>,
    /// Events of this principal (key name).
    #[arg(long)]
    pub principal: Option<String>,
    /// Events naming this note.
    #[arg(long)]
    pub note: Option<String>,
    /// search, read_note, ingest, delete, embed, fill_mask, classify, eval, export, audit or
    /// denied.
    #[arg(long)]
    pub action: Option<String>,
    /// From this time on (YYYY-MM-DD or RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Most events shown (the newest).
    #[arg(long, default_value_t = 10_000)]
    pub limit: usize,
    /// One JSON event per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain: exits 0 for an intact log, 1 naming the first line that was
    /// changed, removed or reordered.
    Verify {
        #[command(flatten)]
        data: crate::cli::DataArgs,
    },
}

pub fn audit(args: AuditArgs) -> Result<()> {
    if let Some(AuditCommand::Verify { data }) = args.command {
        let dir = data.dir.join("audit");
        let v = crate::audit::verify(&dir)
            .with_context(|| format!("reading the audit log in {}", dir.display()))?;
        match v.broken {
            None => {
                println!(
                    "audit log intact: {} events in {} files ({})",
                    v.lines,
                    v.files,
                    dir.display()
                );
                return Ok(());
            }
            Some(b) => anyhow::bail!(
                "audit log broken at {b} ({} events before it are intact)",
                v.lines
            ),
        }
    }
    let dir = args.data.dir.join("audit");
    anyhow::ensure!(
        dir.is_dir(),
        "{}: no audit log here (the server writes it when it serves this data directory)",
        dir.display()
    );
    let q = crate::audit::Query {
        patient: args.patient,
        principal: args.principal,
        note: args.note,
        action: args.action,
        since: args.since,
        until: args.until,
    }
    .normalized()?;
    let (events, matched) = crate::audit::search(&dir, &q, args.limit.max(1))?;
    if args.json {
        for e in &events {
            println!("{}", serde_json::to_string(e)?);
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<16} {:<6} {:<10} {:>6} {:<21} {:<24} patients",
        "time", "principal", "role", "action", "status", "client", "notes"
    );
    for e in &events {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else if v.len() <= 4 {
                v.join(",")
            } else {
                format!("{},... ({} in all)", v[..3].join(","), v.len())
            }
        };
        println!(
            "{:<24} {:<16} {:<6} {:<10} {:>6} {:<21} {:<24} {}",
            e.time,
            e.principal.as_deref().unwrap_or("-"),
            e.role.as_deref().unwrap_or("-"),
            e.action,
            e.status,
            e.client.as_deref().unwrap_or("-"),
            list(&e.note_ids),
            list(&e.patient_ids)
        );
    }
    if matched > events.len() {
        eprintln!(
            "({matched} events matched; the newest {} shown: --limit)",
            events.len()
        );
    }
    Ok(())
}

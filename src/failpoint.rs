//! Failure injection on the write path, compiled in only with the `failpoints` feature (the
//! test builds of `make test`; release builds have none), through the `fail` crate as tantivy
//! does.
//!
//! Each point is named (see [`POINTS`]) and configured with `fail::cfg(name, action)` in
//! process or `FAILPOINTS=name=action;...` in a child process (the binary reads it at start).
//! Actions are fail's own (`panic`, `sleep(MS)`, `off`, counts like `1*return`), and
//! `return(error)`, `return(panic)` or `return(sleep=MS)`, optionally `@DIR` to hit only the
//! data directory `DIR` (tests that run side by side inject into their own directory only).

use std::path::Path;

use crate::error::Result;

/// Every failure point, in write-path order.
pub const POINTS: &[&str] = &[
    "store-apply",
    "store-flush",
    "bm25-apply",
    "bm25-commit",
    "hnsw-insert",
    "hnsw-dump",
    "manifest-swap",
    "oplog-prune",
    "checkpoint-delay",
    "reembed-swap",
    "audit-append",
    "query-embed",
];

/// Evaluates the point `name` for work on the data directory `scope`: an injected error is
/// returned, an injected panic panics, a sleep sleeps.
#[cfg(feature = "failpoints")]
pub fn inject(name: &str, scope: &Path) -> Result<()> {
    debug_assert!(POINTS.contains(&name), "unknown failpoint {name}");
    let Some(arg) = fail::eval(name, |s| s.unwrap_or_default()) else {
        return Ok(());
    };
    let (action, target) = match arg.split_once('@') {
        Some((a, t)) => (a.to_string(), Some(t.to_string())),
        None => (arg, None),
    };
    if let Some(t) = target {
        if !scope.starts_with(&t) {
            return Ok(());
        }
    }
    match action.as_str() {
        "panic" => panic!("injected panic at {name}"),
        a if a.starts_with("sleep=") => {
            let ms: u64 = a[6..].parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        _ => Err(crate::error::Error::Injected(name.to_string())),
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn inject(_: &str, _: &Path) -> Result<()> {
    Ok(())
}

/// Reads `FAILPOINTS` from the environment (test builds only), for failures injected into a
/// child process.
pub fn setup_from_env() {
    #[cfg(feature = "failpoints")]
    {
        if std::env::var_os("FAILPOINTS").is_some() {
            std::mem::forget(fail::FailScenario::setup());
        }
    }
}

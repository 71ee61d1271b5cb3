//! Reading tagged sentences for token classification: CoNLL-style TSV (`token<TAB>tag`, a
//! blank line between sentences; extra columns between are ignored, the tag is the last) or
//! JSON Lines with `tokens` and `tags` arrays. Tags are IOB1 or IOB2 (`O`, `B-TYPE`,
//! `I-TYPE`) of any entity types; they are normalised to IOB2, which the model learns and
//! predicts. Every problem names the file and line.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};

/// One tagged sentence: words, their IOB2 tags, and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub line: usize,
}

/// How strictly the tags are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    /// IOB1 or IOB2: an `I-X` after `O` or after another type starts an entity.
    #[default]
    Lenient,
    /// IOB2 only: every entity starts with `B-`; an `I-X` after `O` or another type is an
    /// error.
    Strict,
}

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}:{line}: {msg}", path.display()))
}

/// Checks one tag's form: `O`, `B-TYPE` or `I-TYPE`.
fn parse_tag(tag: &str) -> std::result::Result<(char, &str), String> {
    if tag == "O" {
        return Ok(('O', ""));
    }
    match tag.split_once('-') {
        Some((p @ ("B" | "I"), ty)) if !ty.is_empty() && !ty.chars().any(char::is_whitespace) => {
            Ok((p.chars().next().unwrap_or('O'), ty))
        }
        Some((p @ ("E" | "S" | "L" | "U"), _)) => Err(format!(
            "tag {tag:?}: the {p}- prefix belongs to the IOBES/BILOU schemes; use IOB1 or IOB2 tags (O, B-TYPE, I-TYPE)"
        )),
        _ => Err(format!(
            "tag {tag:?}: unknown tag scheme; use IOB1 or IOB2 tags (O, B-TYPE, I-TYPE)"
        )),
    }
}

/// Normalises one sentence's tags to IOB2, checking them; `lines` gives each word's line.
fn to_iob2(path: &Path, tags: &[String], lines: &[usize], scheme: Scheme) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(tags.len());
    let mut prev: Option<String> = None;
    for (tag, &line) in tags.iter().zip(lines) {
        let (p, ty) = parse_tag(tag).map_err(|m| bad(path, line, m))?;
        let t = match p {
            'O' => {
                prev = None;
                "O".to_string()
            }
            'B' => {
                prev = Some(ty.to_string());
                format!("B-{ty}")
            }
            _ => {
                let continues = prev.as_deref() == Some(ty);
                if !continues && scheme == Scheme::Strict {
                    return Err(bad(
                        path,
                        line,
                        format!(
                            "tag {tag:?} follows {}: in strict mode (IOB2) an entity starts with B-{ty}",
                            prev.as_ref().map_or("O".to_string(), |p| format!("an entity of type {p}"))
                        ),
                    ));
                }
                prev = Some(ty.to_string());
                if continues {
                    format!("I-{ty}")
                } else {
                    format!("B-{ty}")
                }
            }
        };
        out.push(t);
    }
    Ok(out)
}

/// Reads a tagged file: `.jsonl`/`.json` as JSON Lines, anything else as CoNLL-style TSV.
pub fn read(path: &Path, scheme: Scheme) -> Result<Vec<Sentence>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let sentences = if matches!(ext.as_deref(), Some("jsonl" | "json")) {
        parse_jsonl(&text, path, scheme)?
    } else {
        parse_conll(&text, path, scheme)?
    };
    if sentences.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no tagged sentences",
            path.display()
        )));
    }
    Ok(sentences)
}

/// CoNLL-style text; `path` names the source in errors.
pub fn parse_conll(text: &str, path: &Path, scheme: Scheme) -> Result<Vec<Sentence>> {
    let mut out = vec![];
    let (mut words, mut tags, mut lines) = (vec![], vec![], vec![]);
    let mut flush = |words: &mut Vec<String>, tags: &mut Vec<String>, lines: &mut Vec<usize>| {
        if words.is_empty() {
            return Ok(());
        }
        let iob2 = to_iob2(path, tags, lines, scheme)?;
        out.push(Sentence {
            words: std::mem::take(words),
            tags: iob2,
            line: lines[0],
        });
        tags.clear();
        lines.clear();
        Ok::<(), Error>(())
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() || l.starts_with("-DOCSTART-") {
            flush(&mut words, &mut tags, &mut lines)?;
            continue;
        }
        let cols: Vec<&str> = if l.contains('\t') {
            l.split('\t').collect()
        } else {
            l.split_whitespace().collect()
        };
        if cols.len() < 2 {
            return Err(bad(
                path,
                line,
                "expected a token and a tag separated by a tab",
            ));
        }
        let (word, tag) = (cols[0].trim(), cols[cols.len() - 1].trim());
        if word.is_empty() {
            return Err(bad(path, line, "empty token"));
        }
        words.push(word.to_string());
        tags.push(tag.to_string());
        lines.push(line);
    }
    flush(&mut words, &mut tags, &mut lines)?;
    Ok(out)
}

/// JSON Lines with `tokens` and `tags` (arrays of strings of the same length).
pub fn parse_jsonl(text: &str, path: &Path, scheme: Scheme) -> Result<Vec<Sentence>> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(path, line, format!("bad JSON: {e}")))?;
        let strings = |field: &str| -> Result<Vec<String>> {
            let arr = v.get(field).and_then(|x| x.as_array()).ok_or_else(|| {
                bad(
                    path,
                    line,
                    format!("needs \"{field}\": an array of strings"),
                )
            })?;
            arr.iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        bad(path, line, format!("\"{field}\" must hold strings only"))
                    })
                })
                .collect()
        };
        let words = strings("tokens")?;
        let tags = strings("tags")?;
        if words.is_empty() {
            return Err(bad(path, line, "empty sentence (no tokens)"));
        }
        if words.len() != tags.len() {
            return Err(bad(
                path,
                line,
                format!("{} tokens but {} tags", words.len(), tags.len()),
            ));
        }
        if let Some(k) = words.iter().position(|w| w.trim().is_empty()) {
            return Err(bad(path, line, format!("token {} is empty", k + 1)));
        }
        let lines = vec![line; words.len()];
        let tags = to_iob2(path, &tags, &lines, scheme)?;
        out.push(Sentence { words, tags, line });
    }
    Ok(out)
}

/// The IOB2 label set of sentences: `O` first, then `B-X`, `I-X` for each type in order.
pub fn labels(sentences: &[Sentence]) -> Vec<String> {
    let types: BTreeSet<&str> = sentences
        .iter()
        .flat_map(|s| s.tags.iter())
        .filter_map(|t| t.get(2..))
        .collect();
    let mut out = vec!["O".to_string()];
    for t in types {
        out.push(format!("B-{t}"));
        out.push(format!("I-{t}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.tsv")
    }

    #[test]
    fn conll_sentences_are_split_on_blank_lines_and_normalised_to_iob2() {
        let text = "Breast\tI-Disease\ncancer\tI-Disease\n\n\nand\tO\nflu\tI-Disease\n";
        let s = parse_conll(text, p(), Scheme::Lenient).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].tags, vec!["B-Disease", "I-Disease"]);
        assert_eq!(s[1].line, 5);
        assert_eq!(s[1].tags, vec!["O", "B-Disease"]);
        assert_eq!(labels(&s), vec!["O", "B-Disease", "I-Disease"]);
    }

    #[test]
    fn bad_tags_name_the_file_and_line() {
        let e = parse_conll("a\tO\nb\tE-X\n", p(), Scheme::Lenient).unwrap_err();
        assert!(e.to_string().contains("t.tsv:2:"), "{e}");
        assert!(e.to_string().contains("IOBES"), "{e}");
        let e = parse_conll("a\tO\nb\tI-X\n", p(), Scheme::Strict).unwrap_err();
        assert!(
            e.to_string().contains("t.tsv:2:") && e.to_string().contains("strict"),
            "{e}"
        );
        let e = parse_conll("a\tO\nb\n", p(), Scheme::Lenient).unwrap_err();
        assert!(e.to_string().contains("t.tsv:2:"), "{e}");
        let e = parse_conll("a\tPER\n", p(), Scheme::Lenient).unwrap_err();
        assert!(e.to_string().contains("unknown tag scheme"), "{e}");
    }

    #[test]
    fn jsonl_needs_matching_non_empty_arrays() {
        let j = Path::new("t.jsonl");
        let ok = parse_jsonl(
            r#"{"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}"#,
            j,
            Scheme::Strict,
        )
        .unwrap();
        assert_eq!(ok[0].tags, vec!["B-X", "I-X"]);
        for (text, want) in [
            (r#"{"tokens": [], "tags": []}"#, "empty sentence"),
            (r#"{"tokens": ["a"], "tags": []}"#, "1 tokens but 0 tags"),
            (r#"{"tokens": ["a"]}"#, "\"tags\""),
            ("{", "bad JSON"),
        ] {
            let e = parse_jsonl(&format!("\n{text}"), j, Scheme::Lenient).unwrap_err();
            assert!(e.to_string().contains("t.jsonl:2:"), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}

//! What a BM25 search asks for, independent of tantivy: clauses of text, each optional,
//! required or excluded, over title and text or one of them, as words or as a phrase, with a
//! weight.
//!
//! Plain text (the default) is one optional clause of words: no character of ordinary text
//! has operator meaning, so a pasted medication list (`- Cipro Oral Suspension - Cipro XR`)
//! searches every word it contains. Advanced syntax is parsed here by [`parse_advanced`],
//! strictly: a query it cannot read is an error naming the position, never repaired.
//!
//! The analyzer (tokenising, lowercasing, folding, stemming) is applied by the index when it
//! turns clauses into its own queries ([`super::bm25::Bm25Index`]).

use super::bm25_scorer::Bm25Params;
use serde::Serialize;

/// Most query terms (after analysis, repeats included) a BM25 search uses: a pasted note of
/// 10,000 characters has about 1,500; the rest are dropped with a notice in the reply.
pub const MAX_QUERY_TERMS: usize = 512;

/// How the query text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Syntax {
    /// Every word optional; no operators.
    #[default]
    Plain,
    /// `"phrases"`, `+required`, `-excluded`, `title:word`, `text:"a phrase"`.
    Advanced,
}

impl std::str::FromStr for Syntax {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "plain" => Ok(Syntax::Plain),
            "advanced" => Ok(Syntax::Advanced),
            other => Err(format!("unknown syntax {other:?}: use plain or advanced")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Occur {
    Should,
    Must,
    MustNot,
}

/// Which text fields a clause searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fields {
    /// Title and text (a match in either counts, as Anserini's multifield baseline).
    Both,
    Title,
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clause {
    pub occur: Occur,
    pub fields: Fields,
    /// Raw text; analysed by the index.
    pub text: String,
    /// The words must appear in order, next to each other.
    pub phrase: bool,
    /// Score multiplier (1 for what was typed; expansions are weighted below it).
    pub weight: f32,
}

impl Clause {
    pub fn words(text: impl Into<String>) -> Clause {
        Clause {
            occur: Occur::Should,
            fields: Fields::Both,
            text: text.into(),
            phrase: false,
            weight: 1.0,
        }
    }

    pub fn phrase(text: impl Into<String>, weight: f32) -> Clause {
        Clause {
            phrase: true,
            weight,
            ..Clause::words(text)
        }
    }
}

/// A BM25 query: its clauses in order.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TextQuery {
    pub clauses: Vec<Clause>,
    /// Search the note text's affirmed view (negated, possible, hypothetical and family
    /// mentions blanked) instead of the whole text; titles are searched as they are.
    pub affirmed_only: bool,
    /// Leave common English words ([`crate::clinical::is_stopword`]) out of optional word
    /// clauses (phrases, required and excluded words keep them).
    pub drop_stopwords: bool,
    /// BM25's k1 and b for the word clauses (phrases keep tantivy's 1.2 and 0.75).
    pub bm25: Bm25Params,
}

impl TextQuery {
    /// Plain text: every word optional over title and text.
    pub fn plain(text: &str) -> TextQuery {
        TextQuery {
            clauses: vec![Clause::words(text)],
            affirmed_only: false,
            drop_stopwords: false,
            bm25: Bm25Params::default(),
        }
    }

    /// `text` read as `syntax` says.
    pub fn parse(text: &str, syntax: Syntax) -> Result<TextQuery, SyntaxError> {
        match syntax {
            Syntax::Plain => Ok(TextQuery::plain(text)),
            Syntax::Advanced => parse_advanced(text),
        }
    }

    /// What the query asks for in words (required and optional clauses, not exclusions):
    /// the text the semantic side embeds and abbreviations are looked for in.
    pub fn positive_text(&self) -> String {
        self.clauses
            .iter()
            .filter(|c| c.occur != Occur::MustNot)
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An advanced query that cannot be read: where (a character position, 1-based) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at character {position}: {message}")]
pub struct SyntaxError {
    pub position: usize,
    pub message: String,
}

/// Parses advanced syntax. Clauses are separated by whitespace; each is optionally prefixed
/// by `+` (required) or `-` (excluded), optionally by a field (`title:` or `text:`), then a
/// word or a `"quoted phrase"`. Everything else is an error: an unclosed quote, a prefix or
/// field with nothing after it, an unknown field, a query that only excludes.
pub fn parse_advanced(text: &str) -> Result<TextQuery, SyntaxError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| i + 1; // character positions for people are 1-based
    let err = |i: usize, m: String| SyntaxError {
        position: at(i),
        message: m,
    };
    let mut clauses = vec![];
    let mut i = 0;
    while i < chars.len() {
        if chars[i].1.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let occur = match chars[i].1 {
            '+' => {
                i += 1;
                Occur::Must
            }
            '-' => {
                i += 1;
                Occur::MustNot
            }
            _ => Occur::Should,
        };
        if i >= chars.len() || chars[i].1.is_whitespace() {
            return Err(err(
                start,
                format!(
                    "{:?} must be followed by a word or a phrase",
                    chars[start].1
                ),
            ));
        }
        // A field prefix: letters and underscores up to a colon.
        let mut fields = Fields::Both;
        let mut j = i;
        while j < chars.len() && (chars[j].1.is_alphanumeric() || chars[j].1 == '_') {
            j += 1;
        }
        if j < chars.len() && chars[j].1 == ':' && j > i {
            let name: String = chars[i..j].iter().map(|(_, c)| *c).collect();
            fields = match name.to_ascii_lowercase().as_str() {
                "title" => Fields::Title,
                "text" => Fields::Text,
                _ => {
                    return Err(err(
                        i,
                        format!("unknown field {name:?}: use title: or text: (metadata are filters: note_type, specialty, patient_id, dates)"),
                    ))
                }
            };
            i = j + 1;
            if i >= chars.len() || chars[i].1.is_whitespace() {
                return Err(err(
                    j,
                    format!("{name}: must be followed by a word or a phrase"),
                ));
            }
        }
        let (body, phrase) = if chars[i].1 == '"' {
            let open = i;
            let mut k = i + 1;
            while k < chars.len() && chars[k].1 != '"' {
                k += 1;
            }
            if k >= chars.len() {
                return Err(err(open, "this quote is never closed".into()));
            }
            let body: String = chars[open + 1..k].iter().map(|(_, c)| *c).collect();
            if body.trim().is_empty() {
                return Err(err(open, "an empty phrase".into()));
            }
            i = k + 1;
            if i < chars.len() && !chars[i].1.is_whitespace() {
                return Err(err(
                    i,
                    "a phrase must be followed by a space or the end".into(),
                ));
            }
            (body, true)
        } else {
            let s = i;
            while i < chars.len() && !chars[i].1.is_whitespace() {
                if chars[i].1 == '"' {
                    return Err(err(
                        i,
                        "a quote inside a word: put the phrase in its own quotes".into(),
                    ));
                }
                i += 1;
            }
            (chars[s..i].iter().map(|(_, c)| *c).collect(), false)
        };
        clauses.push(Clause {
            occur,
            fields,
            text: body,
            phrase,
            weight: 1.0,
        });
    }
    if clauses.is_empty() {
        return Err(err(0, "the query is empty".into()));
    }
    if clauses.iter().all(|c| c.occur == Occur::MustNot) {
        return Err(err(
            0,
            "the query only excludes: add a word to search for".into(),
        ));
    }
    Ok(TextQuery {
        clauses,
        affirmed_only: false,
        drop_stopwords: false,
        bm25: Bm25Params::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_has_no_operators() {
        let q = TextQuery::parse(
            "- Cipro Oral Suspension - Cipro XR +x title:y \"z",
            Syntax::Plain,
        )
        .unwrap();
        assert_eq!(q.clauses.len(), 1);
        assert_eq!(q.clauses[0].occur, Occur::Should);
        assert_eq!(
            q.clauses[0].text,
            "- Cipro Oral Suspension - Cipro XR +x title:y \"z"
        );
    }

    #[test]
    fn advanced_syntax_reads_phrases_requirements_exclusions_and_fields() {
        let q = parse_advanced("+\"chest pain\" -pleuritic title:NSTEMI text:\"troponin I\" stent")
            .unwrap();
        let got: Vec<(Occur, Fields, &str, bool)> = q
            .clauses
            .iter()
            .map(|c| (c.occur, c.fields, c.text.as_str(), c.phrase))
            .collect();
        assert_eq!(
            got,
            vec![
                (Occur::Must, Fields::Both, "chest pain", true),
                (Occur::MustNot, Fields::Both, "pleuritic", false),
                (Occur::Should, Fields::Title, "NSTEMI", false),
                (Occur::Should, Fields::Text, "troponin I", true),
                (Occur::Should, Fields::Both, "stent", false),
            ]
        );
        assert_eq!(q.positive_text(), "chest pain NSTEMI troponin I stent");
    }

    #[test]
    fn malformed_advanced_queries_name_the_position() {
        for (q, pos, msg) in [
            ("chest \"pain", 7, "never closed"),
            ("chest + pain", 7, "followed by"),
            ("ward:5 pain", 1, "unknown field"),
            ("title: pain", 6, "followed by"),
            ("-pain -fever", 1, "only excludes"),
            ("a\"b\"", 2, "quote inside"),
            ("\"\" pain", 1, "empty phrase"),
            ("   ", 1, "empty"),
        ] {
            let e = parse_advanced(q).unwrap_err();
            assert_eq!(e.position, pos, "{q:?}: {e}");
            assert!(e.message.contains(msg), "{q:?}: {e}");
        }
    }
}

//! Clinical language: what makes a note's text different from any text.
//!
//! * [`abbrev`]: the abbreviation dictionary (shipped, generated from CC BY sense inventories
//!   with their frequencies; users add or replace entries) and query expansion both ways.
//! * [`assertion`]: negated, possible, historical, family and hypothetical mentions
//!   (NegEx/ConText-style triggers and scopes), and the affirmed-only view of a note.
//! * [`sections`]: section headings (`PHYSICAL EXAM:`), carried into later windows.
//!
//! Everything here works on raw text with byte offsets, independent of the BM25 analyzer,
//! because clinical short forms carry punctuation the analyzer splits on (`s/p`, `r/o`).

pub mod abbrev;
pub mod assertion;
pub mod sections;

/// A word of raw text: a run of letters and digits, joined across single `/ . & ' -` between
/// two of them (`s/p`, `p.o`, `A-fib`, `I21.4`), with its byte span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word<'a> {
    pub text: &'a str,
    pub start: usize,
    pub end: usize,
}

/// The words of `text`, in order.
pub fn words(text: &str) -> Vec<Word<'_>> {
    let mut out = vec![];
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !c.is_alphanumeric() {
            continue;
        }
        let start = i;
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = chars.peek() {
            if d.is_alphanumeric() {
                end = j + d.len_utf8();
                chars.next();
            } else if matches!(d, '/' | '.' | '&' | '\'' | '-')
                && text[j + 1..]
                    .chars()
                    .next()
                    .is_some_and(|n| n.is_alphanumeric())
            {
                // A joiner between two letters or digits stays inside the word.
                chars.next();
            } else {
                break;
            }
        }
        out.push(Word {
            text: &text[start..end],
            start,
            end,
        });
    }
    out
}

/// Common English words that are never expanded and never added as abbreviations: "all" is
/// acute lymphoblastic leukemia only when written ALL, and the BM25 index does not keep case.
pub fn is_stopword(lower: &str) -> bool {
    const STOP: &[&str] = &[
        "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
        "by", "can", "could", "did", "do", "does", "doing", "done", "down", "during", "each",
        "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here",
        "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me",
        "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or",
        "other", "our", "out", "over", "own", "per", "same", "she", "should", "so", "some", "such",
        "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
        "through", "to", "too", "under", "until", "up", "us", "very", "was", "we", "were", "what",
        "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you",
        "your", "yes", "ok", "go", "see", "use", "may", "new", "old", "one", "two", "day", "man",
        "men", "pm", "mr", "mrs", "ms", "dr", "st", "via", "re", "etc",
    ];
    STOP.contains(&lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_clinical_joiners_inside_and_drop_the_rest() {
        let w: Vec<&str> = words("s/p CABG, p.o. BID; A-fib (I21.4) - Cipro")
            .iter()
            .map(|w| w.text)
            .collect();
        assert_eq!(w, ["s/p", "CABG", "p.o", "BID", "A-fib", "I21.4", "Cipro"]);
        let w = words("café au lait");
        assert_eq!((w[0].start, w[0].end), (0, 5));
    }

    #[test]
    fn stopwords_are_common_english_words_only() {
        assert!(is_stopword("all") && is_stopword("the") && !is_stopword("sob"));
    }
}

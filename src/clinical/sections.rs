//! Section headings of a note: `HISTORY OF PRESENT ILLNESS:`, `PHYSICAL EXAM:`, and at the
//! start of a line `Assessment and plan:`.
//!
//! Transcribed notes mark their sections with a heading in capitals and a colon, often
//! inline (MTSamples: `...no distress.,HEENT: Normocephalic...`), so a heading is recognised
//! where it stands rather than only at a line start: one to eight words in capitals (at least
//! three letters in all, so `BP: 120/80` is a value, not a section) ending at a colon, not
//! preceded by another word in capitals. At the start of a line a heading may also be in
//! sentence or title case (at most five words of letters). Window embedding carries the
//! heading in force into windows that begin inside a section (see
//! [`crate::model::WindowContext::Heading`]).

/// A heading: the byte span of its words (without the colon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heading {
    pub start: usize,
    pub end: usize,
}

impl Heading {
    /// The heading as a window reads it: its words and the colon.
    pub fn label(&self, text: &str) -> String {
        format!("{}:", &text[self.start..self.end])
    }
}

const MAX_WORDS: usize = 8;
const MAX_LINE_START_WORDS: usize = 5;

/// The headings of `text`, in order.
pub fn headings(text: &str) -> Vec<Heading> {
    let bytes = text.as_bytes();
    let mut out = vec![];
    for (colon, _) in text.match_indices(':') {
        // Walk back over the words before the colon.
        let mut end = colon;
        while end > 0 && bytes[end - 1] == b' ' {
            end -= 1;
        }
        if end == 0 || end + 1 < colon {
            // Nothing before it, or more than one space: not a heading's colon.
            continue;
        }
        if let Some(h) = capitals_before(text, end).or_else(|| line_start_before(text, end)) {
            out.push(h);
        }
    }
    out
}

/// A word of a heading in capitals: letters (none lowercase), digits and `- & / ' .`, with at
/// least one letter or being `&` or `/` alone.
fn is_capital_word(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_uppercase() || c.is_ascii_digit() || "-&/'.()".contains(c))
        && (w.chars().any(char::is_uppercase) || w == "&" || w == "/")
}

/// Up to [`MAX_WORDS`] capital words ending at `end`, separated by single spaces, after the
/// last character that cannot be inside a heading.
fn capitals_before(text: &str, end: usize) -> Option<Heading> {
    let head = &text[..end];
    let from = head
        .rfind([',', ':', ';', '\n', '\t', '\r'])
        .map_or(0, |i| i + 1);
    let (mut start, mut words, mut letters) = (end, 0, 0);
    // A double space gives an empty piece, which ends the heading.
    for word in head[from..].rsplit(' ') {
        if !is_capital_word(word) {
            break;
        }
        words += 1;
        if words > MAX_WORDS {
            return None;
        }
        letters += word.chars().filter(|c| c.is_alphabetic()).count();
        start -= word.len() + usize::from(words > 1);
    }
    if words == 0 || letters < 3 {
        return None;
    }
    // Trim leading punctuation of the first word ("(HEENT" is not a heading start).
    let trimmed = text[start..end].trim_start_matches(|c: char| !c.is_alphanumeric());
    let start = end - trimmed.len();
    (start < end).then_some(Heading { start, end })
}

/// A sentence- or title-case heading alone at the start of a line.
fn line_start_before(text: &str, end: usize) -> Option<Heading> {
    let line_start = text[..end].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..end];
    let start = line_start + (line.len() - line.trim_start().len());
    let words: Vec<&str> = text[start..end].split(' ').collect();
    let first = words.first()?.chars().next()?;
    (first.is_uppercase()
        && words.len() <= MAX_LINE_START_WORDS
        && words
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_alphabetic() || c == '/' || c == '&')))
    .then_some(Heading { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Vec<String> {
        headings(text).iter().map(|h| h.label(text)).collect()
    }

    #[test]
    fn headings_in_capitals_at_line_starts() {
        let t = "CHIEF COMPLAINT: chest pain.\nHPI: 62-year-old male.\nVITALS: T 36.6 C, HR 90.";
        assert_eq!(labels(t), ["CHIEF COMPLAINT:", "HPI:", "VITALS:"]);
    }

    #[test]
    fn inline_headings_of_transcriptions() {
        let t = "2-D M-MODE: , ,1.  Left atrial enlargement.,DOPPLER: , ,1.  Mild regurgitation.";
        assert_eq!(labels(t), ["2-D M-MODE:", "DOPPLER:"]);
        let t = "No distress.  HEENT:  Normocephalic. PAST MEDICAL HISTORY:,  None.";
        assert_eq!(labels(t), ["HEENT:", "PAST MEDICAL HISTORY:"]);
    }

    #[test]
    fn values_and_times_are_not_headings() {
        assert!(labels("Seen at 10:30 today. BP: 120/80, ratio 1:2.").is_empty());
        assert!(labels("Pain improved; he said: no more.").is_empty());
    }

    #[test]
    fn a_heading_in_sentence_case_only_at_a_line_start() {
        let t = "Assessment and plan: admit; the plan is: observe.\nNo distress, he said: fine.";
        assert_eq!(labels(t), ["Assessment and plan:"]);
    }

    #[test]
    fn words_in_capitals_before_a_heading_are_part_of_it_up_to_eight() {
        let t = "ST elevation noted. REVIEW OF SYSTEMS: negative.";
        assert_eq!(labels(t), ["REVIEW OF SYSTEMS:"]);
        let t = "noted. ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT: x";
        assert_eq!(labels(t), ["ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT:"]);
        let t = "A B C D E F G H I J: x";
        assert!(labels(t).is_empty(), "{:?}", labels(t));
    }
}

//! Assertion status of what a note mentions: negated, possible, historical, family or
//! hypothetical, in the manner of NegEx (Chapman et al. 2001) and ConText (Harkema et al.
//! 2009), with trigger lists written here.
//!
//! A note is split into sentences (sentence-ending punctuation, line breaks, and the colon of
//! a heading such as `ROS:`). In each sentence the annotator finds trigger phrases, longest
//! first: a *pre* trigger ("denies", "no evidence of") asserts the words after it, a *post*
//! trigger ("was ruled out", "is unlikely") the words before it, a *both* trigger ("mother")
//! the words on either side. A scope runs from the trigger to the sentence's end (or start),
//! and stops early at a termination word ("but", "however", "except"...) or at another
//! trigger. *Pseudo* triggers ("no change", "not only", "gram negative", "history of present
//! illness") look like triggers but assert nothing, and block the shorter trigger inside them.
//!
//! [`annotate`] returns sentences and scopes as character offsets; [`status_at`] gives the
//! status of a span; [`affirmed_view`] blanks the scopes that do not assert a present
//! condition of the patient (negated, possible, hypothetical, family), keeping every other
//! character where it was, so the BM25 index can search only affirmed mentions.

use serde::Serialize;

/// The status a scope gives what it covers.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Said to be absent: "denies chest pain", "no evidence of pneumonia".
    Negated,
    /// About someone else: "mother had breast cancer", "family history of colon cancer".
    Family,
    /// Conditional or future: "return if chest pain recurs", "risk of bleeding".
    Hypothetical,
    /// Uncertain: "possible pneumonia", "r/o PE", "cannot exclude fracture".
    Possible,
    /// In the past: "history of MI", "s/p appendectomy" (still the patient's).
    Historical,
}

impl Status {
    /// Whether text under this status says the patient has the condition now or had it:
    /// false for negated, possible, hypothetical and family mentions.
    pub fn is_affirmed(self) -> bool {
        matches!(self, Status::Historical)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Negated => "negated",
            Status::Family => "family",
            Status::Hypothetical => "hypothetical",
            Status::Possible => "possible",
            Status::Historical => "historical",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "negated" => Status::Negated,
            "family" => Status::Family,
            "hypothetical" => Status::Hypothetical,
            "possible" => Status::Possible,
            "historical" => Status::Historical,
            other => return Err(format!("unknown status {other:?}")),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Pre,
    Post,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Trigger(Status, Direction),
    /// Looks like a trigger, asserts nothing.
    Pseudo,
    /// Ends a scope.
    Termination,
}

use Direction::*;
use Status::*;

/// The trigger lists. Phrases are lowercase words separated by single spaces and match whole
/// words, case-insensitively, longest first. Written for clinical notes as dictated and
/// typed (MTSamples, EHR notes): ROS lists, "negative for" in results, consent language.
const TRIGGERS: &[(&str, Kind)] = &[
    // Negated, before what they negate.
    ("no", Kind::Trigger(Negated, Pre)),
    ("not", Kind::Trigger(Negated, Pre)),
    ("non", Kind::Trigger(Negated, Pre)),
    ("nor", Kind::Trigger(Negated, Pre)),
    ("neither", Kind::Trigger(Negated, Pre)),
    ("without", Kind::Trigger(Negated, Pre)),
    ("denies", Kind::Trigger(Negated, Pre)),
    ("denied", Kind::Trigger(Negated, Pre)),
    ("deny", Kind::Trigger(Negated, Pre)),
    ("denying", Kind::Trigger(Negated, Pre)),
    ("absence of", Kind::Trigger(Negated, Pre)),
    ("absent", Kind::Trigger(Negated, Pre)),
    ("negative for", Kind::Trigger(Negated, Pre)),
    ("free of", Kind::Trigger(Negated, Pre)),
    ("no evidence of", Kind::Trigger(Negated, Pre)),
    ("no evidence for", Kind::Trigger(Negated, Pre)),
    ("no signs of", Kind::Trigger(Negated, Pre)),
    ("no sign of", Kind::Trigger(Negated, Pre)),
    ("no history of", Kind::Trigger(Negated, Pre)),
    ("no prior history of", Kind::Trigger(Negated, Pre)),
    ("no family history of", Kind::Trigger(Negated, Pre)),
    ("no complaints of", Kind::Trigger(Negated, Pre)),
    ("never had", Kind::Trigger(Negated, Pre)),
    ("never", Kind::Trigger(Negated, Pre)),
    ("resolution of", Kind::Trigger(Negated, Pre)),
    ("ruled out for", Kind::Trigger(Negated, Pre)),
    ("rules out", Kind::Trigger(Negated, Pre)),
    ("fails to reveal", Kind::Trigger(Negated, Pre)),
    ("failed to reveal", Kind::Trigger(Negated, Pre)),
    ("unremarkable for", Kind::Trigger(Negated, Pre)),
    ("no new", Kind::Trigger(Negated, Pre)),
    ("no acute", Kind::Trigger(Negated, Pre)),
    ("no obvious", Kind::Trigger(Negated, Pre)),
    ("no definite", Kind::Trigger(Negated, Pre)),
    ("no significant", Kind::Trigger(Negated, Pre)),
    ("no gross", Kind::Trigger(Negated, Pre)),
    ("no focal", Kind::Trigger(Negated, Pre)),
    ("negative", Kind::Trigger(Negated, Post)),
    ("was negative", Kind::Trigger(Negated, Post)),
    ("is negative", Kind::Trigger(Negated, Post)),
    ("were negative", Kind::Trigger(Negated, Post)),
    ("are negative", Kind::Trigger(Negated, Post)),
    ("was ruled out", Kind::Trigger(Negated, Post)),
    ("is ruled out", Kind::Trigger(Negated, Post)),
    ("were ruled out", Kind::Trigger(Negated, Post)),
    ("has been ruled out", Kind::Trigger(Negated, Post)),
    ("have been ruled out", Kind::Trigger(Negated, Post)),
    ("ruled out", Kind::Trigger(Negated, Post)),
    ("is unlikely", Kind::Trigger(Negated, Post)),
    ("was unlikely", Kind::Trigger(Negated, Post)),
    ("unlikely", Kind::Trigger(Negated, Pre)),
    ("is absent", Kind::Trigger(Negated, Post)),
    ("was absent", Kind::Trigger(Negated, Post)),
    ("are absent", Kind::Trigger(Negated, Post)),
    ("not seen", Kind::Trigger(Negated, Post)),
    ("not identified", Kind::Trigger(Negated, Post)),
    ("not present", Kind::Trigger(Negated, Post)),
    ("not appreciated", Kind::Trigger(Negated, Post)),
    ("not noted", Kind::Trigger(Negated, Post)),
    ("not found", Kind::Trigger(Negated, Post)),
    ("has resolved", Kind::Trigger(Negated, Post)),
    ("have resolved", Kind::Trigger(Negated, Post)),
    ("resolved", Kind::Trigger(Negated, Post)),
    ("none", Kind::Trigger(Negated, Post)),
    // Possible.
    ("possible", Kind::Trigger(Possible, Pre)),
    ("possibly", Kind::Trigger(Possible, Pre)),
    ("probable", Kind::Trigger(Possible, Pre)),
    ("probably", Kind::Trigger(Possible, Pre)),
    ("likely", Kind::Trigger(Possible, Pre)),
    ("suspected", Kind::Trigger(Possible, Pre)),
    ("suspect", Kind::Trigger(Possible, Pre)),
    ("suspecting", Kind::Trigger(Possible, Pre)),
    ("suspected of", Kind::Trigger(Possible, Pre)),
    ("suspected of having", Kind::Trigger(Possible, Pre)),
    ("suspicious for", Kind::Trigger(Possible, Pre)),
    ("suspicion for", Kind::Trigger(Possible, Pre)),
    ("suspicion of", Kind::Trigger(Possible, Pre)),
    ("concern for", Kind::Trigger(Possible, Pre)),
    ("concerning for", Kind::Trigger(Possible, Pre)),
    ("worrisome for", Kind::Trigger(Possible, Pre)),
    ("question of", Kind::Trigger(Possible, Pre)),
    ("questionable", Kind::Trigger(Possible, Pre)),
    ("rule out", Kind::Trigger(Possible, Pre)),
    ("to rule out", Kind::Trigger(Possible, Pre)),
    ("r/o", Kind::Trigger(Possible, Pre)),
    ("ro", Kind::Trigger(Possible, Pre)),
    ("evaluate for", Kind::Trigger(Possible, Pre)),
    ("evaluation for", Kind::Trigger(Possible, Pre)),
    ("may be", Kind::Trigger(Possible, Pre)),
    ("may represent", Kind::Trigger(Possible, Pre)),
    ("may have", Kind::Trigger(Possible, Pre)),
    ("might be", Kind::Trigger(Possible, Pre)),
    ("could be", Kind::Trigger(Possible, Pre)),
    ("could represent", Kind::Trigger(Possible, Pre)),
    ("cannot exclude", Kind::Trigger(Possible, Pre)),
    ("can not exclude", Kind::Trigger(Possible, Pre)),
    ("cannot rule out", Kind::Trigger(Possible, Pre)),
    ("can not rule out", Kind::Trigger(Possible, Pre)),
    ("not rule out", Kind::Trigger(Possible, Pre)),
    ("cannot be excluded", Kind::Trigger(Possible, Post)),
    ("can not be excluded", Kind::Trigger(Possible, Post)),
    ("cannot be ruled out", Kind::Trigger(Possible, Post)),
    ("can not be ruled out", Kind::Trigger(Possible, Post)),
    ("not excluded", Kind::Trigger(Possible, Post)),
    ("not ruled out", Kind::Trigger(Possible, Post)),
    ("is possible", Kind::Trigger(Possible, Post)),
    ("is suspected", Kind::Trigger(Possible, Post)),
    ("is likely", Kind::Trigger(Possible, Post)),
    ("is questionable", Kind::Trigger(Possible, Post)),
    (
        "differential diagnosis includes",
        Kind::Trigger(Possible, Pre),
    ),
    ("differential includes", Kind::Trigger(Possible, Pre)),
    ("versus", Kind::Trigger(Possible, Both)),
    ("vs", Kind::Trigger(Possible, Both)),
    ("presumed", Kind::Trigger(Possible, Pre)),
    ("presumably", Kind::Trigger(Possible, Pre)),
    ("equivocal", Kind::Trigger(Possible, Both)),
    ("differential diagnosis", Kind::Trigger(Possible, Pre)),
    (
        "differential diagnosis may include",
        Kind::Trigger(Possible, Pre),
    ),
    ("may include", Kind::Trigger(Possible, Pre)),
    ("on the differential", Kind::Trigger(Possible, Post)),
    ("is on the differential", Kind::Trigger(Possible, Post)),
    ("to determine if", Kind::Trigger(Possible, Pre)),
    ("to determine whether", Kind::Trigger(Possible, Pre)),
    ("whether", Kind::Trigger(Possible, Pre)),
    ("suggestive of", Kind::Trigger(Possible, Pre)),
    ("suggesting", Kind::Trigger(Possible, Pre)),
    ("is suggested", Kind::Trigger(Possible, Post)),
    ("also suggested", Kind::Trigger(Possible, Post)),
    // Historical.
    ("history of", Kind::Trigger(Historical, Pre)),
    ("hx of", Kind::Trigger(Historical, Pre)),
    ("h/o", Kind::Trigger(Historical, Pre)),
    ("past history of", Kind::Trigger(Historical, Pre)),
    ("past medical history of", Kind::Trigger(Historical, Pre)),
    (
        "past medical history significant for",
        Kind::Trigger(Historical, Pre),
    ),
    ("history significant for", Kind::Trigger(Historical, Pre)),
    ("remote history of", Kind::Trigger(Historical, Pre)),
    ("previous", Kind::Trigger(Historical, Pre)),
    ("previously", Kind::Trigger(Historical, Pre)),
    ("prior", Kind::Trigger(Historical, Pre)),
    ("status post", Kind::Trigger(Historical, Pre)),
    ("s/p", Kind::Trigger(Historical, Pre)),
    ("years ago", Kind::Trigger(Historical, Post)),
    ("used to", Kind::Trigger(Historical, Pre)),
    ("in the past", Kind::Trigger(Historical, Post)),
    // Family.
    ("family history of", Kind::Trigger(Family, Pre)),
    ("family history", Kind::Trigger(Family, Pre)),
    ("family hx", Kind::Trigger(Family, Pre)),
    ("fhx", Kind::Trigger(Family, Pre)),
    ("mother", Kind::Trigger(Family, Pre)),
    ("father", Kind::Trigger(Family, Pre)),
    ("mom", Kind::Trigger(Family, Pre)),
    ("dad", Kind::Trigger(Family, Pre)),
    ("parents", Kind::Trigger(Family, Pre)),
    ("parent", Kind::Trigger(Family, Pre)),
    ("brother", Kind::Trigger(Family, Pre)),
    ("brothers", Kind::Trigger(Family, Pre)),
    ("sister", Kind::Trigger(Family, Pre)),
    ("sisters", Kind::Trigger(Family, Pre)),
    ("sibling", Kind::Trigger(Family, Pre)),
    ("siblings", Kind::Trigger(Family, Pre)),
    ("son", Kind::Trigger(Family, Pre)),
    ("sons", Kind::Trigger(Family, Pre)),
    ("daughter", Kind::Trigger(Family, Pre)),
    ("daughters", Kind::Trigger(Family, Pre)),
    ("aunt", Kind::Trigger(Family, Pre)),
    ("uncle", Kind::Trigger(Family, Pre)),
    ("grandmother", Kind::Trigger(Family, Pre)),
    ("grandfather", Kind::Trigger(Family, Pre)),
    ("cousin", Kind::Trigger(Family, Pre)),
    ("maternal", Kind::Trigger(Family, Pre)),
    ("paternal", Kind::Trigger(Family, Pre)),
    ("family member", Kind::Trigger(Family, Pre)),
    ("family members", Kind::Trigger(Family, Pre)),
    ("runs in the family", Kind::Trigger(Family, Post)),
    ("in the family", Kind::Trigger(Family, Post)),
    ("in her family", Kind::Trigger(Family, Post)),
    ("in his family", Kind::Trigger(Family, Post)),
    ("in their family", Kind::Trigger(Family, Post)),
    // Hypothetical.
    ("if", Kind::Trigger(Hypothetical, Pre)),
    ("in case of", Kind::Trigger(Hypothetical, Pre)),
    ("in the event of", Kind::Trigger(Hypothetical, Pre)),
    ("should she develop", Kind::Trigger(Hypothetical, Pre)),
    ("should he develop", Kind::Trigger(Hypothetical, Pre)),
    (
        "should the patient develop",
        Kind::Trigger(Hypothetical, Pre),
    ),
    ("should there be", Kind::Trigger(Hypothetical, Pre)),
    ("return for", Kind::Trigger(Hypothetical, Pre)),
    ("watch for", Kind::Trigger(Hypothetical, Pre)),
    ("monitor for", Kind::Trigger(Hypothetical, Pre)),
    ("monitoring for", Kind::Trigger(Hypothetical, Pre)),
    ("risk of", Kind::Trigger(Hypothetical, Pre)),
    ("risks of", Kind::Trigger(Hypothetical, Pre)),
    ("risks include", Kind::Trigger(Hypothetical, Pre)),
    ("risks including", Kind::Trigger(Hypothetical, Pre)),
    ("risks and benefits", Kind::Trigger(Hypothetical, Pre)),
    ("to prevent", Kind::Trigger(Hypothetical, Pre)),
    ("prevention of", Kind::Trigger(Hypothetical, Pre)),
    ("prophylaxis", Kind::Trigger(Hypothetical, Post)),
    ("prn", Kind::Trigger(Hypothetical, Pre)),
    ("as needed for", Kind::Trigger(Hypothetical, Pre)),
    ("as needed", Kind::Trigger(Hypothetical, Pre)),
    ("risks", Kind::Trigger(Hypothetical, Pre)),
    ("risks are", Kind::Trigger(Hypothetical, Pre)),
    ("risk for", Kind::Trigger(Hypothetical, Pre)),
    ("could develop", Kind::Trigger(Hypothetical, Pre)),
    ("may develop", Kind::Trigger(Hypothetical, Pre)),
    ("can develop", Kind::Trigger(Hypothetical, Pre)),
    ("could result in", Kind::Trigger(Hypothetical, Pre)),
    ("may result in", Kind::Trigger(Hypothetical, Pre)),
    ("can result in", Kind::Trigger(Hypothetical, Pre)),
    ("could lead to", Kind::Trigger(Hypothetical, Pre)),
    ("may lead to", Kind::Trigger(Hypothetical, Pre)),
    ("avoid", Kind::Trigger(Hypothetical, Pre)),
    ("to avoid", Kind::Trigger(Hypothetical, Pre)),
    ("result in", Kind::Trigger(Hypothetical, Pre)),
    ("could have", Kind::Trigger(Hypothetical, Pre)),
    // Pseudo triggers: they contain a trigger word and assert nothing.
    ("no change", Kind::Pseudo),
    ("no recent change", Kind::Pseudo),
    ("prior examination", Kind::Pseudo),
    ("prior exam", Kind::Pseudo),
    ("prior study", Kind::Pseudo),
    ("prior studies", Kind::Pseudo),
    ("prior imaging", Kind::Pseudo),
    ("prior films", Kind::Pseudo),
    ("previous examination", Kind::Pseudo),
    ("previous exam", Kind::Pseudo),
    ("previous study", Kind::Pseudo),
    ("previous studies", Kind::Pseudo),
    ("previous films", Kind::Pseudo),
    ("history of abrupt onset", Kind::Pseudo),
    ("history of sudden onset", Kind::Pseudo),
    ("no significant change", Kind::Pseudo),
    ("no interval change", Kind::Pseudo),
    ("no increase", Kind::Pseudo),
    ("no decrease", Kind::Pseudo),
    ("no further", Kind::Pseudo),
    ("not only", Kind::Pseudo),
    ("not necessarily", Kind::Pseudo),
    ("not certain if", Kind::Pseudo),
    ("not certain whether", Kind::Pseudo),
    ("not cause", Kind::Pseudo),
    ("not drain", Kind::Pseudo),
    ("not extend", Kind::Pseudo),
    ("not been able", Kind::Pseudo),
    ("no longer", Kind::Trigger(Negated, Pre)),
    ("no longer present", Kind::Trigger(Negated, Post)),
    ("is no longer present", Kind::Trigger(Negated, Post)),
    ("went away", Kind::Trigger(Negated, Post)),
    ("has gone away", Kind::Trigger(Negated, Post)),
    ("have gone away", Kind::Trigger(Negated, Post)),
    ("subsided", Kind::Trigger(Negated, Post)),
    ("has subsided", Kind::Trigger(Negated, Post)),
    ("nobody", Kind::Trigger(Negated, Pre)),
    ("no one", Kind::Trigger(Negated, Pre)),
    ("not stopped", Kind::Pseudo),
    ("not quit", Kind::Pseudo),
    ("previously well", Kind::Pseudo),
    ("previously healthy", Kind::Pseudo),
    ("as previously described", Kind::Pseudo),
    ("as previously noted", Kind::Pseudo),
    ("as previously scheduled", Kind::Pseudo),
    ("as previously discussed", Kind::Pseudo),
    ("without difficulty", Kind::Pseudo),
    ("without complication", Kind::Pseudo),
    ("without complications", Kind::Pseudo),
    ("without incident", Kind::Pseudo),
    ("without any complications", Kind::Pseudo),
    ("gram negative", Kind::Pseudo),
    ("gram-negative", Kind::Pseudo),
    ("history of present illness", Kind::Pseudo),
    ("past medical history", Kind::Pseudo),
    ("past surgical history", Kind::Pseudo),
    ("social history", Kind::Pseudo),
    ("medical history", Kind::Pseudo),
    ("surgical history", Kind::Pseudo),
    ("family history noncontributory", Kind::Pseudo),
    ("family history is noncontributory", Kind::Pseudo),
    ("family history negative", Kind::Trigger(Negated, Pre)),
    ("prior to", Kind::Pseudo),
    ("previously described", Kind::Pseudo),
    ("likely to", Kind::Pseudo),
    ("if so", Kind::Pseudo),
    ("as if", Kind::Pseudo),
    ("even if", Kind::Pseudo),
    ("whether or not", Kind::Pseudo),
    ("not limited to", Kind::Pseudo),
    ("no more than", Kind::Pseudo),
    ("not more than", Kind::Pseudo),
    ("not less than", Kind::Pseudo),
    ("no sooner", Kind::Pseudo),
    // Terminations: a scope ends here.
    ("but", Kind::Termination),
    ("however", Kind::Termination),
    ("although", Kind::Termination),
    ("though", Kind::Termination),
    ("yet", Kind::Termination),
    ("except", Kind::Termination),
    ("except for", Kind::Termination),
    ("apart from", Kind::Termination),
    ("aside from", Kind::Termination),
    ("other than", Kind::Termination),
    ("nevertheless", Kind::Termination),
    ("nonetheless", Kind::Termination),
    ("whereas", Kind::Termination),
    ("which", Kind::Termination),
    ("presents with", Kind::Termination),
    ("presents", Kind::Termination),
    ("presented", Kind::Termination),
    ("presenting", Kind::Termination),
    ("developed", Kind::Termination),
    ("who has", Kind::Termination),
    ("who has had", Kind::Termination),
    ("who is", Kind::Termination),
    ("complaints of", Kind::Termination),
    ("presented with", Kind::Termination),
    ("presenting with", Kind::Termination),
    ("complains of", Kind::Termination),
    ("complaining of", Kind::Termination),
    ("reports", Kind::Termination),
    ("now", Kind::Termination),
    ("currently", Kind::Termination),
    ("today", Kind::Termination),
    ("because", Kind::Termination),
    ("secondary to", Kind::Termination),
    ("cause of", Kind::Termination),
    ("source of", Kind::Termination),
    ("reason for", Kind::Termination),
    ("and has", Kind::Termination),
    ("and had", Kind::Termination),
    ("and is", Kind::Termination),
    ("and was", Kind::Termination),
    ("and she", Kind::Termination),
    ("and he", Kind::Termination),
    ("and the patient", Kind::Termination),
];

/// A trigger found in the text.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Trigger {
    /// Character offsets.
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// A scope: what `trigger` asserts `status` of, as character offsets.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Assertion {
    pub start: usize,
    pub end: usize,
    pub status: Status,
    pub trigger: Trigger,
}

/// The annotation of one text: its sentences and assertion scopes, as character offsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Annotation {
    pub sentences: Vec<(usize, usize)>,
    pub assertions: Vec<Assertion>,
}

/// One trigger list entry, split into words.
struct Entry {
    words: Vec<String>,
    kind: Kind,
}

/// Relatives: "mother" starts a family scope, but "with his mother", "the mother states"
/// name who brought or speaks for the patient.
const KIN: &[&str] = &[
    "mother",
    "father",
    "mom",
    "dad",
    "parents",
    "parent",
    "brother",
    "sister",
    "son",
    "daughter",
    "aunt",
    "uncle",
    "grandmother",
    "grandfather",
    "wife",
    "husband",
];

/// Phrases generated from [`KIN`]: companions and informants (pseudo), and "in her mother"
/// (a family scope backwards).
fn kin_phrases() -> Vec<(String, Kind)> {
    let mut out = vec![];
    for k in KIN {
        for pre in [
            "with his", "with her", "with the", "and his", "and her", "and the", "by his",
            "by her", "by the", "per", "per his", "per her", "per the", "to his", "to her",
            "to the",
        ] {
            out.push((format!("{pre} {k}"), Kind::Pseudo));
        }
        for verb in [
            "states",
            "stated",
            "reports",
            "reported",
            "says",
            "said",
            "notes",
            "noted",
            "describes",
            "described",
            "has described",
            "brought",
            "brings",
            "is at",
            "was at",
            "feels",
            "thinks",
            "believes",
        ] {
            out.push((format!("{k} {verb}"), Kind::Pseudo));
        }
        for pre in ["in her", "in his", "in the", "in a", "in their"] {
            out.push((format!("{pre} {k}"), Kind::Trigger(Family, Post)));
        }
    }
    out
}

/// The lists indexed by first word, longest phrase first.
fn lexicon() -> &'static std::collections::HashMap<String, Vec<Entry>> {
    use std::sync::OnceLock;
    static LEX: OnceLock<std::collections::HashMap<String, Vec<Entry>>> = OnceLock::new();
    LEX.get_or_init(|| {
        let mut m: std::collections::HashMap<String, Vec<Entry>> = Default::default();
        let listed = TRIGGERS.iter().map(|(p, k)| (p.to_string(), *k));
        for (phrase, kind) in listed.chain(kin_phrases()) {
            let words: Vec<String> = phrase.split(' ').map(str::to_string).collect();
            m.entry(words[0].clone())
                .or_default()
                .push(Entry { words, kind });
        }
        for v in m.values_mut() {
            v.sort_by_key(|e| std::cmp::Reverse(e.words.len()));
        }
        m
    })
}

/// A token of a sentence: a word (letters, digits, `/`, `-`, `'` inside) or one
/// punctuation character, with byte offsets.
#[derive(Debug, Clone)]
struct Tok {
    lower: String,
    start: usize,
    end: usize,
    word: bool,
}

fn tokens(text: &str, from: usize, to: usize) -> Vec<Tok> {
    let s = &text[from..to];
    let mut out = vec![];
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c.is_whitespace() {
            continue;
        }
        if c.is_alphanumeric() {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = it.peek() {
                let joined = matches!(d, '/' | '-' | '\'')
                    && s[j + d.len_utf8()..]
                        .chars()
                        .next()
                        .is_some_and(char::is_alphanumeric);
                if d.is_alphanumeric() || joined {
                    end = j + d.len_utf8();
                    it.next();
                } else {
                    break;
                }
            }
            out.push(Tok {
                lower: s[i..end].to_lowercase(),
                start: from + i,
                end: from + end,
                word: true,
            });
        } else {
            out.push(Tok {
                lower: c.to_string(),
                start: from + i,
                end: from + i + c.len_utf8(),
                word: false,
            });
        }
    }
    out
}

/// Sentence spans (bytes): ends at `.`, `!` or `?` followed by whitespace (unless the word
/// before is a title or a one-letter initial), at line breaks, and after a heading's colon
/// (`HPI:`, `Family history:`): notes list findings under headings without full stops.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut start = 0;
    let mut i = 0;
    let push = |out: &mut Vec<(usize, usize)>, s: usize, e: usize| {
        let seg = &text[s..e];
        let lead = seg.len() - seg.trim_start().len();
        let trail = seg.trim_end().len();
        if trail > lead {
            out.push((s + lead, s + trail));
        }
    };
    while i < b.len() {
        let c = b[i];
        let end_here = match c {
            b'\n' | b'\r' => true,
            b'.' | b'!' | b'?' => {
                let next_ws = i + 1 >= b.len() || b[i + 1].is_ascii_whitespace();
                let before = text[start..i]
                    .rsplit(|ch: char| !ch.is_alphanumeric())
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let title = matches!(
                    before.as_str(),
                    "dr" | "mr" | "mrs" | "ms" | "st" | "vs" | "approx" | "e.g" | "i.e" | "no"
                ) || (before.len() == 1
                    && before.chars().all(|ch| ch.is_ascii_alphabetic()));
                next_ws && !(c == b'.' && title)
            }
            b':' => {
                // A heading: the words before the colon on this segment are few.
                let seg = &text[start..i];
                let words = seg.split_whitespace().count();
                (1..=4).contains(&words) && i + 1 < b.len() && b[i + 1].is_ascii_whitespace()
            }
            _ => false,
        };
        if end_here {
            push(&mut out, start, i + 1);
            start = i + 1;
        }
        i += 1;
    }
    push(&mut out, start, b.len());
    out
}

/// Byte offset -> character offset, for a sorted stream of lookups.
struct CharIndex {
    map: Vec<usize>,
}

impl CharIndex {
    fn new(text: &str) -> CharIndex {
        let mut map = vec![0; text.len() + 1];
        let mut n = 0;
        for (i, c) in text.char_indices() {
            for slot in map.iter_mut().skip(i).take(c.len_utf8()) {
                *slot = n;
            }
            n += 1;
        }
        map[text.len()] = n;
        CharIndex { map }
    }
    fn at(&self, byte: usize) -> usize {
        self.map[byte]
    }
}

/// Trigger, pseudo-trigger and termination matches in a sentence's tokens, as token ranges
/// `[a, b)`: every match is collected, then the longest are kept first and the others only
/// where they do not overlap a kept one ("is negative for infection" is "negative for",
/// not "is negative").
fn find_triggers(
    toks: &[Tok],
    lex: &std::collections::HashMap<String, Vec<Entry>>,
) -> Vec<(usize, usize, Kind)> {
    let mut all: Vec<(usize, usize, Kind)> = vec![];
    for i in 0..toks.len() {
        // "?left facial weakness": a question mark written against a word is uncertainty.
        if toks[i].lower == "?"
            && toks
                .get(i + 1)
                .is_some_and(|n| n.word && n.start == toks[i].end)
        {
            all.push((i, i + 1, Kind::Trigger(Possible, Pre)));
            continue;
        }
        if !(toks[i].word || toks[i].lower == "/") {
            continue;
        }
        let Some(entries) = lex.get(toks[i].lower.as_str()) else {
            continue;
        };
        for e in entries {
            let n = e.words.len();
            if i + n <= toks.len()
                && toks[i..i + n]
                    .iter()
                    .zip(&e.words)
                    .all(|(t, w)| t.lower == *w)
            {
                let mut kind = e.kind;
                // "a four-month history of thigh pain" dates a present complaint.
                if matches!(kind, Kind::Trigger(Historical, _))
                    && matches!(e.words[0].as_str(), "history" | "h/o" | "hx")
                    && i > 0
                    && is_duration(&toks[i - 1].lower)
                {
                    kind = Kind::Pseudo;
                }
                all.push((i, i + n, kind));
            }
        }
    }
    // Longest first; between equal lengths a pseudo trigger (it exists to block), then one
    // that looks forward, then the leftmost.
    let backward = |k: &Kind| match k {
        Kind::Pseudo => 0,
        Kind::Trigger(_, Pre) => 1,
        _ => 2,
    };
    all.sort_by(|x, y| {
        (y.1 - y.0)
            .cmp(&(x.1 - x.0))
            .then(backward(&x.2).cmp(&backward(&y.2)))
            .then(x.0.cmp(&y.0))
    });
    let mut kept: Vec<(usize, usize, Kind)> = vec![];
    for m in all {
        if kept.iter().all(|k| m.1 <= k.0 || m.0 >= k.1) {
            kept.push(m);
        }
    }
    kept.sort_by_key(|m| m.0);
    kept
}

/// "week", "4-day", "several-year", "months": a duration word.
fn is_duration(word: &str) -> bool {
    let last = word.rsplit('-').next().unwrap_or(word);
    matches!(
        last.trim_end_matches('s'),
        "day" | "week" | "month" | "year" | "hour" | "decade"
    )
}

/// Annotates `text`: sentences and assertion scopes, as character offsets.
pub fn annotate(text: &str) -> Annotation {
    let lex = lexicon();
    let ci = CharIndex::new(text);
    let mut out = Annotation::default();
    // Under a "FAMILY HISTORY:" heading every sentence is about the family, under "PAST
    // MEDICAL HISTORY:" in the past, until the next heading.
    let mut section: Option<(Status, Trigger)> = None;
    for (s0, s1) in sentences(text) {
        out.sentences.push((ci.at(s0), ci.at(s1)));
        let toks = tokens(text, s0, s1);
        if toks.last().is_some_and(|t| t.lower == ":") {
            let words: Vec<&str> = toks
                .iter()
                .filter(|t| t.word)
                .map(|t| t.lower.as_str())
                .collect();
            let status = match words.as_slice() {
                ["family", "history"]
                | ["family", "hx"]
                | ["fhx"]
                | ["fh"]
                | ["family", "medical", "history"] => Some(Family),
                ["past", "medical", "history"]
                | ["pmh"]
                | ["pmhx"]
                | ["past", "history"]
                | ["medical", "history"]
                | ["past", "surgical", "history"]
                | ["surgical", "history"]
                | ["psh"] => Some(Historical),
                _ => None,
            };
            section = status.map(|st| {
                (
                    st,
                    Trigger {
                        start: ci.at(toks[0].start),
                        end: ci.at(toks[toks.len() - 1].start),
                        text: text[toks[0].start..toks[toks.len() - 1].start]
                            .trim()
                            .to_string(),
                    },
                )
            });
            continue;
        }
        if let (Some((status, trigger)), Some(first), Some(last)) = (
            &section,
            toks.iter().find(|t| t.word),
            toks.iter().rev().find(|t| t.word),
        ) {
            out.assertions.push(Assertion {
                start: ci.at(first.start),
                end: ci.at(last.end),
                status: *status,
                trigger: trigger.clone(),
            });
        }
        let found = find_triggers(&toks, lex);
        // Boundaries a scope cannot cross: terminations, clause punctuation
        // (; and :) inside the sentence, and other triggers, except that historical and
        // family triggers do not end another status's scope ("denies any history of
        // stroke" is a negated stroke; "no family history of" is one trigger anyway).
        let stops_for = |status: Status| -> Vec<(usize, usize)> {
            found
                .iter()
                .filter(|&&(_, _, k)| match k {
                    Kind::Trigger(other, _) => {
                        other == status || !matches!(other, Historical | Family)
                    }
                    // A pseudo trigger only keeps its words from triggering.
                    Kind::Pseudo => false,
                    Kind::Termination => true,
                })
                .map(|&(a, b, _)| (a, b))
                .chain(
                    toks.iter()
                        .enumerate()
                        .filter(|(_, t)| t.lower == ";" || t.lower == ":")
                        .map(|(k, _)| (k, k + 1)),
                )
                .collect()
        };
        for &(a, b, kind) in &found {
            let Kind::Trigger(status, dir) = kind else {
                continue;
            };
            let stops = stops_for(status);
            let forward = || {
                let end = stops
                    .iter()
                    .filter(|&&(sa, _)| sa >= b)
                    .map(|&(sa, _)| sa)
                    .min()
                    .unwrap_or(toks.len());
                (b, end)
            };
            let backward = || {
                let start = stops
                    .iter()
                    .filter(|&&(_, sb)| sb <= a)
                    .map(|&(_, sb)| sb)
                    .max()
                    .unwrap_or(0);
                (start, a)
            };
            let ranges = match dir {
                Pre => vec![forward()],
                Post => vec![backward()],
                Both => vec![backward(), forward()],
            };
            let trigger = Trigger {
                start: ci.at(toks[a].start),
                end: ci.at(toks[b - 1].end),
                text: text[toks[a].start..toks[b - 1].end].to_string(),
            };
            for (ta, tb) in ranges {
                // Trim punctuation at the scope's edges.
                let (mut ta, mut tb) = (ta, tb);
                while ta < tb && !toks[ta].word {
                    ta += 1;
                }
                while tb > ta && !toks[tb - 1].word {
                    tb -= 1;
                }
                if ta >= tb {
                    continue;
                }
                out.assertions.push(Assertion {
                    start: ci.at(toks[ta].start),
                    end: ci.at(toks[tb - 1].end),
                    status,
                    trigger: trigger.clone(),
                });
            }
        }
    }
    out.assertions.sort_by_key(|a| (a.start, a.end));
    out
}

/// The status of the character span `[start, end)`: that of the scopes covering it, the
/// strongest first (negated, family, hypothetical, possible, historical); None when
/// affirmed and current.
pub fn status_at(ann: &Annotation, start: usize, end: usize) -> Option<Status> {
    ann.assertions
        .iter()
        .filter(|a| a.start <= start && end <= a.end)
        .map(|a| a.status)
        .min()
}

/// `text` with every character inside a scope that does not affirm (see
/// [`Status::is_affirmed`]) replaced by a space, so offsets stay those of the text: what BM25
/// searches for "affirmed mentions only".
pub fn affirmed_view(text: &str, ann: &Annotation) -> String {
    affirmed_view_of(
        text,
        ann.assertions.iter().map(|a| (a.start, a.end, a.status)),
    )
}

/// [`affirmed_view`] from bare scopes `(start, end, status)` in characters (as stored).
pub fn affirmed_view_of(
    text: &str,
    scopes: impl IntoIterator<Item = (usize, usize, Status)>,
) -> String {
    let mut blank = vec![false; text.chars().count()];
    for (start, end, _) in scopes.into_iter().filter(|s| !s.2.is_affirmed()) {
        for b in blank.iter_mut().take(end).skip(start) {
            *b = true;
        }
    }
    text.chars()
        .zip(blank)
        .map(|(c, b)| if b && !c.is_whitespace() { ' ' } else { c })
        .collect()
}

/// One judged pair: a sentence, a concept mentioned in it, and the status a person gave the
/// concept's first mention (None: affirmed and current).
#[derive(Debug, Clone)]
pub struct JudgedPair {
    pub sentence: String,
    pub concept: String,
    pub status: Option<Status>,
}

/// Reads judged pairs: `note_id<TAB>concept<TAB>status<TAB>sentence` per line (`#` comments),
/// status one of affirmed, negated, possible, historical, family, hypothetical. Errors name
/// `origin:line`.
pub fn read_pairs(text: &str, origin: &str) -> Result<Vec<JudgedPair>, String> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 4 {
            return Err(format!(
                "{origin}:{}: expected 4 tab-separated columns",
                i + 1
            ));
        }
        let status = match cols[2] {
            "affirmed" => None,
            s => Some(s.parse().map_err(|e| format!("{origin}:{}: {e}", i + 1))?),
        };
        if find_word(cols[3], cols[1]).is_none() {
            return Err(format!(
                "{origin}:{}: {:?} is not in the sentence",
                i + 1,
                cols[1]
            ));
        }
        out.push(JudgedPair {
            sentence: cols[3].to_string(),
            concept: cols[1].to_string(),
            status,
        });
    }
    Ok(out)
}

/// The first whole-word, case-insensitive occurrence of `word` in `text`, as a character span.
fn find_word(text: &str, word: &str) -> Option<(usize, usize)> {
    let lt = text.to_lowercase();
    let lw = word.to_lowercase();
    if lt.len() != text.len() {
        return None;
    }
    let mut from = 0;
    while let Some(i) = lt[from..].find(&lw).map(|i| i + from) {
        let before = lt[..i].chars().next_back();
        let after = lt[i + lw.len()..].chars().next();
        if !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric) {
            let start = text[..i].chars().count();
            return Some((start, start + word.chars().count()));
        }
        from = i + 1;
    }
    None
}

/// Precision, recall and F1 of one status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassScore {
    pub status: &'static str,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The annotator against judged pairs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    pub pairs: usize,
    pub accuracy: f64,
    /// Affirmed, then each status.
    pub classes: Vec<ClassScore>,
    /// `(gold, predicted, sentence, concept)` of every error.
    pub errors: Vec<(String, String, String, String)>,
}

/// Annotates each pair's sentence alone and compares the status of the concept's first
/// mention with the judged one.
pub fn evaluate(pairs: &[JudgedPair]) -> Evaluation {
    let name = |s: Option<Status>| s.map_or("affirmed", Status::as_str);
    let classes = [
        None,
        Some(Negated),
        Some(Possible),
        Some(Historical),
        Some(Family),
        Some(Hypothetical),
    ];
    let mut predicted = Vec::with_capacity(pairs.len());
    for p in pairs {
        let ann = annotate(&p.sentence);
        let got = find_word(&p.sentence, &p.concept).and_then(|(a, b)| status_at(&ann, a, b));
        predicted.push(got);
    }
    let correct = pairs
        .iter()
        .zip(&predicted)
        .filter(|(p, g)| p.status == **g)
        .count();
    let scores = classes
        .iter()
        .map(|&c| {
            let tp = pairs
                .iter()
                .zip(&predicted)
                .filter(|(p, g)| p.status == c && **g == c)
                .count() as f64;
            let gold = pairs.iter().filter(|p| p.status == c).count();
            let pred = predicted.iter().filter(|g| **g == c).count() as f64;
            let precision = if pred > 0.0 { tp / pred } else { 0.0 };
            let recall = if gold > 0 { tp / gold as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassScore {
                status: name(c),
                support: gold,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    Evaluation {
        pairs: pairs.len(),
        accuracy: if pairs.is_empty() {
            0.0
        } else {
            correct as f64 / pairs.len() as f64
        },
        classes: scores,
        errors: pairs
            .iter()
            .zip(&predicted)
            .filter(|(p, g)| p.status != **g)
            .map(|(p, g)| {
                (
                    name(p.status).to_string(),
                    name(*g).to_string(),
                    p.sentence.clone(),
                    p.concept.clone(),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(text: &str, concept: &str) -> Option<Status> {
        let ann = annotate(text);
        let b = text
            .find(concept)
            .unwrap_or_else(|| panic!("{concept:?} in {text:?}"));
        let start = text[..b].chars().count();
        status_at(&ann, start, start + concept.chars().count())
    }

    #[test]
    fn the_issue_example_offsets() {
        let a = annotate("Denies chest pain or shortness of breath.");
        let first = &a.assertions[0];
        assert_eq!((first.trigger.start, first.trigger.end), (0, 6));
        assert_eq!(first.trigger.text, "Denies");
        assert_eq!((first.start, first.status), (7, Status::Negated));
        assert_eq!(first.end, 40);
    }

    #[test]
    fn each_status_from_its_triggers() {
        for (text, concept, want) in [
            ("Denies chest pain.", "chest pain", Some(Negated)),
            (
                "No evidence of pneumonia on the film.",
                "pneumonia",
                Some(Negated),
            ),
            (
                "Pulmonary embolism was ruled out.",
                "embolism",
                Some(Negated),
            ),
            ("Pneumonia is unlikely.", "Pneumonia", Some(Negated)),
            ("Negative for fever or chills.", "chills", Some(Negated)),
            (
                "Possible pneumonia in the right base.",
                "pneumonia",
                Some(Possible),
            ),
            ("Admitted to r/o PE.", "PE", Some(Possible)),
            (
                "Cannot exclude a small fracture.",
                "fracture",
                Some(Possible),
            ),
            (
                "History of myocardial infarction in 2010.",
                "myocardial infarction",
                Some(Historical),
            ),
            (
                "Status post appendectomy.",
                "appendectomy",
                Some(Historical),
            ),
            ("Mother had breast cancer.", "breast cancer", Some(Family)),
            (
                "Breast cancer in her mother.",
                "Breast cancer",
                Some(Family),
            ),
            (
                "Family history of colon cancer.",
                "colon cancer",
                Some(Family),
            ),
            (
                "Return if chest pain recurs.",
                "chest pain",
                Some(Hypothetical),
            ),
            ("Chest pain radiating to the left arm.", "Chest pain", None),
        ] {
            assert_eq!(status(text, concept), want, "{text:?} / {concept:?}");
        }
    }

    #[test]
    fn scopes_stop_at_terminations_sentence_ends_and_other_triggers() {
        assert_eq!(
            status("No fever but has a productive cough.", "cough"),
            None
        );
        assert_eq!(
            status("Denies nausea. Reports chest pain.", "chest pain"),
            None
        );
        assert_eq!(
            status("Denies fever; chest pain since noon.", "chest pain"),
            None
        );
        assert_eq!(
            status("ROS: no fever\nChest pain at rest.", "Chest pain"),
            None
        );
        assert_eq!(
            status("No fever, possible pneumonia.", "pneumonia"),
            Some(Possible)
        );
    }

    #[test]
    fn pseudo_triggers_assert_nothing() {
        assert_eq!(status("No change in the effusion.", "effusion"), None);
        assert_eq!(status("Gram negative rods in the urine.", "rods"), None);
        assert_eq!(status("Tolerated without difficulty.", "Tolerated"), None);
        assert_eq!(
            status("HISTORY OF PRESENT ILLNESS: chest pain.", "chest pain"),
            None
        );
    }

    #[test]
    fn a_family_history_section_is_about_the_family_until_the_next_heading() {
        let t = "FAMILY HISTORY: Diabetes and hypertension.\nSOCIAL HISTORY: Smokes.\nEXAM: Obese.";
        assert_eq!(status(t, "Diabetes"), Some(Family));
        assert_eq!(status(t, "hypertension"), Some(Family));
        assert_eq!(status(t, "Obese"), None);
    }

    #[test]
    fn the_affirmed_view_blanks_what_is_not_affirmed_and_keeps_offsets() {
        let t = "Denies chest pain. Has cough. Mother had asthma. History of MI.";
        let v = affirmed_view(t, &annotate(t));
        assert_eq!(v.chars().count(), t.chars().count());
        assert!(!v.contains("chest pain") && !v.contains("asthma"));
        assert!(v.contains("cough") && v.contains("MI"));
    }

    #[test]
    fn offsets_are_characters_not_bytes() {
        let t = "Café staff: denies dyspnée.";
        let a = annotate(t);
        let s = &a.assertions[0];
        let got: String = t.chars().skip(s.start).take(s.end - s.start).collect();
        assert_eq!(got, "dyspnée");
    }
}

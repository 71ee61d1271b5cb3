//! Named-entity tagging: a BERT token classifier (transformers' `BertForTokenClassification`:
//! dropout and a linear layer over every token's hidden state), the word windows that let it
//! read sentences and notes longer than its positions, and the decoding of word tags into
//! entities with character spans.
//!
//! Words are split into sub-words; a word's label sits on its first sub-word (the others are
//! ignored in the loss and in prediction), as transformers' token-classification examples
//! do. A sequence too long for one window is read in overlapping windows of whole words, and
//! each word is labelled from the window where it has the most context on both sides, so an
//! entity across a window edge decodes as one. Training ([`crate::train::ner`]) and
//! prediction use the same windows.

pub mod data;
pub mod seqeval;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::bert::{BertModel, Dropout, Linear};
use crate::model::config::BertConfig;
use crate::model::tokenizer::TextTokenizer;
use crate::model::weights::Weights;

/// Tensor name prefix of the head in transformers' layout.
pub const HEAD: &str = "classifier";
/// `architectures` entry of a token-classification checkpoint.
pub const ARCHITECTURE: &str = "BertForTokenClassification";
/// Label id of positions that carry no label (later sub-words, special tokens, words owned
/// by another window): transformers' -100.
pub const IGNORE: i64 = -100;

/// Sub-word ids of each word; a word the vocabulary cannot spell is `[UNK]` (or the first
/// id of the vocabulary's unknown token), never dropped, so every word gets a label.
pub fn word_pieces(tok: &TextTokenizer, words: &[String]) -> Result<Vec<Vec<u32>>> {
    let unk = tok.unk_id();
    words
        .iter()
        .map(|w| {
            let ids = tok.encode(w)?.ids;
            Ok(if ids.is_empty() { vec![unk] } else { ids })
        })
        .collect()
}

/// Windows of whole words whose sub-words fit in `budget` tokens (a single longer word is
/// cut to `budget`), overlapping by about a quarter of the budget.
pub fn windows(pieces: &[usize], budget: usize) -> Vec<Range<usize>> {
    let n = pieces.len();
    let budget = budget.max(1);
    let mut out = vec![];
    let mut start = 0;
    while start < n {
        let mut end = start;
        let mut used = 0;
        while end < n && (end == start || used + pieces[end] <= budget) {
            used += pieces[end].min(budget);
            end += 1;
        }
        out.push(start..end);
        if end == n {
            break;
        }
        // Step back over about budget/4 tokens of words for the next window's left context,
        // always moving forward by at least one word.
        let mut back = end;
        let mut overlap = 0;
        while back > start + 1 && overlap + pieces[back - 1] <= budget / 4 {
            overlap += pieces[back - 1];
            back -= 1;
        }
        start = back;
    }
    out
}

/// For each word, the window it is labelled from: the one where its distance to the nearer
/// edge is largest (the earlier window on a tie).
pub fn owners(windows: &[Range<usize>], n: usize) -> Vec<usize> {
    let mut best = vec![(0usize, -1i64); n];
    for (k, w) in windows.iter().enumerate() {
        for i in w.clone() {
            let room = (i - w.start).min(w.end - 1 - i) as i64;
            if room > best[i].1 {
                best[i] = (k, room);
            }
        }
    }
    best.into_iter().map(|(k, _)| k).collect()
}

/// One window as the model reads it: `[CLS]`, the words' sub-words, `[SEP]`; and for each
/// word of the window that it owns, the position of its first sub-word.
#[derive(Debug, Clone)]
pub struct WindowInput {
    pub ids: Vec<u32>,
    /// `(word index, token position)` of the owned words.
    pub heads: Vec<(usize, usize)>,
}

/// The windows of one sequence of words given their sub-words, each word owned by one.
pub fn window_inputs(tok: &TextTokenizer, pieces: &[Vec<u32>], max_len: usize) -> Vec<WindowInput> {
    let budget = max_len.saturating_sub(2).max(1);
    let counts: Vec<usize> = pieces.iter().map(Vec::len).collect();
    let wins = windows(&counts, budget);
    let own = owners(&wins, pieces.len());
    wins.iter()
        .enumerate()
        .map(|(k, w)| {
            let mut ids = vec![tok.cls_id];
            let mut heads = vec![];
            for i in w.clone() {
                if own[i] == k {
                    heads.push((i, ids.len()));
                }
                let room = budget.saturating_sub(ids.len() - 1);
                ids.extend(pieces[i].iter().take(room.max(1)));
            }
            ids.truncate(budget + 1);
            ids.push(tok.sep_id);
            WindowInput { ids, heads }
        })
        .collect()
}

/// The value an entity is filtered and counted by: lowercased, whitespace collapsed
/// ("Renal  Failure" and "renal failure" are one concept).
pub fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The sub-word ids of each word of a text.
type WordPieces = Vec<Vec<u32>>;

/// An entity found in a text.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Entity {
    /// The entity type (`Disease`, `Chemical`...).
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Character offsets (Unicode scalar values) of the span, end exclusive.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// The mean probability of the span's word labels.
    pub score: f32,
}

/// A BERT token classifier over IOB2 labels.
pub struct TokenClassifier {
    /// The spec it was loaded from (folder or Hub id), as recorded in a data directory.
    pub spec: String,
    pub model: BertModel,
    pub head: Linear,
    /// IOB2 labels in index order (`O`, `B-X`, `I-X`...).
    pub labels: Vec<String>,
    pub tokenizer: TextTokenizer,
    /// Tokens per window including `[CLS]`/`[SEP]`.
    pub max_len: usize,
    pub dir: PathBuf,
}

/// The label list of a token-classification config: `id2label` in index order.
fn check_labels(dir: &Path, labels: &[String]) -> Result<()> {
    for l in labels {
        if l != "O" && !(l.starts_with("B-") || l.starts_with("I-")) {
            return Err(Error::bad_file(
                dir.join("config.json"),
                format!("label {l:?} is not an IOB2 tag (O, B-TYPE, I-TYPE)"),
            ));
        }
    }
    Ok(())
}

impl TokenClassifier {
    /// Loads a token-classification folder (or Hub id), as made by `finetune ner` or by
    /// transformers.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let resolved = crate::model::resolve_model(spec)?;
        let dir = resolved.dir;
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::load(&dir)?;
        let is_tagger = config.architectures.iter().any(|a| a == ARCHITECTURE);
        if config.labels.is_empty() || !weights.contains("classifier.weight") || !is_tagger {
            return Err(Error::MissingWeights {
                model: dir.display().to_string(),
                what: format!("a token-classification head ({ARCHITECTURE} with id2label and classifier.weight); make one with `clinsearch finetune ner`"),
            });
        }
        check_labels(&dir, &config.labels)?;
        let tokenizer = TextTokenizer::load(&dir)?;
        let model = BertModel::load(&weights, &config, DType::F32, device)?;
        let head = Linear::load(
            &weights,
            HEAD,
            config.labels.len(),
            config.hidden_size,
            DType::F32,
            device,
        )?;
        Ok(TokenClassifier {
            spec: spec.to_string(),
            max_len: config.max_position_embeddings.min(512),
            model,
            head,
            labels: config.labels,
            tokenizer,
            dir,
        })
    }

    /// The entity types it tags (`Disease`, `Chemical`...), in label order.
    pub fn types(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for l in &self.labels {
            if let Some(t) = l.get(2..) {
                if !out.iter().any(|x| x == t) {
                    out.push(t.to_string());
                }
            }
        }
        out
    }

    /// Logits `[b, t, labels]` of a padded batch; `dropout` only while training.
    pub fn logits(&self, ids: &Tensor, mask: &Tensor, dropout: Option<&Dropout>) -> Result<Tensor> {
        let hidden = self.model.forward_with(ids, mask, dropout)?;
        let hidden = match dropout {
            Some(d) => d.apply(&hidden, d.classifier)?,
            None => hidden,
        };
        Ok(self.head.forward(&hidden)?)
    }

    /// Label probabilities of every word of each sequence of words (given as sub-words).
    pub fn word_probabilities(&self, seqs: &[Vec<Vec<u32>>]) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut out: Vec<Vec<Vec<f32>>> = seqs.iter().map(|s| vec![vec![]; s.len()]).collect();
        // Every window of every sequence, batched by length.
        let mut items: Vec<(usize, WindowInput)> = vec![];
        for (s, pieces) in seqs.iter().enumerate() {
            items.extend(
                window_inputs(&self.tokenizer, pieces, self.max_len)
                    .into_iter()
                    .map(|w| (s, w)),
            );
        }
        items.sort_by_key(|(_, w)| w.ids.len());
        for chunk in items.chunks(32) {
            let batch: Vec<&[u32]> = chunk.iter().map(|(_, w)| w.ids.as_slice()).collect();
            let (ids, mask) =
                crate::train::pad_batch(&batch, self.tokenizer.pad_id, &self.model.device)?;
            let logits = self.logits(&ids, &mask, None)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?
                .to_device(&Device::Cpu)?
                .to_vec3::<f32>()?;
            for ((s, w), p) in chunk.iter().zip(probs) {
                for &(word, pos) in &w.heads {
                    out[*s][word] = p[pos].clone();
                }
            }
        }
        Ok(out)
    }

    /// The IOB2 tag and its probability for every word of each sentence.
    pub fn predict_words(&self, sentences: &[Vec<String>]) -> Result<Vec<Vec<(String, f32)>>> {
        let seqs: Vec<Vec<Vec<u32>>> = sentences
            .iter()
            .map(|s| word_pieces(&self.tokenizer, s))
            .collect::<Result<_>>()?;
        let probs = self.word_probabilities(&seqs)?;
        Ok(probs
            .into_iter()
            .map(|words| words.iter().map(|p| self.best(p)).collect())
            .collect())
    }

    fn best(&self, p: &[f32]) -> (String, f32) {
        let k = (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0);
        (self.labels[k].clone(), p.get(k).copied().unwrap_or(0.0))
    }

    /// The entities of each text, with character spans. Texts are split into words as BERT
    /// splits them (whitespace and punctuation); long texts are read in overlapping windows.
    pub fn tag(&self, texts: &[&str]) -> Result<Vec<Vec<Entity>>> {
        let mut words_of = vec![];
        let mut seqs = vec![];
        for t in texts {
            let (spans, pieces) = self.split_words(t)?;
            words_of.push(spans);
            seqs.push(pieces);
        }
        let probs = self.word_probabilities(&seqs)?;
        Ok(texts
            .iter()
            .zip(words_of.iter().zip(probs))
            .map(|(text, (spans, p))| {
                let tagged: Vec<(String, f32)> = p.iter().map(|x| self.best(x)).collect();
                decode(text, spans, &tagged)
            })
            .collect())
    }

    /// Byte spans of the words of `text` and their sub-words: a sub-word that continues a word
    /// (`##...`) joins the one before it.
    fn split_words(&self, text: &str) -> Result<(Vec<(usize, usize)>, WordPieces)> {
        let toks = self.tokenizer.encode(text)?;
        let mut spans: Vec<(usize, usize)> = vec![];
        let mut pieces: Vec<Vec<u32>> = vec![];
        for (&id, &(s, e)) in toks.ids.iter().zip(&toks.offsets) {
            let continues = self
                .tokenizer
                .id_to_token(id)
                .is_some_and(|t| t.starts_with("##"))
                && spans.last().is_some_and(|l| l.1 == s);
            if continues {
                if let (Some(l), Some(p)) = (spans.last_mut(), pieces.last_mut()) {
                    l.1 = e;
                    p.push(id);
                }
            } else {
                spans.push((s, e));
                pieces.push(vec![id]);
            }
        }
        Ok((spans, pieces))
    }
}

impl std::fmt::Debug for TokenClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClassifier")
            .field("dir", &self.dir)
            .field("labels", &self.labels)
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// The tagger a data directory was ingested with (`DATA/tagger.json`): later ingests, the
/// server and `reindex --retag` use it unless told otherwise, so every note of a directory
/// is tagged alike.
pub const RECORD_FILE: &str = "tagger.json";

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TaggerRecord {
    /// The folder (absolute) or Hub id.
    pub model: String,
    pub types: Vec<String>,
}

/// The tagger recorded in `data`, if any.
pub fn recorded(data: &Path) -> Result<Option<TaggerRecord>> {
    let path = data.join(RECORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| Error::bad_file(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Records `tagger` as the data directory's (written aside, then renamed).
pub fn record(data: &Path, tagger: &TokenClassifier) -> Result<()> {
    let model = if Path::new(&tagger.spec).exists() {
        std::fs::canonicalize(&tagger.spec)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| tagger.spec.clone())
    } else {
        tagger.spec.clone()
    };
    let rec = TaggerRecord {
        model,
        types: tagger.types(),
    };
    let path = data.join(RECORD_FILE);
    let tmp = data.join(format!("{RECORD_FILE}.tmp"));
    let text =
        serde_json::to_string_pretty(&rec).map_err(|e| Error::InvalidInput(e.to_string()))?;
    std::fs::create_dir_all(data).map_err(|e| Error::io(data, e))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// The tagger to ingest into `data` with: `spec` when given, else the one recorded there;
/// None when neither.
pub fn for_data_dir(
    data: &Path,
    spec: Option<&str>,
    device: &Device,
) -> Result<Option<TokenClassifier>> {
    let spec = match spec {
        Some(s) => s.to_string(),
        None => match recorded(data)? {
            Some(r) => r.model,
            None => return Ok(None),
        },
    };
    TokenClassifier::load(&spec, device).map(Some)
}

/// Tags every stored note of `engine` again with `tagger` and stores the entities, without
/// re-embedding: each note is written back with its stored windows and vectors through the
/// engine's one write path (so the BM25 entity fields and every invariant follow), in batches
/// of `batch` notes. Records `tagger` as the directory's. Returns the notes retagged.
pub fn retag(
    engine: &crate::engine::Engine,
    tagger: &TokenClassifier,
    batch: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<usize> {
    let ids: Vec<String> = engine
        .store
        .notes()
        .map(|n| n.map(|n| n.note.id))
        .collect::<Result<_>>()?;
    let total = ids.len();
    let mut done = 0;
    for chunk in ids.chunks(batch.max(1)) {
        let mut notes = vec![];
        for id in chunk {
            // A note deleted meanwhile is skipped.
            if let Some((stored, chunks)) = engine.store.get_with_chunks(id)? {
                let windows = chunks.into_iter().map(|c| c.into_window()).collect();
                notes.push(crate::store::EmbeddedNote::new(stored.note, windows));
            }
        }
        let texts: Vec<&str> = notes.iter().map(|n| n.note.text.as_str()).collect();
        let found = tagger.tag(&texts)?;
        let notes: Vec<crate::store::EmbeddedNote> = notes
            .into_iter()
            .zip(found)
            .map(|(n, f)| n.with_entities(f))
            .collect();
        engine.apply(&notes, &[])?;
        done += notes.len();
        progress(done, total);
    }
    engine.checkpoint()?;
    record(&engine.dir, tagger)?;
    Ok(done)
}

/// Entities from word tags (read as seqeval's default mode reads them) and the words' byte
/// spans in `text`; spans become character offsets.
pub fn decode(text: &str, spans: &[(usize, usize)], tags: &[(String, f32)]) -> Vec<Entity> {
    let tag_seq = vec![tags.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()];
    let chars_before = |byte: usize| text[..byte].chars().count();
    seqeval::entities(&tag_seq)
        .into_iter()
        .filter(|(ty, _, _)| ty != "_")
        .map(|(ty, a, b)| {
            let (s, e) = (spans[a].0, spans[b].1);
            let score = tags[a..=b].iter().map(|(_, p)| p).sum::<f32>() / (b - a + 1) as f32;
            Entity {
                entity_type: ty,
                start: chars_before(s),
                end: chars_before(e),
                text: text[s..e].to_string(),
                score,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_word_overlap_and_move_forward() {
        let pieces = vec![2, 1, 3, 1, 1, 2, 4, 1, 1, 1];
        let w = windows(&pieces, 6);
        assert_eq!(w.first().unwrap().start, 0);
        assert_eq!(w.last().unwrap().end, pieces.len());
        for pair in w.windows(2) {
            assert!(pair[1].start > pair[0].start, "{w:?}");
            assert!(pair[1].start <= pair[0].end, "no gap: {w:?}");
        }
        for r in &w {
            let used: usize = pieces[r.clone()].iter().sum();
            assert!(used <= 6 || r.len() == 1, "{r:?} holds {used} tokens");
        }
        // Short input: one window.
        assert_eq!(windows(&[1, 1, 1], 6), vec![0..3]);
        // A word longer than the budget is a window of its own.
        assert_eq!(windows(&[9, 1], 4), vec![0..1, 1..2]);
        // Each word is owned by exactly one window that holds it, the most central one.
        let own = owners(&w, pieces.len());
        for (i, &k) in own.iter().enumerate() {
            assert!(w[k].contains(&i));
        }
    }

    #[test]
    fn decoding_joins_words_into_spans_in_characters() {
        let text = "Né with acute renal failure.";
        // Words: Né(0..3 bytes) with acute renal failure .
        let spans = vec![(0, 3), (4, 8), (9, 14), (15, 20), (21, 28), (28, 29)];
        let t = |s: &str, p: f32| (s.to_string(), p);
        let tags = vec![
            t("O", 0.9),
            t("O", 0.9),
            t("B-Disease", 0.8),
            t("I-Disease", 0.6),
            t("I-Disease", 0.7),
            t("O", 0.9),
        ];
        let e = decode(text, &spans, &tags);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].text, "acute renal failure");
        assert_eq!(
            (e[0].start, e[0].end),
            (8, 27),
            "character offsets: é is one"
        );
        assert!((e[0].score - 0.7).abs() < 1e-6);
    }
}

//! Tokenisation: `tokenizer.json` when the model ships one, otherwise BERT's WordPiece
//! pipeline rebuilt from `vocab.txt` (older checkpoints such as Bio_ClinicalBERT ship only that).

use std::path::Path;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// Token ids and byte offsets of a text, without special tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// `(start, end)` byte offsets of each token in the original text.
    pub offsets: Vec<(usize, usize)>,
}

/// The tokenizer of one model, with the special token ids the encoder needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub cls_id: u32,
    pub sep_id: u32,
    pub pad_id: u32,
    pub mask_id: Option<u32>,
    /// `tokenizer.json` or `vocab.txt`, for `model info`.
    pub source: &'static str,
    pub lowercase: bool,
}

impl TextTokenizer {
    /// Loads the tokenizer of the model folder `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let lower_cfg = do_lower_case(dir)?;
        let (mut inner, source, lowercase) = if json.is_file() {
            let tk = Tokenizer::from_file(&json).map_err(|e| Error::bad_file(&json, e))?;
            let lower = lower_cfg.unwrap_or(true);
            (tk, "tokenizer.json", lower)
        } else if vocab.is_file() {
            let lower = match lower_cfg {
                Some(l) => l,
                None => vocab_is_uncased(&vocab)?,
            };
            (wordpiece_from_vocab(&vocab, lower)?, "vocab.txt", lower)
        } else {
            return Err(Error::MissingWeights {
                model: dir.display().to_string(),
                what: "a tokenizer (tokenizer.json or vocab.txt)".into(),
            });
        };
        // Shipped tokenizer.json files often carry fixed truncation and padding (MiniLM's pads
        // every text to 128): windows and batches are ours to shape.
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        let id = |t: &str| inner.token_to_id(t);
        let need = |t: &str| {
            id(t).ok_or_else(|| Error::MissingWeights {
                model: dir.display().to_string(),
                what: format!("the special token {t} in its vocabulary"),
            })
        };
        Ok(TextTokenizer {
            cls_id: need("[CLS]")?,
            sep_id: need("[SEP]")?,
            pad_id: id("[PAD]").unwrap_or(0),
            mask_id: id("[MASK]"),
            source,
            lowercase,
            inner,
        })
    }

    /// Tokenises `text` without special tokens; offsets are byte offsets into `text`.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// The id of `[UNK]` (0 when the vocabulary has none).
    pub fn unk_id(&self) -> u32 {
        self.inner.token_to_id("[UNK]").unwrap_or(0)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// `do_lower_case` from `tokenizer_config.json`, if stated.
fn do_lower_case(dir: &Path) -> Result<Option<bool>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e))?;
    Ok(v.get("do_lower_case").and_then(|b| b.as_bool()))
}

/// Guesses whether a vocabulary is uncased when no config says so.
///
/// transformers would default to lowercasing, which silently breaks cased vocabularies
/// (Bio_ClinicalBERT ships no tokenizer_config.json, and lowercasing maps every capitalised
/// word to a different token). A cased vocabulary has many capitalised whole words.
fn vocab_is_uncased(vocab: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(vocab).map_err(|e| Error::io(vocab, e))?;
    let capitalised = text
        .lines()
        .filter(|w| !w.starts_with('[') && !w.starts_with("##"))
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .count();
    let total = text.lines().count().max(1);
    Ok(capitalised * 100 < total) // under 1% capitalised entries: uncased
}

/// BERT's WordPiece pipeline: BertNormalizer (clean text, CJK spacing, lowercase and accent
/// stripping when uncased), BertPreTokenizer, WordPiece with `##` continuation.
fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| Error::bad_file(vocab, "path is not UTF-8"))?;
    let wp = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| Error::bad_file(vocab, e))?;
    let mut tk = Tokenizer::new(wp);
    tk.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    // Special tokens are matched in the raw text before normalisation, so "[MASK]" survives
    // lowercasing and punctuation splitting.
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| tk.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tk.add_special_tokens(specials)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(tk)
}

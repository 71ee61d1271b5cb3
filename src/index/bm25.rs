//! BM25 over notes with tantivy.
//!
//! Title and text are separate fields searched together (as Anserini's multifield baseline
//! does). The analyzer for clinical text: split on non-alphanumerics, drop tokens over 40
//! bytes, lowercase, fold accents to ASCII (so "Sjögren" finds "Sjogren"), and optionally
//! stem (English): which one is the default is decided by measurement on SciFact (README).
//! Metadata are raw, lowercased fast fields so filters run inside the index.
//!
//! The last operation sequence applied is stored as the commit payload, so it is durable
//! exactly when the documents are.

use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value, FAST,
    STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::bm25_scorer::{Bm25Params, Bm25TermQuery};
use super::collection_stats::{term_key, CollectionStats, Global};
use super::query::{self as q, TextQuery, MAX_QUERY_TERMS};
use super::Filter;
use crate::clinical::abbrev::SenseCounts;
use crate::error::{Error, Result};
use crate::store::{Op, Store};

/// Analyzer names as registered with tantivy (the schema records which one a field uses).
pub const ANALYZER_PLAIN: &str = "clinical";
pub const ANALYZER_STEM: &str = "clinical_stem";

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    text: Field,
    /// The text with negated, possible, hypothetical and family scopes blanked
    /// ([`crate::clinical::assertion::affirmed_view`]): searched for affirmed mentions only.
    affirmed: Field,
    patient_id: Field,
    note_type: Field,
    specialty: Field,
    date: Field,
    /// Every entity of the note as a `type:value` key ([`super::entity_key`]).
    entity: Field,
    /// The note's affirmed entities only.
    entity_affirmed: Field,
}

pub struct Bm25Index {
    dir: std::path::PathBuf,
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    f: Fields,
}

fn analyzer(stem: bool) -> TextAnalyzer {
    let base = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    if stem {
        base.filter(Stemmer::new(Language::English)).build()
    } else {
        base.build()
    }
}

fn schema(stem: bool) -> Schema {
    let mut b = Schema::builder();
    let text_opts = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(if stem { ANALYZER_STEM } else { ANALYZER_PLAIN })
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    // FAST: ties are ordered by note id, and a tied run can be thousands of notes long (BM25
    // quantises document lengths, so a common word gives many notes one score); the id
    // column answers their order without reading a stored document each.
    b.add_text_field("id", STRING | STORED | FAST);
    b.add_text_field("title", text_opts.clone());
    b.add_text_field("text", text_opts.clone());
    b.add_text_field("affirmed", text_opts);
    b.add_text_field("patient_id", STRING);
    b.add_text_field("note_type", STRING);
    b.add_text_field("specialty", STRING);
    b.add_i64_field("date", NumericOptions::default().set_indexed().set_fast());
    b.add_text_field("entity", STRING);
    b.add_text_field("entity_affirmed", STRING);
    b.build()
}

impl Bm25Index {
    /// Opens the index in `dir`, creating it (with or without stemming) when absent.
    /// A corrupt index is an error; the caller rebuilds it from the store.
    pub fn open(dir: &Path, stem: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut index = if dir.join("meta.json").exists() {
            Index::open_in_dir(dir)?
        } else {
            Index::create_in_dir(dir, schema(stem))?
        };
        if index.schema().get_field("affirmed").is_err()
            || index.schema().get_field("entity").is_err()
        {
            // An index made before the affirmed or entity fields: made again with the stemming it had
            // (its applied sequence starts at 0, so the engine refills it from the store).
            let stemmed = index
                .schema()
                .get_field("text")
                .ok()
                .and_then(|f| match index.schema().get_field_entry(f).field_type() {
                    tantivy::schema::FieldType::Str(o) => o
                        .get_indexing_options()
                        .map(|i| i.tokenizer() == ANALYZER_STEM),
                    _ => None,
                })
                .unwrap_or(stem);
            drop(index);
            tracing::info!("BM25 index without the affirmed or entity fields: rebuilding it");
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            index = Index::create_in_dir(dir, schema(stemmed))?;
        }
        index.tokenizers().register(ANALYZER_PLAIN, analyzer(false));
        index.tokenizers().register(ANALYZER_STEM, analyzer(true));
        let s = index.schema();
        let field = |n: &str| {
            s.get_field(n)
                .map_err(|e| Error::Index(format!("BM25 schema: {e}")))
        };
        let f = Fields {
            id: field("id")?,
            title: field("title")?,
            text: field("text")?,
            affirmed: field("affirmed")?,
            patient_id: field("patient_id")?,
            note_type: field("note_type")?,
            specialty: field("specialty")?,
            date: field("date")?,
            entity: field("entity")?,
            entity_affirmed: field("entity_affirmed")?,
        };
        let writer = index.writer_with_num_threads(1, 64_000_000)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Bm25Index {
            dir: dir.to_path_buf(),
            index,
            reader,
            writer: Mutex::new(writer),
            f,
        })
    }

    /// Whether this index stems (read from its schema).
    pub fn stems(&self) -> bool {
        match self
            .index
            .schema()
            .get_field_entry(self.f.text)
            .field_type()
        {
            tantivy::schema::FieldType::Str(o) => o
                .get_indexing_options()
                .map(|i| i.tokenizer() == ANALYZER_STEM)
                .unwrap_or(false),
            _ => false,
        }
    }

    /// The last operation sequence this index applied (0 for a new index).
    pub fn applied_seq(&self) -> Result<u64> {
        let metas = self.index.load_metas()?;
        Ok(metas.payload.and_then(|p| p.parse().ok()).unwrap_or(0))
    }

    /// Applies operations read from the log, using each note's current state in the store,
    /// and commits with the last sequence as payload. Idempotent.
    pub fn apply(&self, store: &Store, ops: &[(u64, Op)]) -> Result<()> {
        let Some(&(last, _)) = ops.last() else {
            return Ok(());
        };
        let w = self.lock_writer()?;
        crate::failpoint::inject("bm25-apply", &self.dir)?;
        for (_, op) in ops {
            let id = op.id();
            w.delete_term(Term::from_field_text(self.f.id, id));
            if let Op::Upsert(_) = op {
                if let Some(stored) = store.get(id)? {
                    w.add_document(self.document(&stored))?;
                }
            }
        }
        self.commit(w, last)
    }

    /// Replaces the whole index with the notes of the store, in one commit recording the
    /// store's last sequence.
    pub fn rebuild(&self, store: &Store) -> Result<()> {
        let w = self.lock_writer()?;
        w.delete_all_documents()?;
        for stored in store.notes() {
            w.add_document(self.document(&stored?))?;
        }
        self.commit(w, store.last_seq()?)
    }

    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, IndexWriter<TantivyDocument>>> {
        self.writer.lock().map_err(|_| {
            Error::Index("BM25 writer poisoned (a write panicked; the engine recovers it)".into())
        })
    }

    /// After a failed or panicked write: drops whatever the writer holds uncommitted (the
    /// index stays at its last commit, whose payload says which operation it applied) and
    /// clears the lock's poison, so the engine can replay the log from there.
    pub fn recover(&self) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.writer.clear_poison();
        w.rollback()?;
        drop(w);
        self.reader.reload()?;
        Ok(())
    }

    fn commit(
        &self,
        mut w: std::sync::MutexGuard<'_, IndexWriter<TantivyDocument>>,
        seq: u64,
    ) -> Result<()> {
        crate::failpoint::inject("bm25-commit", &self.dir)?;
        let mut prepared = w.prepare_commit()?;
        prepared.set_payload(&seq.to_string());
        prepared.commit()?;
        drop(w);
        self.reader.reload()?;
        Ok(())
    }

    /// The tantivy document of a note; metadata lowercased so filters match any case.
    fn document(&self, stored: &crate::store::StoredNote) -> TantivyDocument {
        let n = &stored.note;
        let affirmed = stored.affirmed_text();
        let mut d = doc!(
            self.f.id => n.id.clone(),
            self.f.text => n.text.clone(),
            self.f.affirmed => affirmed,
        );
        if let Some(t) = &n.title {
            d.add_text(self.f.title, t);
        }
        for (field, value) in [
            (self.f.patient_id, &n.patient_id),
            (self.f.note_type, &n.note_type),
            (self.f.specialty, &n.specialty),
        ] {
            if let Some(v) = value {
                d.add_text(field, v.to_lowercase());
            }
        }
        if let Some(k) = n.date_key() {
            d.add_i64(self.f.date, k);
        }
        for e in &stored.entities {
            let key = super::entity_key(&e.entity_type, &e.value);
            if e.affirmed() {
                d.add_text(self.f.entity_affirmed, &key);
            }
            d.add_text(self.f.entity, key);
        }
        d
    }

    /// The analysed terms of `text`, as the text fields index them.
    fn analyse(&self, text: &str) -> Result<Vec<String>> {
        let mut analyzer = self.index.tokenizer_for_field(self.f.text)?;
        let mut stream = analyzer.token_stream(text);
        let mut out = vec![];
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        Ok(out)
    }

    /// A term matched in any of `fields`, scored with `params` (tantivy's own query for its
    /// built-in values: it prunes with block-max WAND).
    fn term_in(fields: &[Field], token: &str, params: Bm25Params) -> Box<dyn Query> {
        let one = |f: Field| -> Box<dyn Query> {
            let term = Term::from_field_text(f, token);
            if params.is_tantivy() {
                Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))
            } else {
                Box::new(Bm25TermQuery::new(term, params))
            }
        };
        if fields.len() == 1 {
            return one(fields[0]);
        }
        Box::new(BooleanQuery::new(
            fields.iter().map(|&f| (Occur::Should, one(f))).collect(),
        ))
    }

    /// Consecutive terms in any of `fields`.
    fn phrase_in(fields: &[Field], tokens: &[String]) -> Box<dyn Query> {
        let one = |f: Field| -> Box<dyn Query> {
            if tokens.len() == 1 {
                return Box::new(TermQuery::new(
                    Term::from_field_text(f, &tokens[0]),
                    IndexRecordOption::WithFreqs,
                ));
            }
            Box::new(PhraseQuery::new(
                tokens.iter().map(|t| Term::from_field_text(f, t)).collect(),
            ))
        };
        if fields.len() == 1 {
            return one(fields[0]);
        }
        Box::new(BooleanQuery::new(
            fields.iter().map(|&f| (Occur::Should, one(f))).collect(),
        ))
    }

    /// Turns a [`TextQuery`] into tantivy's query: each optional word is its own optional
    /// clause over title and text (exactly what tantivy's parser builds for plain words, so
    /// BM25 scores are those of the usual multifield baseline), a phrase or a required or
    /// excluded word of several terms is a phrase, and weights are boosts. At most
    /// [`MAX_QUERY_TERMS`] terms are used; `dropped` counts the rest.
    pub fn build(&self, query: &TextQuery) -> Result<Built> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![];
        let (mut used, mut dropped) = (0usize, 0usize);
        for c in &query.clauses {
            let body = if query.affirmed_only {
                self.f.affirmed
            } else {
                self.f.text
            };
            let fields: Vec<Field> = match c.fields {
                q::Fields::Both => vec![self.f.title, body],
                q::Fields::Title => vec![self.f.title],
                q::Fields::Text => vec![body],
            };
            let text = if query.drop_stopwords && !c.phrase && c.occur == q::Occur::Should {
                let kept: Vec<&str> = crate::clinical::words(&c.text)
                    .iter()
                    // A word in capitals is an abbreviation ("ST elevation", "ALL"), not a
                    // common word.
                    .filter(|w| {
                        let caps = w.text.len() >= 2 && !w.text.chars().any(char::is_lowercase);
                        caps || !crate::clinical::is_stopword(&w.text.to_lowercase())
                    })
                    .map(|w| w.text)
                    .collect();
                // A query of common words only ("the", "what is it") keeps them.
                if kept.is_empty() {
                    std::borrow::Cow::Borrowed(c.text.as_str())
                } else {
                    std::borrow::Cow::Owned(kept.join(" "))
                }
            } else {
                std::borrow::Cow::Borrowed(c.text.as_str())
            };
            let mut tokens = self.analyse(&text)?;
            let room = MAX_QUERY_TERMS.saturating_sub(used);
            if tokens.len() > room {
                dropped += tokens.len() - room;
                if c.phrase || c.occur != q::Occur::Should {
                    // A phrase or a requirement cut short would change its meaning.
                    continue;
                }
                tokens.truncate(room);
            }
            if tokens.is_empty() {
                continue;
            }
            used += tokens.len();
            let occur = match c.occur {
                q::Occur::Should => Occur::Should,
                q::Occur::Must => Occur::Must,
                q::Occur::MustNot => Occur::MustNot,
            };
            let boost = |q: Box<dyn Query>| -> Box<dyn Query> {
                if (c.weight - 1.0).abs() < f32::EPSILON {
                    q
                } else {
                    Box::new(BoostQuery::new(q, c.weight))
                }
            };
            if c.phrase || (occur != Occur::Should && tokens.len() > 1) {
                clauses.push((occur, boost(Self::phrase_in(&fields, &tokens))));
            } else {
                for t in &tokens {
                    clauses.push((occur, boost(Self::term_in(&fields, t, query.bm25))));
                }
            }
        }
        let query: Box<dyn Query> = if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
            Box::new(tantivy::query::EmptyQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        Ok(Built {
            query,
            terms: used,
            dropped,
            stats: None,
        })
    }

    fn filtered(&self, query: Box<dyn Query>, filter: &Filter) -> Box<dyn Query> {
        if filter.matches_nothing {
            return Box::new(tantivy::query::EmptyQuery);
        }
        if filter.is_empty() {
            return query;
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, query)];
        let term = |field: Field, v: &str| -> Box<dyn Query> {
            // Filters restrict; they must not add to the BM25 score.
            Box::new(ConstScoreQuery::new(
                Box::new(TermQuery::new(
                    Term::from_field_text(field, &v.trim().to_lowercase()),
                    IndexRecordOption::Basic,
                )),
                0.0,
            ))
        };
        if let Some(v) = &filter.note_type {
            clauses.push((Occur::Must, term(self.f.note_type, v)));
        }
        if let Some(v) = &filter.specialty {
            clauses.push((Occur::Must, term(self.f.specialty, v)));
        }
        if let Some(v) = &filter.patient_id {
            clauses.push((Occur::Must, term(self.f.patient_id, v)));
        }
        let entity_field = if filter.entities_affirmed {
            self.f.entity_affirmed
        } else {
            self.f.entity
        };
        for key in &filter.entities {
            clauses.push((Occur::Must, term(entity_field, key)));
        }
        let from = filter
            .date_from
            .as_deref()
            .and_then(|d| crate::note::date_key(d).ok());
        let to = filter
            .date_to
            .as_deref()
            .and_then(|d| crate::note::date_key(d).ok());
        if from.is_some() || to.is_some() {
            use std::ops::Bound;
            let lo = from.map_or(Bound::Unbounded, |v| {
                Bound::Included(Term::from_field_i64(self.f.date, v))
            });
            let hi = to.map_or(Bound::Unbounded, |v| {
                Bound::Included(Term::from_field_i64(self.f.date, v))
            });
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(Box::new(RangeQuery::new(lo, hi)), 0.0)),
            ));
        }
        Box::new(BooleanQuery::new(clauses))
    }

    /// Top `k` notes for plain text under `filter` (see [`Self::search_built`]).
    pub fn search(&self, text: &str, k: usize, filter: &Filter) -> Result<Vec<(String, f32)>> {
        self.search_built(&self.build(&TextQuery::plain(text))?, k, filter)
    }

    /// Top `k` notes for `query` under `filter`: `(id, BM25 score)`, best first.
    pub fn search_built(
        &self,
        query: &Built,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(String, f32)>> {
        if k == 0 || query.terms == 0 {
            return Ok(vec![]);
        }
        let q = self.filtered(query.query.box_clone(), filter);
        let searcher = self.reader.searcher();
        // Equal scores ([`rank_key`]) are ordered by note id, never by where a document
        // happens to sit in the index (which depends on ingest order and segment merges): the
        // same notes rank the same in any index that holds them, a shard's included. A tie
        // that straddles the cut is resolved the same way: one more pass collects the whole
        // tied run, and its notes with the smallest ids fill the places left.
        let first = self.run(
            &searcher,
            &*q,
            &TopDocs::with_limit(k + 1).order_by_score(),
            query.stats.as_deref(),
        )?;
        let straddles = first.len() == k + 1 && rank_key(first[k].0) == rank_key(first[k - 1].0);
        let mut out = if !straddles {
            self.smallest_ids(&searcher, first, k + 1)?
        } else {
            let bound = rank_key(first[k - 1].0);
            let above: Vec<_> = first
                .into_iter()
                .filter(|x| rank_key(x.0) > bound)
                .collect();
            let need = k - above.len();
            let tied = self.run(&searcher, &*q, &TiedAt(bound), query.stats.as_deref())?;
            let mut out = self.smallest_ids(&searcher, above, k)?;
            out.extend(self.smallest_ids(&searcher, tied, need)?);
            out
        };
        out.sort_by(|a, b| {
            rank_key(b.1)
                .total_cmp(&rank_key(a.1))
                .then_with(|| a.0.cmp(&b.0))
        });
        out.truncate(k);
        Ok(out)
    }

    /// The `need` documents of `docs` with the smallest note ids, as (id, score). A segment's
    /// id column numbers its ids in sorted order, so each segment's documents are chosen by
    /// number and only those are spelled out; an index made before the column reads each
    /// document's stored id.
    fn smallest_ids(
        &self,
        searcher: &tantivy::Searcher,
        docs: Vec<(f32, tantivy::DocAddress)>,
        need: usize,
    ) -> Result<Vec<(String, f32)>> {
        let mut by_segment: std::collections::BTreeMap<u32, Vec<(f32, u32)>> = Default::default();
        for (score, addr) in docs {
            by_segment
                .entry(addr.segment_ord)
                .or_default()
                .push((score, addr.doc_id));
        }
        let mut out = vec![];
        for (seg_ord, docs) in by_segment {
            let seg = searcher.segment_reader(seg_ord);
            match seg.fast_fields().str("id")? {
                Some(col) => {
                    let mut numbered: Vec<(u64, f32)> = docs
                        .iter()
                        .map(|&(score, doc)| (col.term_ords(doc).next().unwrap_or(u64::MAX), score))
                        .collect();
                    numbered.sort_unstable_by_key(|x| x.0);
                    for (ord, score) in numbered.into_iter().take(need) {
                        let mut id = String::new();
                        col.ord_to_str(ord, &mut id)
                            .map_err(|e| Error::Index(format!("id column: {e}")))?;
                        out.push((id, score));
                    }
                }
                None => {
                    for (score, doc) in docs {
                        let d: TantivyDocument =
                            searcher.doc(tantivy::DocAddress::new(seg_ord, doc))?;
                        let id = d.get_first(self.f.id).and_then(|v| v.as_str());
                        out.push((id.unwrap_or_default().to_string(), score));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(need);
        Ok(out)
    }

    /// Runs `collector`, with `stats` (a sharded collection's) when given.
    fn run<C: tantivy::collector::Collector>(
        &self,
        searcher: &tantivy::Searcher,
        q: &dyn Query,
        collector: &C,
        stats: Option<&CollectionStats>,
    ) -> Result<C::Fruit> {
        Ok(match stats {
            None => searcher.search(q, collector)?,
            Some(stats) => {
                let global = Global {
                    local: searcher,
                    schema: &self.index.schema(),
                    stats,
                };
                searcher.search_with_statistics_provider(q, collector, &global)?
            }
        })
    }

    /// This index's own statistics of every term `queries` search (the text query and its
    /// snippet query), for a router to add up over shards
    /// ([`super::collection_stats`]).
    pub fn statistics(&self, queries: &[&Built]) -> Result<CollectionStats> {
        use tantivy::query::Bm25StatisticsProvider;
        let searcher = self.reader.searcher();
        let schema = self.index.schema();
        let mut terms: std::collections::BTreeSet<Term> = Default::default();
        for b in queries {
            b.query.query_terms(&mut |t, _| {
                terms.insert(t.clone());
            });
        }
        let mut out = CollectionStats {
            docs: searcher.total_num_docs()?,
            ..Default::default()
        };
        for t in &terms {
            let field = schema.get_field_name(t.field()).to_string();
            if let std::collections::btree_map::Entry::Vacant(e) = out.tokens.entry(field) {
                e.insert(searcher.total_num_tokens(t.field())?);
            }
            out.doc_freq
                .insert(term_key(&schema, t), searcher.doc_freq(t)?);
        }
        Ok(out)
    }

    /// Highlighted fragment of `text` for `query`: the fragment and the byte ranges of the
    /// matched terms inside it.
    pub fn snippet(
        &self,
        query: &TextQuery,
        text: &str,
        max_chars: usize,
    ) -> Result<(String, Vec<std::ops::Range<usize>>)> {
        Ok(self.snippets(query, max_chars, None)?.snippet(text))
    }

    /// The notes passing `filter`: how many there are, and their ids when at most `limit`.
    /// The vector side uses this to search exactly over a small filtered set (hnsw's filtered
    /// search degrades badly when few points pass).
    pub fn filter_ids(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(usize, Option<Vec<String>>)> {
        let q = self.filtered(Box::new(tantivy::query::AllQuery), filter);
        let searcher = self.reader.searcher();
        let count = searcher.search(&q, &tantivy::collector::Count)?;
        if count > limit {
            return Ok((count, None));
        }
        let addrs = searcher.search(&q, &tantivy::collector::DocSetCollector)?;
        let mut ids = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let d: TantivyDocument = searcher.doc(addr)?;
            if let Some(id) = d.get_first(self.f.id).and_then(|v| v.as_str()) {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok((count, Some(ids)))
    }

    /// The BM25 score of one note for `query` (None when the note does not match it), so a
    /// hit found only by the vector side still shows its keyword score.
    pub fn score_of(&self, query: &Built, id: &str) -> Result<Option<f32>> {
        if query.terms == 0 {
            return Ok(None);
        }
        let q = BooleanQuery::new(vec![
            (Occur::Must, query.query.box_clone()),
            (
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermQuery::new(
                        Term::from_field_text(self.f.id, id),
                        IndexRecordOption::Basic,
                    )),
                    0.0,
                )),
            ),
        ]);
        let searcher = self.reader.searcher();
        let top = self.run(
            &searcher,
            &q,
            &TopDocs::with_limit(1).order_by_score(),
            query.stats.as_deref(),
        )?;
        Ok(top.first().map(|(s, _)| *s))
    }

    /// What snippets mark for `query`: the terms of the text field (the snippet is cut from
    /// the text), whichever view was searched, never the excluded words.
    pub fn snippet_query(&self, query: &TextQuery) -> Result<Built> {
        let positive = TextQuery {
            clauses: query
                .clauses
                .iter()
                .filter(|c| c.occur != q::Occur::MustNot)
                .cloned()
                .collect(),
            affirmed_only: false,
            drop_stopwords: query.drop_stopwords,
            bm25: query.bm25,
        };
        self.build(&positive)
    }

    /// A snippet maker for one query, reused across the hits of a request (creating tantivy's
    /// generator reads term statistics: once per request is enough). It marks what was
    /// searched (expansions included), never the excluded words.
    ///
    /// With a sharded collection's `stats`, terms are weighed by the collection's document
    /// frequencies (as tantivy's generator weighs them by the index's), so every shard picks
    /// the fragment a single index would.
    pub fn snippets(
        &self,
        query: &TextQuery,
        max_chars: usize,
        stats: Option<&CollectionStats>,
    ) -> Result<Snippets> {
        let q = self.snippet_query(query)?.query;
        let searcher = self.reader.searcher();
        let mut generator = match stats {
            None => tantivy::snippet::SnippetGenerator::create(&searcher, &*q, self.f.text)?,
            Some(stats) => {
                use tantivy::query::Bm25StatisticsProvider;
                let schema = self.index.schema();
                let global = Global {
                    local: &searcher,
                    schema: &schema,
                    stats,
                };
                // tantivy's own weighting (`SnippetGenerator::create`): 1 / (1 + df).
                let mut weights = std::collections::BTreeMap::new();
                let mut terms: std::collections::BTreeSet<&Term> = Default::default();
                q.query_terms(&mut |t, _| {
                    if t.field() == self.f.text {
                        terms.insert(t);
                    }
                });
                for t in terms {
                    let value = t.value();
                    let Some(text) = value.as_str() else {
                        continue;
                    };
                    let df = global.doc_freq(t)?;
                    if df > 0 {
                        weights.insert(text.to_string(), 1.0 / (1.0 + df as f32));
                    }
                }
                tantivy::snippet::SnippetGenerator::new(
                    weights,
                    self.index.tokenizer_for_field(self.f.text)?,
                    self.f.text,
                    max_chars,
                )
            }
        };
        generator.set_max_num_chars(max_chars);
        Ok(Snippets { generator })
    }

    /// The values of a metadata field (`note_type` or `specialty`, lowercased as indexed)
    /// with their note counts, most frequent first: suggestions for the UI's filters. Counts
    /// may include replaced notes until tantivy merges their segments.
    pub fn facet_values(&self, field: &str) -> Result<Vec<(String, u64)>> {
        self.facet_values_under(field, &Filter::default())
    }

    /// [`Self::facet_values`] counting only the notes that pass `filter` (a key's restriction:
    /// a restricted key must not learn how many notes of other specialties exist). Values with
    /// no passing note are left out.
    pub fn facet_values_under(&self, field: &str, filter: &Filter) -> Result<Vec<(String, u64)>> {
        let field = match field {
            "note_type" => self.f.note_type,
            "specialty" => self.f.specialty,
            other => return Err(Error::InvalidInput(format!("no facets for {other:?}"))),
        };
        let io = |e: std::io::Error| Error::Index(format!("BM25 term dictionary: {e}"));
        let searcher = self.reader.searcher();
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for seg in searcher.segment_readers() {
            let inv = seg.inverted_index(field)?;
            let mut stream = inv.terms().stream().map_err(io)?;
            while stream.advance() {
                let key = String::from_utf8_lossy(stream.key()).into_owned();
                *counts.entry(key).or_default() += stream.value().doc_freq as u64;
            }
        }
        if !filter.is_empty() {
            // Count exactly under the filter, one query per value (facets have few values).
            for (value, n) in counts.iter_mut() {
                let q = self.filtered(
                    Box::new(TermQuery::new(
                        Term::from_field_text(field, value),
                        IndexRecordOption::Basic,
                    )),
                    filter,
                );
                *n = searcher.search(&*q, &tantivy::collector::Count)? as u64;
            }
            counts.retain(|_, n| *n > 0);
        }
        let mut out: Vec<(String, u64)> = counts.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Whether a note id is searchable.
    pub fn contains(&self, id: &str) -> Result<bool> {
        let searcher = self.reader.searcher();
        let q = TermQuery::new(
            Term::from_field_text(self.f.id, id),
            IndexRecordOption::Basic,
        );
        Ok(searcher.search(&q, &tantivy::collector::Count)? > 0)
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// A query ready to run, with how many terms it used and dropped (over
/// [`MAX_QUERY_TERMS`]).
pub struct Built {
    query: Box<dyn Query>,
    pub terms: usize,
    pub dropped: usize,
    /// A sharded collection's statistics to score with instead of this index's own
    /// ([`super::collection_stats`]); None for a collection that is this index alone.
    pub stats: Option<std::sync::Arc<CollectionStats>>,
}

impl crate::clinical::abbrev::Cooccurrence for Bm25Index {
    /// Notes holding each phrase (in title or text); all notes for none. Errors count as 0:
    /// this only weighs expansions.
    fn notes_with_all(&self, phrases: &[&str]) -> u64 {
        let both = [self.f.title, self.f.text];
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![];
        for p in phrases {
            match self.analyse(p) {
                Ok(t) if !t.is_empty() => clauses.push((Occur::Must, Self::phrase_in(&both, &t))),
                _ => return 0,
            }
        }
        if clauses.is_empty() {
            return self.num_docs();
        }
        let searcher = self.reader.searcher();
        searcher
            .search(&BooleanQuery::new(clauses), &tantivy::collector::Count)
            .map_or(0, |n| n as u64)
    }

    /// Each phrase's notes found once, as a bitmap per segment (live documents only, as the
    /// `Count` collector counts), and each pair counted by intersecting two bitmaps: about
    /// `senses + context` postings walks instead of `senses x context` phrase intersections.
    fn sense_counts(&self, senses: &[&str], context: &[&str]) -> SenseCounts {
        let searcher = self.reader.searcher();
        let both = [self.f.title, self.f.text];
        // None: the phrase has no terms or its search failed (0 notes, as notes_with_all).
        let notes_of = |p: &str| -> Option<Vec<Vec<u64>>> {
            let terms = self.analyse(p).ok().filter(|t| !t.is_empty())?;
            let weight = Self::phrase_in(&both, &terms)
                .weight(tantivy::query::EnableScoring::disabled_from_searcher(
                    &searcher,
                ))
                .ok()?;
            let mut out = vec![];
            for seg in searcher.segment_readers() {
                let mut bits = vec![0u64; (seg.max_doc() as usize).div_ceil(64)];
                let alive = seg.alive_bitset();
                weight
                    .for_each_no_score(seg, &mut |docs| {
                        for &d in docs {
                            if alive.is_none_or(|a| a.is_alive(d)) {
                                bits[d as usize / 64] |= 1 << (d % 64);
                            }
                        }
                    })
                    .ok()?;
                out.push(bits);
            }
            Some(out)
        };
        let count = |a: &Option<Vec<Vec<u64>>>| -> u64 {
            a.as_ref().map_or(0, |segs| {
                segs.iter().flatten().map(|w| w.count_ones() as u64).sum()
            })
        };
        let both_count = |a: &Option<Vec<Vec<u64>>>, b: &Option<Vec<Vec<u64>>>| -> u64 {
            match (a, b) {
                (Some(a), Some(b)) => a
                    .iter()
                    .zip(b)
                    .flat_map(|(x, y)| x.iter().zip(y))
                    .map(|(x, y)| (x & y).count_ones() as u64)
                    .sum(),
                _ => 0,
            }
        };
        let context_sets: Vec<_> = context.iter().map(|c| notes_of(c)).collect();
        let sense_sets: Vec<_> = senses.iter().map(|s| notes_of(s)).collect();
        SenseCounts {
            all: self.num_docs(),
            context: context_sets.iter().map(count).collect(),
            senses: sense_sets.iter().map(count).collect(),
            pairs: sense_sets
                .iter()
                .map(|s| context_sets.iter().map(|c| both_count(s, c)).collect())
                .collect(),
        }
    }
}

/// The score BM25 rankings are ordered by: the score with its last 10 mantissa bits cleared
/// (scores within about 1 part in 8,000 are ties, and ties go by note id).
///
/// Why: tantivy adds a document's per-term scores in an order that depends on the segment's
/// other documents, so one note's score can differ in the last bit between two indexes that
/// hold it (a single directory and a shard), and so can two notes that tie. Ordering by the
/// exact float would then order those notes differently from one index to the next.
pub fn rank_key(score: f32) -> f32 {
    f32::from_bits(score.to_bits() & !0x3ff)
}

/// Collects every document whose [`rank_key`] is exactly the one given: a tied run.
struct TiedAt(f32);

struct TiedInSegment {
    key: f32,
    segment: u32,
    docs: Vec<(f32, tantivy::DocAddress)>,
}

impl tantivy::collector::Collector for TiedAt {
    type Fruit = Vec<(f32, tantivy::DocAddress)>;
    type Child = TiedInSegment;

    fn for_segment(
        &self,
        segment: tantivy::SegmentOrdinal,
        _: &tantivy::SegmentReader,
    ) -> tantivy::Result<TiedInSegment> {
        Ok(TiedInSegment {
            key: self.0,
            segment,
            docs: vec![],
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl tantivy::collector::SegmentCollector for TiedInSegment {
    type Fruit = Vec<(f32, tantivy::DocAddress)>;

    fn collect(&mut self, doc: tantivy::DocId, score: tantivy::Score) {
        if rank_key(score) == self.key {
            self.docs
                .push((score, tantivy::DocAddress::new(self.segment, doc)));
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.docs
    }
}

/// Highlighted fragments for one query; see [`Bm25Index::snippets`].
pub struct Snippets {
    generator: tantivy::snippet::SnippetGenerator,
}

impl Snippets {
    /// The best fragment of `text` and the byte ranges of the matched terms inside it.
    pub fn snippet(&self, text: &str) -> (String, Vec<std::ops::Range<usize>>) {
        let s = self.generator.snippet(text);
        (s.fragment().to_string(), s.highlighted().to_vec())
    }
}

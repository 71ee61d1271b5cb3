//! The model endpoints: embeddings, fill-mask and classification.

use actix_web::http::StatusCode;
use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::server::error::ErrorBody;

use super::*;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    #[schema(min_items = 1, max_items = 256)]
    texts: Vec<NonBlank>,
    /// One vector per overlapping window instead of one per text.
    #[serde(default)]
    windows: bool,
}

#[derive(Serialize, ToSchema)]
pub struct EmbedReply {
    pub model: String,
    pub dim: usize,
    pub pooling: crate::model::Pooling,
    pub normalized: bool,
    /// One vector per text (without `windows`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// Each text's windows with their spans and vectors (with `windows`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<Vec<crate::model::Window>>>,
}

/// Embeds texts: one vector each (its first window), or one per window.
#[utoipa::path(post, path = "/api/embed", tag = "models", request_body = EmbedBody,
    responses((status = 200, description = "The vectors.", body = EmbedReply)))]
pub async fn embed(state: State, http: HttpRequest, body: web::Json<EmbedBody>) -> ApiResult {
    let EmbedBody { texts, windows } = body.into_inner();
    let texts = strings(texts);
    disclose_query(&http, &serde_json::to_string(&texts).unwrap_or_default());
    if texts.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "texts: give at least one text",
        ));
    }
    if texts.len() > MAX_EMBED_TEXTS {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("texts: at most {MAX_EMBED_TEXTS} per request"),
        ));
    }
    if windows {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        check_windows(&state, state.encoder.count_windows(&refs)?)?;
    }
    let st = state.clone();
    let out = web::block(move || -> Result<EmbedReply, Error> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let info = st.encoder.info();
        let mut v = EmbedReply {
            model: info.id.clone(),
            dim: st.encoder.dim(),
            pooling: info.pooling,
            normalized: info.normalize,
            embeddings: None,
            windows: None,
        };
        if windows {
            v.windows = Some(st.encoder.embed_windows(&refs)?);
        } else {
            v.embeddings = Some(st.encoder.embed(&refs)?);
        }
        Ok(v)
    })
    .await??;
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FillMaskBody {
    /// A text with one or more of the model's mask token (`[MASK]`, the token the tokenizer
    /// reads as the mask of every model served here).
    #[schema(
        max_length = 100000,
        pattern = "\\[MASK\\]",
        example = "chest x-ray shows [MASK] in the right lower lobe"
    )]
    text: String,
    /// Candidates per mask (default 5).
    #[serde(default = "default_top_k", deserialize_with = "whole::int")]
    #[schema(minimum = 1, maximum = 100)]
    top_k: usize,
}

#[derive(Serialize, ToSchema)]
pub struct FillMaskReply {
    /// The model that answered (a folder or Hub id).
    pub model: String,
    pub source: crate::server::fill_mask::Source,
    pub masks: Vec<crate::model::MaskPrediction>,
}

fn default_top_k() -> usize {
    5
}

/// Candidates for each mask from the fill-mask model (`--mlm-model`, else one adapted on the
/// stored notes, else the embedding model's own MLM head).
#[utoipa::path(post, path = "/api/fill-mask", tag = "models", request_body = FillMaskBody,
    responses((status = 200, description = "The candidates of each mask.", body = FillMaskReply)))]
pub async fn fill_mask(
    state: State,
    caller: Caller,
    http: HttpRequest,
    body: web::Json<FillMaskBody>,
) -> ApiResult {
    let Some(served) = state.fill_mask.served() else {
        return Err(ApiError::bad_request(
            "no_mlm_head",
            format!(
                "no model answers fill-mask: the embedding model {} has no masked-language-model head; serve one with --mlm-model DIR (a BertForMaskedLM, such as one made by `clinsearch finetune mlm`), or adapt one on the stored notes (POST /api/fill-mask/adapt, or the Fill-mask page)",
                state.encoder.info().id
            ),
        ));
    };
    refuse_restricted_on_adapted(&caller, &served)?;
    let FillMaskBody { text, top_k } = body.into_inner();
    disclose_query(&http, &text);
    if !(1..=100).contains(&top_k) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "top_k: must be between 1 and 100",
        ));
    }
    if text.chars().count() > 100_000 {
        return Err(ApiError::bad_request("invalid_parameter", "text: too long"));
    }
    let enc = served.encoder.clone();
    let masks = web::block(move || enc.fill_mask(&text, top_k)).await??;
    Ok(HttpResponse::Ok().json(FillMaskReply {
        model: served.spec.clone(),
        source: served.source,
        masks,
    }))
}

/// A model adapted on every stored note may reproduce fragments of notes outside a
/// restricted key's filter: such keys may not query it.
fn refuse_restricted_on_adapted(
    caller: &Caller,
    served: &crate::server::fill_mask::Served,
) -> Result<(), ApiError> {
    if served.source == crate::server::fill_mask::Source::Adapted && caller.0.restrict.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the fill-mask model was adapted on every note of this server; a key restricted to part of the notes may not query it",
        ));
    }
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct FillMaskModel {
    /// The model answering fill-mask (null: none).
    pub model: Option<String>,
    pub source: Option<crate::server::fill_mask::Source>,
    pub embedding_model: String,
    pub notes: u64,
    /// Whether this key may start an adapt job (write role, unrestricted).
    pub can_adapt: bool,
    /// An adapt job's defaults (keys that may adapt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defaults: Option<crate::server::fill_mask::AdaptRequest>,
    /// The command line that runs the same training (keys that may adapt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cli: Option<String>,
    /// The latest adapt job this key may see (keys that may adapt; null: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub adapt: Option<Option<crate::server::fill_mask::AdaptStatus>>,
}

/// `GET /api/fill-mask/model`: the model answering fill-mask (or none), and for write keys
/// the latest adapt job and what a new one would run.
#[utoipa::path(get, path = "/api/fill-mask/model", tag = "models",
    responses((status = 200, description = "The fill-mask model.", body = FillMaskModel)))]
pub async fn fill_mask_model(state: State, caller: Caller) -> ApiResult {
    use crate::auth::Role;
    use crate::server::fill_mask::AdaptRequest;
    let served = state.fill_mask.served();
    let may_adapt = caller.0.role >= Role::Write && caller.0.restrict.is_none();
    let mut v = FillMaskModel {
        model: served.as_ref().map(|s| s.spec.clone()),
        source: served.as_ref().map(|s| s.source),
        embedding_model: state.encoder.info().id.clone(),
        notes: state.engine.bm25.num_docs(),
        can_adapt: may_adapt,
        defaults: None,
        cli: None,
        adapt: None,
    };
    if may_adapt {
        let req = AdaptRequest::default();
        let out = state.engine.dir.join("mlm").join("adapted-TIMESTAMP");
        v.cli = Some(req.cli(&state.config.model, &state.engine.dir, &out));
        v.defaults = Some(req);
        v.adapt = Some(
            state
                .fill_mask
                .latest()
                .filter(|j| sees_all(&caller) || j.owner == caller.0.name),
        );
    }
    Ok(HttpResponse::Ok().json(v))
}

/// `POST /api/fill-mask/adapt`: starts adapting the embedding model (with a new MLM head
/// where it has none) on every stored note; 202 with the job.
#[utoipa::path(post, path = "/api/fill-mask/adapt", tag = "models",
    request_body = crate::server::fill_mask::AdaptRequest,
    responses(
        (status = 202, description = "The job, started.", body = crate::server::fill_mask::AdaptStatus,
            links(("GetAdaptJob" = (operation_id = "adapt_status", parameters(("job" = "$response.body#/id")))))),
    ))]
pub async fn adapt_start(
    state: State,
    caller: Caller,
    body: web::Json<crate::server::fill_mask::AdaptRequest>,
) -> ApiResult {
    if caller.0.restrict.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an adapt job trains on every stored note: a key restricted to part of them may not start one",
        ));
    }
    let req = body.into_inner();
    if let Err((param, message)) = req.check() {
        let mut e = ApiError::bad_request("invalid_parameter", message);
        e.param = Some(param);
        return Err(e);
    }
    if state.engine.bm25.num_docs() == 0 {
        return Err(ApiError::bad_request(
            "invalid_input",
            "no notes are stored: ingest notes before adapting a model on them",
        ));
    }
    let slot = state.fill_mask.reserve(&caller.0.name)?;
    let opts = state.config.encoder_options()?;
    let status = state.fill_mask.start(
        slot,
        &caller.0.name,
        state.engine.clone(),
        &state.config.model,
        &opts,
        req,
    )?;
    Ok(HttpResponse::Accepted().json(status))
}

/// `GET /api/fill-mask/adapt/{job}`: progress of an adapt job (its owner's and admins').
#[utoipa::path(get, path = "/api/fill-mask/adapt/{job}", tag = "models",
    params(("job" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = crate::server::fill_mask::AdaptStatus),
        (status = 404, description = "No such job (or not this key's).", body = ErrorBody),
    ))]
pub async fn adapt_status(state: State, caller: Caller, job: web::Path<String>) -> ApiResult {
    match state
        .fill_mask
        .status(&job)
        .filter(|s| sees_all(&caller) || s.owner == caller.0.name)
    {
        Some(s) => Ok(HttpResponse::Ok().json(s)),
        None => Err(ApiError::not_found("no adapt job with this id")),
    }
}

/// One text, or several with `texts` (exactly one of the two; no text blank). Read through
/// [`TextsRaw`], so that a body with both or neither says so.
#[derive(Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields, try_from = "TextsRaw")]
pub enum ClassifyBody {
    One {
        text: NonBlank,
        /// Labels per text (default 3).
        #[serde(default = "default_classify_top_k")]
        #[schema(minimum = 1, maximum = 100)]
        top_k: usize,
    },
    Many {
        #[schema(min_items = 1, max_items = 256)]
        texts: Vec<NonBlank>,
        #[serde(default = "default_classify_top_k")]
        #[schema(minimum = 1, maximum = 100)]
        top_k: usize,
    },
}

/// A text holding something other than white space.
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(pattern = "\\S")]
pub struct NonBlank(pub String);

/// The bodies of classify and tag as sent: `text` or `texts`, and `top_k` (classify only).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextsRaw {
    text: Option<NonBlank>,
    texts: Option<Vec<NonBlank>>,
    #[serde(default, deserialize_with = "whole::present_int")]
    top_k: Option<usize>,
}

/// One text (Ok) or several (Err).
type OneOrMany = Result<NonBlank, Vec<NonBlank>>;

impl TextsRaw {
    fn split(self) -> Result<(OneOrMany, Option<usize>), String> {
        match (self.text, self.texts) {
            (Some(t), None) => Ok((Ok(t), self.top_k)),
            (None, Some(ts)) => Ok((Err(ts), self.top_k)),
            _ => Err("text: give exactly one of text or texts".into()),
        }
    }
}

impl TryFrom<TextsRaw> for ClassifyBody {
    type Error = String;
    fn try_from(raw: TextsRaw) -> Result<Self, String> {
        let (texts, top_k) = raw.split()?;
        let top_k = top_k.unwrap_or_else(default_classify_top_k);
        Ok(match texts {
            Ok(text) => ClassifyBody::One { text, top_k },
            Err(texts) => ClassifyBody::Many { texts, top_k },
        })
    }
}

impl TryFrom<TextsRaw> for TagBody {
    type Error = String;
    fn try_from(raw: TextsRaw) -> Result<Self, String> {
        let (texts, top_k) = raw.split()?;
        if top_k.is_some() {
            return Err("unknown field `top_k`: tag takes text or texts".into());
        }
        Ok(match texts {
            Ok(text) => TagBody::One { text },
            Err(texts) => TagBody::Many { texts },
        })
    }
}

fn strings(texts: Vec<NonBlank>) -> Vec<String> {
    texts.into_iter().map(|t| t.0).collect()
}

#[derive(Serialize, ToSchema)]
pub struct ClassifyReply {
    /// The classifier's folder.
    #[schema(value_type = String)]
    pub model: std::path::PathBuf,
    pub labels: Vec<String>,
    pub predictions: Vec<crate::train::classify::Classification>,
}

fn default_classify_top_k() -> usize {
    3
}

/// `POST /api/classify`: the configured fine-tuned classifier's labels for one or more texts.
#[utoipa::path(post, path = "/api/classify", tag = "models", request_body = ClassifyBody,
    responses((status = 200, description = "Each text's labels.", body = ClassifyReply)))]
pub async fn classify(state: State, http: HttpRequest, body: web::Json<ClassifyBody>) -> ApiResult {
    let Some(clf) = state.classifier.clone() else {
        return Err(ApiError::bad_request(
            "no_classifier",
            "no classifier is configured: fine-tune one with `clinsearch finetune classify` and serve it with --classifier DIR",
        ));
    };
    let (text, texts, top_k) = match body.into_inner() {
        ClassifyBody::One { text, top_k } => (Some(text.0), None, top_k),
        ClassifyBody::Many { texts, top_k } => (None, Some(strings(texts)), top_k),
    };
    let texts = audited_texts(&http, text, texts)?;
    if !(1..=100).contains(&top_k) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "top_k: must be between 1 and 100",
        ));
    }
    let c = clf.clone();
    let preds = web::block(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        c.predict(&refs, top_k)
    })
    .await??;
    Ok(HttpResponse::Ok().json(ClassifyReply {
        model: clf.dir.clone(),
        labels: clf.labels.clone(),
        predictions: preds,
    }))
}

/// One text, or several with `texts` (exactly one of the two; no text blank).
#[derive(Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields, try_from = "TextsRaw")]
pub enum TagBody {
    One {
        text: NonBlank,
    },
    Many {
        #[schema(min_items = 1, max_items = 256)]
        texts: Vec<NonBlank>,
    },
}

#[derive(Serialize, ToSchema)]
pub struct TagResult {
    pub entities: Vec<crate::ner::Entity>,
}

#[derive(Serialize, ToSchema)]
pub struct TagReply {
    /// The tagger's folder.
    #[schema(value_type = String)]
    pub model: std::path::PathBuf,
    /// The entity types it finds.
    pub types: Vec<String>,
    /// One per text, in order.
    pub results: Vec<TagResult>,
}

/// `POST /api/tag`: the configured tagger's entities (type, character span, text, score) of
/// one or more texts; long texts are read in overlapping windows.
#[utoipa::path(post, path = "/api/tag", tag = "models", request_body = TagBody,
    responses((status = 200, description = "Each text's entities.", body = TagReply)))]
pub async fn tag(state: State, http: HttpRequest, body: web::Json<TagBody>) -> ApiResult {
    let Some(tagger) = state.tagger.clone() else {
        return Err(ApiError::bad_request(
            "no_tagger",
            "no tagger is configured: fine-tune one with `clinsearch finetune ner` and serve it with --tagger DIR",
        ));
    };
    let (text, texts) = match body.into_inner() {
        TagBody::One { text } => (Some(text.0), None),
        TagBody::Many { texts } => (None, Some(strings(texts))),
    };
    let texts = audited_texts(&http, text, texts)?;
    let t = tagger.clone();
    let entities = web::block(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        t.tag(&refs)
    })
    .await??;
    let types: std::collections::BTreeSet<&str> =
        tagger.labels.iter().filter_map(|l| l.get(2..)).collect();
    Ok(HttpResponse::Ok().json(TagReply {
        model: tagger.dir.clone(),
        types: types.into_iter().map(str::to_string).collect(),
        results: entities
            .into_iter()
            .map(|entities| TagResult { entities })
            .collect(),
    }))
}

/// The texts of a classify or tag request, recorded in the audit store (they are patient
/// text), each non-empty.
fn audited_texts(
    http: &HttpRequest,
    text: Option<String>,
    texts: Option<Vec<String>>,
) -> Result<Vec<String>, ApiError> {
    match (&text, &texts) {
        (Some(t), _) => disclose_query(http, t),
        (None, Some(ts)) => disclose_query(http, &serde_json::to_string(ts).unwrap_or_default()),
        _ => {}
    }
    let texts = one_or_many(text, texts)?;
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("texts: text {} is empty", i + 1),
        ));
    }
    Ok(texts)
}

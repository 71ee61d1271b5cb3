//! The model endpoints: embeddings, fill-mask and classification.

use actix_web::http::StatusCode;
use actix_web::web::{self};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    texts: Vec<String>,
    /// One vector per overlapping window instead of one per text.
    #[serde(default)]
    windows: bool,
}

pub async fn embed(state: State, http: HttpRequest, body: web::Json<EmbedBody>) -> ApiResult {
    let EmbedBody { texts, windows } = body.into_inner();
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
    let out = web::block(move || -> Result<Value, Error> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let info = st.encoder.info();
        let mut v = json!({ "model": info.id, "dim": st.encoder.dim(), "pooling": info.pooling, "normalized": info.normalize });
        if windows {
            v["windows"] = serde_json::to_value(st.encoder.embed_windows(&refs)?).map_err(|e| Error::Index(e.to_string()))?;
        } else {
            v["embeddings"] = serde_json::to_value(st.encoder.embed(&refs)?).map_err(|e| Error::Index(e.to_string()))?;
        }
        Ok(v)
    })
    .await??;
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillMaskBody {
    text: String,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    5
}

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
    if text.len() > 100_000 {
        return Err(ApiError::bad_request("invalid_parameter", "text: too long"));
    }
    let enc = served.encoder.clone();
    let masks = web::block(move || enc.fill_mask(&text, top_k)).await??;
    Ok(HttpResponse::Ok()
        .json(json!({ "model": served.spec, "source": served.source, "masks": masks })))
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

/// `GET /api/fill-mask/model`: the model answering fill-mask (or none), and for write keys
/// the latest adapt job and what a new one would run.
pub async fn fill_mask_model(state: State, caller: Caller) -> ApiResult {
    use crate::auth::Role;
    use crate::server::fill_mask::AdaptRequest;
    let served = state.fill_mask.served();
    let may_adapt = caller.0.role >= Role::Write && caller.0.restrict.is_none();
    let mut v = json!({
        "model": served.as_ref().map(|s| s.spec.clone()),
        "source": served.as_ref().map(|s| s.source),
        "embedding_model": state.encoder.info().id,
        "notes": state.engine.bm25.num_docs(),
        "can_adapt": may_adapt,
    });
    if may_adapt {
        let req = AdaptRequest::default();
        let out = state.engine.dir.join("mlm").join("adapted-TIMESTAMP");
        v["defaults"] = json!({
            "max_steps": req.max_steps,
            "batch_size": req.batch_size,
            "max_len": req.max_len,
            "lr": req.lr,
            "seed": req.seed,
        });
        v["cli"] = json!(req.cli(&state.config.model, &state.engine.dir, &out));
        v["adapt"] = json!(state
            .fill_mask
            .latest()
            .filter(|j| sees_all(&caller) || j.owner == caller.0.name));
    }
    Ok(HttpResponse::Ok().json(v))
}

/// `POST /api/fill-mask/adapt`: starts adapting the embedding model (with a new MLM head
/// where it has none) on every stored note; 202 with the job.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBody {
    /// One text, or several with `texts`.
    text: Option<String>,
    texts: Option<Vec<String>>,
    #[serde(default = "default_classify_top_k")]
    top_k: usize,
}

fn default_classify_top_k() -> usize {
    3
}

/// `POST /api/classify`: the configured fine-tuned classifier's labels for one or more texts.
pub async fn classify(state: State, http: HttpRequest, body: web::Json<ClassifyBody>) -> ApiResult {
    let Some(clf) = state.classifier.clone() else {
        return Err(ApiError::bad_request(
            "no_classifier",
            "no classifier is configured: fine-tune one with `clinsearch finetune classify` and serve it with --classifier DIR",
        ));
    };
    let ClassifyBody { text, texts, top_k } = body.into_inner();
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
    Ok(HttpResponse::Ok().json(json!({
        "model": clf.dir,
        "labels": clf.labels,
        "predictions": preds,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagBody {
    text: Option<String>,
    texts: Option<Vec<String>>,
}

/// `POST /api/tag`: the configured tagger's entities (type, character span, text, score) of
/// one or more texts; long texts are read in overlapping windows.
pub async fn tag(state: State, http: HttpRequest, body: web::Json<TagBody>) -> ApiResult {
    let Some(tagger) = state.tagger.clone() else {
        return Err(ApiError::bad_request(
            "no_tagger",
            "no tagger is configured: fine-tune one with `clinsearch finetune ner` and serve it with --tagger DIR",
        ));
    };
    let TagBody { text, texts } = body.into_inner();
    let texts = audited_texts(&http, text, texts)?;
    let t = tagger.clone();
    let entities = web::block(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        t.tag(&refs)
    })
    .await??;
    let types: std::collections::BTreeSet<&str> =
        tagger.labels.iter().filter_map(|l| l.get(2..)).collect();
    Ok(HttpResponse::Ok().json(json!({
        "model": tagger.dir,
        "types": types,
        "results": entities.into_iter().map(|e| json!({ "entities": e })).collect::<Vec<_>>(),
    })))
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

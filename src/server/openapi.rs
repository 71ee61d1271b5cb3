//! The OpenAPI description served at `/api/openapi.json`, derived rather than written.
//!
//! Three sources, each the one the server itself obeys:
//! * the handlers' request and response types and their `#[utoipa::path]` attributes
//!   (utoipa: maintained, derives from serde's own attributes, so `rename`,
//!   `deny_unknown_fields`, `skip_serializing_if` and `Option` read as the server reads and
//!   writes them);
//! * the search parameter table (`search::spec`), which the parser refuses every other name
//!   against: it becomes the query parameters and JSON bodies of search, facets and export;
//! * the route table (`routes::table`): who may call each operation (`security`, and the
//!   role as `x-clinsearch-role`), the audit action (`x-clinsearch-audit`), and the statuses
//!   its checks answer (401 and 403 from the access check; 400, 413 and 415 from body and
//!   parameter checks; 429 and 503 from the queues and the healer).
//!
//! The configuration's bounds (`max_export_rows`, `max_offset_k`) are written in as the
//! server is configured. A test checks that the document's operations are exactly the
//! route table's (the UI's page and files aside).

use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use super::api;
use super::routes::{self, Access};
use crate::config::Limits;
use crate::search::spec::{self, Kind, Param};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "clinsearch",
        description = "Semantic search for clinical notes: BM25, semantic and hybrid search, documents, embeddings, fill-mask, assertion status, cohort export, and OpenAI- and text-embeddings-inference-compatible embedding endpoints. Errors are {\"error\": {\"code\", \"message\", \"param\"?}} with stable codes (the OpenAI and TEI routes answer in those APIs' own shapes). Each operation names the role it needs (x-clinsearch-role) and the audit action it records (x-clinsearch-audit)."
    ),
    paths(
        api::health,
        api::openapi,
        api::stats,
        api::facets,
        api::search_get,
        api::search_post,
        api::export_get,
        api::export_post,
        api::documents_post,
        api::document_get,
        api::document_delete,
        api::embed,
        api::fill_mask,
        api::fill_mask_model,
        api::adapt_start,
        api::adapt_status,
        api::classify,
        api::tag,
        api::annotate,
        api::ingest_start,
        api::ingest_list,
        api::ingest_status,
        api::eval_start,
        api::eval_sets,
        api::tune_start,
        api::eval_status,
        api::metrics,
        api::openai_embeddings,
        api::tei_embed,
        api::tei_embed_root,
        api::tei_tokenize,
        super::access::whoami,
        super::access::audit,
    ),
    components(schemas(
        super::error::ErrorBody,
        api::DocSyntax,
        api::UploadFormat,
        super::access::AuditAction
    ))
)]
struct ApiDoc;

/// Which search parameters an operation takes, and where.
#[derive(Clone, Copy)]
enum Takes {
    /// `/api/search`: the table, `q` required.
    Search,
    /// `/api/facets`: the table, `q` optional.
    Facets,
    /// `/api/search/export`: the table without paging, with the export's own.
    Export,
}

/// The operations whose parameters are the search table: (method, path, set, in a JSON body).
const SEARCH_OPERATIONS: &[(&str, &str, Takes, bool)] = &[
    ("get", "/api/search", Takes::Search, false),
    ("post", "/api/search", Takes::Search, true),
    ("get", "/api/facets", Takes::Facets, false),
    ("get", "/api/search/export", Takes::Export, false),
    ("post", "/api/search/export", Takes::Export, true),
];

/// The parameters of a set, with the configuration's bounds.
fn params_of(takes: Takes, limits: &Limits) -> Vec<(Param, bool)> {
    let mut out = vec![];
    for p in spec::PARAMS {
        let mut p = *p;
        match (takes, p.name) {
            (Takes::Export, "k" | "offset") => continue,
            // An export is one ranking.
            (Takes::Export, "mode") => {
                p.kind = Kind::Choice(&["bm25", "semantic", "hybrid", "keyword", "vector"])
            }
            _ => {}
        }
        let required = p.name == "q" && !matches!(takes, Takes::Facets);
        out.push((p, required));
    }
    if let Takes::Export = takes {
        for p in api::EXPORT_PARAMS {
            let mut p = *p;
            if p.name == "max_rows" {
                p.kind = Kind::Int {
                    min: 1,
                    max: limits.max_export_rows,
                };
            }
            out.push((p, false));
        }
    }
    out
}

/// A parameter's JSON Schema: in a query string every value is text, but typed as the
/// parser reads it; in a JSON body, of its JSON type (`spec::typed_pairs`), null for unset.
fn param_schema(p: &Param, in_body: bool) -> Value {
    let mut s = match p.kind {
        Kind::Text {
            max_chars: Some(max),
        } => json!({"type": "string", "maxLength": max}),
        Kind::Text { max_chars: None } => json!({"type": "string"}),
        Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Number {
            min,
            max,
            exclusive_min,
        } => {
            if exclusive_min {
                json!({"type": "number", "exclusiveMinimum": min, "maximum": max})
            } else {
                json!({"type": "number", "minimum": min, "maximum": max})
            }
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Choice(words) => json!({"type": "string", "enum": words}),
        // Empty (or blank): no bound.
        Kind::Date => json!({"anyOf": [
            {"type": "string", "format": "date"},
            {"type": "string", "pattern": "^\\s*$"}
        ]}),
        Kind::Words => json!({"type": "string", "maxLength": spec::MAX_VALUE_CHARS}),
        Kind::Entity => json!({"type": "string", "pattern": "^[^:]+:.+$",
                               "maxLength": spec::MAX_VALUE_CHARS}),
    };
    if p.name == "q" {
        s["minLength"] = json!(1);
    }
    if in_body {
        if let Kind::Entity = p.kind {
            s = json!({"anyOf": [s.clone(), {"type": "array", "items": s, "maxItems": spec::MAX_ENTITIES}]});
        }
        // null leaves the parameter unset.
        s = json!({"anyOf": [s, {"type": "null"}]});
    }
    s["description"] = json!(p.doc);
    s
}

fn query_parameters(params: &[(Param, bool)]) -> Vec<Value> {
    params
        .iter()
        .map(|(p, required)| {
            let mut schema = param_schema(p, false);
            if p.name == "q" {
                schema["maxLength"] = json!(spec::MAX_URL_QUERY_CHARS);
            }
            let description = schema
                .as_object_mut()
                .and_then(|o| o.remove("description"))
                .unwrap_or_default();
            let mut v = json!({
                "name": p.name, "in": "query", "required": required,
                "description": description, "schema": schema,
            });
            if let Kind::Entity = p.kind {
                // Repeated: entity=a&entity=b.
                v["schema"] =
                    json!({"type": "array", "items": v["schema"], "maxItems": spec::MAX_ENTITIES});
                v["style"] = json!("form");
                v["explode"] = json!(true);
            }
            v
        })
        .collect()
}

fn body_schema(params: &[(Param, bool)]) -> Value {
    let mut props = Map::new();
    let mut filter_props = Map::new();
    let mut required = vec![];
    for (p, req) in params {
        props.insert(p.name.into(), param_schema(p, true));
        if p.filter {
            filter_props.insert(p.name.into(), param_schema(p, true));
        }
        if *req {
            required.push(p.name);
        }
    }
    props.insert(
        "filter".into(),
        json!({
            "description": "The metadata filters, nested (the same as giving them at the top level).",
            "anyOf": [
                {"type": "object", "properties": filter_props, "additionalProperties": false},
                {"type": "null"}
            ]
        }),
    );
    json!({"type": "object", "required": required, "properties": props, "additionalProperties": false})
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// The body of `POST /api/documents`: one note, 1 to 1000 of them, or NDJSON.
fn refine_documents(doc: &mut Value) {
    let body = &mut doc["paths"]["/api/documents"]["post"]["requestBody"];
    body["required"] = json!(true);
    // utoipa keeps one schema per media type: both shapes, stated here.
    let note = json!({"$ref": "#/components/schemas/NoteInput"});
    body["content"]["application/json"]["schema"] = json!({"oneOf": [
        note,
        {"type": "array", "items": note, "minItems": 1, "maxItems": api::MAX_NOTES_PER_REQUEST}
    ]});
    body["content"]["application/x-ndjson"]["schema"] = json!({"type": "string", "pattern": "\\S"});
}

/// Adds `status` unless the handler declared it.
fn add_response(op: &mut Value, status: &str, description: &str) {
    let responses = op["responses"]
        .as_object_mut()
        .expect("every operation has responses");
    if !responses.contains_key(status) {
        responses.insert(status.into(), error_response(description));
    }
}

/// What the description states of the served model.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// Its vector dimension: the only `dimensions` the embedding endpoints take.
    pub dim: usize,
    /// Its vocabulary: token ids are below it.
    pub vocab: usize,
}

/// Bounds utoipa cannot attach where they apply (unnamed fields, runtime values), set on the
/// derived components by name.
fn refine(doc: &mut Value, served: Served) {
    let schemas = &mut doc["components"]["schemas"];
    let lists = json!({"minItems": 1, "maxItems": api::MAX_COMPAT_INPUTS});
    for (component, alternative) in [
        ("OpenAiInput", 1),
        ("OpenAiInput", 3),
        ("TeiInputs", 1),
        ("TokenizeInputs", 1),
    ] {
        let s = &mut schemas[component]["oneOf"][alternative];
        assert_eq!(s["type"], "array", "{component}");
        merge(s, &lists);
    }
    merge(&mut schemas["TokenIds"], &json!({"minItems": 1}));
    let vector = json!({"minItems": served.dim, "maxItems": served.dim});
    merge(&mut schemas["ChunkInput"]["properties"]["vector"], &vector);
    merge(&mut schemas["NoteInput"]["properties"]["vector"], &vector);
    merge(
        &mut schemas["TokenId"],
        &json!({"maximum": served.vocab.saturating_sub(1)}),
    );
    for component in ["OpenAiBody", "TeiEmbedBody"] {
        let d = &mut schemas[component]["properties"]["dimensions"];
        assert!(d.is_object(), "{component}.dimensions");
        *d = json!({"type": ["integer", "null"], "enum": [served.dim, null],
                    "description": "Only the served model's own dimension."});
    }
    schemas["AuditAction"] = json!({"type": "string", "enum": crate::audit::ACTIONS});
    // The search parameter's values (an empty one reads as the default).
    let syntax = spec::PARAMS
        .iter()
        .find(|p| p.name == "syntax")
        .expect("syntax");
    if let Kind::Choice(words) = syntax.kind {
        schemas["DocSyntax"] = json!({"type": "string", "enum": words});
    }
    // One text or several: each alternative takes only its own fields (serde's
    // deny_unknown_fields on the untagged enum's variants).
    for component in ["AnnotateBody", "ClassifyBody", "TagBody"] {
        for alt in schemas[component]["oneOf"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{component} is one of two shapes"))
        {
            alt["additionalProperties"] = json!(false);
        }
    }
    // Posted queries and judgments: JSON, or the text of the files `clinsearch eval` reads.
    let eval = &mut schemas["EvalBody"]["properties"];
    eval["queries"] = json!({"anyOf": [
        {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["id", "text"],
            "properties": {"id": {"type": ["string", "integer"]}, "text": {"type": "string"}}}},
        {"type": "string", "description": "A BEIR queries.jsonl, or qid<TAB>text lines."},
        {"type": "null"}
    ]});
    eval["qrels"] = json!({"anyOf": [
        {"type": "object", "additionalProperties": {"type": "object",
            "additionalProperties": {"type": "integer"}}},
        {"type": "string", "description": "A BEIR qrels TSV or TREC qrels."},
        {"type": "null"}
    ]});
    // The served model has no prompts: TEI's prompt_name is only ever null.
    schemas["TeiEmbedBody"]["properties"]["prompt_name"] = json!({"type": "null"});
    if let Some(params) = doc["paths"]["/api/audit"]["get"]["parameters"].as_array_mut() {
        for p in params {
            if p["name"] == "since" || p["name"] == "until" {
                p["schema"] = json!({"anyOf": [
                    {"type": "string", "format": "date-time"},
                    {"type": "string", "format": "date"}
                ]});
            }
        }
    }
}

fn merge(target: &mut Value, extra: &Value) {
    if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            t.insert(k.clone(), v.clone());
        }
    }
}

/// The document as this server, configured so and serving this model, serves it.
pub fn document(limits: &Limits, served: Served) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the description serialises");
    refine(&mut doc, served);
    refine_documents(&mut doc);
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A key made by `clinsearch keys new NAME --role read|write|admin`."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    });
    for &(method, path, takes, in_body) in SEARCH_OPERATIONS {
        let params = params_of(takes, limits);
        let op = &mut doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path}: no such operation");
        if in_body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body_schema(&params)}}
            });
        } else {
            op["parameters"] = Value::Array(query_parameters(&params));
        }
    }
    for r in routes::table() {
        if r.ui {
            continue;
        }
        let method = r.method.as_str().to_ascii_lowercase();
        let op = &mut doc["paths"][r.path][&method];
        assert!(
            op.is_object(),
            "{} {}: a route without a #[utoipa::path]",
            r.method,
            r.path
        );
        // The statuses the checks around every handler answer.
        let has_body = op.get("requestBody").is_some();
        let has_params = op
            .get("parameters")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
        if has_params || r.path.contains('{') {
            // Answered by the HTTP layer before any handler, without a body.
            op["responses"]
                .as_object_mut()
                .expect("every operation has responses")
                .entry("431")
                .or_insert(json!({"description": "The request line or headers are over the HTTP layer's limits (send long queries by POST)."}));
        }
        if has_body || has_params {
            add_response(
                op,
                "400",
                "A parameter or the body is invalid (`param` names it where there is one).",
            );
        }
        if has_body {
            add_response(op, "413", "The body is over the server's max_body_bytes.");
            add_response(
                op,
                "415",
                "The body is not of the content type this operation takes.",
            );
        }
        match r.access.expect("checked: every route declares access") {
            Access::Public => op["security"] = json!([]),
            Access::Needs(role) => {
                op["security"] = json!([{"bearer": []}, {"apiKey": []}]);
                op["x-clinsearch-role"] = json!(role.as_str());
                add_response(op, "401", "No key, or a key that is unknown or revoked.");
                add_response(
                    op,
                    "403",
                    "The key's role is below the one this needs; or, on a server without keys, a request from a page of another site.",
                );
                add_response(
                    op,
                    "429",
                    "A queue or a per-key limit is full; retry after Retry-After seconds.",
                );
                add_response(
                    op,
                    "503",
                    "An index is behind the store and being healed; retry after Retry-After seconds.",
                );
            }
        }
        if let Some(action) = r.action {
            op["x-clinsearch-audit"] = json!(action);
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        document(
            &Limits::default(),
            Served {
                dim: 384,
                vocab: 30522,
            },
        )
    }

    #[test]
    fn the_operations_are_exactly_the_route_tables() {
        let d = doc();
        let mut documented = vec![];
        for (path, item) in d["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        let mut routes: Vec<String> = routes::table()
            .iter()
            .filter(|r| !r.ui)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[test]
    fn each_operation_says_who_may_call_it_as_the_route_table_does() {
        let d = doc();
        for r in routes::table().iter().filter(|r| !r.ui) {
            let op = &d["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            match r.access.unwrap() {
                Access::Public => {
                    assert_eq!(op["security"], json!([]), "{} {}", r.method, r.path);
                    assert!(op.get("x-clinsearch-role").is_none());
                }
                Access::Needs(role) => {
                    assert_eq!(
                        op["x-clinsearch-role"],
                        role.as_str(),
                        "{} {}",
                        r.method,
                        r.path
                    );
                    assert!(
                        op["responses"]["401"].is_object() && op["responses"]["403"].is_object()
                    );
                }
            }
            assert_eq!(
                op.get("x-clinsearch-audit").and_then(Value::as_str),
                r.action,
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn search_parameters_come_from_the_parsers_table() {
        let d = doc();
        let names: Vec<&str> = d["paths"]["/api/search"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let table: Vec<&str> = spec::PARAMS.iter().map(|p| p.name).collect();
        assert_eq!(names, table);
        let body = &d["paths"]["/api/search"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(body["required"], json!(["q"]));
        assert_eq!(body["additionalProperties"], false);
        // The export's bound is the configured one; it takes no page.
        let export = d["paths"]["/api/search/export"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let max_rows = export.iter().find(|p| p["name"] == "max_rows").unwrap();
        assert_eq!(
            max_rows["schema"]["maximum"],
            Limits::default().max_export_rows
        );
        assert!(!export
            .iter()
            .any(|p| p["name"] == "k" || p["name"] == "offset"));
    }

    #[test]
    fn a_note_with_every_documented_field_is_read_into_those_fields() {
        let d = doc();
        let props = d["components"]["schemas"]["NoteInput"]["properties"]
            .as_object()
            .unwrap();
        let mut v = json!({});
        for k in props.keys() {
            v[k] = match k.as_str() {
                "metadata" => json!({"ward": "4b"}),
                "date" => json!("2020-01-02"),
                "chunks" => json!([{"char_start": 0, "char_end": 4, "vector": [0.5, 1.0]}]),
                // Not with chunks: read on its own below.
                "vector" => continue,
                _ => json!(format!("{k}-value")),
            };
        }
        let origin = crate::ingest::batch::request_origin(0);
        let rec = crate::ingest::source::record_from_json(&v, origin.clone()).unwrap();
        let chunk = &rec.chunks.as_ref().unwrap()[0];
        assert_eq!((chunk.char_start, chunk.char_end), (0, Some(4)));
        assert_eq!(chunk.vector.as_deref(), Some(&[0.5, 1.0][..]));
        assert!(props.contains_key("vector"));
        let one = json!({"text": "t", "vector": [0.25]});
        let rec1 = crate::ingest::source::record_from_json(&one, origin).unwrap();
        assert_eq!(rec1.chunks.unwrap()[0].vector.as_deref(), Some(&[0.25][..]));
        let n = rec.note;
        assert_eq!(
            (n.id.as_str(), n.text.as_str(), n.title.as_deref()),
            ("id-value", "text-value", Some("title-value"))
        );
        assert_eq!(n.patient_id.as_deref(), Some("patient_id-value"));
        assert_eq!(n.note_type.as_deref(), Some("note_type-value"));
        assert_eq!(n.specialty.as_deref(), Some("specialty-value"));
        assert_eq!(n.date.as_deref(), Some("2020-01-02"));
        assert_eq!(n.extra.len(), 1, "{:?}", n.extra);
        assert_eq!(n.extra["ward"], "4b");
    }

    #[test]
    fn the_adapt_jobs_bounds_are_the_ones_its_check_holds() {
        use crate::server::fill_mask::AdaptRequest;
        let d = doc();
        let props = &d["components"]["schemas"]["AdaptRequest"]["properties"];
        let int_bound = |f: &str, k: &str| props[f][k].as_u64().unwrap() as usize;
        for f in ["max_steps", "batch_size", "max_len"] {
            for (k, inside) in [("minimum", true), ("maximum", true)] {
                let b = int_bound(f, k);
                let outside = if k == "minimum" { b - 1 } else { b + 1 };
                for (value, ok) in [(b, inside), (outside, false)] {
                    let mut r = AdaptRequest::default();
                    match f {
                        "max_steps" => r.max_steps = value,
                        "batch_size" => r.batch_size = value,
                        _ => r.max_len = Some(value),
                    }
                    assert_eq!(r.check().is_ok(), ok, "{f} = {value}");
                }
            }
        }
        let max_lr = props["lr"]["maximum"].as_f64().unwrap();
        let mut r = AdaptRequest {
            lr: max_lr,
            ..Default::default()
        };
        assert!(r.check().is_ok());
        r.lr = max_lr * 1.01;
        assert!(r.check().is_err());
        r.lr = 0.0;
        assert!(r.check().is_err(), "lr's minimum is exclusive");
    }

    #[test]
    fn a_query_in_a_url_has_the_url_bound_everywhere() {
        let d = doc();
        for (path, method) in [
            ("/api/search", "get"),
            ("/api/facets", "get"),
            ("/api/search/export", "get"),
            ("/api/documents/{id}", "get"),
        ] {
            let q = d["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "q")
                .unwrap()
                .clone();
            assert_eq!(
                q["schema"]["maxLength"],
                spec::MAX_URL_QUERY_CHARS,
                "{path}"
            );
        }
    }

    #[test]
    fn it_is_openapi_3_1() {
        assert_eq!(doc()["openapi"], "3.1.0");
    }
}

// clinsearch browser UI: a small single-page app over the JSON API, no build step.
// Every piece of note text is put on the page with textContent (never innerHTML), so a note
// cannot inject markup. Routes live in the URL hash so every view can be bookmarked.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

/** Creates an element: el("a", {href: "#"}, "text", child...). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// ---------------------------------------------------------------------------------------
// API access

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const key = sessionStorage.getItem("clinsearch-key");
  if (key) headers["Authorization"] = "Bearer " + key;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const res = await fetch(path, { method: options.method || "GET", headers, body: options.body });
  let data = null;
  const type = res.headers.get("content-type") || "";
  if (type.includes("application/json")) data = await res.json();
  if (res.status === 401) {
    $("#key-button").hidden = false;
    askKey();
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const e = new ApiError(res.status, err.code || "error", err.message || res.statusText);
    e.data = data;
    throw e;
  }
  return data;
}

function askKey() {
  const d = $("#key-dialog");
  if (!d.open) d.showModal();
}

function errorBox(e) {
  return el("div", { class: "error", role: "alert" }, e instanceof ApiError ? `${e.message} (${e.code})` : String(e));
}

// ---------------------------------------------------------------------------------------
// Routing

function parseHash() {
  const h = location.hash.replace(/^#/, "") || "/search";
  const [path, query] = h.split("?");
  return { path, params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params ? "?" + new URLSearchParams(params).toString() : "";
  location.hash = "#" + path + q;
}

const routes = [
  [/^\/search$/, searchPage],
  [/^\/note\/(.+)$/, notePage],
  [/^\/ingest$/, ingestPage],
  [/^\/fill-mask$/, fillMaskPage],
  [/^\/eval$/, evalPage],
  [/^\/audit$/, auditPage],
];

let stats = null;
let me = null;

/** Who this browser is to the server; the Audit page is shown to admins only. */
async function refreshWhoami() {
  try {
    me = await api("/api/whoami");
  } catch (e) {
    me = null;
  }
  $("#nav-audit").hidden = !(me && me.role === "admin");
  return me;
}

async function refreshStats() {
  try {
    stats = await api("/api/stats");
    $("#status").textContent = `${stats.notes.toLocaleString()} notes · ${stats.chunks.toLocaleString()} chunks · ${shortModel(stats.model.id)}`;
  } catch (e) {
    $("#status").textContent = "";
  }
  return stats;
}

function shortModel(id) {
  const parts = String(id).split(/[\\/]/);
  return parts[parts.length - 1];
}

async function render() {
  const { path, params } = parseHash();
  const main = $("#main");
  for (const a of document.querySelectorAll("nav a")) {
    const on = path.startsWith("/" + a.dataset.nav);
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  for (const [re, page] of routes) {
    const m = path.match(re);
    if (m) {
      main.replaceChildren();
      try {
        await page(main, params, ...m.slice(1).map(decodeURIComponent));
      } catch (e) {
        main.append(errorBox(e));
      }
      return;
    }
  }
  main.replaceChildren(el("p", { class: "error" }, "No such page."));
}

// ---------------------------------------------------------------------------------------
// Search

const MODES = [
  ["bm25", "BM25", "keyword match (tantivy)"],
  ["semantic", "Semantic", "embedding similarity"],
  ["hybrid", "Hybrid", "fused ranking"],
];

function segments(list) {
  return (list || []).map((s) => (s.hl ? el("mark", {}, s.text) : document.createTextNode(s.text)));
}

/** Whether two snippets show the same words (the best passage then adds nothing). */
function sameText(a, b) {
  const norm = (segs) => (segs || []).map((s) => s.text).join("").replace(/\s+/g, " ").trim();
  return norm(a) === norm(b);
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

/** The parameters that say how a query was read, carried from a search to its notes. */
function queryParams(params) {
  const out = {};
  for (const k of ["q", "syntax", "expand", "expand_skip", "assertion"]) if (params.get(k)) out[k] = params.get(k);
  return out;
}

function hitCard(hit, mode, counts, qp) {
  const n = counts.get(hit.id) || 1;
  const cls = "hit" + (n > 1 ? ` in-${n}` : "");
  const link = "#/note/" + encodeURIComponent(hit.id) + (qp.q ? "?" + new URLSearchParams(qp) : "");
  const meta = [hit.note_type, hit.specialty, hit.date, hit.patient_id && "patient " + hit.patient_id].filter(Boolean);
  const scores = el("div", { class: "scores" },
    el("span", {}, "BM25 ", el("b", {}, hit.bm25.rank ? "#" + hit.bm25.rank : "–"), " ", fmt(hit.bm25.score, 2)),
    el("span", {}, "semantic ", el("b", {}, hit.semantic.rank ? "#" + hit.semantic.rank : "–"), " ", fmt(hit.semantic.score)),
    hit.fused !== undefined ? el("span", { class: "fused", title: hit.fusion ? `BM25 adds ${fmt(hit.fusion.bm25, 4)}, semantic adds ${fmt(hit.fusion.semantic, 4)}` : "" }, "fused ", el("b", {}, fmt(hit.fused, 4))) : null,
  );
  const card = el("li", { class: cls, "data-id": hit.id },
    el("div", { class: "head" },
      el("span", { class: "rank" }, hit.rank + "."),
      el("a", { class: "title", href: link }, hit.title || hit.id),
      n > 1 ? el("span", { class: `badge in-${n}`, title: `found by ${n} of the 3 rankings` }, n === 3 ? "in all 3" : "in 2") : null,
      hit.assertion ? el("span", { class: `badge assertion ${hit.assertion}`, title: `the snippet's matches are ${hit.assertion} mentions` }, hit.assertion) : null,
    ),
    meta.length ? el("div", { class: "meta" }, meta.map((m) => el("span", { class: "badge" }, m))) : null,
    scores,
    hit.group && hit.group.count > 1 ? el("div", { class: "meta" }, `${hit.group.count} matching notes for this patient`) : null,
    hit.entities && hit.entities.length ? el("div", { class: "entities" }, hit.entities.map((e) =>
      el("button", { type: "button", class: `chip ent-${e.type}${e.affirmed ? "" : " unaffirmed"}`, title: `${e.type}: ${e.value}${e.affirmed ? "" : " (not affirmed: negated, possible, hypothetical or family)"} — click to filter on it`, "data-entity": `${e.type}:${e.value}`, onclick: () => addEntityFilter(`${e.type}:${e.value}`) }, e.value))) : null,
    el("p", { class: "snippet bm25" }, segments(hit.snippet)),
    mode !== "bm25" && hit.window && !sameText(hit.window.segments, hit.snippet) ? el("p", { class: "snippet window", title: `characters ${hit.window.char_start}–${hit.window.char_end}` }, segments(hit.window.segments), hit.window.truncated ? " …" : "") : null,
  );
  // Hovering or focusing a note outlines it in the other columns.
  const link_on = (on) => {
    for (const other of document.querySelectorAll(`.hit[data-id="${CSS.escape(hit.id)}"]`)) other.classList.toggle("linked", on);
  };
  card.addEventListener("mouseenter", () => link_on(true));
  card.addEventListener("mouseleave", () => link_on(false));
  card.addEventListener("focusin", () => link_on(true));
  card.addEventListener("focusout", () => link_on(false));
  return card;
}

function column(mode, label, hint, ranking, counts, q, took) {
  const hits = ranking ? ranking.hits : [];
  return el("section", { class: "column", "data-mode": mode, "aria-label": label + " results" },
    el("h2", {}, el("span", {}, label, " ", el("small", {}, hint)), took ? el("small", {}, took) : null),
    hits.length
      ? el("ol", { class: "hits" }, hits.map((h) => hitCard(h, mode, counts, q)))
      : el("p", { class: "empty" }, "No matching notes."),
  );
}

async function searchPage(main, params) {
  const q = params.get("q") || "";
  const view = params.get("view") || "compare";
  const f = (name) => params.get(name) || "";
  const form = el("form", { id: "search-form", class: "panel", role: "search" },
    el("div", { class: "searchbar" },
      el("input", { type: "search", id: "q", name: "q", value: q, placeholder: "Search notes, e.g. shortness of breath after exertion", "aria-label": "Query", autocomplete: "off" }),
      el("button", { type: "submit", class: "primary" }, "Search"),
    ),
    el("div", { class: "filters" },
      el("div", { class: "seg", role: "group", "aria-label": "View" },
        el("button", { type: "button", "data-view": "compare", "aria-pressed": String(view === "compare") }, "Side by side"),
        el("button", { type: "button", "data-view": "fused", "aria-pressed": String(view === "fused") }, "Fused list"),
      ),
      el("label", {}, "Note type", el("input", { name: "note_type", value: f("note_type"), list: "facet-note_type", autocomplete: "off" })),
      el("label", {}, "Specialty", el("input", { name: "specialty", value: f("specialty"), list: "facet-specialty", autocomplete: "off" })),
      el("label", {}, "Patient", el("input", { name: "patient_id", value: f("patient_id") })),
      el("label", {}, "From", el("input", { type: "date", name: "date_from", value: f("date_from") })),
      el("label", {}, "To", el("input", { type: "date", name: "date_to", value: f("date_to") })),
      el("label", {}, "Fusion", el("select", { name: "fusion" },
        el("option", { value: "", selected: !f("fusion") }, "Default: reciprocal rank, BM25 0.7 · semantic 0.3"),
        el("option", { value: "rrf", selected: f("fusion") === "rrf" }, "Reciprocal rank, equal weights (k=60)"),
        el("option", { value: "weighted", selected: f("fusion") === "weighted" }, "Weighted scores, min-max (α=0.5)"),
        el("option", { value: "dbsf", selected: f("fusion") === "dbsf" }, "Distribution-based, mean ± 3σ (α=0.5)"),
        el("option", { value: "zscore", selected: f("fusion") === "zscore" }, "Z-scores (α=0.5)"),
      )),
      el("label", {}, "Group", el("select", { name: "group_by" },
        el("option", { value: "note" }, "by note"),
        el("option", { value: "patient", selected: f("group_by") === "patient" }, "by patient"),
      )),
      el("label", {}, "Results", el("select", { name: "k" },
        ["10", "20", "50"].map((k) => el("option", { value: k, selected: (f("k") || "10") === k }, k)),
      )),
      el("label", { class: "check", title: "\"phrases\", +required, -excluded, title:word, text:word" },
        el("input", { type: "checkbox", id: "syntax-advanced", name: "syntax", value: "advanced", checked: f("syntax") === "advanced" }), "Advanced syntax"),
      el("label", { class: "check", title: "Also search abbreviations' expansions (SOB: shortness of breath) and long forms' abbreviations" },
        el("input", { type: "checkbox", id: "expand", checked: f("expand") !== "false" }), "Expand abbreviations"),
      el("label", { class: "check", title: "Leave out negated, possible, hypothetical and family mentions (\"denies chest pain\", \"mother had breast cancer\")" },
        el("input", { type: "checkbox", id: "affirmed", name: "assertion", value: "affirmed", checked: f("assertion") === "affirmed" }), "Affirmed mentions only"),
    ),
  );
  const entities = params.getAll("entity");
  const entityBar = entities.length ? el("div", { class: "filters", id: "entity-filters" }, "Notes mentioning: ", entities.map((x) =>
    el("span", { class: "chip ent-" + x.split(":")[0], "data-entity": x }, x, " ",
      el("button", { type: "button", class: "remove", "aria-label": `Remove ${x}`, title: "Remove this filter", onclick: () => removeEntityFilter(x) }, "×")))) : null;
  if (entityBar) form.append(entityBar);
  const out = el("div", { id: "results", "aria-live": "polite" });
  const facetBox = el("aside", { id: "entity-facets", class: "panel", hidden: true });
  main.append(form, facetBox, out);
  // The filters suggest the values present in the data (free text still works).
  api("/api/facets").then((facets) => {
    for (const name of ["note_type", "specialty"]) {
      form.append(el("datalist", { id: "facet-" + name }, facets[name].map((x) => el("option", { value: x.value }, `${x.count} notes`))));
    }
  }).catch(() => {});
  const submit = (viewName, skip) => {
    const data = new FormData(form);
    const p = { view: viewName || view };
    for (const [k, v] of data.entries()) if (String(v).trim()) p[k] = String(v).trim();
    if (!$("#expand").checked) p.expand = "false";
    // Expansions the user removed stay removed while the query is the same.
    const skipped = (p.q === q ? (f("expand_skip") ? f("expand_skip").split(",") : []) : []).concat(skip || []);
    if (skipped.length && p.expand !== "false") p.expand_skip = skipped.join(",");
    if (p.k === "10") delete p.k;
    if (!p.fusion) delete p.fusion;
    if (p.group_by === "note") delete p.group_by;
    if (p.view === "compare") delete p.view;
    const qs = new URLSearchParams(p);
    for (const x of entities) qs.append("entity", x);
    location.hash = "#/search?" + qs;
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  for (const b of form.querySelectorAll("[data-view]")) b.addEventListener("click", () => submit(b.dataset.view));
  if (!q.trim()) {
    $("#q").focus();
    out.append(el("p", { class: "summary" }, "Type a query. BM25, semantic and hybrid rankings appear side by side; notes found by more than one ranking are marked."));
    return;
  }
  const body = { q, mode: view === "fused" ? "hybrid" : "compare" };
  for (const k of ["note_type", "specialty", "patient_id", "date_from", "date_to", "fusion", "group_by", "k", "syntax", "expand", "expand_skip", "assertion"]) if (f(k)) body[k] = f(k);
  // The JSON body is typed (the API description's types): numbers and booleans as such.
  if (body.k !== undefined) body.k = Number(body.k);
  if (body.expand !== undefined) body.expand = body.expand !== "false";
  if (entities.length) body.entity = entities;
  entityFacets(facetBox, body);
  const qp = queryParams(params);
  out.append(el("p", { class: "summary" }, "Searching…"));
  let res;
  try {
    res = await api("/api/search", { method: "POST", json: body });
  } catch (e) {
    out.replaceChildren(errorBox(e));
    return;
  }
  const counts = new Map();
  if (res.mode === "compare") {
    for (const r of res.rankings) for (const h of r.hits) counts.set(h.id, (counts.get(h.id) || 0) + 1);
  }
  // What the query also searched, each removable with a click; and how it was read.
  const expansions = res.expansions.length
    ? el("p", { class: "expansions", id: "expansions" }, "Also searched: ", res.expansions.map((x) =>
      el("span", { class: "expansion", "data-from": x.from }, el("b", {}, x.from), " → ", x.to.join(", "), " ",
        el("button", { type: "button", class: "remove", "aria-label": `Do not expand ${x.from}`, title: "Do not expand", onclick: () => submit(undefined, [x.from.toLowerCase()]) }, "×"))))
    : null;
  const notices = res.notices.map((n) => el("p", { class: "notice" }, n));
  const t = res.timings;
  const summary = el("p", { class: "summary", id: "summary" },
    `${res.took_ms.toFixed(1)} ms (embedding ${t.embed_ms.toFixed(1)}, BM25 ${t.bm25_ms.toFixed(1)}, vectors ${t.semantic_ms.toFixed(1)}, fusion ${res.fusion.method}${res.fusion.k !== undefined ? " k=" + res.fusion.k : ""}${res.fusion.alpha !== undefined ? " α=" + res.fusion.alpha : ""})`);
  summary.append(" ", exportButtons(body, res.mode));
  if (res.mode === "compare") {
    const legend = el("div", { class: "legend" },
      el("span", { class: "badge in-3" }, "in all 3"), el("span", { class: "badge in-2" }, "in 2"), "hover a note to find it in the other columns");
    const cols = el("div", { class: "columns" },
      MODES.map(([m, label, hint]) => column(m, label, hint, res.rankings.find((r) => r.mode === m), counts, qp)));
    out.replaceChildren(...[expansions, ...notices].filter(Boolean), el("div", { class: "summary-row" }, summary, legend), cols);
  } else {
    out.replaceChildren(...[expansions, ...notices].filter(Boolean), summary, el("div", { class: "columns single" }, column("hybrid", "Hybrid", "fused ranking with each retriever's rank and score", res.rankings[0], counts, qp)));
  }
}

/** Export buttons: every hit of this search (not just the page) as a CSV or JSONL file,
 * one row per note or per patient as the search groups; side by side exports the hybrid
 * ranking. The server records the export in the access audit. */
function exportButtons(body, mode) {
  const status = el("span", { class: "export-status", id: "export-status", "aria-live": "polite" });
  const go = async (format) => {
    const req = Object.assign({}, body, { format, mode: mode === "compare" ? "hybrid" : mode });
    delete req.k;
    status.textContent = "Exporting…";
    try {
      const headers = { "Content-Type": "application/json" };
      const key = sessionStorage.getItem("clinsearch-key");
      if (key) headers["Authorization"] = "Bearer " + key;
      const r = await fetch("/api/search/export", { method: "POST", headers, body: JSON.stringify(req) });
      if (!r.ok) {
        const data = await r.json().catch(() => ({}));
        throw new ApiError(r.status, (data.error || {}).code || "error", (data.error || {}).message || r.statusText);
      }
      const blob = await r.blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: `cohort-${req.group_by === "patient" ? "patients" : "notes"}.${format}` });
      document.body.append(a);
      a.click();
      a.remove();
      status.textContent = `${r.headers.get("x-export-rows")} rows exported`;
    } catch (e) {
      status.replaceChildren(errorBox(e));
    }
  };
  return el("span", { class: "export" },
    el("button", { type: "button", id: "export-csv", onclick: () => go("csv") }, "Export CSV"), " ",
    el("button", { type: "button", id: "export-jsonl", onclick: () => go("jsonl") }, "Export JSONL"), " ", status);
}

/** Adds (or removes) an `entity=type:value` filter to the current search. */
function addEntityFilter(key) {
  const p = new URLSearchParams(location.hash.replace(/^#\/search\??/, ""));
  if (!p.getAll("entity").includes(key)) p.append("entity", key);
  location.hash = "#/search?" + p;
}

function removeEntityFilter(key) {
  const p = new URLSearchParams(location.hash.replace(/^#\/search\??/, ""));
  const keep = p.getAll("entity").filter((x) => x !== key);
  p.delete("entity");
  for (const x of keep) p.append("entity", x);
  location.hash = "#/search?" + p;
}

/** The most frequent entities of each type among the query's hits, each a filter. */
async function entityFacets(box, body) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(body)) {
    if (k === "mode") continue;
    for (const x of [].concat(v)) qs.append(k, x);
  }
  qs.set("mode", "hybrid");
  let f;
  try {
    f = await api("/api/facets?" + qs);
  } catch (e) {
    return;
  }
  const types = Object.keys(f.entities || {});
  if (!types.length) return;
  box.replaceChildren(el("h2", {}, "Entities in the results"),
    ...types.map((t) => el("section", { class: "facet", "data-type": t },
      el("h3", {}, t),
      el("ul", {}, f.entities[t].map((x) => el("li", {},
        el("button", { type: "button", class: "chip ent-" + t, "data-entity": `${t}:${x.value}`, title: `Only notes mentioning ${x.text}`, onclick: () => addEntityFilter(`${t}:${x.value}`) }, x.text),
        el("small", {}, ` ${x.notes} notes · ${x.patients} patients`)))))));
  box.hidden = false;
}

// ---------------------------------------------------------------------------------------
// Note page

/** Renders text with character spans: `best` (a chunk) as a block, `terms` as marks, and
 * the scopes of negated and family mentions muted with their triggers in bold. */
function markedText(text, best, terms, assertions, entities) {
  const chars = Array.from(text);
  const cuts = new Set([0, chars.length]);
  const ents = entities || [];
  for (const x of ents) { cuts.add(x.start); cuts.add(x.end); }
  if (best) { cuts.add(best[0]); cuts.add(best[1]); }
  for (const [a, b] of terms) { cuts.add(a); cuts.add(b); }
  const scopes = (assertions || []).filter((x) => x.status === "negated" || x.status === "family");
  for (const x of scopes) { cuts.add(x.start); cuts.add(x.end); cuts.add(x.trigger.start); cuts.add(x.trigger.end); }
  const points = [...cuts].filter((x) => x >= 0 && x <= chars.length).sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const [a, b] = [points[i], points[i + 1]];
    const piece = chars.slice(a, b).join("");
    const inTerm = terms.some(([s, e]) => a >= s && b <= e);
    const inBest = best && a >= best[0] && b <= best[1];
    let node = inTerm ? el("mark", {}, piece) : document.createTextNode(piece);
    const scope = scopes.find((x) => a >= x.start && b <= x.end);
    const trigger = scopes.find((x) => a >= x.trigger.start && b <= x.trigger.end);
    if (trigger) node = el("b", { class: "trigger " + trigger.status, title: `${trigger.status} trigger` }, node);
    const ent = ents.find((x) => a >= x.start && b <= x.end);
    if (ent) node = el("span", { class: `entity ent-${ent.type.toLowerCase()}${ent.status ? " unaffirmed " + ent.status : ""}`, title: `${ent.type}: ${ent.value}${ent.status ? " (" + ent.status + ")" : ""} · score ${ent.score.toFixed(2)}` }, node);
    if (scope) node = el("span", { class: "scope " + scope.status, title: `${scope.status} (trigger: ${scope.trigger.text})` }, node);
    if (inBest) node = el("span", { class: "chunk-best" }, node);
    out.push(node);
  }
  return out;
}

async function notePage(main, params, id) {
  const q = params.get("q") || "";
  const qp = queryParams(params);
  const data = await api("/api/documents/" + encodeURIComponent(id) + (q ? "?" + new URLSearchParams(qp) : ""));
  const n = data.note;
  const bestChunk = data.chunks.find((c) => c.index === data.best_chunk);
  const best = bestChunk ? [bestChunk.char_start, bestChunk.char_end] : null;
  const textBox = el("div", { class: "note-text", id: "note-text" }, markedText(n.text, best, data.terms || [], data.assertions, data.entities));
  const kv = el("dl", { class: "kv" });
  for (const [k, v] of [["id", n.id], ["patient", n.patient_id], ["type", n.note_type], ["specialty", n.specialty], ["date", n.date]].concat(Object.entries(n.extra || {}))) {
    if (v) kv.append(el("dt", {}, k), el("dd", {}, v));
  }
  const chunks = el("div", { class: "chunks" }, data.chunks.map((c) =>
    el("button", { type: "button", class: c.index === data.best_chunk ? "best" : "", onclick: () => {
      textBox.replaceChildren(...markedText(n.text, [c.char_start, c.char_end], data.terms || [], data.assertions, data.entities));
      const mark = textBox.querySelector(".chunk-best");
      if (mark) mark.scrollIntoView({ block: "center" });
    } }, `Chunk ${c.index + 1}: chars ${c.char_start}–${c.char_end}`, c.score !== null && c.score !== undefined ? ` · cos ${c.score.toFixed(3)}` : "")));
  const others = data.same_patient.length
    ? el("ul", { id: "same-patient" }, data.same_patient.map((o) =>
      el("li", {}, el("a", { href: "#/note/" + encodeURIComponent(o.id) + (q ? "?" + new URLSearchParams(qp) : "") }, o.title || o.id), el("div", { class: "meta" }, [o.date, o.note_type].filter(Boolean).join(" · ")))))
    : el("p", { class: "empty" }, n.patient_id ? "No other notes for this patient." : "No patient id on this note.");
  main.append(
    el("p", {}, el("a", { href: q ? "#/search?" + new URLSearchParams(qp) : "#/search" }, "← Back to results")),
    el("div", { class: "note-layout" },
      el("article", { class: "panel" },
        el("h1", { id: "note-title" }, n.title || n.id),
        kv,
        q ? el("p", { class: "notice" }, "Marked: terms matching ", el("b", {}, q), best ? " and, shaded, the passage closest in meaning." : ".") : null,
        textBox),
      el("aside", { class: "side panel" },
        el("h2", {}, "Other notes of this patient"), others,
        el("h2", {}, "Embedded chunks"), chunks,
        data.windows_capped ? el("p", { class: "notice" }, "This note was longer than the window cap; its tail is searchable by BM25 only.") : null,
      ),
    ),
  );
  $("#main").focus();
  if (best) { const m = textBox.querySelector(".chunk-best"); if (m) m.scrollIntoView({ block: "center" }); }
}

// ---------------------------------------------------------------------------------------
// Ingest page

function resultsTable(results) {
  return el("table", { id: "ingest-results" },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "Note"), el("th", {}, "Status"), el("th", {}, "Detail"))),
    el("tbody", {}, results.map((r) => el("tr", {},
      el("td", { class: "num" }, r.index + 1),
      el("td", {}, r.id ? el("a", { href: "#/note/" + encodeURIComponent(r.id) }, r.id) : "–"),
      el("td", { class: r.status === "stored" ? "ok" : "bad" }, r.status),
      el("td", {}, r.error || (r.chunks !== undefined ? `${r.chunks} chunk${r.chunks === 1 ? "" : "s"}` : ""))))));
}

async function ingestPage(main) {
  const sample = JSON.stringify({ id: "note-123", title: "Progress note", patient_id: "P001", note_type: "progress note", specialty: "cardiology", date: "2024-05-01", text: "Patient reports chest pain on exertion..." });
  const paste = el("textarea", { id: "ingest-text", "aria-label": "Notes as JSON", placeholder: sample + "\n(one JSON object per line, or a JSON array)" });
  const pasteOut = el("div", { id: "paste-out", "aria-live": "polite" });
  const pasteBtn = el("button", { type: "submit", class: "primary", id: "ingest-submit" }, "Store notes");
  const pasteForm = el("form", { class: "panel" },
    el("h2", {}, "Paste notes"),
    el("p", { class: "summary" }, "JSON: one note, an array of notes, or one note per line. Fields: id, text (required), title, patient_id, note_type, specialty, date (YYYY-MM-DD). A note with an existing id replaces it."),
    paste, el("div", { class: "actions" }, pasteBtn), pasteOut);
  pasteForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    pasteBtn.disabled = true;
    pasteOut.replaceChildren(el("p", { class: "summary" }, "Embedding and storing…"));
    try {
      const res = await api("/api/documents", { method: "POST", body: paste.value, headers: { "Content-Type": "application/json" } });
      pasteOut.replaceChildren(el("p", { class: "ok", id: "ingest-summary" }, `Stored ${res.stored} note${res.stored === 1 ? "" : "s"}${res.rejected ? `, rejected ${res.rejected}` : ""}.`), resultsTable(res.results));
      refreshStats();
    } catch (err) {
      pasteOut.replaceChildren(errorBox(err));
      if (err.data && err.data.results) pasteOut.append(resultsTable(err.data.results));
    } finally {
      pasteBtn.disabled = false;
    }
  });

  const file = el("input", { type: "file", id: "ingest-file", accept: ".jsonl,.ndjson,.json,.csv,.txt", "aria-label": "File to ingest" });
  const format = el("select", { id: "ingest-format" },
    el("option", { value: "" }, "from the file name"), el("option", { value: "jsonl" }, "JSONL"), el("option", { value: "csv" }, "CSV"), el("option", { value: "txt" }, "plain text (one note)"));
  const textCol = el("input", { id: "ingest-text-col", placeholder: "text" });
  const uploadOut = el("div", { id: "upload-out", "aria-live": "polite" });
  const uploadBtn = el("button", { type: "submit", class: "primary" }, "Upload and ingest");
  const uploadForm = el("form", { class: "panel" },
    el("h2", {}, "Upload a file"),
    el("p", { class: "summary" }, "JSONL, CSV (a header row; the text column is \u201ctext\u201d unless you say otherwise) or a .txt file. Large files run in the background; bad records are skipped and listed with their line."),
    el("div", { class: "filters" }, el("label", {}, "File", file), el("label", {}, "Format", format), el("label", {}, "CSV text column", textCol)),
    el("div", { class: "actions" }, uploadBtn), uploadOut);
  uploadForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) { uploadOut.replaceChildren(errorBox("Choose a file first.")); return; }
    uploadBtn.disabled = true;
    const p = { filename: f.name };
    if (format.value) p.format = format.value;
    if (textCol.value.trim()) p.text_col = textCol.value.trim();
    try {
      // A declared file type: the server refuses bodies a cross-site form could send.
      const type = f.type || (f.name.toLowerCase().endsWith(".csv") ? "text/csv" : "application/octet-stream");
      let job = await api("/api/ingest?" + new URLSearchParams(p), { method: "POST", body: f, headers: { "Content-Type": type } });
      const bar = el("progress", { max: job.total || 1, value: 0, "aria-label": "Ingest progress" });
      const line = el("p", { class: "summary", id: "upload-progress" });
      uploadOut.replaceChildren(bar, line);
      while (job.state === "running") {
        bar.max = job.total || 1; bar.value = job.stored;
        line.textContent = `${job.stored}${job.total ? " of " + job.total : ""} notes stored · ${job.seconds.toFixed(1)} s`;
        await new Promise((r) => setTimeout(r, 500));
        job = await api("/api/ingest/" + job.id);
      }
      bar.max = 1; bar.value = 1;
      line.textContent = job.state === "done"
        ? `Done: ${job.stored} notes (${job.chunks} chunks) in ${job.seconds.toFixed(1)} s; ${job.errors.length} skipped.`
        : `Failed after ${job.stored} notes: ${job.failure}`;
      line.className = job.state === "done" ? "ok" : "bad";
      if (job.errors.length) uploadOut.append(el("h2", {}, "Skipped records"), el("ul", { id: "upload-errors" }, job.errors.map((x) => el("li", { class: "bad" }, x))));
      refreshStats();
    } catch (err) {
      uploadOut.replaceChildren(errorBox(err));
    } finally {
      uploadBtn.disabled = false;
    }
  });
  main.append(el("h1", {}, "Ingest notes"), el("div", { class: "grid2" }, pasteForm, uploadForm));
}

// ---------------------------------------------------------------------------------------
// Fill-mask playground

async function fillMaskPage(main) {
  main.append(el("h1", {}, "Fill-mask playground"));
  let m;
  try {
    m = await api("/api/fill-mask/model");
  } catch (err) {
    main.append(errorBox(err));
    return;
  }
  if (!m.model) {
    main.append(el("p", { class: "notice", id: "fill-mask-unavailable" },
      `The embedding model (${shortModel(m.embedding_model)}) has no masked-language-model head, so it cannot fill masks. Serve one with --mlm-model DIR (a BertForMaskedLM such as emilyalsentzer/Bio_ClinicalBERT, or one made by clinsearch finetune mlm)${m.can_adapt ? ", or adapt one on the notes stored here" : ""}.`));
    if (m.can_adapt) main.append(adaptPanel(m, main));
    return;
  }
  const sourceText = { configured: "served with --mlm-model", adapted: "adapted on this server's notes", embedding: "the embedding model" }[m.source] || m.source;
  main.append(el("p", { class: "summary", id: "fill-mask-model" }, "Answered by ", el("strong", {}, shortModel(m.model)), ` (${sourceText}).`));
  const text = el("textarea", { id: "mask-text", "aria-label": "Text with [MASK]" }, "The patient was given [MASK] for the chest pain.");
  const topk = el("select", { id: "mask-topk" }, ["5", "10", "20"].map((k) => el("option", { value: k }, k)));
  const out = el("div", { id: "mask-out", "aria-live": "polite" });
  const form = el("form", { class: "panel" }, el("p", { class: "summary" }, "Write [MASK] where a word is missing; the model proposes candidates for each mask."), text,
    el("div", { class: "actions" }, el("label", {}, "Candidates", topk), el("button", { type: "submit", class: "primary" }, "Predict")), out);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const res = await api("/api/fill-mask", { method: "POST", json: { text: text.value, top_k: Number(topk.value) } });
      out.replaceChildren(...res.masks.map((m) => el("div", {},
        el("h2", {}, `Mask ${m.mask_index + 1}`),
        el("table", {}, el("tbody", {}, m.candidates.map((c) => el("tr", {}, el("td", {}, c.token), el("td", { class: "num" }, (c.score * 100).toFixed(1) + "%"))))))));
    } catch (err) {
      out.replaceChildren(errorBox(err));
    }
  });
  main.append(form);
}

/** Offers an adapt job (masked-language-model training on the stored notes) and follows it. */
function adaptPanel(m, main) {
  const steps = el("input", { id: "adapt-steps", type: "number", min: 1, max: 5000, value: m.defaults.max_steps, "aria-label": "Training steps" });
  const button = el("button", { type: "submit", class: "primary", id: "adapt-start" }, "Adapt a model");
  const out = el("div", { id: "adapt-out", "aria-live": "polite" });
  const cli = el("pre", { id: "adapt-cli" }, m.cli);
  const form = el("form", { class: "panel", id: "adapt-form" },
    el("h2", {}, "Adapt a fill-mask model on the stored notes"),
    el("p", { class: "summary" }, `Continues masked-language-model training of ${shortModel(m.embedding_model)} (with a new MLM head) on the ${m.notes} notes stored here, holding out a tenth of them to measure masked-token accuracy. It runs in the background; when it ends, its model answers this page. The model stays in the data directory: it was trained on patient notes.`),
    el("div", { class: "actions" }, el("label", {}, "Steps", steps), button),
    el("p", { class: "summary" }, "The same run from the command line (with the server stopped):"), cli, out);
  const follow = async (job) => {
    button.disabled = true;
    cli.textContent = job.cli;
    const bar = el("progress", { max: job.total_steps || 1, value: 0, "aria-label": "Adapt progress" });
    const line = el("p", { class: "summary", id: "adapt-progress" });
    out.replaceChildren(bar, line);
    while (job.state === "running") {
      bar.max = job.total_steps || 1;
      bar.value = job.step;
      const acc = job.accuracy != null ? `; held-out masked-token accuracy ${(job.accuracy * 100).toFixed(1)}%` : "";
      line.textContent = `step ${job.step} of ${job.total_steps} (${Math.round(job.seconds)} s)${acc}`;
      await new Promise((res) => setTimeout(res, 1000));
      job = await api("/api/fill-mask/adapt/" + job.id);
    }
    button.disabled = false;
    if (job.state !== "done") {
      out.replaceChildren(errorBox(new Error(job.failure || "the adapt job failed")));
      return;
    }
    main.replaceChildren();
    await fillMaskPage(main);
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await follow(await api("/api/fill-mask/adapt", { method: "POST", json: { max_steps: Number(steps.value) } }));
    } catch (err) {
      button.disabled = false;
      out.replaceChildren(errorBox(err));
    }
  });
  if (m.adapt && m.adapt.state === "running") follow(m.adapt);
  else if (m.adapt && m.adapt.state === "failed") out.replaceChildren(errorBox(new Error("the last adapt job failed: " + m.adapt.failure)));
  return form;
}

// ---------------------------------------------------------------------------------------
// Evaluation page

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

const MODE_LABEL = { bm25: "BM25", semantic: "Semantic", hybrid: "Hybrid" };

/** Recall@k of each mode as lines on one plot (k evenly spaced). */
function recallChart(r) {
  const W = 560, H = 300, L = 48, R = 16, T = 16, B = 40;
  const xs = (i) => L + (r.ks.length === 1 ? 0 : (i * (W - L - R)) / (r.ks.length - 1));
  const ys = (v) => T + (1 - v) * (H - T - B);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, id: "recall-chart", role: "img", "aria-label": "Recall at k for each mode" });
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    g.append(svg("line", { x1: L, x2: W - R, y1: ys(v), y2: ys(v), class: "grid" }),
      svg("text", { x: L - 8, y: ys(v) + 4, class: "tick", "text-anchor": "end" }, v.toFixed(2)));
  }
  r.ks.forEach((k, i) => g.append(svg("text", { x: xs(i), y: H - B + 18, class: "tick", "text-anchor": "middle" }, "k=" + k)));
  g.append(svg("text", { x: (L + W - R) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, "cut-off k"));
  for (const s of r.summaries) {
    const pts = r.ks.map((k, i) => [xs(i), ys(s.recall[k])]);
    g.append(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "line line-" + s.mode, "data-mode": s.mode }));
    r.ks.forEach((k, i) => g.append(svg("circle", { cx: pts[i][0], cy: pts[i][1], r: 4, class: "dot line-" + s.mode },
      svg("title", {}, `${MODE_LABEL[s.mode]} recall@${k} = ${s.recall[k].toFixed(4)}`))));
  }
  const legend = el("div", { class: "legend chart-legend" }, r.summaries.map((s) => el("span", { class: "key key-" + s.mode }, MODE_LABEL[s.mode])));
  return el("figure", { class: "panel chart" }, el("figcaption", {}, "Recall@k"), g, legend);
}

function metricsTable(r) {
  const cols = r.ks.map((k) => ["R@" + k, (s) => s.recall[k]]).concat([["nDCG@10", (s) => s.ndcg_10], ["MRR@10", (s) => s.mrr_10], ["MAP@100", (s) => s.map_100]]);
  const best = cols.map(([, f]) => Math.max(...r.summaries.map(f)));
  return el("table", { id: "eval-metrics" },
    el("thead", {}, el("tr", {}, el("th", {}, "mode"), cols.map(([h]) => el("th", { class: "num" }, h)))),
    el("tbody", {}, r.summaries.map((s) => el("tr", {}, el("td", {}, MODE_LABEL[s.mode]),
      cols.map(([, f], i) => el("td", { class: "num" + (f(s) === best[i] && r.summaries.length > 1 ? " best" : "") }, f(s).toFixed(4)))))));
}

function pairsTable(r) {
  if (!r.pairs.length) return null;
  return el("div", {},
    el("table", { id: "eval-pairs" },
      el("thead", {}, el("tr", {}, ["A", "B", "A wins", "B wins", "ties", "mean ΔnDCG@10", "p"].map((h, i) => el("th", { class: i > 1 ? "num" : "" }, h)))),
      el("tbody", {}, r.pairs.map((p) => el("tr", {},
        el("td", {}, MODE_LABEL[p.a]), el("td", {}, MODE_LABEL[p.b]),
        el("td", { class: "num" }, p.a_wins), el("td", { class: "num" }, p.b_wins), el("td", { class: "num" }, p.ties),
        el("td", { class: "num" }, (p.mean_diff >= 0 ? "+" : "") + p.mean_diff.toFixed(4)),
        el("td", { class: "num" + (p.p_value < 0.05 ? " best" : "") }, p.p_value.toFixed(4)))))),
    el("p", { class: "summary" }, `Per-query nDCG@10; ${r.test}. Bold p: significant at 0.05.`));
}

function queryDetail(r, q) {
  const modes = r.summaries.map((s) => s.mode);
  const rel = new Map(q.relevant);
  const title = (d) => (r.titles && r.titles[d]) || d;
  const cols = modes.map((m) => {
    const qm = q.modes[m];
    const top = qm.top.slice(0, 10);
    const shown = new Set(top.map(([d]) => d));
    const missing = q.relevant.filter(([d]) => !shown.has(d));
    return el("section", { class: "column", "data-mode": m, "aria-label": MODE_LABEL[m] },
      el("h2", {}, el("span", {}, MODE_LABEL[m]), el("small", {}, `nDCG@10 ${qm.ndcg_10.toFixed(3)}`)),
      el("ol", { class: "hits compact" }, top.map(([d, sc], i) => el("li", { class: "hit" + (rel.has(d) ? " relevant" : "") },
        el("div", { class: "head" }, el("span", { class: "rank" }, i + 1 + "."),
          el("a", { class: "title", href: "#/note/" + encodeURIComponent(d) + "?" + new URLSearchParams({ q: q.text }) }, title(d)),
          rel.has(d) ? el("span", { class: "badge in-3", title: "judged relevant" }, "✓ relevant (grade " + rel.get(d) + ")") : null),
        el("div", { class: "scores" }, "score " + Number(sc).toFixed(4))))),
      el("h3", {}, "Missing relevant notes"),
      missing.length
        ? el("ul", { class: "missing" }, missing.map(([d, gr]) => el("li", {},
          el("a", { href: "#/note/" + encodeURIComponent(d) + "?" + new URLSearchParams({ q: q.text }) }, title(d)),
          ` (grade ${gr}; ${qm.relevant_ranks[d] ? "rank " + qm.relevant_ranks[d] : "not in the top 100"})`)))
        : el("p", { class: "empty" }, "None: every relevant note is in the top 10."));
  });
  return el("div", { id: "eval-detail", class: "panel" },
    el("h2", {}, `Query ${q.id}: `, el("q", {}, q.text)),
    el("p", { class: "summary" }, `${q.relevant.length} judged relevant note${q.relevant.length === 1 ? "" : "s"}. Relevant notes are marked in each ranking.`),
    el("div", { class: "columns" }, cols));
}

function perQueryTable(r, detailBox) {
  const modes = r.summaries.map((s) => s.mode);
  const rows = r.per_query.map((q) => {
    const scores = modes.map((m) => q.modes[m].ndcg_10);
    const top = Math.max(...scores);
    const winners = modes.filter((m, i) => scores[i] === top);
    const open = () => {
      detailBox.replaceChildren(queryDetail(r, q));
      detailBox.scrollIntoView({ block: "start" });
    };
    return el("tr", { tabindex: "0", class: "clickable", "data-query": q.id, onclick: open, onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } } },
      el("td", {}, q.id), el("td", {}, q.text),
      scores.map((v) => el("td", { class: "num" + (v === top && winners.length < modes.length ? " best" : "") }, v.toFixed(3))),
      el("td", {}, winners.length === modes.length ? "tie" : winners.map((m) => MODE_LABEL[m]).join(", ")));
  });
  return el("table", { id: "eval-per-query" },
    el("thead", {}, el("tr", {}, el("th", {}, "query"), el("th", {}, "text"), modes.map((m) => el("th", { class: "num" }, MODE_LABEL[m] + " nDCG@10")), el("th", {}, "best"))),
    el("tbody", {}, rows));
}

function renderReport(r, out) {
  const detail = el("div", { id: "eval-detail-box" });
  out.replaceChildren(
    el("p", { class: "summary", id: "eval-summary" }, `${r.queries} judged queries${r.unjudged_queries ? ` (${r.unjudged_queries} without judgments skipped)` : ""}${r.empty_queries ? `, ${r.empty_queries} without text (scored 0)` : ""}${r.unknown_documents ? `, ${r.unknown_documents} judged documents not in the collection` : ""}, evaluated in ${r.seconds.toFixed(1)} s; hybrid fusion ${r.fusion.method}.`),
    el("div", { class: "panel scroll-x" }, el("h2", {}, "Metrics"), metricsTable(r)),
    el("div", { class: "grid2" }, recallChart(r), el("div", { class: "panel scroll-x" }, el("h2", {}, "Which mode wins, query by query"), pairsTable(r))),
    el("div", { class: "panel" }, el("h2", {}, "Per query"), el("p", { class: "summary" }, "Select a query to see the three rankings side by side with the judged relevant notes marked."), perQueryTable(r, detail)),
    detail);
}

/** Polls an evaluation or tuning job with a progress bar in `out` until it ends. */
async function pollJob(job, out, unit) {
  const bar = el("progress", { max: job.total, value: 0, "aria-label": "Progress" });
  const line = el("p", { class: "summary" });
  out.replaceChildren(bar, line);
  while (job.state === "running") {
    bar.value = job.done;
    line.textContent = `${job.done} of ${job.total} ${unit}`;
    await new Promise((res) => setTimeout(res, 300));
    job = await api("/api/eval/" + job.id);
  }
  if (job.state !== "done") throw new Error(job.failure || "the job failed");
  return job;
}

function fusionText(c) {
  const f = c.fusion;
  const params = Object.entries(f).filter(([k]) => k !== "method").map(([k, v]) => `${k} ${v}`).join(", ");
  return `${f.method}${params ? " (" + params + ")" : ""}, candidate depth ${c.depth}, note score ${c.note_score}`;
}

/** What tuning found: the held-out figure against RRF k=60, the choice, each fold's choice. */
function renderTuned(t, out) {
  const gain = t.cv_ndcg_10 - t.baseline_ndcg_10;
  out.replaceChildren(el("div", { class: "panel", id: "tune-result" },
    el("h2", {}, "Tuned fusion"),
    el("p", { class: "summary" }, `${t.queries} queries of set ${t.set}, ${t.folds}-fold cross-validation. Held-out hybrid nDCG@10 ${t.cv_ndcg_10.toFixed(4)} against ${t.baseline_ndcg_10.toFixed(4)} for RRF k=60: ${gain >= 0 ? "+" : ""}${gain.toFixed(4)}, paired randomisation test p = ${t.p_value.toFixed(4)}${t.p_value < 0.05 ? "" : " (not significant at 0.05)"}.`),
    el("p", { id: "tune-choice" }, el("strong", {}, "Chosen on all queries: "), fusionText(t.choice), t.stored ? " — stored as this collection's default for searches without fusion parameters." : " — not stored."),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "fold"), el("th", {}, "choice on the other folds"))),
      el("tbody", {}, t.fold_choices.map((c, i) => el("tr", {}, el("td", {}, i + 1), el("td", {}, fusionText(c))))))));
}

async function evalPage(main) {
  const { sets } = await api("/api/eval/sets");
  if (!me) await refreshWhoami();
  const setSel = el("select", { id: "eval-set" },
    sets.map((s) => el("option", { value: s.name }, `${s.name} (${s.queries} queries)`)),
    el("option", { value: "" }, "paste queries and judgments…"));
  const queries = el("textarea", { id: "eval-queries", "aria-label": "Queries", placeholder: '{"_id": "q1", "text": "chest pain on exertion"}  (BEIR queries.jsonl, or qid<TAB>text)' });
  const qrels = el("textarea", { id: "eval-qrels", "aria-label": "Judgments", placeholder: "query-id\tcorpus-id\tscore  (BEIR qrels TSV, or TREC: qid 0 docid grade)" });
  const paste = el("div", { class: "grid2", hidden: sets.length > 0 }, el("label", {}, "Queries", queries), el("label", {}, "Judgments", qrels));
  const canTune = () => me && me.role === "admin" && !me.restricted && setSel.value !== "";
  const tune = el("button", { type: "button", id: "eval-tune", hidden: !canTune(), title: "Choose the hybrid fusion on this set by 5-fold cross-validation and store it as this collection's default" }, "Tune fusion");
  setSel.addEventListener("change", () => { paste.hidden = setSel.value !== ""; tune.hidden = !canTune(); });
  const run = el("button", { type: "submit", class: "primary", id: "eval-run" }, "Run evaluation");
  const out = el("div", { id: "eval-out", "aria-live": "polite" });
  const form = el("form", { class: "panel" },
    el("p", { class: "summary" }, "Runs every judged query through BM25, semantic and hybrid search and scores the rankings (Recall@k, nDCG@10, MRR@10, MAP@100, as trec_eval computes them)."),
    el("div", { class: "filters" }, el("label", {}, "Query set", setSel)), paste, el("div", { class: "actions" }, run, tune));
  tune.addEventListener("click", async () => {
    tune.disabled = run.disabled = true;
    try {
      const job = await pollJob(await api("/api/tune", { method: "POST", json: { set: setSel.value } }), out, "runs");
      renderTuned(job.report, out);
    } catch (err) {
      out.replaceChildren(errorBox(err));
    } finally {
      tune.disabled = run.disabled = false;
    }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = setSel.value ? { set: setSel.value } : { queries: queries.value, qrels: qrels.value };
    run.disabled = tune.disabled = true;
    try {
      const job = await pollJob(await api("/api/eval", { method: "POST", json: body }), out, "queries");
      renderReport(job.report, out);
    } catch (err) {
      out.replaceChildren(errorBox(err));
    } finally {
      run.disabled = tune.disabled = false;
    }
  });
  main.append(el("h1", {}, "Evaluation"), form, out);
  if (!sets.length) out.append(el("p", { class: "notice" }, "No query set is stored in this data directory yet: paste queries and judgments, or store a set with clinsearch eval --save-set NAME."));
}

// ---------------------------------------------------------------------------------------
// Audit (admins): who accessed which patient's notes, when, and how

async function auditPage(main, params) {
  main.append(el("h1", {}, "Access audit"));
  const field = (name, label, placeholder) => el("label", {}, label, el("input", { id: "audit-" + name, name, value: params.get(name) || "", placeholder }));
  const action = el("select", { id: "audit-action", name: "action" }, el("option", { value: "" }, "any"),
    ["search", "facets", "read_note", "ingest", "delete", "embed", "fill_mask", "adapt", "classify", "tag", "annotate", "eval", "export", "audit", "denied"].map((a) => el("option", { value: a, selected: params.get("action") === a }, a)));
  const form = el("form", { class: "panel", id: "audit-form" },
    el("p", { class: "summary" }, "Every request that touched patient data, newest last: who (the key's name), when (UTC), what action, which notes and patients. Query text is recorded as its SHA-256 unless the server is configured to keep it."),
    el("div", { class: "filters" }, field("patient", "Patient", "P1037"), field("principal", "Principal", "alice"), field("note", "Note", "P1037-07"),
      el("label", {}, "Action", action), field("since", "Since", "2026-12-01"), field("until", "Until", "2026-12-31")),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Show")));
  const out = el("div", { id: "audit-out", "aria-live": "polite" });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = {};
    for (const [k, v] of new FormData(form).entries()) if (String(v).trim()) p[k] = String(v).trim();
    go("/audit", p);
  });
  main.append(form, out);
  const q = new URLSearchParams();
  for (const k of ["patient", "principal", "note", "action", "since", "until"]) if (params.get(k)) q.set(k, params.get(k));
  try {
    const res = await api("/api/audit?" + q);
    const list = (v) => (v.length ? v.join(", ") : "–");
    out.replaceChildren(
      el("p", { class: "summary", id: "audit-count" }, `${res.matched} event${res.matched === 1 ? "" : "s"}${res.matched > res.events.length ? `, the newest ${res.events.length} shown` : ""}`),
      el("table", { id: "audit-table" },
        el("thead", {}, el("tr", {}, ["Time (UTC)", "Principal", "Role", "Action", "Status", "Client", "Notes", "Patients"].map((h) => el("th", {}, h)))),
        el("tbody", {}, res.events.map((ev) => el("tr", {},
          el("td", {}, ev.time), el("td", {}, ev.principal || "–"), el("td", {}, ev.role || "–"), el("td", {}, ev.action),
          el("td", { class: "num" }, String(ev.status)), el("td", {}, ev.client || "–"),
          el("td", {}, list(ev.note_ids)), el("td", {}, list(ev.patient_ids)))))));
  } catch (err) {
    out.replaceChildren(errorBox(err));
  }
}

// ---------------------------------------------------------------------------------------
// Start

document.addEventListener("keydown", (e) => {
  // "/" jumps to the search box, as on most search sites.
  if (e.key === "/" && !["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName)) {
    e.preventDefault();
    if (parseHash().path !== "/search") go("/search");
    setTimeout(() => { const q = $("#q"); if (q) q.focus(); }, 0);
  }
});

window.addEventListener("hashchange", render);
window.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", () => {
    sessionStorage.setItem("clinsearch-key", $("#key-input").value);
    refreshStats();
    refreshWhoami();
    render();
  });
  $("#key-button").addEventListener("click", askKey);
  refreshStats();
  refreshWhoami();
  render();
});

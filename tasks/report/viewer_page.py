"""The viewer's page: one HTML file with its CSS and JavaScript, no external
resources.  Served, it asks the server for pages of rows (`/api/...`);
written as a static file, the rows are embedded in it and the same filters
run in the browser (`page_html(static=...)`)."""

from __future__ import annotations

import json

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sftmill viewer</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f6f8}
header{background:#22313f;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header h1{font-size:17px;margin:0} header button{background:none;border:1px solid #fff6;color:#fff;padding:4px 10px;cursor:pointer}
header button.on{background:#fff;color:#22313f}
#layout{display:flex;gap:12px;padding:12px}
#filters{width:230px;flex:none;background:#fff;padding:10px;border-radius:6px;align-self:flex-start}
#filters label{display:block;font-size:12px;color:#555;margin-top:8px}
#filters input,#filters select{width:100%;box-sizing:border-box;padding:3px}
#lists{flex:1;display:flex;gap:12px;min-width:0}
.list{flex:1;min-width:0;background:#fff;border-radius:6px;padding:8px;align-self:flex-start}
.list h2{font-size:14px;margin:2px 0 6px}
.row{border-top:1px solid #eee;padding:6px 4px;cursor:pointer}
.row:hover{background:#f0f4fa} .row.sel{background:#e2ebf7}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;margin-right:4px;background:#e8e8ee}
.kept{background:#d7f0dd} .rejected{background:#f8dcdc}
.pager{display:flex;justify-content:space-between;align-items:center;font-size:12px;color:#555}
#detail{flex:1.2;min-width:0;background:#fff;border-radius:6px;padding:10px;display:none;align-self:flex-start;
 position:sticky;top:8px;max-height:92vh;overflow:auto}
.msg{padding:6px 10px;border-radius:8px;margin:6px 0;white-space:pre-wrap}
.user{background:#eef3fb} .assistant{background:#f3f7ee} .trace{background:#f7f2e7;font-size:12px}
.cite{color:#1a5fb4;cursor:pointer;text-decoration:underline;margin-right:8px}
pre{background:#f4f4f4;padding:8px;overflow:auto;max-height:300px;font-size:12px} pre.passage{white-space:pre-wrap}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
#quality{display:none;padding:12px}
</style></head>
<body>
<header><h1 id="title">sftmill viewer</h1>
<button id="tab-records" class="on">Records</button><button id="tab-quality">Quality and drops</button>
<span id="counts"></span></header>
<div id="records-view">
<div id="layout">
<div id="filters">
<label>Show</label><select id="f-kind"><option value="all">kept and rejected</option>
<option value="kept">kept records</option><option value="rejected">rejected items</option></select>
<label>Search</label><input id="f-q" placeholder="words in prompt, answer, reason">
<div id="facets"></div>
<label>Score</label><select id="f-score"><option value="">(any)</option></select>
<label>from … to</label><div style="display:flex;gap:4px"><input id="f-min" type="number" step="0.05">
<input id="f-max" type="number" step="0.05"></div>
</div>
<div id="lists"></div>
<div id="detail"></div>
</div>
</div>
<div id="quality"></div>
<script>
/*STATIC*/
const FACETS = ["subdomain", "task_type", "persona", "difficulty", "origin", "stage", "reason"];
const S = window.SFTMILL_STATIC || null;
const state = {filters: {kind: "all"}, offsets: [], runs: [], selected: null};

function matches(row, f) {  // the same rules as tasks/report/viewer.py `matches`
  if (f.kind && f.kind !== "all" && row.kind !== f.kind) return false;
  for (const k of FACETS) if (f[k] && String(row[k]) !== f[k]) return false;
  if (f.q && !row._text.includes(f.q.toLowerCase())) return false;
  if (f.score) {
    const v = row.scores[f.score];
    if (v === undefined || v === null) return false;
    if (f.min !== undefined && f.min !== "" && v < parseFloat(f.min)) return false;
    if (f.max !== undefined && f.max !== "" && v > parseFloat(f.max)) return false;
  }
  return true;
}
async function api(path, params) {
  if (S) {
    const run = S.runs[+(params.run || 0)];
    if (path === "summary") return {runs: S.runs.map(r => r.summary)};
    if (path === "passage") return run.passages[params.chunk_id] || null;
    const kept = run.rows.filter(r => matches(r, params));
    const offset = +params.offset || 0;
    return {total: kept.length, offset, rows: kept.slice(offset, offset + 50)};
  }
  const q = new URLSearchParams(Object.entries(params).filter(([k, v]) => v !== undefined && v !== ""));
  return (await fetch(`api/${path}?${q}`)).json();
}
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (k === "onclick") e.onclick = v; else e.setAttribute(k, v);
  for (const k of kids) e.append(k === null || k === undefined ? "" : k);
  return e;
}
const short = (t, n) => t.length > n ? t.slice(0, n) + "…" : t;

async function start() {
  if (S) for (const run of S.runs) for (const r of run.rows)
    r._text = [r.prompt, r.answer, r.reason, r.detail, ...r.messages.slice(2).map(m => m.content)].join(" ").toLowerCase();
  state.runs = (await api("summary", {})).runs;
  state.offsets = state.runs.map(() => 0);
  document.getElementById("title").textContent = state.runs.map(r => r.name).join("  vs  ");
  document.getElementById("counts").textContent = state.runs.map(r => `${r.kept} kept · ${r.rejected} rejected`).join("  |  ");
  const facets = document.getElementById("facets");
  for (const f of FACETS) {
    const values = [...new Set(state.runs.flatMap(r => r.facets[f]))].sort();
    if (!values.length) continue;
    const sel = el("select", {id: "f-" + f}, el("option", {value: ""}, "(any)"), ...values.map(v => el("option", {value: v}, v)));
    facets.append(el("label", {}, f.replace("_", " ")), sel);
    sel.onchange = () => setFilter(f, sel.value);
  }
  const score = document.getElementById("f-score");
  for (const s of [...new Set(state.runs.flatMap(r => r.scores))]) score.append(el("option", {value: s}, s));
  score.onchange = () => setFilter("score", score.value);
  for (const k of ["kind", "min", "max"]) document.getElementById("f-" + k).onchange = e => setFilter(k, e.target.value);
  let typing; document.getElementById("f-q").oninput = e => { clearTimeout(typing); typing = setTimeout(() => setFilter("q", e.target.value), 150); };
  document.getElementById("tab-records").onclick = () => tab("records");
  document.getElementById("tab-quality").onclick = () => tab("quality");
  renderQuality();
  await refresh();
  if (location.hash.includes("selftest")) await selftest();
  if (location.hash.includes("quality")) tab("quality");
  document.body.dataset.ready = "1";
}
function tab(name) {
  document.getElementById("records-view").style.display = name === "records" ? "" : "none";
  document.getElementById("quality").style.display = name === "quality" ? "block" : "none";
  document.getElementById("tab-records").className = name === "records" ? "on" : "";
  document.getElementById("tab-quality").className = name === "quality" ? "on" : "";
}
async function setFilter(k, v) {
  state.filters[k] = v; state.offsets = state.runs.map(() => 0);
  const input = document.getElementById("f-" + k); if (input && input.value !== v) input.value = v;
  await refresh();
}
async function refresh() {
  const lists = document.getElementById("lists");
  const pages = await Promise.all(state.runs.map((_, i) => api("rows", {...state.filters, run: i, offset: state.offsets[i]})));
  lists.replaceChildren(...pages.map((page, i) => renderList(page, i)));
}
function renderList(page, i) {
  const box = el("div", {class: "list", "data-total": page.total});
  const prev = el("button", {onclick: () => { state.offsets[i] = Math.max(0, page.offset - 50); refresh(); }}, "‹ previous");
  const next = el("button", {onclick: () => { if (page.offset + 50 < page.total) { state.offsets[i] = page.offset + 50; refresh(); } }}, "next ›");
  box.append(el("h2", {}, state.runs[i].name),
    el("div", {class: "pager"}, prev, el("span", {class: "total"}, `${page.total ? page.offset + 1 : 0}–${Math.min(page.offset + 50, page.total)} of ${page.total}`), next));
  for (const r of page.rows) {
    const chips = FACETS.slice(0, 5).filter(f => r[f]).map(f => el("span", {class: "badge"}, r[f]));
    const why = r.kind === "rejected" ? el("span", {class: "badge rejected"}, `${r.stage}: ${r.reason}`) : el("span", {class: "badge kept"}, "kept");
    const turns = r.messages.length > 2 ? el("span", {class: "badge"}, `${r.messages.length / 2} turns`) : "";
    box.append(el("div", {class: "row", onclick: () => show(r, i)}, why, turns, ...chips, el("div", {}, short(r.prompt || r.id, 220))));
  }
  return box;
}
function show(r, run) {
  const d = document.getElementById("detail");
  d.style.display = "block";
  const parts = [el("h3", {}, r.kind === "kept" ? `Record ${r.id}` : `Rejected at ${r.stage}: ${r.reason}`)];
  if (r.kind === "rejected") {
    parts.push(el("p", {}, el("b", {}, "Item: "), r.prompt || r.id));
    if (r.answer) parts.push(el("div", {class: "msg assistant"}, r.answer));
    parts.push(el("p", {}, el("b", {}, "Why: "), r.detail || r.reason));
  }
  for (const m of r.messages) {
    if (m.reasoning_content) parts.push(el("div", {class: "msg trace"}, "thinking: " + m.reasoning_content));
    parts.push(el("div", {class: "msg " + m.role}, m.content));
  }
  const cites = [...(r.metadata.citations || []), ...((r.metadata.conversation || {}).follow_ups || []).flatMap(f => f.citations || [])];
  const passage = el("div", {});
  if (cites.length) parts.push(el("div", {}, el("b", {}, "Cited passages: "), ...cites.map(c =>
    el("span", {class: "cite", onclick: async () => {
      const p = await api("passage", {run, chunk_id: c.chunk_id});
      passage.replaceChildren(el("p", {}, el("b", {}, `[${c.n}] ${p ? (p.title || "") : ""} — ${p ? p.uri : c.uri}`)), el("pre", {class: "passage"}, p ? p.text : "(not in the run database)"));
    }}, `[${c.n}] ${(c.uri || "").split("/").pop()}`))), passage);
  if (Object.keys(r.scores).length) parts.push(el("p", {}, el("b", {}, "Scores: "), Object.entries(r.scores).map(([k, v]) => `${k} ${(+v).toFixed(2)}`).join(" · ")));
  if (r.review) parts.push(el("p", {}, el("b", {}, "Review: "), r.review));
  if (r.kind === "kept") parts.push(el("details", {}, el("summary", {}, "metadata"), el("pre", {}, JSON.stringify(r.metadata, null, 1))));
  d.replaceChildren(...parts);
}
function renderQuality() {
  const q = document.getElementById("quality");
  const keys = [...new Set(state.runs.flatMap(r => r.figures.map(f => f.key)))];
  const fig = (run, k) => { const f = run.figures.find(f => f.key === k); return !f ? "–" : typeof f.value !== "number" ? String(f.value) : Number.isInteger(f.value) ? String(f.value) : f.value.toFixed(3); };
  const label = k => (state.runs.flatMap(r => r.figures).find(f => f.key === k) || {}).label || k;
  const good = k => (state.runs.flatMap(r => r.figures).find(f => f.key === k) || {}).good || "";
  q.replaceChildren(el("h2", {}, "Quality"),
    el("table", {id: "figures"}, el("tr", {}, el("th", {}, "figure"), ...state.runs.map(r => el("th", {}, r.name)), el("th", {}, "good looks like")),
      ...keys.map(k => el("tr", {}, el("td", {}, label(k)), ...state.runs.map(r => el("td", {}, fig(r, k))), el("td", {}, good(k))))),
    el("h2", {}, "Dropped, by stage and reason"),
    ...state.runs.map(r => el("div", {}, el("h3", {}, r.name), el("table", {}, ...r.drops.map(([k, n]) => el("tr", {}, el("td", {}, k), el("td", {}, String(n))))),
      r.reviews.accept + r.reviews.edit ? el("p", {}, `Reviewers accepted ${r.reviews.accept} kept records and edited ${r.reviews.edit}`) : "")));
}
async function selftest() {  // for the browser test: what a user does, and how long it takes here
  const t0 = performance.now();
  await setFilter("q", "quark");
  const t1 = performance.now();
  await setFilter("kind", "rejected");
  const t2 = performance.now();
  const body = document.body.dataset;
  body.searchMs = Math.round(t1 - t0);
  body.filterMs = Math.round(t2 - t1);
  body.rejectedShown = document.querySelectorAll(".row .rejected").length;
  if (location.hash.includes("rejected")) { await setFilter("q", ""); document.querySelector(".row")?.click(); return; }
  await setFilter("q", "");
  await setFilter("kind", "kept");
  const conversation = [...document.querySelectorAll(".row")].find(r => r.textContent.includes("turns"));
  (conversation || document.querySelector(".row"))?.click();
  const cite = document.querySelector(".cite");
  if (cite) {
    cite.click();
    for (let i = 0; i < 50 && !document.querySelector("pre.passage"); i++) await new Promise(r => setTimeout(r, 20));
    body.passageShown = (document.querySelector("pre.passage") || {textContent: ""}).textContent.length;
  }
}
start();
</script></body></html>
"""


def page_html(static: dict | None = None) -> str:
    """The page; with `static` ({"runs": [{summary, rows, passages}]}) the data is in it."""
    if static is None:
        return PAGE
    data = json.dumps(static, ensure_ascii=False, default=str).replace("</", "<\\/")
    return PAGE.replace("/*STATIC*/", f"window.SFTMILL_STATIC = {data};")

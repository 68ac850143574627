"""The listening-test page: one HTML file with its CSS and JavaScript inline (works from file://).

The page knows only opaque trial ids, audio file names and queries. Each listener gets the trials
in an order shuffled by a seed derived from (test id, listener id), so a reload resumes the same
order; progress is kept in ``localStorage`` under the test id. Ratings are 1–5 for fidelity and
for relevance to the shown query. At the end a link downloads the answers as CSV with the columns
of :data:`CSV_COLUMNS` (the test id in every row, so answers cannot be scored against another
test's key).
"""

from __future__ import annotations

import html
import json
from typing import Any

CSV_COLUMNS = ("test_id", "listener", "trial_id", "position", "query", "fidelity", "relevance", "plays", "answered_at")
CRITERIA = {
    "fidelity": ("Fidelity: how natural and clean does this sound, whatever the query?",
                 ("Bad", "Poor", "Fair", "Good", "Excellent")),
    "relevance": ("Relevance: how well does this sound match the query?",
                  ("Not at all", "Slightly", "Somewhat", "Mostly", "Completely")),
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; } .query { font-size: 1.3rem; font-weight: 600; margin: .2rem 0 1rem; }
.muted { color: #666; font-size: .9rem; } audio { width: 100%; margin: .5rem 0 1rem; }
fieldset { border: 1px solid #ccc; border-radius: .4rem; margin: 0 0 1rem; }
.scale { display: flex; gap: .4rem; flex-wrap: wrap; }
.scale label { flex: 1; min-width: 5.5rem; text-align: center; border: 1px solid #bbb; border-radius: .3rem;
  padding: .4rem; cursor: pointer; } .scale input { display: block; margin: 0 auto .2rem; }
.scale label:has(input:checked) { background: #dbeafe; border-color: #2563eb; }
button, .button { font-size: 1rem; padding: .5rem 1.2rem; margin-right: .5rem; }
progress { width: 100%; } textarea { width: 100%; height: 8rem; font-family: monospace; font-size: .8rem; }
"""

_SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("test-data").textContent);
const STORE = "clipsonic-listening-" + DATA.test_id;
const byId = Object.fromEntries(DATA.trials.map(t => [t.id, t]));
const $ = id => document.getElementById(id);
let state = null;

function hash(text) {  // FNV-1a, 32 bit
  let h = 2166136261 >>> 0;
  for (const ch of text) { h ^= ch.codePointAt(0); h = Math.imul(h, 16777619) >>> 0; }
  return h;
}
function rng(seed) {  // mulberry32
  return function () {
    seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function shuffled(items, seed) {
  const r = rng(seed), a = items.slice();
  for (let i = a.length - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [a[i], a[j]] = [a[j], a[i]]; }
  return a;
}
function save() { try { localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { /* private mode */ } }
function loadSaved() { try { return JSON.parse(localStorage.getItem(STORE)); } catch (e) { return null; } }
function show(section) { for (const s of ["start", "trial", "done"]) $(s).hidden = s !== section; }

const ratings = () => document.querySelectorAll(".scale input");
function answer(id) { return state.answers[id] || (state.answers[id] = { fidelity: "", relevance: "", plays: 0, answered_at: "" }); }
function complete(id) { const a = state.answers[id]; return !!a && a.fidelity !== "" && a.relevance !== ""; }

function start(listener) {
  state = { listener, order: shuffled(DATA.trials.map(t => t.id), hash(DATA.test_id + "/" + listener)), index: 0, answers: {} };
  save(); render();
}
function render() {
  if (state.index >= state.order.length) { finish(); return; }
  const id = state.order[state.index], trial = byId[id], a = answer(id);
  $("progress-text").textContent = `Trial ${state.index + 1} of ${state.order.length}`;
  $("progress-bar").max = state.order.length; $("progress-bar").value = state.index;
  $("query").textContent = trial.query;
  const player = $("player");
  player.src = trial.audio; player.dataset.trial = id;
  for (const input of ratings()) input.checked = input.value === String(a[input.name]);
  $("prev").disabled = state.index === 0;
  $("next").disabled = !complete(id);
  show("trial");
}
function rate(event) {
  const id = state.order[state.index], a = answer(id);
  a[event.target.name] = Number(event.target.value);
  a.answered_at = new Date().toISOString();
  $("next").disabled = !complete(id);
  save();
}
function csvField(value) {
  const s = String(value ?? "");
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function toCsv() {
  const rows = [DATA.columns.join(",")];
  state.order.forEach((id, position) => {
    const a = state.answers[id] || {};
    const row = { test_id: DATA.test_id, listener: state.listener, trial_id: id, position: position + 1,
                  query: byId[id].query, fidelity: a.fidelity, relevance: a.relevance, plays: a.plays || 0,
                  answered_at: a.answered_at };
    rows.push(DATA.columns.map(c => csvField(row[c])).join(","));
  });
  return rows.join("\r\n") + "\r\n";
}
function finish() {
  const csv = toCsv(), link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
  const safe = state.listener.replace(/[^A-Za-z0-9_-]+/g, "_") || "listener";
  link.download = `answers-${DATA.test_id}-${safe}.csv`;
  $("csv-text").value = csv;
  $("answered").textContent = state.order.filter(complete).length;
  $("player").pause();
  show("done");
}

document.addEventListener("DOMContentLoaded", () => {
  for (const input of ratings()) input.addEventListener("change", rate);
  const saved = loadSaved();
  if (saved && saved.order && saved.order.length === DATA.trials.length) {
    $("resume").hidden = false;
    $("resume").textContent = `Continue as ${saved.listener} (trial ${Math.min(saved.index + 1, saved.order.length)})`;
    $("resume").onclick = () => { state = saved; render(); };
  }
  $("start-form").addEventListener("submit", e => {
    e.preventDefault();
    const listener = $("listener").value.trim();
    if (listener) start(listener);
  });
  $("player").addEventListener("play", () => { answer($("player").dataset.trial).plays += 1; save(); });
  $("next").onclick = () => { state.index += 1; save(); render(); };
  $("prev").onclick = () => { state.index = Math.max(0, state.index - 1); save(); render(); };
  $("review").onclick = () => { state.index = state.order.length - 1; save(); render(); };
  show("start");
});
"""

_BODY = """
<h1 id="title">{title}</h1>
<section id="start">
  <p>You will hear <span id="count">{count}</span> short sounds, one at a time, each with the text query it was
  made for. Play each sound (as often as you like, with headphones if you can) and rate it twice from
  1 to 5: its <b>fidelity</b> (how natural and clean it sounds) and its <b>relevance</b> (how well it
  matches the query). Your progress is saved in this browser; at the end, download your answers and
  send the CSV file back.</p>
  <form id="start-form"><label>Your name or listener id:
    <input id="listener" autocomplete="off" required></label>
    <button id="start-button" type="submit">Start</button></form>
  <p><button id="resume" type="button" hidden></button></p>
</section>
<section id="trial" hidden>
  <p class="muted" id="progress-text"></p><progress id="progress-bar"></progress>
  <p class="muted">Query</p><p class="query" id="query"></p>
  <audio id="player" controls preload="auto"></audio>
  {scales}
  <button id="prev" type="button">Back</button><button id="next" type="button" disabled>Next</button>
</section>
<section id="done" hidden>
  <p>Thank you! You rated <span id="answered"></span> sounds.</p>
  <p><a id="download" class="button" href="#">Download answers (CSV)</a>
     <button id="review" type="button">Review answers</button></p>
  <p class="muted">If the download does not start, copy this text into a file named answers.csv:</p>
  <textarea id="csv-text" readonly></textarea>
</section>
"""


def _scale(name: str) -> str:
    """The radio buttons 1–5 of one criterion."""
    question, labels = CRITERIA[name]
    options = "".join(f'<label><input type="radio" name="{name}" value="{i}"><b>{i}</b><br>{label}</label>'
                      for i, label in enumerate(labels, 1))
    return f'<fieldset id="{name}"><legend>{question}</legend><div class="scale">{options}</div></fieldset>'


def render_page(data: dict[str, Any]) -> str:
    """The page for ``{"test_id", "title", "trials": [{"id", "audio", "query"}]}``."""
    # "</" would end the script element early: JSON allows escaping the slash
    payload = json.dumps({**data, "columns": CSV_COLUMNS}, ensure_ascii=False).replace("</", "<\\/")
    scales = "\n  ".join(_scale(name) for name in CRITERIA)
    title = html.escape(str(data.get("title", "Listening test")))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        f"<style>{_STYLE}</style>",
        f'<script id="test-data" type="application/json">{payload}</script>',
        f"<script>{_SCRIPT}</script>",
        f"</head><body>{_BODY.format(scales=scales, title=title, count=len(data['trials']))}</body></html>",
        "",
    ])

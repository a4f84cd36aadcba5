// epp's live routing view: one EventSource (/ui/events) brings, every half second, the new decisions,
// the pool and the chart numbers. No libraries: everything this page loads ships with epp.
"use strict";

const HISTORY = 240;            // chart points kept (two minutes at two updates a second)
const FEED_ROWS = 200;          // decision rows kept in the table
const COLORS = ["#2f6fde", "#e0752d", "#2e9e5b", "#c23b8e", "#7b5cd6", "#a08a1f", "#1b9aaa", "#d64545"];

const $ = (sel) => document.querySelector(sel);
const state = { config: null, selected: null, newest: null, decisions: new Map(), series: {}, colors: {} };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
const fmt = (v, digits = 0) => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(0) + "%";
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false }) + "." +
  String(Math.floor((t % 1) * 1000)).padStart(3, "0");
function podColor(addr) {
  if (!(addr in state.colors)) state.colors[addr] = COLORS[Object.keys(state.colors).length % COLORS.length];
  return state.colors[addr];
}

// ------------------------------------------------------------------ charts (canvas, hand-drawn)

function push(name, value) {
  const s = state.series[name] || (state.series[name] = []);
  s.push(value === undefined ? null : value);
  if (s.length > HISTORY) s.shift();
}

function draw(canvasId, lines, opts = {}) {
  const c = document.getElementById(canvasId);
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 360, h = c.clientHeight || 140;
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  let max = opts.max || 0;
  for (const l of lines) for (const v of l.data) if (v !== null && v > max) max = v;
  if (!opts.max) max = max > 0 ? max * 1.15 : 1;
  const left = 34, bottom = h - 14, top = 6, right = w - 4;
  g.strokeStyle = "#e3e6ec"; g.fillStyle = "#6b7385"; g.font = "10px system-ui, sans-serif"; g.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = top + (bottom - top) * i / 2;
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    const v = max * (1 - i / 2);
    g.fillText(opts.percent ? (100 * v).toFixed(0) + "%" : (v >= 10 ? v.toFixed(0) : v.toFixed(v >= 1 ? 1 : 2)), 2, y + 3);
  }
  g.fillText("−2 min", left, h - 2); g.fillText("now", right - 18, h - 2);
  const step = (right - left) / (HISTORY - 1);
  for (const l of lines) {
    g.strokeStyle = l.color; g.lineWidth = 1.8; g.beginPath();
    let pen = false;
    const off = HISTORY - l.data.length;
    l.data.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const x = left + (off + i) * step, y = bottom - (bottom - top) * Math.min(v, max) / max;
      if (pen) g.lineTo(x, y); else g.moveTo(x, y);
      pen = true;
    });
    g.stroke();
  }
}

function legend(id, items) {
  const box = document.getElementById(id);
  box.replaceChildren(...items.map(([color, label]) => el("span", {}, el("i", { style: `background:${color}` }), label)));
}

function charts(stats, pool) {
  push("rate", stats.decisions_per_s);
  const o = stats.overhead_ms || {};
  push("p50", o.p50 ?? null); push("p90", o.p90 ?? null); push("p99", o.p99 ?? null);
  const hr = stats.hit_rate;
  push("predicted", hr ? hr.predicted : null); push("reported", hr ? hr.reported : null);
  for (const ep of pool) push("load:" + ep.address, ep.in_flight);

  draw("chart-rate", [{ data: state.series.rate, color: COLORS[0] }]);
  legend("legend-rate", [[COLORS[0], `now ${fmt(stats.decisions_per_s, 1)}/s` +
    (stats.errors ? ` · ${stats.errors} refused or failed in the last 30 s` : "")]]);
  draw("chart-overhead", [{ data: state.series.p50, color: COLORS[2] }, { data: state.series.p90, color: COLORS[1] },
                          { data: state.series.p99, color: COLORS[7] }]);
  legend("legend-overhead", [[COLORS[2], `p50 ${fmt(o.p50, 2)}`], [COLORS[1], `p90 ${fmt(o.p90, 2)}`],
                             [COLORS[7], `p99 ${fmt(o.p99, 2)}`]]);
  draw("chart-hits", [{ data: state.series.predicted, color: COLORS[0] }, { data: state.series.reported, color: COLORS[1] }],
       { max: 1, percent: true });
  legend("legend-hits", hr ? [[COLORS[0], `predicted ${pct(hr.predicted)}`], [COLORS[1], `reported ${pct(hr.reported)}`],
                              ["transparent", `over ${hr.requests} answers`]]
                           : [["transparent", "no answer with cached-token usage yet"]]);
  draw("chart-load", pool.map((ep) => ({ data: state.series["load:" + ep.address], color: podColor(ep.address) })));
  legend("legend-load", pool.map((ep) => [podColor(ep.address), `${ep.name || ep.address} ${ep.in_flight}`]));
}

// ------------------------------------------------------------------ pool

function meter(v, hot) {
  const m = el("span", { class: "meter" + (hot ? " hot" : "") }, el("b", { style: `width:${Math.round(100 * Math.min(1, v))}%` }));
  return m;
}

function kvEvents(kv) {
  if (!kv) return el("span", { class: "muted", text: "–" });
  const parts = [`${kv.messages} msgs`];
  if (kv.gaps) parts.push(`${kv.gaps} gaps`);
  if (kv.resets) parts.push(`${kv.resets} resets`);
  if (kv.replaying) parts.push("replaying");
  return el("span", { class: kv.messages ? "" : "muted", title: kv.publisher || "" }, parts.join(", "));
}

function renderPool(pool) {
  const body = $("#pool tbody");
  const rows = pool.map((ep) => {
    const ready = ep.ready && ep.metrics_fresh;
    return el("tr", { "data-address": ep.address },
      el("td", {}, el("span", { class: "bar", style: `width:4px;background:${podColor(ep.address)}` }),
         el("b", {}, ep.address), " ", el("span", { class: "muted" }, ep.name !== ep.address ? ep.name : "")),
      el("td", {}, ep.role ? el("span", { class: "tag" + (ep.role === "prefill" ? " pd" : "") }, ep.role) : el("span", { class: "muted" }, "any")),
      el("td", { class: ready ? "yes" : "no", title: ep.ready ? (ep.metrics_fresh ? "" : "metrics stale") : "not ready in discovery" },
         ready ? "yes" : (ep.ready ? "stale" : "no")),
      el("td", { class: "num" }, fmt(ep.queue)),
      el("td", { class: "num" }, fmt(ep.running)),
      el("td", {}, meter(ep.kv_cache_usage, ep.kv_cache_usage > 0.9), pct(ep.kv_cache_usage)),
      el("td", { class: "num" }, ep.in_flight),
      el("td", {}, kvEvents(ep.kv_events)),
      el("td", { class: "num" + (ep.metrics_fresh ? "" : " err") }, ep.metrics_age_s === null ? "never" : fmt(ep.metrics_age_s * 1000) + " ms"));
  });
  body.replaceChildren(...rows);
  const ready = pool.filter((ep) => ep.ready && ep.metrics_fresh).length;
  $("#pool-summary").textContent = `${pool.length} endpoints, ${ready} candidates`;
}

// ------------------------------------------------------------------ decisions

function pdText(d) {
  const r = d.reasons || {};
  if (d.prefill) return [`prefill on ${d.prefill}`, r.pd_reason || ""];
  if (r.pd_decision) return [r.pd_decision, r.pd_reason || ""];
  return ["–", ""];
}

function feedRow(d) {
  const [pd, why] = pdText(d);
  const failed = d.status !== null && d.status >= 400;
  const cached = `${fmt(d.predicted_cached_tokens)} / ${d.done ? fmt(d.cached_tokens) : "…"}`;
  return el("tr", { "data-seq": d.seq, class: "new" },
    el("td", {}, clock(d.time)),
    el("td", {}, d.model || el("span", { class: "muted" }, "(none)")),
    el("td", {}, d.objective ? `${d.objective} (${d.priority})` : el("span", { class: "muted" }, `– (${d.priority})`)),
    el("td", { class: "num" }, d.prompt_tokens),
    el("td", {}, d.pick ? el("span", {}, el("span", { class: "bar", style: `width:4px;background:${podColor(d.pick)}` }), d.pick)
                        : el("span", { class: "err" }, d.error || "no pick")),
    el("td", { class: "num" }, d.margin === null ? "–" : fmt(d.margin, 2)),
    el("td", { title: why }, pd === "–" ? el("span", { class: "muted" }, "–") : el("span", { class: "tag pd" }, pd)),
    el("td", { class: "num" }, cached),
    el("td", { class: "num" }, d.ttft_ms === null ? (d.done ? "–" : "…") : fmt(d.ttft_ms, 1) + " ms"),
    el("td", { class: "num" }, fmt(d.overhead_ms, 2)),
    el("td", { class: failed ? "err" : "" }, d.status === null ? "…" : d.status));
}

function addDecisions(list) {
  const body = $("#feed tbody");
  for (const d of list) {
    state.decisions.set(d.seq, d);
    const old = body.querySelector(`tr[data-seq="${d.seq}"]`);
    const row = feedRow(d);
    if (old) old.replaceWith(row); else body.prepend(row);
    state.newest = d.seq;
  }
  while (body.rows.length > FEED_ROWS) {
    const last = body.rows[body.rows.length - 1];
    state.decisions.delete(Number(last.dataset.seq));
    last.remove();
  }
  for (const r of body.querySelectorAll("tr.selected")) r.classList.remove("selected");
  if (state.selected !== null) {
    const r = body.querySelector(`tr[data-seq="${state.selected}"]`);
    if (r) r.classList.add("selected"); else state.selected = null;
  }
}

function scoreTable(profileName, prof, d) {
  const cfg = (state.config && state.config.profiles[profileName]) || { scorers: [] };
  const weights = Object.fromEntries(cfg.scorers.map((s) => [s.name, s.weight]));
  const names = [...new Set([...cfg.scorers.map((s) => s.name), ...prof.candidates.flatMap((c) => Object.keys(c.scores))])];
  const best = Math.max(...prof.candidates.map((c) => c.total), 0.0001);
  const head = el("tr", {}, el("th", {}, "Candidate"),
    ...names.map((n) => el("th", { class: "num", title: "raw score in [0, 1] × weight" }, `${n} ×${weights[n] ?? 1}`)),
    el("th", {}, "Total"));
  const rows = prof.candidates.map((c) => el("tr", { class: c.picked ? "pick" : "", "data-candidate": c.address },
    el("td", {}, c.picked ? el("b", {}, c.address + "  ✔ picked") : c.address),
    ...names.map((n) => el("td", { class: "num" }, fmt(c.scores[n], 2))),
    el("td", {}, el("span", { class: "bar", style: `width:${Math.round(90 * c.total / best)}px` }), fmt(c.total, 2))));
  const filtered = Object.entries(prof.filtered || {}).filter(([, n]) => n > 0);
  return [el("h3", {}, `Profile “${profileName}”` + (filtered.length ? ` · filters removed ${filtered.map(([f, n]) => `${n} (${f})`).join(", ")}` : "")),
          prof.candidates.length ? el("table", { class: "grid" }, el("thead", {}, head), el("tbody", {}, ...rows))
                                 : el("p", { class: "muted" }, "no candidate passed the filters")];
}

function explain(d) {
  const box = $("#explain");
  $("#explain-title").textContent = d ? `#${d.seq} at ${clock(d.time)}` + (state.selected === null ? " (following the newest)" : " (selected)") : "";
  if (!d) return;
  const [pd, why] = pdText(d);
  const facts = el("div", { class: "facts" },
    el("span", {}, "model ", el("b", {}, d.model || "(none)"), d.target_model && d.target_model !== d.model ? ` → ${d.target_model}` : ""),
    el("span", {}, "objective ", el("b", {}, d.objective || "–"), ` priority ${d.priority}`),
    el("span", {}, "prompt ", el("b", {}, d.prompt_tokens), " tokens (estimated)"),
    el("span", {}, "picked ", el("b", {}, d.pick || "nothing"), d.margin !== null ? ` by ${fmt(d.margin, 2)} over the runner-up` : ""),
    el("span", {}, "P/D ", el("b", {}, pd), why ? ` (${why})` : ""),
    el("span", {}, "cached tokens predicted ", el("b", {}, fmt(d.predicted_cached_tokens)), " · reported ",
       el("b", {}, d.done ? fmt(d.cached_tokens) : "…"), d.predicted_by ? el("span", { class: "muted" }, ` (${d.predicted_by})`) : ""),
    el("span", {}, "TTFT ", el("b", {}, d.ttft_ms === null ? "–" : fmt(d.ttft_ms, 1) + " ms"), " · epp ",
       el("b", {}, fmt(d.overhead_ms, 2) + " ms"), " · status ", el("b", { class: d.status >= 400 ? "err" : "" }, d.status ?? "…")));
  const parts = [facts, el("p", { class: "hint" }, "Each scorer rates every candidate from 0 to 1; times its weight and " +
    "summed, that is the total, and the highest total is picked. Filters remove candidates before scoring.")];
  if (d.error) parts.push(el("p", { class: "err" }, d.error));
  const profiles = Object.entries(d.profiles || {});
  profiles.sort(([a], [b]) => (a === d.profile ? -1 : b === d.profile ? 1 : a.localeCompare(b)));
  for (const [name, prof] of profiles) parts.push(...scoreTable(name, prof, d));
  if (d.prompt !== undefined) parts.push(el("pre", {}, d.prompt));
  box.replaceChildren(...parts);
}

function refreshExplain() {
  const seq = state.selected !== null ? state.selected : state.newest;
  explain(seq !== null ? state.decisions.get(seq) : null);
}

$("#feed tbody").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr[data-seq]");
  if (!tr) return;
  const seq = Number(tr.dataset.seq);
  state.selected = state.selected === seq ? null : seq;
  for (const r of document.querySelectorAll("#feed tr.selected")) r.classList.remove("selected");
  if (state.selected !== null) tr.classList.add("selected");
  refreshExplain();
});

// ------------------------------------------------------------------ the stream

function describeConfig(cfg) {
  const parts = Object.entries(cfg.profiles).map(([name, p]) =>
    `${name}: ${p.scorers.map((s) => `${s.name} ×${s.weight}`).join(" + ") || "no scorers"}`);
  return `Scoring: ${parts.join("; ")}.`;
}

function onUpdate(msg) {
  if (msg.config) {
    state.config = msg.config;
    $("#config-line").textContent = describeConfig(msg.config);
    $("#prompt-note").textContent = msg.show_prompts ? "Prompts are shown (--ui-show-prompts)."
      : "Prompt text is not shown (user data; epp --ui-show-prompts shows it).";
  }
  renderPool(msg.pool);
  addDecisions(msg.decisions);
  charts(msg.stats, msg.pool);
  $("#feed-summary").textContent = `${msg.cursor} decided since epp started` + (msg.skipped ? ` · ${msg.skipped} not shown (too many to list)` : "");
  if (msg.decisions.length || state.selected !== null) refreshExplain();
  const s = $("#status"); s.className = "status ok"; s.textContent = "live · " + clock(msg.time);
}

function connect() {
  const es = new EventSource("/ui/events");
  es.onmessage = (ev) => onUpdate(JSON.parse(ev.data));
  es.onerror = () => { const s = $("#status"); s.className = "status bad"; s.textContent = "disconnected: retrying…"; };
}
connect();

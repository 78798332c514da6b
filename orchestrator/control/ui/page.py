"""The `orch ui` page: one HTML document with inline CSS and plain JavaScript, no downloads.

It polls /api/jobs for the list, and long-polls /api/jobs/ID/metrics for a job's new rows, so its curves
(inline SVG) grow while the job runs. Every value from the server is set as text, never as HTML.
`data-*` attributes on <body> and each chart (renders, rows, points) say what was drawn, for tests.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>orch</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
  header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: baseline; }
  header h1 { margin: 0; font-size: 20px; }
  header span { color: #aab; font-size: 12px; }
  main { display: grid; grid-template-columns: minmax(340px, 1fr) 2fr; gap: 16px; padding: 16px; }
  section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #eee; }
  tr.sel { background: #e8f0ff; }
  a { color: #2456c7; text-decoration: none; }
  .SUCCEEDED { color: #1a7f37; } .FAILED { color: #c62828; } .CANCELLED, .STOPPED { color: #a66b00; }
  .RUNNING { color: #0b7fa6; } .QUEUED, .STARTING, .PENDING { color: #667; }
  .charts { display: flex; flex-wrap: wrap; gap: 12px; }
  figure { margin: 0; } figcaption { font-weight: 600; font-size: 13px; }
  .kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 13px; }
  .muted { color: #778; }
</style>
</head>
<body data-renders="0" data-rows="0">
<header><h1>orch</h1><span id="where">jobs and campaigns of this ORCH_HOME (read-only)</span>
  <span id="updated"></span></header>
<main>
  <section>
    <h2>Jobs and campaigns</h2>
    <table id="jobs"><thead><tr><th>id</th><th>kind</th><th>state</th><th>step</th><th>loss</th></tr></thead>
      <tbody></tbody></table>
  </section>
  <section id="detail">
    <h2 id="title" class="muted">Select a job</h2>
    <div id="facts" class="kv"></div>
    <div class="charts" id="charts"></div>
    <h3 id="ckpt-title" hidden>Checkpoints</h3>
    <table id="checkpoints" hidden><thead><tr><th>step</th><th>created</th><th>size</th><th>verified</th>
      <th>metrics</th></tr></thead><tbody></tbody></table>
    <h3 id="board-title" hidden>Leaderboard</h3>
    <table id="leaderboard" hidden><thead></thead><tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
const COLORS = ["#2456c7", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#c2255c", "#5c940d"];
let selected = null, generation = 0, rows = [], renders = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function fmt(v) {
  if (typeof v !== "number") return v === null || v === undefined ? "" : String(v);
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : String(+v.toPrecision(4));
}
async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response.json();
}
function chosenId() {
  const m = location.hash.match(/^#job=(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

async function refreshList() {
  try {
    const jobs = await getJSON("/api/jobs");
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren();
    for (const job of jobs.slice().reverse()) {
      const tr = el("tr", {"data-id": job.id, class: job.id === selected ? "sel" : ""});
      const link = el("a", {href: "#job=" + encodeURIComponent(job.id)}, job.id);
      const td = el("td"); td.append(link); tr.append(td);
      tr.append(el("td", {}, job.kind), el("td", {class: job.state}, job.state),
                el("td", {}, job.metrics.step ?? (job.metrics.total_steps ?? "")),
                el("td", {}, fmt(job.metrics.loss ?? job.metrics.best)));
      body.append(tr);
    }
    if (!selected && !chosenId() && jobs.length) location.hash = "#job=" + encodeURIComponent(jobs[jobs.length - 1].id);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) { document.getElementById("updated").textContent = "server unreachable: " + e.message; }
  setTimeout(refreshList, 2000);
}

function chart(id, title, series, xLabel) {
  const W = 460, H = 240, L = 56, R = 12, T = 12, B = 30;
  const points = series.flatMap(s => s.points);
  const fig = el("figure", {id: "fig-" + id});
  fig.append(el("figcaption", {}, title));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("id", "chart-" + id);
  svg.setAttribute("class", "chart"); svg.setAttribute("data-points", String(points.length));
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  add("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fbfbfd", stroke: "#ccd"});
  if (points.length) {
    const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += Math.abs(y0) * 0.1 || 1; y0 -= Math.abs(y0) * 0.1 || 1; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    for (const [v, y] of [[y1, T + 4], [y0, H - B]]) {
      add("text", {x: L - 4, y, "text-anchor": "end", "font-size": 10}, fmt(v));
    }
    add("text", {x: L, y: H - 8, "font-size": 10}, fmt(x0));
    add("text", {x: W - R, y: H - 8, "text-anchor": "end", "font-size": 10}, fmt(x1) + " " + xLabel);
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const color = COLORS[i % COLORS.length];
      add("polyline", {points: s.points.map(p => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
                       fill: "none", stroke: color, "stroke-width": s.bold ? 3 : 1.8, "data-series": s.name,
                       "data-points": String(s.points.length)});
      add("text", {x: L + 8, y: T + 14 + 13 * i, fill: color, "font-size": 11}, s.name);
    });
  } else {
    add("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#889"}, "no data yet");
  }
  fig.append(svg);
  return fig;
}
const seriesOf = (data, key) => ({name: key, points: data.filter(r => typeof r[key] === "number" && !r.final)
                                                          .map(r => [r.step, r[key]])});

function drawJobCharts() {
  const charts = document.getElementById("charts");
  const loss = ["loss", "eval_loss"].map(k => seriesOf(rows, k)).filter(s => s.points.length);
  const speedKey = ["tokens_per_s", "samples_per_s"].find(k => rows.some(r => typeof r[k] === "number"));
  const speed = speedKey ? [seriesOf(rows, speedKey)] : [];
  charts.replaceChildren(chart("loss", "loss", loss.length ? loss : [seriesOf(rows, "loss")], "step"),
                         chart("throughput", speedKey || "throughput", speed, "step"));
  renders += 1;
  document.body.setAttribute("data-renders", String(renders));
  document.body.setAttribute("data-rows", String(rows.length));
  const history = document.body.getAttribute("data-row-history");
  document.body.setAttribute("data-row-history", (history ? history + "," : "") + rows.length);
}

async function followMetrics(id, gen) {
  let after = -1;
  while (gen === generation) {
    let answer;
    try { answer = await getJSON(`/api/jobs/${encodeURIComponent(id)}/metrics?after=${after}&wait=10`); }
    catch (e) { await new Promise(r => setTimeout(r, 2000)); continue; }
    if (gen !== generation) return;
    if (answer.rows.length) {
      rows = rows.concat(answer.rows.filter(r => !r.final || !rows.some(o => o.final)));
      after = Math.max(after, ...answer.rows.map(r => r.step));
      drawJobCharts();
    }
    if (TERMINAL.includes(answer.state) && !answer.rows.length) return;
    // No pause otherwise: the server already waited for new rows (a long poll), so ask again at once.
  }
}

function facts(pairs) {
  const box = document.getElementById("facts");
  box.replaceChildren();
  for (const [k, v] of pairs) {
    if (v !== undefined && v !== null && v !== "") box.append(el("b", {}, k), el("span", {}, v));
  }
}

function table(id, head, body) {
  const t = document.getElementById(id);
  t.hidden = false;
  document.getElementById(id === "checkpoints" ? "ckpt-title" : "board-title").hidden = false;
  if (head) { const tr = el("tr"); head.forEach(h => tr.append(el("th", {}, h))); t.tHead.replaceChildren(tr); }
  t.tBodies[0].replaceChildren(...body.map(cells => { const tr = el("tr");
    cells.forEach(c => tr.append(c instanceof Node ? c : el("td", {}, c))); return tr; }));
}

async function refreshDetail(id, gen) {
  if (gen !== generation) return;
  let d;
  try { d = await getJSON("/api/jobs/" + encodeURIComponent(id)); }
  catch (e) { facts([["error", e.message]]); return; }
  if (gen !== generation) return;
  const s = d.status;
  const title = document.getElementById("title");
  title.className = ""; title.textContent = `${s.id} (${s.kind})`;
  const ml = (d.tracking || {}).mlflow;
  facts([["state", s.state], ["message", s.message], ["attempts", s.attempts], ["storage", s.storage_uri],
         ["started", s.started_at], ["finished", s.finished_at],
         ["MLflow", ml ? `${ml.uri} run ${(ml.run || {}).run_id || "(not yet)"}; ${ml.errors} errors` : null]]);
  document.querySelector("#facts span").className = s.state;
  if (s.kind === "campaign") await drawCampaign(d, gen);
  else {
    table("checkpoints", null, (d.checkpoints || []).map(c => [
      c.step, c.created || "", (c.size_bytes / 1024).toFixed(0) + " KiB", c.verified ? "yes" : "no",
      Object.entries(c.metrics || {}).filter(([k]) => /loss|accuracy/.test(k))
        .map(([k, v]) => `${k}=${fmt(v)}`).join("  ")]));
  }
  if (!TERMINAL.includes(s.state)) setTimeout(() => refreshDetail(id, gen), 3000);
}

async function drawCampaign(d, gen) {
  const series = [];
  for (const t of d.trials) {
    const id = encodeURIComponent(d.status.id), trial = encodeURIComponent(t.id);
    const answer = await getJSON(`/api/jobs/${id}/metrics?trial=${trial}`);
    series.push({name: t.id, bold: d.best_trial && d.best_trial.id === t.id,
                 points: answer.rows.filter(r => typeof r[d.metric] === "number" && !r.final)
                                    .map(r => [r.step, r[d.metric]])});
  }
  if (gen !== generation) return;
  const title = `${d.metric} by trial (${d.mode})`;
  document.getElementById("charts").replaceChildren(chart("metric", title, series, "step"));
  renders += 1;
  document.body.setAttribute("data-renders", String(renders));
  const keys = [...new Set(d.leaderboard.flatMap(r => Object.keys(r.config)))].sort();
  table("leaderboard", ["#", "trial", "state", d.metric, "at step", "steps", ...keys],
        d.leaderboard.map(r => [r.rank, r.id, el("td", {class: r.state}, r.state), fmt(r.value), r.step ?? "", r.steps,
                                ...keys.map(k => fmt(r.config[k]))]));
}

function select() {
  const id = chosenId();
  if (!id || id === selected) return;
  selected = id; generation += 1; rows = [];
  for (const tr of document.querySelectorAll("#jobs tbody tr")) tr.className = tr.dataset.id === id ? "sel" : "";
  for (const t of ["checkpoints", "leaderboard", "ckpt-title", "board-title"]) document.getElementById(t).hidden = true;
  document.getElementById("charts").replaceChildren();
  refreshDetail(id, generation).then(() => {
    const row = document.querySelector(`#jobs tbody tr[data-id="${CSS.escape(id)}"]`);
    const kind = row ? row.children[1].textContent : "job";
    if (kind !== "campaign") followMetrics(id, generation);
  });
}
window.addEventListener("hashchange", select);
refreshList().then(select);
</script>
</body>
</html>
"""

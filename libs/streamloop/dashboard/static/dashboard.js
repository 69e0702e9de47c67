// The streamloop dashboard page: polls /api/snapshot and draws it with uPlot.
// After each update every chart carries data-points="<values drawn>" (the browser test reads it).
"use strict";

const POLL_MS = 2000;
const PALETTE = ["#2e86de", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#d35400",
                 "#2c3e50", "#f1c40f", "#7f8c8d", "#e84393", "#00b894"];
const MARK_COLORS = {PROMOTE: "#27ae60", CANARY: "#16a085", ROLLBACK: "#c0392b", DATA: "#e67e22",
                     PREDICTION: "#8e44ad", CONCEPT: "#c0392b"};
const charts = {};
let updates = 0;

function fmtTime(s) {
  if (s === null || s === undefined) return "-";
  return new Date(s * 1000).toLocaleTimeString([], {hour12: false});
}

function fmt(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 100 ? value.toFixed(1) : value.toPrecision(3);
  }
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}=${fmt(v)}`).join(" ");
  return String(value);
}

function marksPlugin(getMarks) {
  return {
    hooks: {
      draw: (u) => {
        const ctx = u.ctx;
        const marks = getMarks() || [];
        ctx.save();
        ctx.font = `${10 * devicePixelRatio}px sans-serif`;
        ctx.lineWidth = 1.5 * devicePixelRatio;
        let lastLabelEnd = -Infinity;
        for (const mark of marks) {
          const x = u.valToPos(mark.x, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = ctx.fillStyle = MARK_COLORS[mark.kind] || "#555";
          ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          // Labels only where they do not overlap the previous one; the line is always drawn.
          if (x > lastLabelEnd) {
            ctx.fillText(mark.label, x + 3 * devicePixelRatio, u.bbox.top + 10 * devicePixelRatio);
            lastLabelEnd = x + ctx.measureText(mark.label).width + 6 * devicePixelRatio;
          }
        }
        ctx.restore();
      },
    },
  };
}

// In a chart whose nulls are gaps, a value alone between two of them draws no line: show it as a point.
function lonePoints(u, seriesIdx, show) {
  if (show) return null;
  const values = u.data[seriesIdx];
  const lone = [];
  for (let i = 0; i < values.length; i++) {
    if (values[i] != null && values[i - 1] == null && values[i + 1] == null) lone.push(i);
  }
  return lone;
}

function renderChart(name, spec) {
  const figure = document.getElementById(`chart-${name}`);
  if (!figure || !spec) return;
  const plotEl = figure.querySelector(".plot");
  figure.querySelector("figcaption").textContent = spec.title;
  const points = spec.series.reduce((n, s) => n + s.values.filter((v) => v !== null).length, 0);
  figure.dataset.points = String(points);
  figure.dataset.series = String(spec.series.length);
  figure.dataset.marks = String((spec.marks || []).length);
  let state = charts[name];
  if (points === 0) {
    if (state) { state.plot.destroy(); delete charts[name]; }
    plotEl.innerHTML = '<div class="empty">no data yet</div>';
    figure.dataset.rendered = "empty";
    return;
  }
  const data = [spec.x, ...spec.series.map((s) => s.values)];
  // spec.gaps: a null is a round its source did not answer, drawn as a gap; otherwise only a
  // point another series has, and the line joins across it.
  const key = [spec.gaps ? "gaps" : "joined", ...spec.series.map((s) => s.label)].join("\u0000");
  if (state && state.key === key) {
    state.marks = spec.marks;
    state.plot.setData(data);
  } else {
    if (state) state.plot.destroy();
    plotEl.innerHTML = "";
    state = charts[name] = {key, marks: spec.marks};
    const opts = {
      width: Math.max(300, plotEl.clientWidth || 540),
      height: 230,
      scales: {x: {time: true}},
      series: [{}, ...spec.series.map((s, i) => ({
        label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: !spec.gaps,
        points: {show: spec.x.length < 60, filter: spec.gaps ? lonePoints : null},
      }))],
      axes: [{}, {label: spec.unit, size: 60}],
      legend: {live: false},
      plugins: [marksPlugin(() => charts[name] && charts[name].marks)],
    };
    state.plot = new uPlot(opts, data, plotEl);
  }
  figure.dataset.rendered = "chart";
}

const TIME_COLUMNS = new Set(["at", "window_end", "deployed_at"]);

function renderTable(id, rows, columns) {
  const table = document.getElementById(`table-${id}`);
  if (!table) return;
  rows = rows || [];
  columns = columns || Array.from(rows.reduce((set, row) => {
    Object.keys(row).forEach((k) => set.add(k)); return set;
  }, new Set()));
  table.dataset.rows = String(rows.length);
  if (!rows.length) { table.innerHTML = '<tr><td class="empty">none</td></tr>'; return; }
  const head = "<tr>" + columns.map((c) => `<th>${escapeHtml(c)}</th>`).join("") + "</tr>";
  const body = rows.map((row) => {
    const cls = [row.kind, row.state, row.severity].filter(Boolean).join(" ");
    return `<tr class="${escapeHtml(cls)}">` + columns.map((c) => {
      const v = row[c];
      const text = TIME_COLUMNS.has(c) ? fmtTime(v) : fmt(v);
      return `<td class="${typeof v === "number" ? "num" : ""}">${escapeHtml(text)}</td>`;
    }).join("") + "</tr>";
  }).join("");
  table.innerHTML = head + body;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// Lag and dead-letter counts come from the broker: once not read for a while they are unknown.
function lagLabel(label, snapshot) {
  const lag = snapshot.sources.lag;
  return lag && lag.stale ? `${label} (not read since ${fmtTime(lag.at)})` : label;
}

function renderSummary(snapshot) {
  const s = snapshot.summary;
  const metric = "accuracy" in s ? "accuracy" : "rmse";
  const tiles = [
    ["champion", s.champion], [metric, s[metric]], ["predictions/s", s.predictions_per_s],
    ["p99 latency ms", s.latency_p99_ms], [lagLabel("consumer lag", snapshot), s.total_lag],
    ["drift detections", s.drift_detections],
    ["promotions", s.promotions], ["rollbacks", s.rollbacks], ["canary rollbacks", s.canary_rollbacks],
    [lagLabel("dead letters", snapshot), s.dead_letters],
    ["active alerts", s.active_alerts],
  ];
  document.getElementById("summary").innerHTML = tiles.map(([label, value]) =>
    `<div class="tile"><b>${escapeHtml(fmt(value))}</b><small>${escapeHtml(label)}</small></div>`).join("");
  const active = snapshot.tables.alerts_active;
  document.getElementById("alerts-active").innerHTML = active.map((a) => {
    // Labels tell apart alerts of one name (a model_load_failed's slot and scorer replica).
    const where = [a.source, ...Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`)].join(" ");
    return `<div>⚠ <b>${escapeHtml(a.alert)}</b> ${escapeHtml(a.message)} (${escapeHtml(where)}, since ${fmtTime(a.at)})</div>`;
  }).join("");
}

function render(snapshot) {
  document.getElementById("pipeline").textContent = snapshot.pipeline;
  renderSummary(snapshot);
  for (const [name, spec] of Object.entries(snapshot.charts)) renderChart(name, spec);
  const t = snapshot.tables;
  renderTable("models", t.models);
  renderTable("worst_segments", t.worst_segments);
  renderTable("explanations", t.explanations,
    ["at", "event_id", "model_version", "output", "action", "top_contributions"]);
  renderTable("feature_influence", t.feature_influence);
  renderTable("deployments", t.deployments);
  renderTable("timeline", t.timeline, ["at", "kind", "model", "from_version", "to_version", "reason"]);
  renderTable("detections", t.detections,
    ["at", "kind", "detector", "feature", "statistic", "p_value", "effect_size", "severity", "model_version"]);
  renderTable("drift_statistics", t.drift_statistics);
  renderTable("lag", t.lag);
  renderTable("latency", t.latency);
  renderTable("dead_letter_topics", t.dead_letter_topics);
  renderTable("dead_letter_errors", t.dead_letter_errors);
  renderTable("alerts_recent", t.alerts_recent, ["at", "alert", "state", "source", "model_version", "message"]);
  renderTable("sources", Object.entries(snapshot.sources).map(([source, v]) => ({source, ...v})));
  updates += 1;
  document.body.dataset.updates = String(updates);
  const status = document.getElementById("status");
  status.textContent = `updated ${fmtTime(snapshot.generated_at)}`;
  status.className = "status";
}

async function poll() {
  try {
    const response = await fetch("/api/snapshot", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    const status = document.getElementById("status");
    status.textContent = `cannot reach the stack: ${error.message}`;
    status.className = "status error";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();

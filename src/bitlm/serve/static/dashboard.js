// bitlm dashboard: polls the server's JSON routes and draws the telemetry as SVG line charts.
// No libraries and no inline script (the page's Content-Security-Policy allows only 'self').
"use strict";

const POLL_MS = 2000;
const HISTORY = 500;
const COLORS = ["#2563eb", "#dc2626", "#059669"];
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// one chart: every named series present in the history, x = step, y scaled to their range
function drawChart(figure, history) {
  const names = figure.dataset.series.split(" ");
  const series = names
    .map((name) => ({
      name,
      points: history.filter((p) => name in p.metrics).map((p) => [p.step, p.metrics[name]]),
    }))
    .filter((s) => s.points.length > 0);
  figure.querySelector("svg")?.remove();
  figure.querySelector(".legend")?.remove();
  if (series.length === 0) return 0;
  const all = series.flatMap((s) => s.points);
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const [W, H, pad] = [300, 150, 28];
  const sx = (x) => pad + ((x - x0) / Math.max(x1 - x0, 1)) * (W - pad - 6);
  const sy = (y) => H - pad / 2 - ((y - y0) / (y1 - y0)) * (H - pad);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  chart.append(svg("line", { x1: pad, y1: H - pad / 2, x2: W, y2: H - pad / 2, stroke: "#e5e7eb" }));
  for (const [y, anchor] of [[y1, "top"], [y0, "bottom"]]) {
    const label = svg("text", { x: 2, y: sy(y) + (anchor === "top" ? 10 : -2), "font-size": 10, fill: "#6b7280" });
    label.textContent = y.toPrecision(3);
    chart.append(label);
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const points = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: color, "stroke-width": 1.5, "data-series": s.name }));
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  legend.textContent = series.map((s) => `${s.name} ${s.points.at(-1)[1].toPrecision(4)}`).join("   ");
  figure.append(chart, legend);
  return series.length;
}

function showWarnings(warnings) {
  const list = document.getElementById("warnings");
  list.replaceChildren();
  if (warnings.length === 0) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "none";
    list.append(item);
  }
  for (const w of warnings.slice(-10).reverse()) {
    const item = document.createElement("li");
    item.textContent = `step ${w.step}: ${w.message}`;
    list.append(item);
  }
}

function showConfig(info) {
  const table = document.getElementById("config");
  table.replaceChildren();
  const rows = { class: info.class, parameters: info.parameters.toLocaleString(), source: info.source,
    ...info.config, ...Object.fromEntries(Object.entries(info.metrics || {}).map(([k, v]) => [k, v.toPrecision(4)])) };
  for (const [key, value] of Object.entries(rows)) {
    const row = table.insertRow();
    row.insertCell().textContent = key;
    row.insertCell().textContent = value === null ? "—" : String(value);
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [state, metrics] = await Promise.all([getJSON("/status"), getJSON(`/metrics?history=${HISTORY}`)]);
    status.textContent = state.model ? `serving ${state.model}` : "no model loaded";
    status.className = "pill ok";
    document.getElementById("step").textContent =
      metrics.step === null ? "" : `training step ${metrics.step}`;
    let drawn = 0;
    for (const figure of document.querySelectorAll(".chart")) drawn += drawChart(figure, metrics.history);
    document.getElementById("no-telemetry").hidden = drawn > 0;
    showWarnings(metrics.warnings);
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    status.textContent = `unreachable: ${err.message}`;
    status.className = "pill down";
  }
}

async function loadConfig() {
  try {
    showConfig(await getJSON("/model_config"));
  } catch (err) {
    /* no model loaded: the table says so */
  }
}

// server-sent events of a streamed /generate: calls onEvent(data) for each "data: {…}" event
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("data: ")) onEvent(JSON.parse(event.slice(6)));
    }
  }
}

function describe(body) {
  const t = body.telemetry || {};
  const kcs = "K" in t ? ` · K ${t.K.toFixed(3)} C ${t.C_lz76.toFixed(3)} S ${t.S.toFixed(3)}` : "";
  const gate = body.safe === false ? " · the safety gate flagged this output" : "";
  return `${body.bytes} bytes in ${body.seconds}s · parity errors ${body.parity_errors}` + kcs + gate;
}

async function generate(event) {
  event.preventDefault();
  const output = document.getElementById("output");
  const info = document.getElementById("generation-info");
  const button = document.getElementById("generate-button");
  const prompt = document.getElementById("prompt").value;
  button.disabled = true;
  delete output.dataset.done;
  output.textContent = prompt;
  info.textContent = "generating…";
  try {
    const response = await fetch("/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        prompt,
        max_new_bytes: Number(document.getElementById("max-new-bytes").value),
        temperature: Number(document.getElementById("temperature").value),
        seed: Number(document.getElementById("seed").value),
        stream: true,
      }),
    });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error + (body.details ? `: ${body.details.map((d) => `${d.field} ${d.message}`).join("; ")}` : ""));
    }
    await readEvents(response, (data) => {
      if (data.text !== undefined) output.textContent += data.text;
      if (data.error) throw new Error(data.error);
      if (data.done) info.textContent = describe(data);
    });
  } catch (err) {
    output.textContent = `error: ${err.message}`;
  } finally {
    output.dataset.done = "1";
    button.disabled = false;
  }
}

document.getElementById("generate").addEventListener("submit", generate);
loadConfig();
refresh();
setInterval(refresh, POLL_MS);

// Line charts of tokens/s, time to first token and queue depth per model over the last
// 15 minutes, from /metrics samples this page takes every 5 s while it is open.
import uPlot from "../vendor/uplot.js";
import { call } from "./api.js";
import { $, clear, h } from "./dom.js";
import { byModel, parse } from "./prom.js";

const EVERY = 5000;
const WINDOW = 15 * 60; // seconds
const COLORS = ["#2563eb", "#d9480f", "#2b8a3e", "#9c36b5", "#c92a2a", "#0b7285"];

const CHARTS = [
  { id: "rate", title: "Tokens generated per second", unit: "tokens/s" },
  { id: "ttft", title: "Time to first token (mean over each interval)", unit: "s" },
  { id: "queue", title: "Requests waiting (queue depth)", unit: "requests" },
];

const samples = []; // {time, rate: {model: v}, ttft: {model: v}, queue: {model: v}}
let previous = null;
let timer = null;
const plots = {};
let plotted = "";

function sample(text) {
  const now = Date.now() / 1000;
  const m = parse(text);
  const current = { time: now, tokens: byModel(m, "llama_api_generated_tokens_total"),
    ttftSum: byModel(m, "llama_api_time_to_first_token_seconds_sum"),
    ttftCount: byModel(m, "llama_api_time_to_first_token_seconds_count") };
  const point = { time: now, rate: {}, ttft: {}, queue: byModel(m, "llama_api_requests_waiting") };
  if (previous) {
    const span = now - previous.time;
    for (const [model, tokens] of Object.entries(current.tokens)) {
      point.rate[model] = Math.max(0, tokens - (previous.tokens[model] || 0)) / span;
    }
    for (const [model, count] of Object.entries(current.ttftCount)) {
      const n = count - (previous.ttftCount[model] || 0);
      if (n > 0) point.ttft[model] = (current.ttftSum[model] - (previous.ttftSum[model] || 0)) / n;
    }
  }
  previous = current;
  samples.push(point);
  while (samples.length && samples[0].time < now - WINDOW) samples.shift();
}

function modelsSeen() {
  const seen = new Set();
  for (const point of samples) for (const kind of ["rate", "ttft", "queue"]) Object.keys(point[kind]).forEach((m) => seen.add(m));
  return [...seen].sort();
}

function draw() {
  const models = modelsSeen();
  const key = models.join("\n");
  const text = getComputedStyle(document.body).getPropertyValue("--text").trim() || "#222";
  const grid = getComputedStyle(document.body).getPropertyValue("--line").trim() || "#ccc";
  for (const chart of CHARTS) {
    const data = [samples.map((p) => p.time), ...models.map((model) => samples.map((p) => p[chart.id][model] ?? null))];
    const holder = $(`chart-${chart.id}`);
    if (plotted !== key || !plots[chart.id]) {
      plots[chart.id]?.destroy();
      const width = Math.max(280, holder.clientWidth || 600);
      const axis = { stroke: text, grid: { stroke: grid }, ticks: { stroke: grid } };
      plots[chart.id] = new uPlot({ width, height: 200, series: [{},
        ...models.map((model, i) => ({ label: model, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: chart.id === "ttft" }))],
      axes: [axis, { ...axis, label: chart.unit }], scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } } }, data, holder);
    } else {
      plots[chart.id].setData(data);
    }
    const latest = models.map((model) => {
      const value = [...samples].reverse().find((p) => p[chart.id][model] !== undefined)?.[chart.id][model];
      return value === undefined ? null : `${model}: ${value.toFixed(chart.id === "ttft" ? 3 : 1)} ${chart.unit}`;
    }).filter(Boolean);
    $(`latest-${chart.id}`).textContent = latest.length ? `Latest: ${latest.join("; ")}` : "No samples with a model yet.";
  }
  plotted = key;
}

async function tick() {
  try {
    const response = await call("/metrics", { raw: true, prompt: false });
    $("metrics-refused").hidden = true;
    sample(await response.text());
    if (!$("view-metrics").hidden) draw();
  } catch (error) {
    $("metrics-refused-text").textContent = error.message;
    $("metrics-refused").hidden = false;
  }
}

export function setup(section) {
  clear(section, h("h2", {}, "Metrics"),
    h("p", { class: "muted" }, "Sampled from /metrics every 5 s while this page is open; the last 15 minutes."),
    h("div", { id: "metrics-refused", class: "refused", role: "alert", hidden: true },
      h("p", { id: "metrics-refused-text" }),
      h("button", { type: "button", onclick: async () => { await call("/metrics", { raw: true }).catch(() => {}); tick(); } },
        "Enter the admin key")),
    CHARTS.map((chart) => h("figure", { class: "chart" },
      h("figcaption", {}, chart.title),
      h("div", { id: `chart-${chart.id}`, role: "img", "aria-label": `${chart.title}, per model` }),
      h("p", { id: `latest-${chart.id}`, class: "muted" }))));
  tick();
  timer = setInterval(tick, EVERY);
}

export function show() {
  if (timer) draw();
}

export function sampleNow() {
  return tick();
}

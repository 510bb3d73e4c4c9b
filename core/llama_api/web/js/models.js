// The operator's view of every model (/admin/models), kept live by /admin/events (each event
// refreshes the list) and a refresh every 5 s for memory and slots; load, unload, pin, rescan.
import { call, events } from "./api.js";
import { $, clear, fmt, h, notify } from "./dom.js";

let section;
let table;
let stream = null; // the AbortController of the /admin/events stream
let timer = null;
let pending = null;

const STATES = { unloaded: "unloaded", loading: "loading", loaded: "loaded", unloading: "unloading", failed: "failed" };

function stateCell(model) {
  let text = STATES[model.state] || model.state;
  if (model.state === "loading" && model.progress) {
    const p = model.progress;
    text += `${p.fraction != null ? ` ${Math.round(p.fraction * 100)}%` : ""}${p.message ? ` (${p.message})` : ""}`;
  }
  if (model.state === "failed" && model.error) text += `: ${model.error}`;
  return h("td", { class: `state state-${model.state}` }, text);
}

async function act(model, action, body) {
  try {
    await call(`/admin/models/${encodeURIComponent(model.id)}/${action}`, { method: "POST", body });
  } catch (error) {
    if (action === "unload" && error.status === 409 && !body?.force
        && confirm(`${model.id} is serving requests. Unload it anyway (they fail)?`)) {
      return act(model, "unload", { force: true });
    }
    notify(`${action} ${model.id}: ${error.message}`);
  }
  refresh();
}

function row(model) {
  const busy = model.state === "loading" || model.state === "unloading";
  return h("tr", { "data-model": model.id },
    h("th", { scope: "row" }, model.id),
    h("td", {}, model.backend),
    stateCell(model),
    h("td", {}, model.node ?? "–"),
    h("td", {}, fmt.bytes(model.rss_bytes)),
    h("td", {}, model.slots == null ? "–" : `${model.slots_in_use}/${model.slots}`),
    h("td", {}, model.queued ?? "–"),
    h("td", {}, model.pinned ? "yes" : "no"),
    h("td", {}, fmt.time(model.last_used)),
    h("td", { class: "actions" },
      model.state === "loaded"
        ? h("button", { type: "button", disabled: busy, "aria-label": `Unload ${model.id}`, onclick: () => act(model, "unload") }, "Unload")
        : h("button", { type: "button", disabled: busy, "aria-label": `Load ${model.id}`, onclick: () => act(model, "load") }, "Load"),
      h("button", { type: "button", "aria-label": `${model.pinned ? "Unpin" : "Pin"} ${model.id}`,
        onclick: () => act(model, model.pinned ? "unpin" : "pin") }, model.pinned ? "Unpin" : "Pin")));
}

export async function refresh() {
  try {
    const body = await call("/admin/models", { prompt: false });
    $("models-refused").hidden = true;
    clear(table.tBodies[0], body.models.map(row));
    $("models-queued").textContent = `${body.queued} request(s) waiting for a worker`;
    listen();
  } catch (error) {
    $("models-refused-text").textContent = error.message;
    $("models-refused").hidden = false;
  }
}

// Events arrive in bursts (loading, loaded): one refresh per burst.
function soon() {
  clearTimeout(pending);
  pending = setTimeout(refresh, 100);
}

async function listen() {
  if (stream) return;
  stream = new AbortController();
  try {
    const response = await call("/admin/events", { raw: true, signal: stream.signal, prompt: false });
    for await (const _ of events(response)) soon();
  } catch {
    // closed by hide(), or the server went away: the 5 s refresh notices
  }
  stream = null;
}

export function setup(node) {
  section = node;
  table = h("table", { class: "models" },
    h("caption", { class: "visually-hidden" }, "Models"),
    h("thead", {}, h("tr", {}, ["Model", "Backend", "State", "Node", "Memory", "Slots in use", "Queued", "Pinned", "Last used", "Actions"]
      .map((name) => h("th", { scope: "col" }, name)))),
    h("tbody"));
  clear(section,
    h("div", { class: "row" }, h("h2", {}, "Models"), h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: async () => {
        try { await call("/admin/rescan", { method: "POST" }); } catch (error) { notify(`Rescan: ${error.message}`); }
        refresh();
      } }, "Rescan the models folder")),
    h("div", { id: "models-refused", class: "refused", role: "alert", hidden: true },
      h("p", { id: "models-refused-text" }),
      h("button", { type: "button", onclick: async () => {
        try { await call("/admin/models"); } catch (error) { $("models-refused-text").textContent = error.message; }
        refresh();
      } }, "Enter the admin key")),
    h("div", { class: "scroll" }, table),
    h("p", { id: "models-queued", class: "muted" }));
}

export function show() {
  refresh();
  timer = setInterval(refresh, 5000);
}

export function hide() {
  clearInterval(timer);
  stream?.abort();
  stream = null;
}

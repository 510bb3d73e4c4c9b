// The chat view: pick a model, send, watch the answer stream in, stop it, regenerate, edit an
// earlier message (a new branch; the old one stays), with the settings of the request.
import { call, events, models as listModels } from "./api.js";
import { attachments, clearAttachments, setImageSupport } from "./attach.js";
import * as conversations from "./conversations.js";
import { $, h, notify } from "./dom.js";
import { render, update } from "./messages.js";
import { add, path, save, select } from "./store.js";

const state = { conversation: null, models: [], running: null };

const takesImages = (card) => Boolean(card && (card.meta?.vision || card.meta?.images
  || (card.meta?.input_modalities || []).includes("image")));

export async function refreshModels() {
  try {
    state.models = await listModels();
  } catch (error) {
    notify(`Could not list the models: ${error.message}`);
    return;
  }
  const select_ = $("chat-model");
  const chosen = select_.value || state.conversation?.model;
  // Embedding and rerank models can't chat: their meta says so (`task`).
  const chat = state.models.filter((m) => !["embeddings", "rerank"].includes(m.meta?.task));
  select_.replaceChildren(...chat.map((m) => h("option", { value: m.id }, `${m.id}${m.loaded ? " (loaded)" : ""}`)));
  const loaded = chat.find((m) => m.loaded);
  if (chosen && chat.some((m) => m.id === chosen)) select_.value = chosen;
  else if (loaded) select_.value = loaded.id;
  showModelState();
}

function card() {
  return state.models.find((m) => m.id === $("chat-model").value);
}

function showModelState() {
  const model = card();
  $("chat-model-state").textContent = !model ? "" : model.loaded ? "loaded"
    : "not loaded: it loads with the first message";
  setImageSupport(takesImages(model), model ? model.id : "");
}

function settings() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const out = { temperature: number("set-temperature"), top_p: number("set-top-p"),
    max_tokens: number("set-max-tokens"), seed: number("set-seed") };
  const schema = $("set-schema").value.trim();
  if (schema) {
    out.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(schema) } };
  }
  return out;
}

function requestMessages(nodes) {
  const system = $("set-system").value.trim();
  const out = system ? [{ role: "system", content: system }] : [];
  for (const node of nodes) {
    if (node.images?.length) {
      out.push({ role: node.role, content: [{ type: "text", text: node.content },
        ...node.images.map((url) => ({ type: "image_url", image_url: { url } }))] });
    } else {
      out.push({ role: node.role, content: node.content });
    }
  }
  return out;
}

// While a model loads for this answer, its progress (admin route; without the key, no
// progress is shown, and nothing is asked).
function watchLoad(node, model) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try {
      const status = await call(`/admin/models/${encodeURIComponent(model)}`, { prompt: false });
      if (status.state === "loading") {
        const p = status.progress;
        node.status = `Loading ${model}…${p?.fraction != null ? ` ${Math.round(p.fraction * 100)}%` : ""}${p?.message ? ` (${p.message})` : ""}`;
        update(node);
      }
    } catch { /* no admin access: the "Loading" line alone */ }
    if (!stopped) setTimeout(tick, 2000);
  };
  tick();
  return () => { stopped = true; };
}

async function generate(parent) {
  const conversation = state.conversation;
  const model = $("chat-model").value;
  if (!model) return notify("No chat model to send to.");
  let body;
  try {
    body = { model, messages: requestMessages(path(conversation)), stream: true,
      stream_options: { include_usage: true }, ...settings() };
  } catch (error) {
    return notify(`The JSON schema is not valid JSON: ${error.message}`);
  }
  const node = add(conversation, parent.id, { role: "assistant", content: "", reasoning: "", model });
  const loaded = card()?.loaded;
  node.status = loaded ? "Waiting for the first token…" : `Loading ${model}…`;
  render($("messages"), conversation, actions);
  const controller = new AbortController();
  state.running = controller;
  running(true);
  const unwatch = loaded ? () => {} : watchLoad(node, model);
  const started = performance.now();
  let first = null;
  let last = null;
  let frame = 0;
  const paint = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; update(node); }); };
  try {
    const response = await call("/v1/chat/completions", { method: "POST", body, signal: controller.signal, raw: true });
    for await (const { data } of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices?.[0];
      const delta = choice?.delta || {};
      if (delta.content || delta.reasoning_content) {
        last = performance.now();
        if (first === null) { first = last; node.status = null; unwatch(); }
        node.content += delta.content || "";
        node.reasoning += delta.reasoning_content || "";
      }
      if (choice?.finish_reason) node.stats = { ...node.stats, finish: choice.finish_reason };
      if (chunk.usage) node.stats = { ...node.stats, tokens: chunk.usage.completion_tokens };
      paint();
    }
  } catch (error) {
    if (error.name === "AbortError") node.stats = { ...node.stats, finish: "stopped" };
    else node.error = error.message;
  } finally {
    unwatch();
    state.running = null;
    running(false);
    cancelAnimationFrame(frame);
    node.status = null;
    const tokens = node.stats?.tokens;
    if (first !== null) {
      node.stats = { ...node.stats, ttft: (first - started) / 1000 };
      if (tokens > 1 && last > first) node.stats.rate = (tokens - 1) / ((last - first) / 1000);
    }
    render($("messages"), conversation, actions);
    await persist();
    refreshModels();
  }
}

function running(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function persist() {
  const conversation = state.conversation;
  conversation.model = $("chat-model").value;
  const firstUser = path(conversation).find((n) => n.role === "user");
  if (conversation.title === "New chat" && firstUser) conversation.title = firstUser.content.slice(0, 48) || "Chat";
  conversation.updated = Date.now();
  await save(conversation);
  conversations.refresh(state.conversation.id);
}

export function stop() {
  state.running?.abort();
}

async function send(event) {
  event?.preventDefault();
  const text = $("prompt").value;
  if (state.running || (!text.trim() && !attachments().length)) return;
  if (!state.conversation) open(conversations.fresh());
  const nodes = path(state.conversation);
  const parent = nodes[nodes.length - 1];
  const user = add(state.conversation, parent ? parent.id : null, { role: "user", content: text, images: attachments() });
  $("prompt").value = "";
  clearAttachments();
  await generate(user);
}

const actions = {
  render: () => render($("messages"), state.conversation, actions),
  switchTo: async (node) => {
    select(state.conversation, node);
    actions.render();
    await save(state.conversation);
  },
  regenerate: async (node) => {
    if (state.running) return;
    const parent = state.conversation.nodes[node.parent];
    state.conversation.leaf = parent.id;
    await generate(parent);
  },
  edit: async (node, text) => {
    if (state.running) return;
    const user = add(state.conversation, node.parent, { role: "user", content: text, images: node.images });
    await generate(user);
  },
};

export function open(conversation) {
  stop();
  state.conversation = conversation;
  if (conversation.model && [...$("chat-model").options].some((o) => o.value === conversation.model)) {
    $("chat-model").value = conversation.model;
    showModelState();
  }
  actions.render();
  return conversation;
}

export function current() {
  return state.conversation;
}

export function setup() {
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("chat-model").addEventListener("change", showModelState);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.running) { event.preventDefault(); stop(); }
  });
  conversations.setup({ open, current });
}

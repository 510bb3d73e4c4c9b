// The messages of the conversation's current branch: Markdown answers, reasoning folded
// apart, the numbers under each answer, and the buttons to edit, regenerate and switch branch.
import { clear, fmt, h } from "./dom.js";
import { markdownInto } from "./render.js";
import { path, siblings } from "./store.js";

const shown = new Map(); // message id -> its <li>, for updates while an answer streams

export function stats(node) {
  const s = node.stats;
  if (!s) return "";
  const parts = [];
  if (s.tokens !== undefined) parts.push(`${s.tokens} tokens`);
  if (s.ttft !== undefined) parts.push(`first token ${fmt.seconds(s.ttft)}`);
  if (s.rate) parts.push(`${s.rate.toFixed(1)} tokens/s`);
  if (s.finish) parts.push(`finish: ${s.finish}`);
  return parts.join(" · ");
}

function body(node) {
  const content = h("div", { class: "content" });
  if (node.role === "assistant") markdownInto(content, node.content);
  else content.textContent = node.content;
  return content;
}

function fill(item, node) {
  const parts = [];
  const open = item.querySelector("details.reasoning")?.open; // kept while it streams
  if (node.reasoning) {
    const reasoning = h("div", { class: "reasoning-text" });
    reasoning.textContent = node.reasoning;
    parts.push(h("details", { class: "reasoning", open }, h("summary", {}, "Reasoning"), reasoning));
  }
  if (node.status) parts.push(h("p", { class: "status muted", role: "status" }, node.status));
  parts.push(body(node));
  for (const image of node.images || []) parts.push(h("img", { src: image, alt: "attached image", class: "thumb" }));
  if (node.error) parts.push(h("p", { class: "error", role: "alert" }, node.error));
  if (node.stats) parts.push(h("p", { class: "stats muted" }, stats(node)));
  clear(item.querySelector(".body"), parts);
}

function branchSwitch(conversation, node, actions) {
  const all = siblings(conversation, node);
  if (all.length < 2) return null;
  const at = all.findIndex((other) => other.id === node.id);
  return h("span", { class: "branches" },
    h("button", { type: "button", "aria-label": "Previous branch", disabled: at === 0,
      onclick: () => actions.switchTo(all[at - 1]) }, "‹"),
    h("span", { class: "branch-count" }, `${at + 1}/${all.length}`),
    h("button", { type: "button", "aria-label": "Next branch", disabled: at === all.length - 1,
      onclick: () => actions.switchTo(all[at + 1]) }, "›"));
}

function editor(item, node, actions) {
  const area = h("textarea", { class: "edit", rows: 3, "aria-label": "Edited message" });
  area.value = node.content;
  const form = h("form", {
    class: "edit-form",
    onsubmit: (event) => { event.preventDefault(); actions.edit(node, area.value); },
  }, area, h("div", { class: "row" },
    h("button", { type: "button", onclick: () => actions.render() }, "Cancel"),
    h("button", { type: "submit", class: "primary" }, "Save and send")));
  clear(item.querySelector(".body"), form);
  area.focus();
}

export function render(list, conversation, actions) {
  shown.clear();
  const nodes = conversation ? path(conversation) : [];
  const last = nodes[nodes.length - 1];
  clear(list, nodes.map((node) => {
    const tools = h("div", { class: "tools" }, branchSwitch(conversation, node, actions));
    const item = h("li", { class: `message ${node.role}`, "data-id": node.id },
      h("div", { class: "who" }, node.role === "user" ? "You" : node.model || "Assistant", tools),
      h("div", { class: "body" }));
    if (node.role === "user") {
      tools.append(h("button", { type: "button", class: "edit-button", onclick: () => editor(item, node, actions) }, "Edit"));
    } else if (node === last) {
      tools.append(h("button", { type: "button", class: "regenerate", onclick: () => actions.regenerate(node) }, "Regenerate"));
    }
    fill(item, node);
    shown.set(node.id, item);
    return item;
  }));
  list.scrollTop = list.scrollHeight;
}

// Called for every streamed piece of an answer (at most once a frame).
export function update(node) {
  const item = shown.get(node.id);
  if (!item) return;
  const list = item.parentElement;
  const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  fill(item, node);
  if (atEnd) list.scrollTop = list.scrollHeight;
}

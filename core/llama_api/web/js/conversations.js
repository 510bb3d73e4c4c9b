// The list of conversations kept in the browser: new, open, rename, delete, export, import.
import { $, clear, h, notify } from "./dom.js";
import { all, create, remove, save, validImport } from "./store.js";

let chat; // {open, current}: the chat view's

export const fresh = () => create();

function download(name, value) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(value, null, 2)], { type: "application/json" }));
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export async function refresh(activeId = chat.current()?.id) {
  const items = await all();
  clear($("chat-list"), items.map((conversation) => h("li", { class: conversation.id === activeId ? "active" : "" },
    h("button", { type: "button", class: "open", "aria-current": conversation.id === activeId ? "true" : null,
      onclick: () => { chat.open(conversation); refresh(conversation.id); } }, conversation.title),
    h("span", { class: "item-tools" },
      h("button", { type: "button", "aria-label": `Rename ${conversation.title}`, onclick: async () => {
        const title = prompt("New name", conversation.title);
        if (title) { conversation.title = title; await save(conversation); refresh(); }
      } }, "Rename"),
      h("button", { type: "button", "aria-label": `Export ${conversation.title}`,
        onclick: () => download(`${conversation.title}.json`, [conversation]) }, "Export"),
      h("button", { type: "button", "aria-label": `Delete ${conversation.title}`, onclick: async () => {
        if (!confirm(`Delete "${conversation.title}"?`)) return;
        await remove(conversation.id);
        if (chat.current()?.id === conversation.id) chat.open(fresh());
        refresh();
      } }, "Delete")))));
  return items;
}

async function importFile(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  try {
    const parsed = JSON.parse(await file.text());
    const items = (Array.isArray(parsed) ? parsed : [parsed]).filter(validImport);
    if (!items.length) throw new Error("no conversation in it");
    for (const item of items) await save(item);
    await refresh();
    chat.open(items[0]);
  } catch (error) {
    notify(`Could not import ${file.name}: ${error.message}`);
  }
}

export async function setup(view) {
  chat = view;
  $("new-chat").addEventListener("click", () => { chat.open(fresh()); refresh(); $("prompt").focus(); });
  $("import-chats").addEventListener("change", importFile);
  const items = await refresh();
  chat.open(items[0] || fresh());
  refresh();
}

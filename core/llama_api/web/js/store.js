// Conversations kept in this browser (IndexedDB): they survive a reload and a server restart.
// A conversation is a tree of messages, so that an edited message starts a branch and the
// old branch stays: {id, title, updated, settings, model, nodes: {id: message}, leaf}.

const DB = "llama-api";
const STORE = "conversations";

let opened;
function db() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

async function run(mode, work) {
  const database = await db();
  return new Promise((resolve, reject) => {
    const transaction = database.transaction(STORE, mode);
    const request = work(transaction.objectStore(STORE));
    transaction.oncomplete = () => resolve(request && request.result);
    transaction.onerror = () => reject(transaction.error);
  });
}

export const all = async () =>
  ((await run("readonly", (store) => store.getAll())) || []).sort((a, b) => b.updated - a.updated);
export const save = (conversation) => run("readwrite", (store) => store.put(conversation));
export const remove = (id) => run("readwrite", (store) => store.delete(id));

export const newId = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);

export function create() {
  return { id: newId(), title: "New chat", updated: Date.now(), nodes: {}, leaf: null };
}

// The messages from the root to the leaf, in order.
export function path(conversation) {
  const out = [];
  for (let id = conversation.leaf; id; id = conversation.nodes[id].parent) out.unshift(conversation.nodes[id]);
  return out;
}

export function siblings(conversation, node) {
  return Object.values(conversation.nodes)
    .filter((other) => other.parent === node.parent)
    .sort((a, b) => a.created - b.created);
}

export function add(conversation, parent, message) {
  const node = { id: newId(), parent, created: Date.now(), ...message };
  conversation.nodes[node.id] = node;
  conversation.leaf = node.id;
  conversation.updated = Date.now();
  return node;
}

// Switch to `node`'s branch: its most recent descendant becomes the leaf.
export function select(conversation, node) {
  let leaf = node;
  for (;;) {
    const children = Object.values(conversation.nodes).filter((other) => other.parent === leaf.id);
    if (!children.length) break;
    leaf = children.reduce((a, b) => (a.created > b.created ? a : b));
  }
  conversation.leaf = leaf.id;
}

export function validImport(item) {
  return item && typeof item.id === "string" && item.nodes && typeof item.nodes === "object";
}

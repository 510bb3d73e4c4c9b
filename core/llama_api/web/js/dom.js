// Small DOM helpers: elements built with text nodes and properties, never from HTML strings
// (only the sanitized Markdown of render.js goes in as HTML).

export const $ = (id) => document.getElementById(id);

export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key in node && !key.startsWith("aria") && !key.startsWith("data")) node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export const fmt = {
  seconds: (s) => (s === null || s === undefined ? "–" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`),
  bytes: (b) => {
    if (b === null || b === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  time: (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–"),
  number: (n, digits = 1) => (n === null || n === undefined || Number.isNaN(n) ? "–" : n.toFixed(digits)),
};

// The page-wide message line: every API error is shown here with its message.
export function notify(message) {
  $("notice-text").textContent = message;
  $("notice").hidden = false;
}

export function dismiss() {
  $("notice").hidden = true;
}

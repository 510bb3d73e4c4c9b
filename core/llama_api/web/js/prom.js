// Reads Prometheus' text format (what /metrics answers) into {name: [{labels, value}]}.

const LINE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

export function parse(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = LINE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(LABEL)) {
      labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    (out[match[1]] ||= []).push({ labels, value: Number(match[3]) });
  }
  return out;
}

// name's samples summed per model label: {model: value}.
export function byModel(metrics, name) {
  const out = {};
  for (const { labels, value } of metrics[name] || []) {
    if (labels.model) out[labels.model] = (out[labels.model] || 0) + value;
  }
  return out;
}

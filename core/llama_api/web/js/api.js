// Calls to the server's public routes, with the key the route needs. A 401 or 403 asks for a
// key once and tries again; any other refusal becomes an ApiError carrying the server's message.
import { ask, key } from "./keys.js";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const isAdmin = (path) => path.startsWith("/admin") || path === "/metrics";

function headers(path, extra = {}) {
  const secret = (isAdmin(path) && key("admin")) || key("api") || key("admin");
  return secret ? { ...extra, Authorization: `Bearer ${secret}` } : extra;
}

export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const error = body.error || body;
    if (error && error.message) message = `${response.status}: ${error.message}`;
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(response.status, message);
}

// fetch with the right key; on 401/403 ask for one (admin key for admin routes) and retry.
export async function call(path, { method = "GET", body, signal, raw = false, prompt = true } = {}) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, signal, headers: headers(path, body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(path, init);
    if (response.ok) return raw ? response : response.json();
    const error = await errorOf(response);
    if ((response.status === 401 || response.status === 403) && prompt && attempt < 2) {
      const kind = isAdmin(path) || response.status === 403 ? "admin" : "api";
      if (await ask(kind, error.message)) continue;
    }
    throw error;
  }
}

// Server-sent events of a streamed response: yields {event, data} as they arrive.
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// The models of /v1/models (every model the server can serve, loaded or not).
export async function models() {
  return (await call("/v1/models")).data;
}

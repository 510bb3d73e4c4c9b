// The last requests the server answered (/admin/requests: route, model, status, tokens,
// time to first token, duration; never a prompt), every 2 s while shown.
import { call } from "./api.js";
import { $, clear, fmt, h } from "./dom.js";

let timer = null;
let body;

async function refresh() {
  try {
    const { requests } = await call("/admin/requests", { prompt: false });
    $("activity-refused").hidden = true;
    clear(body, requests.map((r) => h("tr", { class: r.status >= 400 ? "failed" : "" },
      h("td", {}, fmt.time(r.time)),
      h("td", {}, `${r.method} ${r.route}`),
      h("td", {}, r.model || "–"),
      h("td", {}, r.status),
      h("td", {}, `${r.prompt_tokens} / ${r.completion_tokens}`),
      h("td", {}, fmt.seconds(r.ttft)),
      h("td", {}, fmt.seconds(r.seconds)))));
  } catch (error) {
    $("activity-refused-text").textContent = error.message;
    $("activity-refused").hidden = false;
  }
}

export function setup(section) {
  body = h("tbody");
  clear(section, h("h2", {}, "Activity"),
    h("div", { id: "activity-refused", class: "refused", role: "alert", hidden: true },
      h("p", { id: "activity-refused-text" }),
      h("button", { type: "button", onclick: async () => { await call("/admin/requests").catch(() => {}); refresh(); } },
        "Enter the admin key")),
    h("div", { class: "scroll" }, h("table", { class: "activity" },
      h("caption", { class: "visually-hidden" }, "Recent requests, newest first"),
      h("thead", {}, h("tr", {}, ["Time", "Route", "Model", "Status", "Tokens (prompt / generated)", "First token", "Duration"]
        .map((name) => h("th", { scope: "col" }, name)))),
      body)));
}

export function show() {
  refresh();
  timer = setInterval(refresh, 2000);
}

export function hide() {
  clearInterval(timer);
}

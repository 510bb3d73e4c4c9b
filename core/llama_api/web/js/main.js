// The page: one view at a time, chosen by the address's #fragment; each view starts when it
// is first shown and pauses its live updates while hidden.
import * as activity from "./activity.js";
import * as attach from "./attach.js";
import * as chat from "./chat.js";
import { $, dismiss } from "./dom.js";
import { forget, showForget } from "./keys.js";
import * as metrics from "./metrics.js";
import * as models from "./models.js";
import * as playgrounds from "./playgrounds.js";

const VIEWS = { chat, playgrounds, models, activity, metrics };
const started = new Set();
let shown = null;

function show() {
  const name = VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : "chat";
  if (shown === name) return;
  if (shown) VIEWS[shown].hide?.();
  shown = name;
  for (const view of Object.keys(VIEWS)) $(`view-${view}`).hidden = view !== name;
  document.body.classList.toggle("fill", name === "chat");
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.view === name);
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
  }
  const section = $(`view-${name}`);
  if (!started.has(name) && name !== "chat") {
    started.add(name);
    VIEWS[name].setup(section);
  }
  VIEWS[name].show?.(section);
  if (name === "chat") chat.refreshModels();
}

async function start() {
  $("notice-close").addEventListener("click", dismiss);
  $("forget-keys").addEventListener("click", forget);
  showForget();
  attach.setup();
  await chat.refreshModels();
  chat.setup();
  window.addEventListener("hashchange", show);
  show();
  document.body.dataset.ready = "true"; // for the browser tests: every view can start now
}

start();

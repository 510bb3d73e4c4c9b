// Images attached to the next message (file picker, paste, drop), as data: URLs, for models
// that take images; for the others the picker is disabled and says why.
import { $, clear, h } from "./dom.js";

let images = [];
let allowed = false;

export const attachments = () => images.slice();

export function clearAttachments() {
  images = [];
  show();
}

export function setImageSupport(takes, model) {
  allowed = takes;
  $("attach").disabled = !takes;
  $("attach-label").classList.toggle("disabled", !takes);
  $("attach-reason").textContent = takes || !model ? "" : `${model} does not take images`;
  if (!takes) clearAttachments();
}

function show() {
  clear($("attachments"), images.map((url, index) => h("span", { class: "attachment" },
    h("img", { src: url, alt: `attachment ${index + 1}`, class: "thumb" }),
    h("button", { type: "button", "aria-label": `Remove attachment ${index + 1}`,
      onclick: () => { images.splice(index, 1); show(); } }, "×"))));
}

async function addFiles(files) {
  if (!allowed) return;
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    images.push(await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    }));
  }
  show();
}

export function setup() {
  $("attach").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
  $("prompt").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) { event.preventDefault(); addFiles(files); }
  });
  const composer = $("composer");
  composer.addEventListener("dragover", (event) => event.preventDefault());
  composer.addEventListener("drop", (event) => { event.preventDefault(); addFiles(event.dataTransfer.files); });
}

// The keys the page sends: asked for when the server refuses a call, kept in sessionStorage
// (this tab only). The API key for the API; the admin key only once an admin route wants it.
import { $ } from "./dom.js";

const STORE = { api: "llama-api.api-key", admin: "llama-api.admin-key" };

export function key(kind) {
  return sessionStorage.getItem(STORE[kind]);
}

export function forget() {
  for (const name of Object.values(STORE)) sessionStorage.removeItem(name);
  showForget();
}

export function showForget() {
  $("forget-keys").hidden = !(key("api") || key("admin"));
}

// Resolves to the key typed, or null when the person cancels.
export function ask(kind, why) {
  const dialog = $("key-dialog");
  $("key-title").textContent = kind === "admin" ? "Admin key" : "API key";
  $("key-why").textContent = why;
  $("key-input").value = "";
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      $("key-cancel").removeEventListener("click", onCancel);
      if (value) sessionStorage.setItem(STORE[kind], value);
      showForget();
      resolve(value || null);
    };
    const onClose = () => done(dialog.returnValue === "ok" ? $("key-input").value.trim() : null);
    const onCancel = () => dialog.close("cancel");
    dialog.addEventListener("close", onClose);
    $("key-cancel").addEventListener("click", onCancel);
    dialog.returnValue = "";
    dialog.showModal();
    $("key-input").focus();
  });
}

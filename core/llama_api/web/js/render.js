// Model output is untrusted: Markdown becomes HTML through marked, then DOMPurify keeps only
// harmless markup (no script, no event handler, no javascript: URL, no style), and only then
// does it reach the page. Code blocks get highlight.js classes and a copy button.
import { marked } from "../vendor/marked.js";
import DOMPurify from "../vendor/purify.js";
import hljs from "../vendor/highlight/core.js";
import { h } from "./dom.js";

const LANGUAGES = ["bash", "c", "cpp", "css", "diff", "go", "java", "javascript", "json",
  "markdown", "python", "rust", "shell", "sql", "typescript", "xml", "yaml"];
const ALIASES = { js: "javascript", ts: "typescript", py: "python", sh: "bash", html: "xml",
  yml: "yaml", "c++": "cpp", rs: "rust", md: "markdown" };

// Languages load in the background; a block rendered before they arrive is highlighted
// at the next render (every streamed token renders again).
const ready = Promise.all(LANGUAGES.map(async (name) => {
  const module = await import(`../vendor/highlight/${name}.js`);
  hljs.registerLanguage(name, module.default);
}));

marked.setOptions({ gfm: true, breaks: false });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("rel", "noopener noreferrer nofollow");
    node.setAttribute("target", "_blank");
  }
});

const PURIFY = { USE_PROFILES: { html: true }, FORBID_ATTR: ["style"], FORBID_TAGS: ["style", "form", "input", "button"] };

export function markdownInto(node, text) {
  node.innerHTML = DOMPurify.sanitize(marked.parse(text || ""), PURIFY);
  for (const code of node.querySelectorAll("pre > code")) {
    const language = (code.className.match(/language-([\w+-]+)/) || [])[1];
    const name = ALIASES[language] || language;
    if (name && hljs.getLanguage(name)) {
      code.innerHTML = hljs.highlight(code.textContent, { language: name }).value;
      code.classList.add("hljs");
    }
    const pre = code.parentElement;
    pre.classList.add("code");
    pre.append(h("button", {
      type: "button", class: "copy", textContent: "Copy", "aria-label": "Copy the code",
      onclick: async (event) => {
        await navigator.clipboard.writeText(code.textContent).catch(() => {});
        event.target.textContent = "Copied";
      },
    }));
  }
}

export const highlighting = ready;

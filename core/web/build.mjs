// Copies the built files of the page's libraries (package-lock.json's versions, installed by
// `npm ci`) into the core package, with a manifest of their versions and sha256, so that the
// server and `pip install llama-api` need no Node. Run by `make web`.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = join(here, "..", "llama_api", "web", "vendor");

// The languages the code highlighter knows: those small models write most.
const LANGUAGES = ["bash", "c", "cpp", "css", "diff", "go", "java", "javascript", "json",
  "markdown", "python", "rust", "shell", "sql", "typescript", "xml", "yaml"];

const FILES = [
  ["marked", "lib/marked.esm.js", "marked.js"],
  ["dompurify", "dist/purify.es.mjs", "purify.js"],
  ["uplot", "dist/uPlot.esm.js", "uplot.js"],
  ["uplot", "dist/uPlot.min.css", "uplot.css"],
  ["@highlightjs/cdn-assets", "es/core.min.js", "highlight/core.js"],
  ["@highlightjs/cdn-assets", "styles/github.min.css", "highlight/light.css"],
  ["@highlightjs/cdn-assets", "styles/github-dark.min.css", "highlight/dark.css"],
  ...LANGUAGES.map((name) => ["@highlightjs/cdn-assets", `es/languages/${name}.min.js`,
    `highlight/${name}.js`]),
];

rmSync(vendor, { recursive: true, force: true });
const manifest = { packages: {}, files: {} };
for (const [pkg, source, target] of FILES) {
  const bytes = readFileSync(join(modules, pkg, source));
  mkdirSync(dirname(join(vendor, target)), { recursive: true });
  writeFileSync(join(vendor, target), bytes);
  const version = JSON.parse(readFileSync(join(modules, pkg, "package.json"))).version;
  manifest.packages[pkg] = version;
  manifest.files[target] = { package: pkg, source,
    sha256: createHash("sha256").update(bytes).digest("hex") };
}
writeFileSync(join(vendor, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`copied ${FILES.length} files into ${vendor}`);

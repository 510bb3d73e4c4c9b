// Playgrounds for what a chat can't show: embeddings compared as a cosine-similarity heat
// map, documents reranked as sorted score bars, tokens in colour, and logprobs per token.
import { call, models } from "./api.js";
import { clear, h, notify } from "./dom.js";
import { cosineMatrix, heatColor } from "./vectors.js";

const lines = (text) => text.split("\n").map((line) => line.trim()).filter(Boolean);

function modelPicker(id, cards, task) {
  const preferred = cards.filter((card) => (task ? card.meta?.task === task : !["embeddings", "rerank"].includes(card.meta?.task)));
  const select = h("select", { id }, (preferred.length ? preferred : cards).map((card) => h("option", { value: card.id }, card.id)));
  return [h("label", { for: id }, "Model"), select];
}

function panel(title, id, fields, run, output) {
  const form = h("form", { class: "panel", "aria-labelledby": `${id}-title`, onsubmit: async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    output.setAttribute("aria-busy", "true");
    try {
      await run();
    } catch (error) {
      clear(output, h("p", { class: "error", role: "alert" }, error.message));
      notify(`${title}: ${error.message}`);
    } finally {
      button.disabled = false;
      output.removeAttribute("aria-busy");
    }
  } }, h("h2", { id: `${id}-title` }, title), ...fields,
  h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Run")), output);
  return form;
}

function embeddings(cards) {
  const texts = h("textarea", { id: "emb-texts", rows: 4 });
  texts.value = "A cat sleeps on the mat.\nA kitten naps in the sun.\nStocks fell sharply today.";
  const output = h("div", { id: "emb-output", class: "output" });
  const picker = modelPicker("emb-model", cards, "embeddings");
  return panel("Embeddings", "emb", [h("div", { class: "row" }, ...picker),
    h("label", { for: "emb-texts" }, "Texts, one per line"), texts], async () => {
    const input = lines(texts.value);
    const body = await call("/v1/embeddings", { method: "POST", body: { model: picker[1].value, input } });
    const matrix = cosineMatrix(body.data.map((item) => item.embedding));
    const label = (i) => `${i + 1}`;
    clear(output, h("table", { class: "heatmap" },
      h("caption", {}, `Cosine similarity (${body.data[0].embedding.length} dimensions)`),
      h("thead", {}, h("tr", {}, h("td"), input.map((_, i) => h("th", { scope: "col", title: input[i] }, label(i))))),
      h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", { scope: "row", title: input[i] }, `${label(i)}. ${input[i]}`),
        row.map((value) => {
          const cell = h("td", { class: "cell" }, value.toFixed(2));
          const [background, text] = heatColor(value);
          cell.style.backgroundColor = background; // CSSOM: allowed by the page's CSP
          cell.style.color = text;
          return cell;
        }))))));
  }, output);
}

function rerank(cards) {
  const query = h("input", { id: "rr-query", value: "how do cats sleep" });
  const docs = h("textarea", { id: "rr-docs", rows: 4 });
  docs.value = "Cats sleep most of the day.\nThe stock market fell on Tuesday.\nA kitten naps curled up in the sun.";
  const output = h("div", { id: "rr-output", class: "output" });
  const picker = modelPicker("rr-model", cards, "rerank");
  return panel("Rerank", "rr", [h("div", { class: "row" }, ...picker),
    h("label", { for: "rr-query" }, "Query"), query, h("label", { for: "rr-docs" }, "Documents, one per line"), docs], async () => {
    const documents = lines(docs.value);
    const body = await call("/v1/rerank", { method: "POST", body: { model: picker[1].value, query: query.value, documents } });
    const scores = body.results.map((r) => r.relevance_score);
    const low = Math.min(...scores, 0);
    const high = Math.max(...scores);
    clear(output, h("ol", { class: "bars", "aria-label": "Documents, most relevant first" }, body.results.map((result) => {
      const bar = h("span", { class: "bar" });
      bar.style.width = `${high > low ? 4 + 96 * ((result.relevance_score - low) / (high - low)) : 100}%`;
      return h("li", {}, h("span", { class: "doc" }, documents[result.index]),
        h("span", { class: "track" }, bar), h("span", { class: "score" }, result.relevance_score.toFixed(3)));
    })));
  }, output);
}

function tokenize(cards) {
  const text = h("textarea", { id: "tok-text", rows: 3 });
  text.value = "Hello world, tokenizers split words into pieces.";
  const output = h("div", { id: "tok-output", class: "output" });
  const picker = modelPicker("tok-model", cards);
  return panel("Tokenize", "tok", [h("div", { class: "row" }, ...picker), h("label", { for: "tok-text" }, "Text"), text], async () => {
    const body = await call("/tokenize", { method: "POST", body: { model: picker[1].value, prompt: text.value, with_pieces: true } });
    const pieces = body.pieces || body.tokens.map(String);
    clear(output, h("p", { class: "count" }, `${body.count ?? body.tokens.length} tokens`),
      h("p", { class: "tokens" }, pieces.map((piece, i) => h("span", { class: `token t${i % 6}`, title: `id ${body.tokens[i]}` },
        piece.replace(/\n/g, "↵")))));
  }, output);
}

function completion(cards) {
  const prompt = h("textarea", { id: "lp-prompt", rows: 3 });
  prompt.value = "The capital of France is";
  const maxTokens = h("input", { id: "lp-max", type: "number", min: 1, value: 16 });
  const output = h("div", { id: "lp-output", class: "output" });
  const picker = modelPicker("lp-model", cards);
  return panel("Completion with logprobs", "lp", [h("div", { class: "row" }, ...picker),
    h("label", { for: "lp-prompt" }, "Prompt"), prompt, h("label", { for: "lp-max" }, "Max tokens"), maxTokens], async () => {
    const body = await call("/v1/completions", { method: "POST",
      body: { model: picker[1].value, prompt: prompt.value, max_tokens: Number(maxTokens.value), logprobs: 3 } });
    const choice = body.choices[0];
    const lp = choice.logprobs;
    if (!lp?.tokens) {
      clear(output, h("p", {}, choice.text), h("p", { class: "muted" }, "This model returned no logprobs."));
      return;
    }
    clear(output, h("p", { class: "tokens", "aria-label": "Tokens: hover or focus one for its logprob" }, lp.tokens.map((token, i) => {
      const alternatives = Object.entries(lp.top_logprobs?.[i] || {}).map(([t, v]) => `${JSON.stringify(t)} ${v.toFixed(2)}`).join(", ");
      const p = Math.exp(lp.token_logprobs[i] ?? 0);
      return h("span", { class: `token lp${Math.min(4, Math.floor(p * 5))}`, tabindex: 0,
        title: `logprob ${(lp.token_logprobs[i] ?? 0).toFixed(3)} (p ${p.toFixed(2)})${alternatives ? `; top: ${alternatives}` : ""}` }, token);
    })), h("p", { class: "muted" }, `finish: ${choice.finish_reason}`));
  }, output);
}

export async function setup(section) {
  let cards = [];
  try {
    cards = await models();
  } catch (error) {
    notify(`Could not list the models: ${error.message}`);
  }
  clear(section, h("div", { class: "panels" }, embeddings(cards), rerank(cards), tokenize(cards), completion(cards)));
}

// Numbers for the embeddings playground: cosine similarities and the heat map's colours.

export function cosineMatrix(vectors) {
  const norms = vectors.map((v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0)) || 1);
  return vectors.map((a, i) => vectors.map((b, j) => a.reduce((sum, x, k) => sum + x * b[k], 0) / (norms[i] * norms[j])));
}

// [background, text] for a similarity in [-1, 1]: darker blue for closer, with text that keeps
// AA contrast on it.
export function heatColor(value) {
  const t = Math.max(0, Math.min(1, (value + 1) / 2));
  const lightness = Math.round(96 - t * 66); // 96% (far) .. 30% (same)
  return [`hsl(215 70% ${lightness}%)`, lightness > 58 ? "#111" : "#fff"];
}

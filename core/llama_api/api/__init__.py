"""The HTTP layer, one module per API resource.

- `routes`: the Litestar route handlers (the only module, with `admin`, `streaming`,
  `http`, `body_timeout`, `error_responses`, `state` and `metrics`, that knows Litestar);
- `completions`, `chat`, `embeddings`, `models`, `responses` (+ `responses_output`, its
  events), `anthropic`, `tokenize`, `rerank`: each resource's request in (normalized to the
  backend types) and its response and stream events out;
- `admin`: the operator routes (/admin, /metrics, /ready);
- `state`: `ServerState`, what every route shares (their `server` dependency);
- `metrics`: the Prometheus instruments, and each request's record the routes fill in;
- `choices`: run a request's choices on the model's slots and gather what they produce;
- `streaming`: the one server-sent-events path every generating route uses, given a renderer;
- `error_responses`: exceptions to error bodies, in the shape each route declares;
- `openapi`: what /schema says each route answers (error bodies, streams), written once;
- `body_timeout`: a client whose request body stops arriving gets a 408;
- `openai_common`: what every OpenAI resource shares (usage, the chunk stream's frame).
"""

"""The HTTP layer, one module per API resource.

- `routes`: the Litestar route handlers (the only module, with `streaming`, `http` and
  `error_responses`, that knows Request and Response);
- `completions`, `chat`, `embeddings`, `models`: each resource's request in (normalized to
  the backend types) and its response and stream chunks out;
- `choices`: run a request's choices on the model's slots and gather what they produce;
- `streaming`: the one server-sent-events path every generating route uses, given a renderer;
- `error_responses`: exceptions to error bodies, in the shape each route declares;
- `openai_common`: what every OpenAI resource shares (ids, usage, the chunk stream's frame).
"""

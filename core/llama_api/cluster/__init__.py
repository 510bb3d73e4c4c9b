"""Model workers on the nodes of a Ray cluster (`llama-api serve --ray ADDRESS`).

Imported only with `--ray`: without it the server never imports Ray.

- `node_actor`: the side on a node. A `WorkerActor` starts the same worker process a local
  server starts (`llama_api.workers.child`, the same plugin and messages) and relays its
  pipes; `installed_plugins` says which plugins a node has.
- `remote_process`: the server's side of an actor, shaped like a local process's pipes, so
  the server's `WorkerHandle` drives a remote worker as it drives a local one.
- `placement`: the cluster's nodes, what each can serve and hold, and where a model goes.
"""

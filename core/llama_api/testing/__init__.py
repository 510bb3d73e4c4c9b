"""Helpers for testing llama-api and its backend plugins.

- `serve(...)`: run a real server subprocess and talk to it over HTTP.
- `BackendConformance`: the contract every backend is held to; subclass it in a plugin's tests
  (`ServerSideConformance`: its server-side part alone, for models this machine can't run).
- `pid_exists`, `wait_for`: watch worker processes come and go.
- `require_installed`: skip (or, under `make test`, fail) where a test package is missing.
"""

from llama_api.testing.conformance import BackendConformance, ServerSideConformance
from llama_api.testing.processes import pid_exists, wait_for
from llama_api.testing.requirements import require_installed
from llama_api.testing.server import Server, free_port, serve

__all__ = ["BackendConformance", "Server", "ServerSideConformance", "free_port", "pid_exists",
           "require_installed", "serve", "wait_for"]

"""Helpers for testing llama-api and its backend plugins.

- `serve(...)`: run a real server subprocess and talk to it over HTTP.
- `BackendConformance`: the contract every backend is held to; subclass it in a plugin's tests.
- `pid_exists`, `wait_for`: watch worker processes come and go.
"""

from llama_api.testing.conformance import BackendConformance
from llama_api.testing.processes import pid_exists, wait_for
from llama_api.testing.server import Server, free_port, serve

__all__ = ["BackendConformance", "Server", "free_port", "pid_exists", "serve", "wait_for"]

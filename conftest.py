"""Settings for every test in the repository."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory):
    """Servers and apps the tests start keep their state (the Responses store) in a folder of
    this test process, not in the user's ~/.local/share/llama-api: `make test` runs two test
    processes at once, and nothing should carry over from one run to the next. Subprocesses
    inherit it through the environment."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved

"""Settings for every test in the repository."""

from __future__ import annotations

import os
import traceback

import pytest

# `make test` sets it: the set-up installed every test dependency, so a test that
# pytest.importorskip() skips hides a broken install, and fails instead. Other skips (no GPU,
# one core) stay skips.
STRICT_SKIPS = "LLAMA_API_STRICT_SKIPS"


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


def skipped_for_an_import(excinfo: pytest.ExceptionInfo | None) -> bool:
    """Whether pytest.importorskip() raised this skip, whatever reason it was given."""
    if excinfo is None or not isinstance(excinfo.value, pytest.skip.Exception):
        return False
    return any(frame.f_code.co_name == "importorskip"
               and frame.f_globals.get("__name__") == "_pytest.outcomes"
               for frame, _ in traceback.walk_tb(excinfo.tb))


def fail_instead(report, excinfo: pytest.ExceptionInfo) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{excinfo.value.msg}\n{STRICT_SKIPS} is set (`make test`): the set-up "
                       "installs every test dependency, so a failed import is a failure, "
                       "not a skip")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """An importorskip() in a test or a fixture."""
    report = yield
    if os.environ.get(STRICT_SKIPS) and skipped_for_an_import(call.excinfo):
        fail_instead(report, call.excinfo)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """An importorskip() at a test module's top: the module is a collection error."""
    report = yield
    call = getattr(report, "call", None)  # pytest keeps the collect call on its report
    if os.environ.get(STRICT_SKIPS) and call and skipped_for_an_import(call.excinfo):
        fail_instead(report, call.excinfo)
    return report

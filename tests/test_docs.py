"""The README documents every hook and every serve option (as datasette's docs tests do)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from llama_api.cli.main import build_parser
from llama_api.contract import hookspecs

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "llama_api_spec")]


def test_there_are_hooks():
    assert {"load_model", "unload_model", "generate", "embed", "discover_models",
            "register_backends"} <= set(HOOKS)


def documented_hooks() -> dict[str, list[str]]:
    """hook name -> parameter names, from the rows of the README's hook table."""
    rows = re.findall(r"^\| `(\w+)\(([^)`]*)\)` \|", README, flags=re.MULTILINE)
    return {name: [p.strip() for p in params.split(",") if p.strip()] for name, params in rows}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    spec = getattr(hookspecs, hook)
    assert spec.__doc__.strip()
    documented = documented_hooks()
    assert hook in documented, f"the README's hook table has no row for {hook}"
    assert documented[hook] == list(inspect.signature(spec).parameters), \
        f"the README documents {hook}({', '.join(documented[hook])})"


def test_the_hook_table_documents_only_real_hooks():
    assert set(documented_hooks()) == set(HOOKS)


def serve_options() -> list[str]:
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    return [opt for action in serve._actions for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"]


@pytest.mark.parametrize("option", serve_options())
def test_every_serve_option_is_documented(option):
    assert option in README

"""Install what the suite needs into its own environment, only when it is absent."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys


def ensure(modules: dict[str, str]) -> str | None:
    """`modules`: import name -> pip name. None once all import; otherwise why not."""
    missing = [pkg for module, pkg in modules.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    print(f"installing {', '.join(missing)} for the benchmark suite", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                           "-q", *missing], check=False, capture_output=True, text=True)
    importlib.invalidate_caches()
    if done.returncode != 0:
        return f"could not install {', '.join(missing)}: {done.stderr.strip()[-300:]}"
    return None

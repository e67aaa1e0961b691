"""The arrows between the packages (api -> services -> store / engine -> lemoe), checked on the
import graph of a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(*modules: str) -> set[str]:
    """Top-level packages in sys.modules after importing `modules` (and every submodule of the
    packages among them) in a fresh interpreter."""
    code = f"""
import importlib, json, pkgutil, sys
for name in {list(modules)!r}:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_services_and_errors_import_without_the_http_stack():
    loaded = _loaded_after("app.errors", "app.services", "app.metrics", "app.worker", "app.startup")
    assert not loaded & {"fastapi", "starlette"}, sorted(loaded & {"fastapi", "starlette"})

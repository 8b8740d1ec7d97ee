"""The service imports and serves with torch (and the training package) unavailable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib, importlib.abc, pkgutil, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "model_export"}:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
try:
    import torch  # noqa: F401
    raise SystemExit("the blocker did not block torch")
except ImportError:
    pass

import service
for module in pkgutil.iter_modules(service.__path__):
    importlib.import_module(f"service.{module.name}")

from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings

with TestClient(create_app(Settings(bundle=sys.argv[1]))) as client:
    response = client.post("/v1/suggest", json={"text": "The "})
    assert response.status_code == 200, response.text
    assert response.json()["suggestions"]
leaked = sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "model_export"})
assert not leaked, leaked
print("served without torch")
"""


def test_service_serves_with_torch_blocked(tiny_bundle: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("served without torch")

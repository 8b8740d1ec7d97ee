"""Schema fuzzing in the suite: schemathesis against the app's own ``/openapi.json`` on the tiny
bundle (:func:`benchmarks.fuzz.fuzz`, whose longer run is ``benchmarks/fuzz.py``).

Every operation, a fixed seed, at least :data:`CASES` generated cases besides the coverage ones;
any response that is a 5xx, has an undocumented status or content type, does not match its
documented schema, or refuses schema-valid data fails the test (with a curl command for each).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fuzz import fuzz
from service.app import create_app
from service.settings import Settings

CASES = 1000
SEED = 11


@pytest.mark.slow
def test_every_operation_answers_as_its_schema_says(tiny_bundle: Path) -> None:
    # Tightened limits: the document must publish the server's bounds, not only the API's.
    settings = Settings(bundle=tiny_bundle, max_text_chars=2000, max_k=20, max_candidates=200)
    app = create_app(settings)
    operations = {f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items()
                  for method in ops}  # fmt: skip
    runs = fuzz(app, CASES, SEED)
    failures = [f"{run.operation}: {failure}" for run in runs for failure in run.failures]
    assert sum(run.failed for run in runs) == 0, "\n\n".join(failures)
    assert {run.operation for run in runs} == operations
    assert all(run.coverage and run.positive for run in runs)
    assert sum(run.positive + run.negative for run in runs) >= CASES

# Two commands matter: `make serve` (set up, build the default bundle if missing, serve) and
# `make test` (set up, lint, type-check, run the whole suite). Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUNDLE ?= bundles/default

.PHONY: setup serve bundle test lint bench loadtest docker clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[serve,train,load,dev]'
	touch $@

bundle: setup
	@test -f $(BUNDLE)/manifest.json || $(PY) -m model_export build-default --out $(BUNDLE)

serve: bundle
	NEXTWORD_BUNDLE=$(BUNDLE) $(PY) -m service serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy service model_export

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

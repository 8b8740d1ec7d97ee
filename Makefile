# Two commands matter: `make serve` (set up, build the default bundle if missing, serve) and
# `make test` (set up, lint, type-check, run the whole suite). Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUNDLE ?= bundles/default
# make loadtest [HOST=URL] [USERS=] [RATE=] [DURATION=] [P99_MS=] [PIN=1]: against HOST when given,
# else against a local server on BUNDLE (loadtest/run.py; PIN=1: server and locust on separate CPUs).
# Plain `=`: only the command line sets them.
HOST =
PIN =
USERS = 50
RATE = 200
DURATION = 60
P99_MS = 10

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

loadtest: $(if $(HOST),setup,bundle)
	$(PY) loadtest/run.py $(if $(HOST),--host $(HOST),--serve $(BUNDLE)) --users $(USERS) --rate $(RATE) --duration $(DURATION) --p99-ms $(P99_MS) $(if $(PIN),--pin)

docker: setup
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-exhaustive lint bench bench-reconcile clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# an editable install leaves src/ uncompiled; where PYTHONDONTWRITEBYTECODE is set every
	# command would compile it again (~0.3 s of each start): compiled once, as pip does a wheel
	$(PY) -m compileall -q src > /dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steadyflow demo

# The suite runs in pytest-xdist worker processes: a test mostly waits on the services and
# on the child processes it starts, so 3 workers keep 2 cores busy. Every test makes its own
# databases, streams, ports and files (a test that must not overlap another would name an
# xdist_group: none needs one).
# TEST_WORKERS=0 runs it in this one process (as PYTEST_ARGS='-n 0' does).
TEST_WORKERS ?= 3

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# the long tiers: >= 2,000 generated examples of the correctness suite, and chaos runs
test-exhaustive: $(STAMP)
	$(PY) -m pytest -q -m exhaustive $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

# The benchmark has its own venv (dlt, connectorx, psycopg2, py-spy must not leak into the
# project's): bench/.venv from bench/requirements.txt, with steadyflow installed editable.
# Needs PostgreSQL on 127.0.0.1:5432 (BENCH_PG to change). Not part of `make test`.
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): bench/requirements.txt pyproject.toml
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements.txt -e .
	$(BENCH_VENV)/bin/python -m compileall -q src > /dev/null
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

# steadyflow reconcile vs reladiff (bench/reconcile_vs.py), writes bench/RECONCILE.md
bench-reconcile: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/reconcile_vs.py $(RECONCILE_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) bench/work steadyflow-demo

# estkit: `make run` serves EST on an embedded default, `make test` runs the suite
# (`make test-fast`: only the unit and in-process tests, no e2e processes).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DIR    ?= estkit-data
LISTEN ?= 127.0.0.1:8443

# Test files run in parallel (pytest-xdist), each file on one worker so that its
# shared server fixture starts once.  auto = one worker per core.
TEST_JOBS ?= auto

.PHONY: run test test-fast bench cluster install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/estkit quickstart --dir $(DIR) --listen $(LISTEN)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m 'not e2e' $(PYTEST_ARGS)

# A throwaway cluster on loopback: PostgreSQL, 3 nodes, HAProxy on 127.0.0.1:8443
# (estkit cluster-demo --help); Ctrl-C removes it.
cluster: $(VENV)/.installed
	$(VENV)/bin/estkit cluster-demo --haproxy-config deploy/haproxy/passthrough.cfg $(CLUSTER_ARGS)

bench: $(VENV)/.installed
	$(PY) bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

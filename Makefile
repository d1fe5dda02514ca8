# estkit: `make run` serves EST on an embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DIR    ?= estkit-data
LISTEN ?= 127.0.0.1:8443

.PHONY: run test bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/estkit quickstart --dir $(DIR) --listen $(LISTEN)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

# The two commands a fresh machine needs: `make demo` and `make test`.
# Both install whatever is missing first (Debian packages, a Python venv, cnitool and the
# reference plugins); re-runs skip what is already there.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)
	@bash scripts/install-tools.sh --no-smoke

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	@bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests testdata
	$(VENV)/bin/ruff format --check src tests testdata

test: setup lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .tools .build dist

# `make run` and `make test` each build .venv from nothing when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml tests/plugin/pyproject.toml tests/plugin/magnus_testplugin.py
	$(BIN)/python -m pip install -q -e '.[test,all]' ./tests/plugin
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/magnusd serve

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/track_this.py
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) build dist

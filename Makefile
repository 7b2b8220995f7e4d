# Two commands matter: `make demo` (set up, then run the demo on the embedded default) and
# `make test` (set up with the dev extras, then run the whole suite). Both create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is never needed here; the pin keeps any resolver from pulling a CUDA build
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q

.PHONY: demo test setup setup-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel

setup: $(BIN)/python
	$(PIP_INSTALL) -e .

setup-dev: $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'

demo: setup
	$(BIN)/onshore demo

test: setup-dev
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check src tests bench

bench: setup-dev
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache

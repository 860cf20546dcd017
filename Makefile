# Quickstart: `make select` (set up, build the default bundle if missing, select from the sample) and `make test`.
# `make lint`: ruff's lint and format checks and the import-layer contract (pyproject.toml). `make docs`: the docs site, built offline and strictly
# into site/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DOCS_STAMP := $(VENV)/.docs-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup select test lint docs bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU build from this machine's disk; a bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,dev]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

select: $(STAMP)
	$(BIN)/car-onnx info >/dev/null 2>&1 || $(BIN)/car-onnx export default
	$(BIN)/car-onnx select car_onnx/data/sample.json -o selected.json --n1 5 --force --show

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	rm -f $(VENV)/.docs-* && touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) selected.json site

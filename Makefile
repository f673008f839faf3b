# OpenVNA — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DATA   ?= var
ARGS   ?=

.PHONY: run test venv lint unit integration bench clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3-venv missing: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

## make run: install, load the synthetic sample studies once, start the archive
run: venv
	$(BIN)/openvna samples load --data-dir $(DATA)
	$(BIN)/openvna serve --data-dir $(DATA) $(ARGS)

## make test: install everything the tests need (dcmtk included) and run the suite
test: venv
	@command -v storescu >/dev/null 2>&1 || { \
	  echo "dcmtk missing: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk; }
	$(BIN)/ruff check openvna tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q $(ARGS)

lint: venv
	$(BIN)/ruff check openvna tests benchmarks
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv
	$(BIN)/pytest -q tests/integration

bench: venv
	$(BIN)/python benchmarks/dimse_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

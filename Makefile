# OpenVNA — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DATA   ?= var
ARGS   ?=
# The OHIF viewer served at /viewer: a prebuilt release from npm (docs/viewer.md).
OHIF_VERSION ?= 3.13.2
VIEWER_ROOT  ?= .viewer
VIEWER_DIST   = $(VIEWER_ROOT)/ohif
VIEWER_STAMP  = $(VIEWER_ROOT)/.ohif-$(OHIF_VERSION).stamp

.PHONY: run test venv viewer lint unit integration bench bench-dicomweb bench-ai clean

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

## make viewer: fetch the built OHIF viewer (npm pack, no dependency install) once
$(VIEWER_STAMP):
	@command -v npm >/dev/null 2>&1 || { \
	  echo "npm missing: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	rm -rf $(VIEWER_ROOT)/.fetch $(VIEWER_ROOT)/.ohif-*.stamp
	mkdir -p $(VIEWER_ROOT)/.fetch
	npm pack --silent --pack-destination $(VIEWER_ROOT)/.fetch @ohif/app@$(OHIF_VERSION)
	tar -xzmf $(VIEWER_ROOT)/.fetch/ohif-app-$(OHIF_VERSION).tgz -C $(VIEWER_ROOT)/.fetch package/dist
	test -f $(VIEWER_ROOT)/.fetch/package/dist/index.html
	rm -rf $(VIEWER_DIST)
	mv $(VIEWER_ROOT)/.fetch/package/dist $(VIEWER_DIST)
	rm -rf $(VIEWER_ROOT)/.fetch
	@touch $@
	@echo "OHIF $(OHIF_VERSION) is in $(VIEWER_DIST)"

viewer: $(VIEWER_STAMP)

## make run: install, load the synthetic sample studies once, start the archive
run: venv viewer
	$(BIN)/openvna samples load --data-dir $(DATA)
	$(BIN)/openvna serve --data-dir $(DATA) --viewer-dir $(VIEWER_DIST) $(ARGS)

## make test: install everything the tests need (dcmtk, chromium, the viewer) and run the suite
test: venv viewer
	@command -v storescu >/dev/null 2>&1 || { \
	  echo "dcmtk missing: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk; }
	@test -x /usr/bin/chromium || { \
	  echo "chromium missing: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/ruff check openvna tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q $(ARGS)

lint: venv
	$(BIN)/ruff check openvna tests benchmarks
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

integration: venv viewer
	$(BIN)/pytest -q tests/integration

bench: venv
	$(BIN)/python benchmarks/dimse_bench.py $(ARGS)

bench-dicomweb: venv
	$(BIN)/python benchmarks/dicomweb_bench.py $(ARGS)

bench-ai: venv
	$(BIN)/python benchmarks/volume_bench.py
	$(BIN)/python benchmarks/ai_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

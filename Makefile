# recbrew: the two commands a new user needs are `make quickstart` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Re-install when the package definition changes.
STAMP := $(VENV)/.recbrew-setup
OUT ?= gpu-check-out

.PHONY: setup test quickstart lint gpu-check clean chromium

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['tool']['recbrew']['no-deps']))")
	$(PY) -m pip uninstall --quiet -y $$($(PY) -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['tool']['recbrew']['remove']))") || true
	@touch $(STAMP)

# Headless Chromium opens the eval report in a test: installed when missing (Debian, as root); idempotent.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: chromium is missing (install it as root with apt-get install chromium); the eval report check needs it"; fi; }

setup: $(STAMP) chromium

test: $(STAMP) chromium
	$(PY) -m pytest -q

quickstart: $(STAMP)
	$(VENV)/bin/recbrew quickstart

lint: $(STAMP)
	$(PY) -m ruff check recbrew kernels eval tests

# Runs the gpu-marked tests and the GPU benchmarks (kernels, scoring, training with Liger) in a few minutes;
# writes results under $(OUT).
gpu-check: $(STAMP)
	mkdir -p $(OUT)
	$(PY) -m pytest -q -m gpu --junitxml=$(OUT)/gpu-tests.xml; echo $$? > $(OUT)/gpu-tests.rc
	$(VENV)/bin/recbrew bench kernels --json > $(OUT)/bench-kernels.json
	$(VENV)/bin/recbrew bench score --json > $(OUT)/bench-score.json
	$(VENV)/bin/recbrew bench train --json > $(OUT)/bench-train.json

clean:
	rm -rf build dist *.egg-info

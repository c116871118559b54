# recbrew: the two commands a new user needs are `make quickstart` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Re-install when the package definition changes.
STAMP := $(VENV)/.recbrew-setup
OUT ?= gpu-check-out

.PHONY: setup test quickstart lint gpu-check gpu-env gpu-wheels clean chromium

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --quiet -e '.[cpu,dev,ray]'
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

# Runs the gpu-marked tests and the GPU benchmarks (kernels, scoring, training) on a CUDA machine in under
# 5 minutes, offline, with random weights of SmolLM2-135M's shape; writes JSON (and each step's exit code)
# under $(OUT). GPU_PY is an interpreter whose CUDA torch, triton, transformers, peft and accelerate are
# used as they are (a venv over its site-packages); WHEELS is a folder of the other wheels recbrew imports
# (see `make gpu-wheels`), installed offline without dependency resolution. docs/kernels.md has the recipe.
GPU_PY ?= python3
GPU_VENV ?= build/venv-gpu
WHEELS ?=
GPU_BENCH_MODEL ?= random-smollm2
GPU_WHEEL_NAMES ?= trl datasets liger-kernel pydantic pydantic-core annotated-types typing-inspection gguf typer \
	rich shellingham markdown-it-py mdurl pygments setuptools wheel

$(GPU_VENV)/.recbrew-gpu: pyproject.toml
	@test -x $(GPU_VENV)/bin/python || $(GPU_PY) -m venv --system-site-packages $(GPU_VENV)
	@if [ -n "$(WHEELS)" ]; then \
	  $(GPU_VENV)/bin/python -m pip install --quiet --no-index --no-deps $(WHEELS)/*.whl && \
	  $(GPU_VENV)/bin/python -m pip install --quiet --no-index --find-links $(WHEELS) --no-deps -e .; \
	else $(GPU_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .; fi
	@touch $@

gpu-env: $(GPU_VENV)/.recbrew-gpu

# On a machine with internet: the wheels `gpu-env` needs for a Python 3.12 x86-64 GPU machine, into WHEELS.
gpu-wheels:
	@test -n "$(WHEELS)" || { echo "set WHEELS=DIR"; exit 2; }
	$(PY) -m pip download --quiet --dest $(WHEELS) --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 $(GPU_WHEEL_NAMES)

gpu-check: gpu-env
	mkdir -p $(OUT)
	-RECBREW_GPU_OUT=$(OUT) timeout 75 $(GPU_VENV)/bin/python -m pytest -q -m gpu --continue-on-collection-errors \
	  --junitxml=$(OUT)/gpu-tests.xml; echo $$? > $(OUT)/gpu-tests.rc
	-timeout 90 $(GPU_VENV)/bin/python -m recbrew.cli bench kernels --json > $(OUT)/bench-kernels.json; \
	  echo $$? > $(OUT)/bench-kernels.rc
	-timeout 60 $(GPU_VENV)/bin/python -m recbrew.cli bench score --model $(GPU_BENCH_MODEL) --examples none \
	  --grid 250x10,1000x50 --requests 8 --json > $(OUT)/bench-score.json; echo $$? > $(OUT)/bench-score.rc
	-timeout 75 $(GPU_VENV)/bin/python -m recbrew.cli bench train --model $(GPU_BENCH_MODEL) --json \
	  > $(OUT)/bench-train.json; echo $$? > $(OUT)/bench-train.rc
	@grep -H . $(OUT)/*.rc

clean:
	rm -rf build dist *.egg-info

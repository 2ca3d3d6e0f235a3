# `make test` and `make run` work on a fresh machine: they create .venv, install the pinned
# environment, build the native extensions, then test or run. Re-running is fast: each step
# is redone only when its inputs change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

NATIVE_SOURCES := $(wildcard csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.h csrc/cuda/*.cpp)

.PHONY: test lint format run bench clean

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(NATIVE_SOURCES)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.deps
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: lint $(VENV)/.built
	$(PY) -m pytest

run: $(VENV)/.built
	$(PY) bench/demo.py

clean:
	rm -rf build *.egg-info sparcl_kernels/*.so

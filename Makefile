# `make test` and `make run` work on a fresh machine: they create .venv, install the pinned
# environment, build the native extensions, then test or run. Re-running is fast: each step
# is redone only when its inputs change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

NATIVE_SOURCES := $(wildcard csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.h csrc/cuda/*.cpp \
	csrc/common/*.h)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: test test-arm lint format run demo clean tcmalloc gpu-check

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

test: lint test-arm $(VENV)/.built tcmalloc
	$(PY) -m pytest

# sparcl train preloads tcmalloc when it is installed (glibc's malloc hides the memory saving
# of sparse training); installed like the data, from Debian's archive.
tcmalloc:
	@/sbin/ldconfig -p | grep -q libtcmalloc_minimal.so.4 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libtcmalloc-minimal4; }

# The CPU kernels on aarch64 (NEON): the torch-free kernel test cross-compiled with Debian's
# g++-aarch64-linux-gnu and run under qemu-user (installed when missing). Correctness only:
# emulated timings mean nothing.
ARM_CXX := aarch64-linux-gnu-g++
ARM_TEST := build/test_kernels_aarch64
CPU_KERNEL_SOURCES := csrc/cpu/dispatch.cpp $(wildcard csrc/cpu/kernels_*.cpp)

$(ARM_TEST): csrc/cpu/tests/test_kernels.cpp $(CPU_KERNEL_SOURCES) $(wildcard csrc/cpu/*.h)
	@command -v $(ARM_CXX) >/dev/null && command -v qemu-aarch64 >/dev/null || \
		{ $(SUDO) apt-get update -qq && \
		  $(SUDO) apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null; }
	mkdir -p $(dir $@)
	$(ARM_CXX) -O2 -std=c++17 -ffp-contract=fast -fopenmp -Wall -Wextra -Werror \
		csrc/cpu/tests/test_kernels.cpp $(CPU_KERNEL_SOURCES) -o $@

test-arm: $(ARM_TEST)
	qemu-aarch64 -L /usr/aarch64-linux-gnu $(ARM_TEST)

# The main job: a short SparCL-DER++ run (TDM + DDR + DGM) on Split Fashion-MNIST (Debian's
# package) with the block convs of a ResNet-18 at 90% block sparsity on the CPU fast path.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

run: $(VENV)/.built $(FMNIST) tcmalloc
	$(VENV)/bin/sparcl train --model sparcl-derpp --dataset seq-fmnist --nf 32 --sparsity 0.9 \
		--block_size auto --n_epochs 6 --max_train_per_task 160 --buffer_size 500 \
		--alpha 0.1 --beta 0.5 --mask_current_logits --dgm_interval 10 --output_dir runs

# On a machine with a CUDA GPU: GPU tests, compute-sanitizer, tuner and GPU tables in one
# markdown report (bench/gpu_check.md), within ten minutes. Elsewhere it stops at once.
gpu-check: $(VENV)/.built
	$(PY) bench/gpu_check.py --report bench/gpu_check.md

demo: $(VENV)/.built
	$(PY) bench/demo.py

clean:
	rm -rf build *.egg-info sparcl_kernels/*.so

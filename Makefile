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

.PHONY: test test-arm test-torch-2.14 lint format run demo clean tcmalloc gpu-check

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements-dev.txt
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

# CI (CI=true) also runs the suite against torch 2.14 (test-torch-2.14, below). The aarch64
# test (one compiler, then qemu: about one core for ~3 minutes) runs beside the environment's
# install and build, and pytest runs two workers (one process kept about one of two cores
# busy: its compiler subprocesses and Python overhead are single-threaded; 9 -> 7 minutes).
PYTEST_WORKERS := -n 2
test: tcmalloc
	$(MAKE) --no-print-directory -j2 --output-sync=target lint test-arm $(VENV)/.built
	$(PY) -m pytest $(PYTEST_WORKERS)
	$(if $(filter true 1,$(CI)),$(MAKE) test-torch-2.14)

# A copy of the working tree (tracked and untracked files, not ignored ones) in $(1), keeping its
# build/ folder for incremental builds: extensions built there against another torch must never
# replace the ones .venv imports.
define copy_tree
	mkdir -p $(1)
	find $(1) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(1)
endef

# The torch release users install today: 2.14 (C++20 headers; on this project's machines its
# CUDA 13.0 build, ~5.5 GB, lies on disk and runs on the CPU). Its own venv, without the dev
# file's torch/triton pins (torch picks its triton); both extensions built, the CUDA one without
# a GPU; the suite (less TORCH_FREE_TESTS) runs on the CPU with the GPU tests deselected as usual.
TORCH_NEXT := 2.14.1
VENV_NEXT := .venv-torch214
TREE_NEXT := build/torch-2.14
PY_NEXT := $(abspath $(VENV_NEXT))/bin/python

# The machines' free disk varies (seen from under 1 GB to 80 GB): pip's own "No space left on
# device" comes minutes into the install and names neither the venv nor its size, so say both
# before starting. No pip cache: its copy of the wheels would double the footprint.
NEXT_VENV_GB := 7
$(VENV_NEXT)/.deps: requirements-dev.txt
	@free_gb=$$(df -Pk . | awk 'NR == 2 {print int($$4 / 1048576)}'); \
	test "$$free_gb" -ge $(NEXT_VENV_GB) || { echo "test-torch-2.14: $(VENV_NEXT) (torch \
	$(TORCH_NEXT), CUDA build) needs about $(NEXT_VENV_GB) GB free in $(CURDIR); $$free_gb GB free" >&2; \
	exit 1; }
	test -x $(PY_NEXT) || $(PYTHON) -m venv $(VENV_NEXT)
	grep -v -E '^(torch|triton)==' requirements-dev.txt > $(VENV_NEXT)/requirements.txt
	$(PY_NEXT) -m pip install --quiet --disable-pip-version-check --no-cache-dir \
		torch==$(TORCH_NEXT) -r $(VENV_NEXT)/requirements.txt
	touch $@

test-torch-2.14: $(VENV_NEXT)/.deps tcmalloc
	$(call copy_tree,$(TREE_NEXT))
	cd $(TREE_NEXT) && SPARCL_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CI_CUDA_ARCHS)" \
		$(PY_NEXT) setup.py --quiet build_ext --inplace
	cd $(TREE_NEXT) && $(PY_NEXT) -c "import sparcl_kernels._cpu, sparcl_kernels._cuda"
	cd $(TREE_NEXT) && PYTHONPATH=. $(PY_NEXT) -m pytest -p no:cacheprovider $(PYTEST_WORKERS) \
		$(addprefix --ignore=,$(TORCH_FREE_TESTS))

# The extension's GPU targets in this phase: the Blackwell ones, which tests/test_cuda_sources.py
# (sm_75, sm_80, sm_90 for every .cu) leaves out; each target of the default seven is one more
# nvcc pass over the kernels.
CI_CUDA_ARCHS := 10.0;12.0

# Tests whose outcome does not depend on the installed torch (the CPU kernels' and CUDA sources'
# torch-free builds: ~4 of the suite's minutes), run once, in the main phase; the torch-2.14 phase
# builds the real CUDA extension against its headers instead.
TORCH_FREE_TESTS := tests/test_cpu_sources.py tests/test_cuda_sources.py

# sparcl train preloads tcmalloc when it is installed (glibc's malloc hides the memory saving
# of sparse training); installed like the data, from Debian's archive.
tcmalloc:
	@/sbin/ldconfig -p | grep -q libtcmalloc_minimal.so.4 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libtcmalloc-minimal4; }

# The CPU kernels on aarch64 (NEON): the torch-free kernel test cross-compiled with Debian's
# g++-aarch64-linux-gnu and run under qemu-user (installed when missing). Correctness only:
# emulated timings mean nothing.
ARM_CXX := aarch64-linux-gnu-g++
CXX_STD := $(shell sed -n 's/^CXX_STANDARD = "\(.*\)"/\1/p' sparcl_kernels/toolchain.py)
ARM_TEST := build/test_kernels_aarch64
CPU_KERNEL_SOURCES := csrc/cpu/dispatch.cpp $(wildcard csrc/cpu/kernels_*.cpp)

$(ARM_TEST): sparcl_kernels/toolchain.py csrc/cpu/tests/test_kernels.cpp $(CPU_KERNEL_SOURCES) $(wildcard csrc/cpu/*.h)
	@command -v $(ARM_CXX) >/dev/null && command -v qemu-aarch64 >/dev/null || \
		{ $(SUDO) apt-get update -qq && \
		  $(SUDO) apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null; }
	mkdir -p $(dir $@)
	$(ARM_CXX) -O2 -std=$(CXX_STD) -ffp-contract=fast -fopenmp -Wall -Wextra -Werror \
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
		--block_size largest --n_epochs 6 --max_train_per_task 160 --buffer_size 500 \
		--alpha 0.1 --beta 0.5 --mask_current_logits --dgm_interval 10 --output_dir runs

# On a machine with a CUDA GPU: GPU tests, compute-sanitizer, tuner and GPU tables in one
# markdown report (bench/gpu_check.md), within ten minutes. Elsewhere it stops at once. It runs
# GPU_PYTHON (a Python whose torch has CUDA: .venv's pinned torch is a CPU build) in a copy of
# the tree, and builds the CUDA extension there first if it is missing.
GPU_PYTHON ?= python3
GPU_TREE := build/gpu-check

gpu-check:
	$(call copy_tree,$(GPU_TREE))
	cd $(GPU_TREE) && $(GPU_PYTHON) bench/gpu_check.py --report $(abspath bench/gpu_check.md)

demo: $(VENV)/.built
	$(PY) bench/demo.py

clean:
	rm -rf build *.egg-info sparcl_kernels/*.so

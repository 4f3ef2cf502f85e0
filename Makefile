# Each target is idempotent on a fresh machine: it installs what is missing, then runs.
#   make demo   the main job: the whole RLHF pipeline on the embedded default task
#   make test   every test: C++ kernels (ASan/UBSan, ctest), then pytest over every usable backend
#   make bench  the benchmarks against eager PyTorch (tables, JSON and plots in bench/results/)
#   make gpu-check  on a CUDA machine, first: CUDA tests, GPU benchmark, a short GPU demo (bench/results/<gpu>.json)
#   make gpu-compile  every Triton kernel compiled for sm_80/sm_90 without a GPU (bench/results/gpu_compile.json)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
JOBS ?= 2

.PHONY: install browser test test-cpp test-python demo bench gpu-check gpu-compile

# The editable install compiles the extension (minutes): redone only when this Python does not import
# this checkout's package and extension, or a build input changed since the last install.
STAMP := build/installed
BUILD_INPUTS := setup.py pyproject.toml csrc

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@if [ -f $(STAMP) ] && [ -z "$$(find $(BUILD_INPUTS) -newer $(STAMP))" ] && \
	    $(PYTHON) -I -c "import os, sys, fastrlhf._C; sys.exit(os.path.samefile(fastrlhf.__path__[0], 'fastrlhf') - 1)" \
	      2>/dev/null; then \
	  echo "fastrlhf and its extension are installed and up to date"; \
	else \
	  $(PIP) install --quiet "setuptools>=69" wheel ninja && \
	  MAX_JOBS=$(JOBS) $(PIP) install --quiet --no-build-isolation -e ".[dev]" && \
	  mkdir -p build && touch $(STAMP); \
	fi

# Headless Chromium (Debian's package) for the browser tests of `fastrlhf annotate`; where it cannot be
# installed (no apt-get, no root) those tests are skipped and say why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: the browser tests will be skipped"; \
	else echo "no apt-get to install chromium: the browser tests will be skipped"; fi

test-cpp:
	cmake -S . -B build/cmake -DFASTRLHF_SANITIZE=ON
	cmake --build build/cmake -j $(JOBS)
	ctest --test-dir build/cmake --output-on-failure

test-python: install browser
	$(PYTHON) -m pytest tests

test: test-cpp test-python

demo: install
	$(PYTHON) -m fastrlhf demo

bench: install
	$(PYTHON) -m fastrlhf bench

gpu-check: install
	$(PYTHON) -m fastrlhf.benchmark.gpu_check

gpu-compile: install
	$(PYTHON) -m fastrlhf.benchmark.gpu_compile

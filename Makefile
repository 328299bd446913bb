# Two commands for a fresh machine (see README):
#   make demo   set up .venv, then run the main job (nnU-Net demo on synthetic fundus images)
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the release the test suite runs with: an unpinned torch pulled in
# by a dependency could resolve to another multi-GB build.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo bench gpu-wheels gpu-suite-smoke clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/segzoo-nnunet demo

bench: setup
	$(BIN)/python benchmarks/bench_models.py

# wheels a bare GPU machine lacks (nnunetv2, omegaconf, ...) for benchmarks/gpu_suite.sh, about 45 MB
gpu-wheels: setup
	$(BIN)/python benchmarks/gpu_wheels.py .gpu_wheels

# the GPU suite with tiny models on the CPU: checks the script, not the speed
gpu-suite-smoke: setup
	SUITE_SMOKE=1 PYTHON=$(BIN)/python OUT=gpu_results/smoke bash benchmarks/gpu_suite.sh

clean:
	rm -rf $(VENV) demo_output .pytest_cache gpu_results .gpu_wheels

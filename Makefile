# Two commands for a fresh machine (see README):
#   make demo   set up .venv, then run the main job (nnU-Net demo on synthetic fundus images)
#   make test   set up .venv, then run the test suite
# Both install the versions in constraints.txt, the set the suite last passed with, so a new
# release of a dependency cannot change a fresh machine's result. `make test-latest` runs the
# suite against the newest releases instead; `make lock` records those as the new set.
# `make test-zoo-latest` runs the zoo's tests without nnunetv2, on the newest timm.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the release the test suite runs with: an unpinned torch pulled in
# by a dependency could resolve to another multi-GB build.
TORCH := torch==2.14.1 torchvision==0.29.1
LOCK := constraints.txt

.PHONY: setup test test-latest test-zoo-latest lock demo bench gpu-wheels gpu-suite-smoke clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[dev]"
	touch $@

# The newest releases pyproject.toml allows, in a venv of their own (.venv-latest)
LATEST := .venv-latest
$(LATEST)/.installed: pyproject.toml
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager $(TORCH) -e ".[dev]"
	touch $@

# The zoo without the nnU-Net bridge, on the newest releases (.venv-zoo-latest): nnunetv2 caps timm
# (the nnunet extra), the zoo does not, so this is where timm releases above that cap are tested.
# torch stays pinned (named again in the upgrade so --upgrade-strategy eager cannot move it).
ZOO_LATEST := .venv-zoo-latest
$(ZOO_LATEST)/.installed: pyproject.toml
	test -x $(ZOO_LATEST)/bin/python || $(PYTHON) -m venv $(ZOO_LATEST)
	$(ZOO_LATEST)/bin/python -m pip install -q --upgrade pip
	$(ZOO_LATEST)/bin/python -m pip install -q $(TORCH)
	$(ZOO_LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager $(TORCH) -e ".[test]"
	touch $@

test: setup
	$(BIN)/python -m pytest

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager $(TORCH) -e ".[dev]"
	$(LATEST)/bin/python -m pytest

# the zoo's tests only (the bridge's are left out: tests/conftest.py) on the newest timm,
# transformers and peft; the run's header prints their versions
test-zoo-latest: $(ZOO_LATEST)/.installed
	$(ZOO_LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager $(TORCH) -e ".[test]"
	@! $(ZOO_LATEST)/bin/python -c "import nnunetv2" 2>/dev/null || \
	  { echo "$(ZOO_LATEST) has nnunetv2, so its timm is capped: rm -rf $(ZOO_LATEST), then make test-zoo-latest"; exit 1; }
	$(ZOO_LATEST)/bin/python -m pytest

# Record the newest releases as the versions `make test` installs (run `make test` after it)
lock: $(LATEST)/.installed
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager $(TORCH) -e ".[dev]"
	{ echo "# Versions the test suite last passed with; \`make test\` installs them. Regenerate: make lock"; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^segzoo'; } > $(LOCK)

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
	rm -rf $(VENV) $(LATEST) $(ZOO_LATEST) demo_output .pytest_cache gpu_results .gpu_wheels

# Two commands for a fresh machine (see README):
#   make demo   set up .venv, then run the main job (nnU-Net demo on synthetic fundus images)
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: this workplace installs 2.14.1 from local files; an unpinned
# torch pulled in by a dependency would download several GB.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo bench clean

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

clean:
	rm -rf $(VENV) demo_output .pytest_cache

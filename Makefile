# The README's commands. `make test` sets up .venv on first use, then runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo clean

setup: $(STAMP)

# torch==2.13.0 first: the CPU wheel this machine carries (GPU users keep their own CUDA build,
# pyproject only asks for a range). Then the package, editable, with its dev and app (gradio) extras.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,app]'
	touch $(STAMP)

# lint-imports: the import contract in pyproject.toml (the core imports no application, no cycles).
# Two pytest-xdist workers, one torch thread each (tests/conftest.py), a test file per worker at a time, in the
# collection order (--no-loadscope-reorder: xdist would start the files with most tests first): the 8-minute
# SonicWorld demo starts at once beside the rest instead of after it.
test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

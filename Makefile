# changedet — the two commands: `make demo` and `make test`. Each sets everything up on a fresh
# machine with only Python 3.10+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test lint bench bench-env sample clean help

help:
	@echo "make demo   - set up .venv and run changedet on sample_tiles/ (results in $(DEMO_OUT)/)"
	@echo "make test   - set up .venv with test extras and run the test suite"
	@echo "make lint   - ruff check + format check"
	@echo "make bench  - run the benchmarks (writes benchmarks/RESULTS.md)"
	@echo "make sample - regenerate sample_tiles/ (bit for bit with the same scipy.fft)"
	@echo "make bench-env - set up .venv-bench with AROSICS (co-registration baseline; needs libgdal-dev, apt-installed when root)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "changedet needs Python 3.10 or newer (found %s); set PYTHON=python3.x" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/changedet demo --tiles sample_tiles --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check changedet tests benchmarks
	$(BIN)/ruff format --check changedet tests benchmarks

# With .venv-bench (make bench-env) the same scripts also run AROSICS side by side.
# BENCH_ARGS go to benchmarks/run.py, e.g. `make bench BENCH_ARGS=--large` (whole pipeline at 32768²).
BENCH_ARGS ?=
bench: $(STAMP)
	@if [ -x .venv-bench/bin/python ]; then .venv-bench/bin/python benchmarks/run.py $(BENCH_ARGS); \
	else echo "(no .venv-bench: AROSICS comparison skipped; run make bench-env first)"; $(BIN)/python benchmarks/run.py $(BENCH_ARGS); fi

# A separate environment with AROSICS for the co-registration comparison; never a runtime dependency.
bench-env:
	bash benchmarks/setup_arosics_env.sh

sample: $(STAMP)
	$(BIN)/changedet sample --out sample_tiles --preset samples

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache

# slmscale — two commands do everything: `make demo` and `make test`.
# Both create .venv on first use and are idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch build pip installs first. The default is the CPU wheel this project is developed with;
# on a GPU cluster use your own, e.g.  make install TORCH_SPEC="torch==2.5.1", or TORCH_SPEC= to let pip
# resolve torch>=2.4 itself.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.slmscale-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install lint test test-all demo bench bench-gpu clean help

help:
	@echo "make demo      run the whole pipeline end to end on the embedded default (writes demo_out/)"
	@echo "make test      the hygiene gate (ruff, import layering), then the test suite ('make test-all' adds slow tests)"
	@echo "make lint      the hygiene gate alone: ruff check, and import-linter's layering contracts (.importlinter)"
	@echo "make bench     run the benchmarks in benchmarks/ (prints side-by-side ratios)"
	@echo "make bench-gpu on a CUDA machine: the CUDA tests, then HuBERT real-time factor and training MFU"
	@echo "make install   create $(VENV) and install slmscale with its dev extras"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install --quiet "$(TORCH_SPEC)",@echo "TORCH_SPEC empty: keeping the torch pip finds")
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# ruff (style, bugs, the ban on bare `import models` & co.), then import-linter's contracts, which need the
# sources in their installed layout (see tests/test_hygiene.py), then the tests of the gate itself.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests/test_hygiene.py

test: lint
	$(PY) -m pytest -m "not slow" --deselect tests/test_hygiene.py $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest --deselect tests/test_hygiene.py $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/slmscale demo $(DEMO_ARGS)

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# GPU checks only (what `make bench` adds on CUDA, without the CPU comparisons); install your CUDA torch first
# (TORCH_SPEC=...).
bench-gpu: $(STAMP)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: torch sees no CUDA device')"
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)
	$(PY) benchmarks/bench_tokenize.py --skip-cpu --gpu-minutes 240
	$(PY) benchmarks/bench_train.py --skip-cpu

clean:
	rm -rf $(VENV) demo_out .pytest_cache build .import_linter_cache

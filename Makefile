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
	@echo "make bench-gpu on a fresh CUDA machine: install, CUDA tests, HuBERT real-time factor, training MFU -> benchmarks/results/, README table"
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

# One command on a fresh CUDA machine (issue #17; target < 8 minutes on one H100/H200). Estimates, not yet timed:
#   install ~1-2 min  a venv ($(GPU_VENV), git-ignored) that sees the machine's own CUDA torch (--system-site-packages), so pip
#                     keeps it; adds slmscale[dev,gpu] (liger-kernel, nvidia-ml-py). No torch on the machine: pip
#                     installs PyPI's (a CUDA build on Linux x86_64).
#   tests    ~1.5 min pytest -m gpu: bf16+compile run, fused kernels on vs off (2 x 200 updates), no host sync in an
#                     update, HuBERT on the GPU, batched k-means assignment.
#   tokenize ~1.5 min HuBERT-base in process (240 min of audio, ~2 s) and the Ray Data pipeline at 100 and 400 files.
#   train    ~3.5 min MFU at 20M/85M/155M/823M, paper tokens per update, 20/10/5/2 measured updates after a
#                     compiling one; fused on and off at 85M and 823M (~20-40 s of compilation per variant).
#   render   < 1 s    README's GPU table from benchmarks/results/*.json (needs the gpu-results markers in README.md).
# Each step has its own time limit; the benchmarks write their JSON after every measurement, so a failed or timed-out
# step keeps what was measured and the later steps still run; the target fails at the end if any step failed.
GPU_VENV ?= build/venv-gpu
GPU_PY   := $(GPU_VENV)/bin/python
BENCH_GPU_TRAIN_ARGS ?=
BENCH_GPU_TOKENIZE_ARGS ?=
bench-gpu:
	@test -x $(GPU_PY) || $(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_PY) -m pip install --quiet -e ".[dev,gpu]"
	$(GPU_PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu: torch ' + torch.__version__ + ' sees no CUDA device')"
	@rc=0; \
	timeout 300 $(GPU_PY) -m pytest -m gpu $(PYTEST_ARGS) || { echo "bench-gpu: CUDA tests FAILED"; rc=1; }; \
	timeout 240 $(GPU_PY) benchmarks/bench_tokenize.py --skip-cpu --gpu-minutes 240 $(BENCH_GPU_TOKENIZE_ARGS) \
	  || { echo "bench-gpu: tokenizer benchmark FAILED (figures so far are in benchmarks/results/)"; rc=1; }; \
	timeout 420 $(GPU_PY) benchmarks/bench_train.py --skip-cpu $(BENCH_GPU_TRAIN_ARGS) \
	  || { echo "bench-gpu: training benchmark FAILED (figures so far are in benchmarks/results/)"; rc=1; }; \
	$(GPU_PY) benchmarks/render_results.py || rc=1; \
	exit $$rc

clean:
	rm -rf $(VENV) demo_out .pytest_cache build .import_linter_cache

# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Exact pin: an unpinned torch resolves to several GB of CUDA wheels.
TORCH_PIN := torch==2.13.0
# Exact pin: committed figures are byte-identical only under the same matplotlib (and its fonts).
MPL_PIN := matplotlib==3.11.2

.PHONY: demo paper figures lab docs test test-slow test-gpu gpu-check lint format bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PIN) $(MPL_PIN)
	touch $(STAMP)

# Builds the demo corpus on first use, then trains tiny-mla for about five minutes.
demo: $(STAMP)
	$(PY) pretrain/run.py --config pretrain/configs/demo.toml

# The miniature study (pretrain/configs/paper-mini/study.toml): trains whichever of its runs
# is missing, resumes unfinished ones, then regenerates figures/. SCALE=gpu: seed 002's small
# presets on a GPU; SCALE=1.3b: seed 000's configuration (a cluster and a corpus of your own).
SCALE ?= cpu
paper: $(STAMP)
	$(PY) pretrain/paper.py --scale $(SCALE)

# Re-executes every notebook against existing runs (no training) and rewrites figures/.
RUNS ?= runs/paper-mini
figures: $(STAMP)
	$(VENV)/bin/labkit figures --runs $(RUNS)

# JupyterLab with jupytext: notebooks/*.py open as notebooks and stay paired with their .ipynb.
# `make lab RUNS=runs/mine` points every notebook at other runs (their figures go to
# runs/mine/figures). Extra flags through LAB_ARGS, e.g.
# `make lab LAB_ARGS="--allow-root --port 8890 --no-browser"`.
LAB_ARGS ?=
empty :=
space := $(empty) $(empty)
# Jupytext opens .py files as notebooks by default (a setting of this .venv's JupyterLab only).
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): $(STAMP)
	mkdir -p $(dir $@)
	echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' > $@
lab: $(STAMP) $(LAB_OVERRIDES)
	LABKIT_RUNS="$(subst $(space),:,$(abspath $(RUNS)))" \
	    $(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) $(LAB_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# The documentation site (docs/, mkdocs-material) into site/; broken links fail the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
test: lint docs
	$(PY) -m pytest -q -m "not slow and not gpu"; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

# For a session lent a GPU, with PyTorch (CUDA) and Triton preinstalled: the gpu tests, the
# attention benchmark and trainer MFU (small presets, a 1.3B layer slice) in 10 minutes, recorded
# in benchmarks/RESULTS.md. Makes .venv-gpu on the machine's own torch/triton and installs only
# missing pure-Python dependencies (never torch, triton or CUDA wheels); see
# labkit/bench/gpu_check.py. Offline: WHEELS=dir of wheels. DRY_RUN=1 prints the plan only.
gpu-check:
	$(PYTHON) -m labkit.bench.gpu_check $(if $(WHEELS),--wheels $(WHEELS)) $(if $(DRY_RUN),--dry-run)

bench: $(STAMP)
	$(PY) -m labkit.bench.model

clean-venv:
	rm -rf $(VENV)

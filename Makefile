# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Exact pin: an unpinned torch resolves to several GB of CUDA wheels.
TORCH_PIN := torch==2.13.0

.PHONY: demo test test-slow test-gpu lint format bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PIN)
	touch $(STAMP)

# Builds the demo corpus on first use, then trains tiny-mla for about five minutes.
demo: $(STAMP)
	$(PY) pretrain/run.py --config pretrain/configs/demo.toml

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
test: lint
	$(PY) -m pytest -q -m "not slow and not gpu"; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

bench: $(STAMP)
	$(PY) -m labkit.bench.model

clean-venv:
	rm -rf $(VENV)

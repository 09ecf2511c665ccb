# Set-up and the two README commands. `make demo` and `make test` work from a clean clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

.PHONY: venv demo test test-fast test-reliability lint tiny-models bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

venv: $(VENV)/.installed

tiny-models: venv
	HF_HUB_OFFLINE=1 $(PY) -m pipeline.tiny artifacts/models

demo: tiny-models
	HF_HUB_OFFLINE=1 $(PY) -m pipeline +sweep=smoke

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-fast: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

test-reliability: venv   # the faults produced for real (signals, kills, full disks, Hub errors)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m reliability

lint: venv
	$(PY) -m ruff check pipeline tests bench

bench: tiny-models   # the quick benches; bench/latency_bench.py (needs `pip install -e '.[bench]'`) takes ~30 min
	HF_HUB_OFFLINE=1 $(PY) bench/plan_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/cache_bench.py

clean:
	rm -rf artifacts/cache artifacts/runs artifacts/models artifacts/published

# Two commands on a fresh machine: `make demo` and `make test` (README "Quick start").
VENV ?= .venv
PY := $(VENV)/bin/python
export TORCHDYNAMO_DISABLE ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo study test test-fast lint format gpu-check clean-venv

setup:  ## create/reuse the virtual environment and install everything (idempotent)
	@bash tools/bootstrap_env.sh

demo: setup  ## the main job on CPU (see README)
	$(PY) -m megatron_hapo.demo

study: setup  ## the reproduction study, quick variant: 4 methods x 3 seeds (docs/reproduction.md; ~30 min on 2 cores)
	$(PY) tools/run_study.py --quick --jobs 2

test: setup lint  ## the whole test suite (what CI runs)
	$(PY) -m pytest tests -q --durations=15

test-fast: setup  ## everything except tests marked slow
	$(PY) -m pytest tests -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

gpu-check:  ## on a GPU machine: GPU tests + benchmarks
	bash benchmarks/gpu/run_all.sh

clean-venv:
	rm -rf $(VENV)

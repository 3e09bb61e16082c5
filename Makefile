# Every target bootstraps .venv first, so a fresh clone needs nothing but python3 (>= 3.11).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= proxy/demo/portico.yaml

.PHONY: run test lint typecheck unit interop-setup services-setup conformance bench bench-smoke check clean console-screenshot

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,otlp]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/portico serve --config $(CONFIG)

check: $(STAMP)
	$(BIN)/portico check --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check proxy plugins tests bench
	$(BIN)/lint-imports --config setup.cfg

typecheck: $(STAMP)
	$(BIN)/mypy --strict proxy plugins

# Third-party MCP software for the interop tests (TypeScript SDK, Inspector CLI, reference servers),
# installed once into the ignored .cache/interop.
interop-setup: $(STAMP)
	PYTHON=$(PYTHON) bash tests/interop/setup.sh

# The official MCP conformance suite's server scenarios, run against our fixture backend directly and
# through the gateway; fails when the gateway's results differ (tests/conformance/, docs/conformance.md).
conformance: $(STAMP) interop-setup
	$(BIN)/python -m tests.conformance.run

# Real programs some tests run against (redis-server, chromium), from Debian's packages when missing.
services-setup:
	bash tests/services/setup.sh

unit: $(STAMP) interop-setup services-setup
	$(BIN)/python -m pytest -q

# pytest runs last, so its summary is the closing line of the run.
test: lint typecheck bench-smoke conformance unit

# The whole benchmark (about 15 minutes): closed loop, the open-loop scenarios and sweeps, the scale
# scenarios, the peer gateways side by side (installed into bench/.peers/ first), then bench/plots/*.png
# and the tables from bench/out/*.json.
bench: $(STAMP)
	$(BIN)/python -m bench.core_ws
	$(BIN)/python -m bench.open_loop --sweep
	$(BIN)/python -m bench.scale
	bash bench/peers_setup.sh
	$(BIN)/python -m bench.peers --rates $(PEER_RATES) --seconds 4 --connections 32
	$(BIN)/python -m bench.report

PEER_RATES ?= 500 1000 1500 2000 3000 4000 5000 6000 7000 8000 9000

# Proves the benchmark harness works (every call answered, none failed); it asserts nothing about speed.
bench-smoke: $(STAMP)
	$(BIN)/python -m bench.core_ws --smoke && $(BIN)/python -m bench.open_loop --smoke \
		&& $(BIN)/python -m bench.scale --smoke

# The README's picture of the web console, taken by its browser test from the demo config.
console-screenshot: $(STAMP) services-setup
	PORTICO_CONSOLE_SCREENSHOT=docs/console.png $(BIN)/python -m pytest -q -p no:randomly \
		tests/test_console.py -k lists_backends

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# inference-node-exporter: every target sets up its own virtualenv (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: venv run test lint bench deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import exporter, pytest, hypothesis, ruff, mypy"
	touch $(STAMP)

venv: $(STAMP)

## Start the daemon in the foreground (defaults: vLLM at 127.0.0.1:8000, listen on :19400).
run: $(STAMP)
	$(BIN)/inference-node-exporter $(ARGS)

## promtool (Debian's prometheus package), which the tests use.
deps:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package for promtool"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; }

lint: $(STAMP)
	$(BIN)/ruff check exporter tests
	$(BIN)/mypy

## The whole suite: lint, unit, property, end-to-end and the real-vLLM integration test.
test: lint deps
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# inference-node-exporter: every target sets up its own virtualenv (.venv) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: venv run test test-fast lint bench deps clean rules dashboards

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,report]'
	$(BIN)/python -c "import exporter, pytest, hypothesis, ruff, mypy"
	touch $(STAMP)

venv: $(STAMP)

## Start the daemon in the foreground (defaults: vLLM at 127.0.0.1:8000, listen on :19400).
run: $(STAMP)
	$(BIN)/inference-node-exporter $(ARGS)

## Debian packages the tests use: promtool and Prometheus, Alertmanager, shellcheck,
## systemd-analyze, openssl, Chromium (the report's page in a real browser), and a system
## python3 with venv for the install test.
DEB_TOOLS := promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
             shellcheck:shellcheck systemd-analyze:systemd openssl:openssl \
             chromium:chromium
deps:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	/usr/bin/python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check exporter tests alerts dashboards
	$(BIN)/mypy
	$(BIN)/mypy --strict alerts/generate.py
	$(BIN)/mypy --strict dashboards/generate.py

## Regenerate the committed rule files and dashboards (rules: ARGS='--set knob=value ...').
rules: $(STAMP)
	$(BIN)/python alerts/generate.py $(ARGS)

dashboards: $(STAMP)
	$(BIN)/python dashboards/generate.py

## The whole suite: lint, unit, property, end-to-end and the real-vLLM integration test.
test: lint deps
	$(BIN)/pytest

## The fast tier: unit, property and golden tests, no outside server or program but the
## golden test's promtool check; under a minute (tests/conftest.py says what is slow).
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

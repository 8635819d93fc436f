# Every target installs what it needs: a virtual environment under .venv (pinned by
# constraints.txt) and the Node tools under mock/ (pinned by mock/package-lock.json).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
SPEC := openapi/togai-ingestion.yaml
GEN_CONFIG := generator-config.yml
PACKAGE := togai_client
GENERATED := generated/$(PACKAGE)
PRISM := mock/node_modules/.bin/prism
SPECTRAL := mock/node_modules/.bin/spectral

.PHONY: help venv node redis-server generate check-generated lint typecheck pytest test demo bench clean

help:
	@echo "make demo             start Prism on the spec and send the sample file through togai-ingest"
	@echo "make test             check-generated, lint, mypy --strict, pytest"
	@echo "make generate         regenerate $(GENERATED) from $(SPEC) and $(GEN_CONFIG)"
	@echo "make check-generated  fail (with a diff) when $(GENERATED) differs from a fresh generation"
	@echo "make spec-diff        what changed in $(SPEC) since HEAD (SPEC_BASE=REV), additive or breaking"
	@echo "make bench            benchmark against the raw-httpx baseline (writes bench/results.md)"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' \
		2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $@

venv: $(VENV)/.installed

mock/node_modules/.installed: mock/package.json mock/package-lock.json
	npm ci --prefix mock --no-audit --no-fund --loglevel=error
	touch $@

node: mock/node_modules/.installed

generate: venv
	VENV_BIN=$(BIN) scripts/generate.sh $(GENERATED)
	@echo "regenerated $(GENERATED)"

check-generated: venv
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	VENV_BIN=$(BIN) scripts/generate.sh $$tmp/$(PACKAGE); \
	if ! diff -ruN --exclude=__pycache__ $(GENERATED) $$tmp/$(PACKAGE); then \
		echo "check-generated: $(GENERATED) is not what $(SPEC) and $(GEN_CONFIG) produce."; \
		echo "Run 'make generate' and commit the result; never edit $(GENERATED) by hand."; \
		exit 1; \
	fi; \
	echo "check-generated: $(GENERATED) matches $(SPEC)"

# What changed in $(SPEC) since $(SPEC_BASE) (default HEAD), marked additive or breaking;
# fails (exit 1) when a change is breaking. The rule is in scripts/spec_diff.py.
SPEC_BASE ?= HEAD
.PHONY: spec-diff
spec-diff: venv
	$(BIN)/python scripts/spec_diff.py --base $(SPEC_BASE)

lint: venv node
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/openapi-spec-validator $(SPEC)
	$(SPECTRAL) lint --ruleset .spectral.yaml --fail-severity=error $(SPEC)

typecheck: venv
	$(BIN)/mypy --strict generated/$(PACKAGE) src/togai_ingest tests bench scripts

# The shared rate limit's tests and the fleet benchmark start a real Redis (Debian's package).
redis-server:
	@command -v redis-server >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server)

pytest: venv node redis-server
	$(BIN)/pytest

test: check-generated lint typecheck pytest

demo: venv node
	$(BIN)/python scripts/demo.py

bench: venv redis-server
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) mock/node_modules .mypy_cache .pytest_cache .ruff_cache .hypothesis

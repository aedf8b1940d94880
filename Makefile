# Two commands for a newcomer: `make run` and `make test`. Everything else is for contributors.

CARGO ?= cargo
# PostgreSQL for the test suite; tests create and drop their own databases on it.
export CRM_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres

.PHONY: run test build contract-tools bench fmt fmt-check clippy unit e2e openapi openapi-check nextest-available clean test-peers

# The real OpenID provider the SSO tests run (npm `oidc-provider`, pinned by its lockfile).
OIDC_DIR := tests/oidc-provider

## Start the API on 127.0.0.1:8080 with the embedded SQLite database under ./var/.
run:
	$(CARGO) run -p crm -- serve

## Format and lint checks, unit tests, end-to-end tests on SQLite and PostgreSQL, spec drift.
test: fmt-check clippy openapi-check test-peers contract-tools
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## Install the test peers (the OpenID provider) from their lockfile.
test-peers: $(OIDC_DIR)/node_modules/.package-lock.json

$(OIDC_DIR)/node_modules/.package-lock.json: $(OIDC_DIR)/package-lock.json $(OIDC_DIR)/package.json
	cd $(OIDC_DIR) && npm ci --no-audit --no-fund
	touch $@

## Schemathesis for the contract test (PyPI, pinned), in a virtualenv under tests/contract.
CONTRACT_VENV := tests/contract/.venv
contract-tools: $(CONTRACT_VENV)/.installed

$(CONTRACT_VENV)/.installed: tests/contract/requirements.txt
	python3 -m venv $(CONTRACT_VENV)
	$(CONTRACT_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/contract/requirements.txt
	touch $@

## Benchmark (not part of `make test`): release build, seeded data set, wrk against the API,
## the minimal baseline server and pgbench side by side; results in bench/results/.
## BENCH_ARGS e.g. "--db postgres --scale small --duration 5 --rounds 2".
BENCH_ARGS ?=
bench:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(CARGO) build --release -p crm -p crm-bench-baseline
	python3 bench/run.py $(BENCH_ARGS)

build:
	$(CARGO) build --workspace

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Regenerate the committed OpenAPI document from the code.
openapi:
	$(CARGO) run -q -p crm -- openapi --out openapi/openapi.json

## Fail when the committed OpenAPI document differs from the code.
openapi-check:
	$(CARGO) run -q -p crm -- openapi --check openapi/openapi.json

clean:
	$(CARGO) clean
	rm -rf var

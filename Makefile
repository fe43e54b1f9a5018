# ttnet: `make test` (all tests) and `make testbed` (the emulation run).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint unit e2e bench testbed deps venv clean cleanup

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the testbed needs (root; no-op when present).
deps:
	@bash scripts/install-deps.sh

test: deps venv lint
	$(VPY) -m pytest tests -q --durations=25

# The layering (import contracts), lint and ttnet's types; part of make test.
lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check ttnet testbed benchmarks tests
	$(VENV)/bin/mypy

unit: venv
	$(VPY) -m pytest tests -q -m 'not e2e'

e2e: deps venv
	$(VPY) -m pytest tests/e2e -q

bench: venv
	$(VPY) -m benchmarks

testbed: deps venv
	$(VPY) -m testbed all

cleanup: venv
	$(VPY) -m testbed down --all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

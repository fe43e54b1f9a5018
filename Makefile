# ttnet: `make test` (all tests) and `make testbed` (the emulation run).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test unit e2e bench testbed deps venv clean cleanup

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the testbed needs (root; no-op when present).
deps:
	@bash scripts/install-deps.sh

test: deps venv
	$(VPY) -m pytest tests -q

unit: venv
	$(VPY) -m pytest tests -q -m 'not e2e'

e2e: deps venv
	$(VPY) -m pytest tests/e2e -q

bench: venv
	$(VPY) benchmarks/run.py

testbed: deps venv
	$(VPY) -m testbed all

cleanup: venv
	$(VPY) -m testbed down --all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

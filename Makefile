# bakery: `make demo` runs the main job on the local target, `make test` the whole suite.
# Both set up what is missing first (make setup is idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: setup demo test lint unit integration clean

setup:
	@scripts/setup.sh

demo: setup
	./bake.py base
	./bake.py build webapp
	./bake.py show webapp

lint: setup
	$(VENV)/bin/ruff check bakery tests bake.py
	$(VENV)/bin/yamllint -s roles playbooks
	cd $(CURDIR) && PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --profile production playbooks roles

unit: setup
	$(PYTEST) -m unit

integration: setup
	$(PYTEST) -m integration

test: setup lint
	$(PYTEST)

clean:
	rm -rf .bakery/runs .pytest_cache .ruff_cache

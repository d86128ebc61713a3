# bakery: `make demo` runs the main job on the local target, `make test` the whole suite.
# Both set up what is missing first (make setup is idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: setup demo test lint unit integration aws molecule clean bench


setup:
	@scripts/setup.sh

demo: setup
	./bake.py base
	./bake.py build-app
	./bake.py build webapp
	./bake.py verify webapp --env dev
	./bake.py deploy webapp --env dev
	./bake.py status --env dev
	@echo "demo: the app answers through HAProxy at http://127.0.0.1:18080/ :"
	@$(PY) -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:18080/version", timeout=5).read().decode())'

lint: setup
	$(VENV)/bin/ruff check bakery tests bake.py app scripts roles bench
	$(VENV)/bin/mypy
	$(VENV)/bin/parliament --config docs/aws-iam-policy.parliament.yml < docs/aws-iam-policy.json
	$(PYTEST) -q -p no:cacheprovider tests/unit/test_architecture.py
	$(PY) scripts/role_docs.py --check roles
	$(VENV)/bin/yamllint -s roles playbooks
	cd $(CURDIR) && NO_COLOR=1 PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --nocolor --profile production playbooks roles

unit: setup
	$(PYTEST) -m unit

aws: setup
	$(PYTEST) -m aws

integration: setup
	$(PYTEST) -m integration

# Every role's Molecule scenario: converge, idempotence, verify (testinfra), on the local base image.
molecule: setup
	./bake.py base
	scripts/molecule-all.sh

# unit and aws tests on every core (a file's tests stay together, in order, on one worker); the integration
# tests in two lanes (tests/integration/conftest.py): the VM modules and then every role's Molecule scenario in
# one, all the others one at a time in the other (they share podman's store and the CPU with each bake).
TEST_JOBS ?= $(shell nproc)
test: setup lint
	$(PYTEST) -n $(TEST_JOBS) --dist loadfile --durations=10 tests/unit tests/aws
	$(PYTEST) -n 2 --durations=15 tests/integration

# Side-by-side benchmarks (bench/): bake.py vs Packer vs the bare Ansible work, rebakes, rollout, CLI latency,
# memory and catalog scale; bakes run in a throw-away project copy. Report: .bakery/bench/report.md.
BENCH_ROUNDS ?= 2
bench: setup
	./bake.py base
	./bake.py build-app
	@started=$$(date +%s); $(PY) bench/run_all.py --rounds $(BENCH_ROUNDS) --report .bakery/bench/report.md; rc=$$?; \
	  echo "make bench: benchmarks took $$(( $$(date +%s) - started )) s"; exit $$rc

clean:
	rm -rf .bakery/runs .pytest_cache .ruff_cache

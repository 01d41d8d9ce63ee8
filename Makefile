# retention-fanout: two commands matter — `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact versions (with hashes) `make test` installs; `make lock` refreshes it, and the
# app image's subset (the runtime and `faust`, at the same versions) with it.
LOCK := requirements/lock.txt
APP_LOCK := requirements/app.txt
LOCK_TOOLS := .cache/lock-tools
INFRA := infra/infra.sh
ENV_FILE := .cache/infra.env
# Every target that touches Kafka or PostgreSQL reads the settings infra-up wrote.
WITH_INFRA := set -a; source $(ENV_FILE); set +a;

.PHONY: help venv lock tools native-deps browser infra-up infra-down infra-status lint typecheck schemas test test-unit test-faults fuzz fuzz-run demo bench bench-scale bench-docs clean \
	docker-up docker-down images images-clean test-containers compose-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The faust extra resolves with our aiokafka pin, so its tests run in `make test` too; so do
# the relay's librdkafka producer's (the fast extra).
# Dependencies come from the lock only (hashes checked); the project itself is installed
# without resolving anything, and `pip check` fails when the lock misses or contradicts
# pyproject.toml (run `make lock` then).
# The install also builds the optional C core of the signature scheme (setup.py,
# schemas/_merkle.c) where a C compiler and OpenSSL's headers are present; the last line
# says which one signs, and `make test` fails when it is not the native one.
$(STAMP): pyproject.toml $(LOCK) setup.py schemas/_merkle.c coordinator/kafka/_recordbatch.c coordinator/outbox/_expand.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	# A build that fails now must not leave the last one's binary in place, still signing.
	rm -f schemas/_merkle*.so coordinator/kafka/_recordbatch*.so coordinator/outbox/_expand*.so
	$(BIN)/python -m pip install -q --no-deps -e '.[test,faust,fast]'
	$(BIN)/python -m pip check
	@$(BIN)/python -c 'from schemas.signing import HASHING as h; print("signature hashing:", h if h == "native" else h + " (the C core did not build: `make native-deps`, then `pip install -v --no-deps -e .` shows why)")'
	touch $(STAMP)

# The bench's own extra (matplotlib for its chart), on top of the project's venv.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,faust,fast,bench]'
	touch $(BENCH_STAMP)

# atheris (libFuzzer for Python) for `make fuzz` and the fuzz step of `make test-faults`.
FUZZ_STAMP := $(VENV)/.fuzz-installed
$(FUZZ_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,faust,fast,fuzz]'
	touch $(FUZZ_STAMP)

venv: $(STAMP) ## create or refresh .venv with the project, its test extras and faust

# pip-tools in a venv of its own (not the project's), resolving on this Python (3.11 in CI).
# `make lock LOCK_UPGRADE=` adds a new dependency and keeps every other pin where it is.
LOCK_UPGRADE ?= --upgrade
lock: ## re-resolve requirements/lock.txt (exact versions with hashes) and the app image's requirements/app.txt
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && \
	  $(LOCK_TOOLS)/bin/python -m pip install -q pip-tools; }
	mkdir -p $(dir $(LOCK))
	$(LOCK_TOOLS)/bin/pip-compile -q $(LOCK_UPGRADE) --generate-hashes --allow-unsafe --strip-extras \
	  --extra test --extra faust --extra fast --no-emit-find-links --no-emit-index-url \
	  --output-file $(LOCK) pyproject.toml
	rm -f $(APP_LOCK)
	$(LOCK_TOOLS)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
	  --extra faust --constraint $(LOCK) --no-emit-find-links --no-emit-index-url \
	  --output-file $(APP_LOCK) pyproject.toml

# promtool checks and unit-tests deploy/prometheus/alerts.yml (tests/test_deploy.py).
# Debian's `prometheus` package ships it (~19 MB download); its daemon is not started.
tools: ## install promtool if missing (Debian/Ubuntu, as root or via sudo)
	@command -v promtool >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "install promtool (Prometheus 2.x) and retry" >&2; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends prometheus >/dev/null || { \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y --no-install-recommends prometheus >/dev/null; }; }

# The C core of the signature scheme (setup.py, schemas/_merkle.c) needs a C compiler and
# OpenSSL's headers; `make test` requires it built, so it installs them like the tools above.
native-deps: ## install a C compiler and OpenSSL's headers if missing (Debian/Ubuntu, as root or via sudo)
	@echo '#include <openssl/sha.h>' | cc -E - >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null || { echo "install a C compiler and OpenSSL's headers and retry" >&2; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends gcc libssl-dev >/dev/null || { \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y --no-install-recommends gcc libssl-dev >/dev/null; }; }

# The console's browser tests (tests/console) drive Debian's chromium through Playwright's
# executable_path: browser downloads are impossible on our machines, Debian's package is not.
browser: ## install Debian's chromium for the console's browser tests if missing
	@command -v chromium >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "install chromium and retry" >&2; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null || { \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null; }; }

infra-up: ## start (or reuse) Kafka 4.1.1 and PostgreSQL; write .cache/infra.env
	$(INFRA) up

infra-down: ## stop what infra-up started (by pid), nothing else
	$(INFRA) down

infra-status: ## show what runs and the settings in use
	$(INFRA) status

# Docker (docs/containers.md): an engine, our images, the containers tests, the compose check.
DOCKER := deploy/docker.sh
IMAGES := deploy/images/build.sh

docker-up: ## use the Docker engine that answers, or install and start one (root, Debian)
	$(DOCKER) up

docker-down: ## remove our containers; stop the dockerd docker-up started, and its mounts
	$(DOCKER) down

images: docker-up ## build our Kafka, PostgreSQL, app and Prometheus images (layers reused)
	$(IMAGES) all

images-clean: ## remove our images and the local debootstrap base
	$(IMAGES) clean

# The containers mode on a meaningful subset: schema round trip through Kafka into
# PostgreSQL, the relay, SDK delivery, the e2e fan-out, and a `docker kill` of the Kafka
# container during consumption (fault scenario 3) with its invariants.
CONTAINER_TESTS := tests/test_containers.py tests/test_schemas.py tests/integration/test_roundtrip.py \
	tests/integration/test_relay.py tests/integration/test_sdk_delivery.py \
	tests/e2e/test_fanout.py::test_thousand_users_erased_everywhere_once \
	tests/faults/test_broker_restarts.py::test_broker_container_killed_during_consumption

# No test here uses Hypothesis; without its plugin nothing imports it lazily at the summary,
# where CPython 3.11.7's AST recursion-depth bug (gh-106905) once failed a green session.
test-containers: $(STAMP) images ## the subset above against Kafka and PostgreSQL containers
	RETENTION_TEST_INFRA=containers $(BIN)/pytest -p no:hypothesispytest -m "slow or not slow" \
	  $(CONTAINER_TESTS)

compose-check: $(STAMP) images ## docker-compose.yml's stack on the host network: up, a run, acks, Prometheus, down
	$(BIN)/python -m deploy.compose.check

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy (strict on schemas, coordinator, consumer_sdk)
	$(BIN)/mypy

schemas: $(STAMP) ## regenerate schemas/json from the wire models
	$(BIN)/python -m schemas.export

# RETENTION_TEST_INFRA=local: the broker and server infra-up provides, never containers.
# RETENTION_TEST_NATIVE_SIGNING=required: the venv must have built schemas._merkle
# (tests/test_signing_native.py) and coordinator.kafka._recordbatch (tests/test_recordbatch.py),
# so the native signing and record-batch paths are what the suite exercises.
test: native-deps $(STAMP) tools browser infra-up lint typecheck ## everything: venv, infra, lint, types, all tests
	$(WITH_INFRA) RETENTION_TEST_INFRA=local RETENTION_TEST_NATIVE_SIGNING=required \
	  $(BIN)/pytest -m "not faults_full and not containers"

test-faults: $(FUZZ_STAMP) infra-up ## the full fault-injection suite (every scenario, full size) and a bounded fuzz run
	$(WITH_INFRA) RETENTION_TEST_INFRA=local $(BIN)/pytest -m "(faults_full or slow or not slow) and not containers" tests/faults
	$(MAKE) --no-print-directory fuzz-run FUZZ_CORPUS=.cache/fuzz/corpus FUZZ_SECONDS=$(FAULTS_FUZZ_SECONDS)

# `make fuzz` keeps what it finds in the committed corpus; test-faults keeps its finds in
# .cache (libFuzzer writes new inputs into the first corpus directory and reads them all).
FUZZ_SECONDS ?= 600
FAULTS_FUZZ_SECONDS ?= 120
FUZZ_CORPUS ?= tests/fuzz/corpus
fuzz: $(FUZZ_STAMP) ## fuzz schemas.decode for FUZZ_SECONDS (default 600); finds go into tests/fuzz/corpus
	$(MAKE) --no-print-directory fuzz-run

fuzz-run:
	mkdir -p $(FUZZ_CORPUS) .cache/fuzz
	$(BIN)/python -m tests.fuzz.decode_target $(FUZZ_CORPUS) $(if $(filter tests/fuzz/corpus,$(FUZZ_CORPUS)),,tests/fuzz/corpus) \
	  -dict=tests/fuzz/decode.dict -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -artifact_prefix=.cache/fuzz/ -print_final_stats=1

demo: $(STAMP) infra-up ## run the whole system on demo data and show the result
	$(WITH_INFRA) $(BIN)/python -m demo

bench: $(BENCH_STAMP) infra-up ## benchmarks side by side (BENCH_ROWS=100000); writes bench/results/*.json
	$(WITH_INFRA) $(BIN)/python -m bench

# SCALE_ROWS tracked events and outbox rows seeded by COPY (10M by default: hours and
# ~10 GB of disk; CI-sized smoke runs: SCALE_ROWS=100000 SCALE_BATCH=10000).
bench-scale: $(STAMP) infra-up ## tracking and pruning with SCALE_ROWS of history; writes bench/results/scale/*.json
	$(WITH_INFRA) $(BIN)/python -m bench.scale

bench-docs: $(BENCH_STAMP) ## render the newest bench/results/*.json into docs/benchmarks.md
	$(BIN)/python -m bench.docs

clean: infra-down ## stop infra and remove caches (keeps the downloaded jars)
	rm -rf .cache/kafka/data .mypy_cache .ruff_cache .pytest_cache

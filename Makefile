# The two commands of the README: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
SWIFT ?= swift
RELEASE_BIN = $(shell $(SWIFT) build -c release --show-bin-path)
DEBUG_BIN = $(shell $(SWIFT) build --show-bin-path)

.PHONY: deps demo test build release bench clean openapi

deps:
	@scripts/install-deps.sh

release: deps
	$(SWIFT) build -c release --product htc-agent
	$(SWIFT) build -c release --product htc

## Runs 100,000 tasks on the embedded grid (SQLite + local disk) with 2 agent processes.
demo: release
	$(RELEASE_BIN)/htc demo $(DEMO_ARGS)

## Builds everything in debug and release and runs every test, unit and integration; the Redis
## suites run against a throw-away redis-server (scripts/with-redis.sh), the AWS suites against
## throw-away moto_servers (scripts/with-moto.sh).
test: deps
	$(SWIFT) build --build-tests
	HTC_AGENT_BIN=$(DEBUG_BIN)/htc-agent HTC_TEST_SUITE=make scripts/with-redis.sh scripts/with-moto.sh \
		$(SWIFT) test --skip-build --skip GridIntegrationTests
	# Whole-grid tests start agent processes and servers of their own: one at a time.
	HTC_AGENT_BIN=$(DEBUG_BIN)/htc-agent HTC_TEST_SUITE=make scripts/with-redis.sh scripts/with-moto.sh \
		$(SWIFT) test --skip-build --filter GridIntegrationTests --no-parallel
	$(SWIFT) build -c release

## The acceptance benchmark: 20,000 tasks, 2 agents, 64-byte payloads, on SQLite.
bench: release
	$(RELEASE_BIN)/htc bench --backend sqlite --tasks 20000 --agents 2 --payload-bytes 64 --json

## Copies openapi.yaml into the server library after editing it (tests fail while they differ).
openapi:
	scripts/embed-openapi.sh

clean:
	rm -rf .build

# The two commands of the README: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
SWIFT ?= swift
RELEASE_BIN = $(shell $(SWIFT) build -c release --show-bin-path)
DEBUG_BIN = $(shell $(SWIFT) build --show-bin-path)
# The PostgreSQL backend, a package of its own that depends on this one (docs/plugins.md).
POSTGRES_PLUGIN = Plugins/GridPostgres

.PHONY: deps demo test test-postgres build release bench clean openapi validate-deploy

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
## throw-away moto_servers (scripts/with-moto.sh). Checks the deployment artifacts first
## (validate-deploy) and ends with the PostgreSQL plugin package (test-postgres).
test: deps validate-deploy
	$(SWIFT) build --build-tests
	HTC_AGENT_BIN=$(DEBUG_BIN)/htc-agent HTC_TEST_SUITE=make scripts/with-redis.sh scripts/with-moto.sh \
		$(SWIFT) test --skip-build --skip GridIntegrationTests
	# Whole-grid tests start agent processes and servers of their own: one at a time.
	HTC_AGENT_BIN=$(DEBUG_BIN)/htc-agent HTC_TEST_SUITE=make scripts/with-redis.sh scripts/with-moto.sh \
		$(SWIFT) test --skip-build --filter GridIntegrationTests --no-parallel
	$(SWIFT) build -c release
	@if [ -f $(POSTGRES_PLUGIN)/Package.swift ]; then $(MAKE) --no-print-directory test-postgres; \
	else echo "$(POSTGRES_PLUGIN) is absent: skipping the PostgreSQL plugin"; fi

## The PostgreSQL plugin package: its unit and conformance tests, then its whole-grid test, each
## against a private cluster (scripts/with-postgres.sh), then its release build.
test-postgres: deps
	$(SWIFT) build --package-path $(POSTGRES_PLUGIN) --build-tests
	HTC_TEST_SUITE=make scripts/with-postgres.sh \
		$(SWIFT) test --package-path $(POSTGRES_PLUGIN) --skip-build --skip GridPostgresIntegrationTests
	HTC_TEST_SUITE=make scripts/with-postgres.sh \
		$(SWIFT) test --package-path $(POSTGRES_PLUGIN) --skip-build --filter GridPostgresIntegrationTests --no-parallel
	$(SWIFT) build --package-path $(POSTGRES_PLUGIN) -c release

## docker-compose.yml against the compose specification, each Kustomize overlay rendered and validated
## for Kubernetes 1.30, every Terraform file parsed and its names checked against the grid. The
## commands and HTC_* variables of the same files are checked by DeploymentArtifactTests (swift test).
validate-deploy: deps
	scripts/validate-deploy.sh

## The acceptance benchmark: 20,000 tasks, 2 agents, 64-byte payloads, on SQLite.
bench: release
	$(RELEASE_BIN)/htc bench --backend sqlite --tasks 20000 --agents 2 --payload-bytes 64 --json

## Copies openapi.yaml into the server library after editing it (tests fail while they differ).
openapi:
	scripts/embed-openapi.sh

clean:
	rm -rf .build

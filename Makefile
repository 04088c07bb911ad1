# idmesh: make demo | make test | make bench | make install
SHELL := /bin/bash
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
export PATH := $(HOME)/.cargo/bin:$(PATH)
# in-database tests run a throwaway cluster owned by postgres (initdb refuses root)
PGRX_TEST_PGDATA ?= /tmp/idmesh-pgrx-test

.PHONY: all bootstrap install install-debug unit pgrx-test integration test demo bench stop clean

all: install

bootstrap:
	bash scripts/bootstrap.sh

# Release build into the system PostgreSQL 15 (what the demo, integration tests and bench use).
# The project's cluster preloads the library: stop it before replacing the file under it.
install: bootstrap
	bash scripts/cluster.sh stop
	cargo pgrx install --release --pg-config $(PG_CONFIG)

unit: bootstrap
	cargo test -p idmesh-core -p idmesh-sdk -p idmesh-csv-connector

pgrx-test: bootstrap
	bash scripts/cluster.sh stop
	cargo build -p idmesh-csv-connector
	mkdir -p $(PGRX_TEST_PGDATA) && chown postgres:postgres $(PGRX_TEST_PGDATA)
	cargo pgrx test pg15 --runas postgres --pgdata $(PGRX_TEST_PGDATA)

integration: install
	bash scripts/cluster.sh start
	bash scripts/tds.sh start
	bash scripts/samba.sh start
	cargo test -p idmesh-integration-tests -- --test-threads=1

# Every test: plain Rust unit tests, in-database tests, integration tests against the
# project's own cluster.
test: unit pgrx-test integration

demo: install
	bash scripts/cluster.sh start
	bash scripts/samba.sh start
	bash scripts/demo.sh

bench: install
	bash scripts/cluster.sh start
	bash scripts/samba.sh start
	bash bench/run.sh

stop:
	bash scripts/cluster.sh stop

clean: stop
	cargo clean

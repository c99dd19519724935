# The two commands a newcomer needs: `make run` and `make test`. Both install what they
# need first (scripts/install-deps.sh, a no-op when everything is there).
#
# Builds go to a target dir outside the clone so a fresh clone reuses earlier builds
# (RocksDB's C++ alone takes ~15 minutes cold on 2 cores).

CARGO_TARGET_DIR ?= $(HOME)/.cache/magnetar/target
export CARGO_TARGET_DIR
CARGO ?= cargo
# Process-level tests mostly wait on etcd and disks, so more threads than cores pays.
TEST_THREADS ?= 4

.PHONY: help deps build test lint fmt run cluster cluster-status cluster-down bench-meta bench-bookie bench-standalone bench-isolation bench-client bench-compaction bench-cache bench-cluster bench-tiering

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## install missing system packages (apt): protoc, libclang, etcd, ...; keep disk for builds
	@scripts/install-deps.sh
	@scripts/prune-target.sh

build: deps ## debug build of everything
	$(CARGO) build --workspace --all-targets

test: deps lint ## formatting, clippy and every test, as CI runs them (installs what they need first)
	# every target first: the process tests run the magnetar binary this builds
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --doc
	$(CARGO) test --workspace --all-targets -- --test-threads=$(TEST_THREADS)
	# the managed ledger on its own: built without RocksDB, the bookie server or the broker
	$(CARGO) test -p magnetar-managed-ledger --lib

lint: deps ## formatting and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

run: deps ## run Magnetar standalone on 6650 (binary) and 8080 (HTTP), data in ./data
	$(CARGO) run --release --bin magnetar -- standalone $(ARGS)

cluster: deps ## start a local cluster: etcd, 3 bookies, 2 brokers on free ports (data in ./data/cluster)
	$(CARGO) build --release --bin magnetar
	scripts/cluster.sh up

cluster-status: ## what the local cluster runs, and its brokers' health
	@scripts/cluster.sh status

cluster-down: ## stop the local cluster (its data stays; `scripts/cluster.sh clean` deletes it)
	@scripts/cluster.sh down

bench-cluster: deps ## issue #20: cluster start time, failover time over 10 kills, 2 brokers × 3 bookies vs standalone
	$(CARGO) build --release -p magnetar-broker --bin magnetar -p magnetar-cli --bin magnetar-perf
	scripts/bench-cluster.sh

bench-meta: deps ## metadata store put/get/CAS throughput on RocksDB and etcd
	$(CARGO) build --release -p magnetar-cli --bin magnetar-perf
	scripts/bench-meta.sh

bench-bookie: deps ## raw disk limit, then ledger appends on 1 and 3 bookies
	$(CARGO) build --release -p magnetar-broker --bin magnetar -p magnetar-cli --bin magnetar-perf
	scripts/bench-bookie.sh

bench-standalone: deps ## standalone: time to healthy, RSS, produce/tail/catch-up with the Python client
	$(CARGO) build --release -p magnetar-broker --bin magnetar
	scripts/bench-standalone.sh

bench-isolation: deps ## one tenant floods (rate-limited, then not): another tenant's publish latency
	$(CARGO) build --release -p magnetar-broker --bin magnetar
	scripts/bench-isolation.sh

bench-cache: deps ## entry-cache fairness: a topic filling the budget vs another's read-back
	$(CARGO) build --release -p magnetar-broker --bin magnetar -p magnetar-cli --bin magnetar-perf
	scripts/bench-cache.sh

bench-compaction: deps ## one compaction of 60 000 entries over 30 000 keys, timed
	$(CARGO) build --release -p magnetar-broker --bin magnetar
	scripts/bench-compaction.sh

bench-client: deps ## issue #7: max produce, e2e latency at 10/50/80 %, catch-up, RSS, with magnetar-perf
	$(CARGO) build --release -p magnetar-broker --bin magnetar -p magnetar-cli --bin magnetar-perf
	scripts/bench-client.sh

bench-tiering: deps ## issue #21: offload MB/s, catch-up from bookie vs tier (filesystem, S3 server), first message
	$(CARGO) build --release -p magnetar-broker --bin magnetar -p magnetar-cli --bin magnetar-perf -p magnetar-testkit --bin magnetar-s3-server
	scripts/bench-tiering.sh

# UTP Runtime — the two commands: `make demo` and `make test`.
# Everything builds into one cargo target dir so cargo, maturin and napi share
# compiled dependencies (debug profile throughout, as `cargo test` uses).

export CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TERM_COLOR ?= never
UTP := $(CARGO_TARGET_DIR)/debug/utp

.PHONY: all build test test-rust test-install fmt-check demo clean bench bench-openapi bench-calls bench-mcp bench-store help
all: build

help:
	@echo "make demo   run the utp CLI on the bundled example (discovery, search, domain rules, a workflow, live events, its recorded history)"
	@echo "make test   build everything and run the Rust, C, Python and Node suites"
	@echo "make test-install  (part of make test) install each binding as the README says into a temp project, run the README's snippets there"
	@echo "make bench  criterion benchmarks (results go in docs/benchmarks.md)"
	@echo "make bench-store  durable 10-step workflows: UTP vs DBOS vs LangGraph on SQLite (bench/store/run.py)"

include mk/c.mk mk/python.mk mk/node.mk

build:
	cargo build --workspace --exclude utp-python --exclude utp-node

# rustfmt comes with rustup's default profile; a minimal toolchain gets it added here.
fmt-check:
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >/dev/null 2>&1 || \
	  { echo "make test needs rustfmt: run 'rustup component add rustfmt'" >&2; exit 1; }
	cargo fmt --all --check

test-rust: fmt-check
	# utp-node too, with plain cargo (target/debug, as the rest), not napi's target/<triple>.
	cargo clippy --workspace --all-targets --no-deps -- -D warnings
	cargo test --workspace --exclude utp-node

# Each binding installed as README.md says into fresh projects outside the repo, running
# the README's snippets there (tests/install/); after the suites, whose builds they reuse.
test-install: test-install-c test-install-python test-install-node

test: test-rust test-c test-python test-node test-install
	@echo "make test: all suites passed"

# The demo records its calls and runs in a fresh SQLite database, then shows the history.
DEMO_DB := .utp/demo.db

demo: build
	@rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm $(DEMO_DB).lock
	@echo "== utp discover examples/manuals"
	@$(UTP) discover examples/manuals
	@echo
	@echo "== utp tools --search 'stock count for a product'"
	@$(UTP) tools examples/manuals --search "stock count for a product" --limit 3
	@echo
	@echo "== utp tools --tag weather"
	@$(UTP) tools examples/manuals --tag weather
	@echo
	@echo "== domain rules (examples/utp.yaml): dry runs with utp check"
	@$(UTP) --config examples/utp.yaml check shop.getInventory '{"sku": "A1"}' --from examples/manuals
	@$(UTP) --config examples/utp.yaml check shop.setInventory '{"sku": "A1", "count": 50000}' --from examples/manuals || true
	@echo
	@echo "== a denied call, with its events live (--events=policy.*)"
	@$(UTP) --config examples/utp.yaml --db $(DEMO_DB) --events='policy.*' call shop.setInventory '{"sku": "A1", "count": 50000}' --from examples/manuals || true
	@echo
	@echo "== utp run examples/demo/restock.yaml: parallel steps, a retry, a policy denial handled by a fallback (recorded in $(DEMO_DB))"
	@python3 examples/demo/server.py --port 8765 & pid=$$!; \
	  trap 'kill $$pid 2>/dev/null' EXIT; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8765), 0.2)' 2>/dev/null && break; sleep 0.2; done; \
	  $(UTP) --config examples/utp.yaml --db $(DEMO_DB) run examples/demo/restock.yaml --from examples/manuals --input sku=A1 --input order=50000
	@echo
	@sh examples/demo/history.sh $(UTP) $(DEMO_DB)

bench:
	cargo bench -p utp-core --bench search

clean:
	cargo clean
	rm -rf .venv bindings-node/node_modules

# OpenAPI registration side by side with python-utcp 1.2 on real specs (GitHub,
# Microsoft Graph beta, Stripe, Kubernetes) fetched from the npm registry.
bench-openapi:
	python3 bench/openapi/run.py

# Loopback HTTP tool calls side by side with python-utcp 1.2: sequential and 64 in
# flight, same server, same run (bench/calls/run.py). Criterion overhead per call:
# cargo bench -p utp-core --bench calls
bench-calls:
	python3 bench/calls/run.py

# MCP tools/call side by side: this engine (Python and Rust), python-utcp 1.2 + utcp-mcp,
# the official Python client and a bare rmcp client, over stdio (bench/mcp/run.py;
# BENCH_MCP_TRANSPORT=stdio,http once the engine calls Streamable HTTP servers).
BENCH_MCP_TRANSPORT ?= stdio
bench-mcp:
	python3 bench/mcp/run.py --transport $(BENCH_MCP_TRANSPORT)

# Durable 10-step workflows on SQLite side by side with DBOS and LangGraph: sequential
# and 8 in flight, durability normal and sync, same run (bench/store/run.py).
bench-store:
	python3 bench/store/run.py

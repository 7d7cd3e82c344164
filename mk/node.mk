# Node binding (bindings-node/, npm package utp-runtime): install the pinned tools from
# package-lock.json, build the native addon with `napi build` (debug) into the shared
# CARGO_TARGET_DIR, run the `node --test` suite, run every examples/node/*.mjs and
# type-check the TypeScript examples (examples/node/tsconfig.json) with the pinned tsc.
# Included by the top-level Makefile; also works alone: `make -f mk/node.mk test-node`.
#
# Note: napi-cli always passes `--target <host triple>` to cargo, so the addon and its
# dependencies build under $(CARGO_TARGET_DIR)/<triple>/debug, next to the plain
# `cargo build` tree in $(CARGO_TARGET_DIR)/debug (the first build compiles them once more).

UTP_NODE_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
CARGO_TARGET_DIR ?= $(UTP_NODE_ROOT)/target
export CARGO_TARGET_DIR

UTP_NODE_DIR          := $(UTP_NODE_ROOT)/bindings-node
UTP_NODE_NPM          ?= npm
UTP_NODE_NPM_CI_FLAGS ?= --no-audit --no-fund
# Touched after a successful `npm ci`; `npm ci` re-runs only when the lockfile changes
# (or node_modules was removed, which removes the stamp with it).
UTP_NODE_STAMP        := $(UTP_NODE_DIR)/node_modules/.utp-npm-ci.stamp

UTP_NODE_EXAMPLES_DIR := $(UTP_NODE_ROOT)/examples/node
UTP_NODE_EXAMPLES     := $(sort $(wildcard $(UTP_NODE_EXAMPLES_DIR)/*.mjs))
UTP_NODE_TSC          := $(UTP_NODE_DIR)/node_modules/typescript/bin/tsc

.PHONY: node-deps node-build test-node node-examples test-install-node

node-deps: $(UTP_NODE_STAMP)

$(UTP_NODE_STAMP): $(UTP_NODE_DIR)/package-lock.json
	cd "$(UTP_NODE_DIR)" && $(UTP_NODE_NPM) ci $(UTP_NODE_NPM_CI_FLAGS)
	@touch "$@"

node-build: node-deps
	cd "$(UTP_NODE_DIR)" && $(UTP_NODE_NPM) run build

# The examples import 'utp-runtime' as users do: examples/node/node_modules/utp-runtime
# links to bindings-node/ (node_modules/ is ignored by git). Every *.mjs must run to
# the end with exit code 0 (stdout hidden); the *.ts must type-check (tsc --noEmit).
define utp_node_run_examples
	@mkdir -p "$(UTP_NODE_EXAMPLES_DIR)/node_modules"
	@ln -sfn ../../../bindings-node "$(UTP_NODE_EXAMPLES_DIR)/node_modules/utp-runtime"
	@for script in $(UTP_NODE_EXAMPLES); do \
		echo "example: $${script#$(UTP_NODE_ROOT)/}"; \
		(cd "$(UTP_NODE_ROOT)" && timeout 120 node "$$script" > /dev/null) || { echo "example failed: $$script" >&2; exit 1; }; \
	done
	@echo "example: tsc --noEmit -p examples/node"
	@cd "$(UTP_NODE_ROOT)" && node "$(UTP_NODE_TSC)" --noEmit -p examples/node
endef

test-node: node-deps node-build mcp-servers
	cd "$(UTP_NODE_DIR)" && $(UTP_NODE_NPM) test
	$(utp_node_run_examples)

node-examples: node-build
	$(utp_node_run_examples)

# `npm install` of the folder as README.md says, then `npm pack` tarballs with and without
# the addon, into fresh projects outside the repo, each running the README's Node snippet
# (tests/install/node.sh). The install script builds the debug addon (UTP_BUILD_PROFILE)
# in CARGO_TARGET_DIR, next to node-build's, instead of a release build from scratch.
UTP_NODE_INSTALL_TEST_PROFILE ?= debug
test-install-node:
	UTP_BUILD_PROFILE=$(UTP_NODE_INSTALL_TEST_PROFILE) sh $(UTP_NODE_ROOT)/tests/install/node.sh

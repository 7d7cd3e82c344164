# Node binding (bindings-node/, npm package utp-runtime): install the pinned tools from
# package-lock.json, build the native addon with `napi build` (debug) into the shared
# CARGO_TARGET_DIR, and run the `node --test` suite.
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

.PHONY: node-deps node-build test-node

node-deps: $(UTP_NODE_STAMP)

$(UTP_NODE_STAMP): $(UTP_NODE_DIR)/package-lock.json
	cd "$(UTP_NODE_DIR)" && $(UTP_NODE_NPM) ci $(UTP_NODE_NPM_CI_FLAGS)
	@touch "$@"

node-build: node-deps
	cd "$(UTP_NODE_DIR)" && $(UTP_NODE_NPM) run build

test-node: node-deps node-build
	cd "$(UTP_NODE_DIR)" && $(UTP_NODE_NPM) test

# Python binding: a venv with maturin + pytest (+ python-utcp for the round-trip
# tests) from PyPI, `maturin develop` of bindings-python into it, then pytest and
# mypy.stubtest. Included by the top-level Makefile, which exports CARGO_TARGET_DIR
# so maturin shares cargo's compiled dependencies.

UTP_PY_ROOT   := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
UTP_PY_SYS    ?= python3
UTP_PY_VENV   ?= $(UTP_PY_ROOT)/.venv
UTP_PY        := $(UTP_PY_VENV)/bin/python
UTP_PY_PKG    := $(UTP_PY_ROOT)/bindings-python
UTP_PY_STAMP  := $(UTP_PY_VENV)/.utp-deps-installed

UTP_PY_EXAMPLES := $(sort $(wildcard $(UTP_PY_ROOT)/examples/python/*.py))

.PHONY: python-venv python-build test-python python-examples test-install-python mcp-servers

$(UTP_PY_STAMP): $(UTP_PY_PKG)/requirements-dev.txt
	$(UTP_PY_SYS) -m venv $(UTP_PY_VENV)
	$(UTP_PY) -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

python-venv: $(UTP_PY_STAMP)

# Real MCP servers for the mcp tests (tests/mcp/): the official Python SDK of each protocol
# era in a venv of its own (mcp 1.x: the initialize handshake; mcp 2.x: stateless
# server/discover), since the two cannot share one. pytest and node --test find them at
# .venv-mcp1 / .venv-mcp2.
UTP_MCP_DIR := $(UTP_PY_ROOT)/tests/mcp
$(UTP_PY_ROOT)/.venv-mcp%/.utp-deps-installed: $(UTP_MCP_DIR)/requirements-v%.txt
	$(UTP_PY_SYS) -m venv $(UTP_PY_ROOT)/.venv-mcp$*
	$(UTP_PY_ROOT)/.venv-mcp$*/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

mcp-servers: $(UTP_PY_ROOT)/.venv-mcp1/.utp-deps-installed $(UTP_PY_ROOT)/.venv-mcp2/.utp-deps-installed

# Debug build (the profile `cargo test` uses), installed editable into the venv.
python-build: python-venv
	cd $(UTP_PY_PKG) && VIRTUAL_ENV=$(UTP_PY_VENV) PATH=$(UTP_PY_VENV)/bin:$$PATH \
		maturin develop --quiet
	$(UTP_PY) -c "import utp; print('utp', utp.__version__, 'installed in', '$(UTP_PY_VENV)')"

# Every examples/python/*.py must run to the end with exit code 0 (stdout hidden).
define UTP_PY_RUN_EXAMPLES
	@set -e; for script in $(UTP_PY_EXAMPLES); do \
		echo "example: $${script#$(UTP_PY_ROOT)/}"; \
		(cd $(UTP_PY_ROOT) && timeout 120 $(UTP_PY) "$$script" > /dev/null) || { echo "example failed: $$script" >&2; exit 1; }; \
	done
endef

test-python: python-build mcp-servers
	cd $(UTP_PY_PKG) && $(UTP_PY) -m pytest -q tests
	cd $(UTP_PY_PKG) && $(UTP_PY) -m mypy.stubtest utp._utp
	cd $(UTP_PY_PKG) && $(UTP_PY) -m mypy --strict python/utp
	$(UTP_PY_RUN_EXAMPLES)

python-examples: python-build
	$(UTP_PY_RUN_EXAMPLES)

# `pip install` and `pip wheel` as README.md says, into fresh venvs outside the repo, each
# running the README's Python snippet (tests/install/python.sh). Built with the dev profile
# (maturin's MATURIN_PEP517_ARGS) so it reuses python-build's objects in CARGO_TARGET_DIR.
UTP_PY_INSTALL_TEST_PROFILE ?= dev
test-install-python:
	MATURIN_PEP517_ARGS="--profile $(UTP_PY_INSTALL_TEST_PROFILE)" UTP_PY_SYS=$(UTP_PY_SYS) \
		sh $(UTP_PY_ROOT)/tests/install/python.sh

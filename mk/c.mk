# C ABI: build libutp (utp-ffi), compile the C tests against include/utp.h, run them
# linked shared (also under valgrind when available) and static.
# Included by the top-level Makefile; also works alone: `make -f mk/c.mk test-c`.
# (The header drift check is the Rust test ffi/tests/header.rs, run by `cargo test`.)

UTP_C_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR

UTP_C_CC      ?= gcc
UTP_C_CXX     ?= g++
UTP_C_CFLAGS  ?= -std=c11 -Wall -Wextra -Werror -pedantic -g
UTP_C_LIBDIR  := $(CARGO_TARGET_DIR)/debug
UTP_C_OUT     := $(CARGO_TARGET_DIR)/c-tests
UTP_C_TESTS   := $(UTP_C_ROOT)/tests/c
# Each tests/c/<name>.c is a program; it gets MANUALS_DIR as its one argument.
# test_exit_paths runs itself as child processes (20 runs per exit path, UTP_EXIT_RUNS);
# under valgrind (which checks only the driver's own process) one run each is enough.
UTP_C_PROGRAMS ?= test_basic test_calls test_streams test_domain_events test_workflows test_intents test_store test_planner \
	test_host_options test_compat test_exit_paths test_sockets test_graphql test_mcp test_websocket
# The shared host-option cases test_host_options reads (tests/scenarios/host_options.json).
UTP_HOST_OPTIONS_JSON ?= $(UTP_C_ROOT)/tests/scenarios/host_options.json
export UTP_HOST_OPTIONS_JSON
UTP_C_INCLUDE := $(UTP_C_ROOT)/include
# The must-show examples: examples/c/<name>.c and examples/cpp/<name>.cpp, built with
# strict flags against both libraries and run (they get MANUALS_DIR too).
UTP_C_EXAMPLES   := $(UTP_C_ROOT)/examples/c/demo.c $(UTP_C_ROOT)/examples/cpp/demo.cpp
UTP_C_EX_CFLAGS  ?= -std=c11 -Wall -Wextra -Werror -pedantic
UTP_C_EX_CXXFLAGS ?= -std=c++17 -Wall -Wextra -Werror -pedantic
# Optional directory of manuals the test also discovers (may hold zero manuals).
UTP_C_MANUALS ?= $(wildcard $(UTP_C_ROOT)/examples/manuals)
# valgrind: installed from the Debian packages when missing and we may (root + apt-get).
UTP_C_VALGRIND := $(shell command -v valgrind 2>/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq valgrind >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq valgrind >/dev/null 2>&1)) && \
	  command -v valgrind; } 2>/dev/null)
# Definite leaks fail; "possibly lost" blocks are process-lifetime statics (schema caches).
UTP_C_VALGRIND_FLAGS ?= --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	--show-possibly-lost=no

# `make install PREFIX=/usr/local` (default PROFILE=release): lib/libutp.{so,a},
# include/utp.h and lib/pkgconfig/utp.pc (`pkg-config --cflags --libs utp`).
PREFIX  ?= /usr/local
PROFILE ?= release
UTP_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(UTP_C_ROOT)/Cargo.toml | head -n 1)

.PHONY: test-c build-c-lib install test-install-c
build-c-lib:
	cargo build --manifest-path $(UTP_C_ROOT)/Cargo.toml -p utp-ffi

# test_mcp's server: the Rust SDK MCP server of core/examples/mcp_test_server.rs.
UTP_MCP_TEST_SERVER ?= $(CARGO_TARGET_DIR)/debug/examples/mcp_test_server
export UTP_MCP_TEST_SERVER
# ...and an official Python SDK server over Streamable HTTP (mk/python.mk's mcp-servers).
export UTP_MCP_PYTHON := $(UTP_C_ROOT)/.venv-mcp2/bin/python
export UTP_MCP_HTTP_SERVER := $(UTP_C_ROOT)/tests/mcp/server_v2.py
# test_websocket's server: the tokio-tungstenite server of core/examples/ws_test_server.rs.
UTP_WS_TEST_SERVER ?= $(CARGO_TARGET_DIR)/debug/examples/ws_test_server
export UTP_WS_TEST_SERVER

test-c: build-c-lib mcp-servers
	cargo build --manifest-path $(UTP_C_ROOT)/Cargo.toml -p utp-core --example mcp_test_server --example ws_test_server
	@mkdir -p $(UTP_C_OUT)
	@echo "== C header compiles as C++"
	$(UTP_C_CXX) -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c++ -I$(UTP_C_INCLUDE) \
		$(UTP_C_TESTS)/header_cpp.cc
	@for t in $(UTP_C_PROGRAMS); do \
		echo "== C test $$t, shared libutp.so"; \
		$(UTP_C_CC) $(UTP_C_CFLAGS) -I$(UTP_C_INCLUDE) $(UTP_C_TESTS)/$$t.c -o $(UTP_C_OUT)/$${t}_shared \
			-L$(UTP_C_LIBDIR) -lutp -Wl,-rpath,$(UTP_C_LIBDIR) -pthread && \
		$(UTP_C_OUT)/$${t}_shared $(UTP_C_MANUALS) || exit 1; \
		echo "== C test $$t, static libutp.a"; \
		$(UTP_C_CC) $(UTP_C_CFLAGS) -I$(UTP_C_INCLUDE) $(UTP_C_TESTS)/$$t.c -o $(UTP_C_OUT)/$${t}_static \
			$(UTP_C_LIBDIR)/libutp.a -Wl,--gc-sections -lpthread -ldl -lm && \
		$(UTP_C_OUT)/$${t}_static $(UTP_C_MANUALS) || exit 1; \
		if [ -n "$(UTP_C_VALGRIND)" ]; then \
			echo "== C test $$t, shared, under valgrind"; \
			UTP_EXIT_RUNS=1 $(UTP_C_VALGRIND) $(UTP_C_VALGRIND_FLAGS) $(UTP_C_OUT)/$${t}_shared $(UTP_C_MANUALS) || exit 1; \
		else \
			echo "== valgrind not found: skipping the memory check of $$t"; \
		fi; \
	done
	@for src in $(UTP_C_EXAMPLES); do \
		case $$src in \
			*.cpp) cc="$(UTP_C_CXX) $(UTP_C_EX_CXXFLAGS)"; name=$$(basename $$src .cpp)_cpp ;; \
			*) cc="$(UTP_C_CC) $(UTP_C_EX_CFLAGS)"; name=$$(basename $$src .c)_c ;; \
		esac; \
		echo "== example $$src, shared libutp.so"; \
		$$cc -I$(UTP_C_INCLUDE) $$src -o $(UTP_C_OUT)/$${name}_shared \
			-L$(UTP_C_LIBDIR) -lutp -Wl,-rpath,$(UTP_C_LIBDIR) -pthread && \
		$(UTP_C_OUT)/$${name}_shared $(UTP_C_MANUALS) || exit 1; \
		echo "== example $$src, static libutp.a"; \
		$$cc -I$(UTP_C_INCLUDE) $$src -o $(UTP_C_OUT)/$${name}_static \
			$(UTP_C_LIBDIR)/libutp.a -Wl,--gc-sections -lpthread -ldl -lm && \
		$(UTP_C_OUT)/$${name}_static $(UTP_C_MANUALS) > /dev/null || exit 1; \
	done

install:
	cargo build --manifest-path $(UTP_C_ROOT)/Cargo.toml -p utp-ffi $(if $(filter release,$(PROFILE)),--release,)
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 644 $(CARGO_TARGET_DIR)/$(PROFILE)/libutp.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(CARGO_TARGET_DIR)/$(PROFILE)/libutp.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(UTP_C_INCLUDE)/utp.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(UTP_VERSION)|' $(UTP_C_ROOT)/ffi/utp.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/utp.pc

# `make install` as README.md says, into a temp prefix outside the repo (PROFILE=debug:
# the library test-c built), then examples/c/demo.c and the README's C snippet built
# with pkg-config alone and run (tests/install/c.sh).
UTP_C_INSTALL_TEST_PROFILE ?= debug
test-install-c: build-c-lib
	UTP_INSTALL_PROFILE=$(UTP_C_INSTALL_TEST_PROFILE) UTP_C_CC="$(UTP_C_CC)" UTP_C_EX_CFLAGS="$(UTP_C_EX_CFLAGS)" \
		sh $(UTP_C_ROOT)/tests/install/c.sh

# Shared by the install tests (tests/install/{c,python,node}.sh), sourced with `.`.
#
# Each test installs a binding the way README.md says into fresh projects in a temp dir
# outside the repo, then runs the README's own snippet there (tests/install/readme.py
# extracts it, so the README cannot drift from what is tested). A project gets a copy
# of the example data the snippets read (examples/manuals, examples/demo, examples/utp.yaml) with the
# manuals pointed at examples/demo/server.py on a free loopback port, so parallel runs
# and `make demo` (port 8765) do not collide.
#
# Nothing is written outside the temp dir and the build dir: the npm and pip caches
# live in $CARGO_TARGET_DIR/install-test-cache (reused by the next run), and cargo runs
# offline (the registries of npm and pip are the only network the tests use).

set -eu

UTP_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${CARGO_TARGET_DIR:=$UTP_ROOT/target}"
export CARGO_TARGET_DIR
UTP_INSTALL_CACHE="$CARGO_TARGET_DIR/install-test-cache"
mkdir -p "$UTP_INSTALL_CACHE"

export CARGO_NET_OFFLINE=true
export npm_config_cache="$UTP_INSTALL_CACHE/npm"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export PIP_CACHE_DIR="$UTP_INSTALL_CACHE/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

UTP_INSTALL_TMP=$(mktemp -d "${TMPDIR:-/tmp}/utp-install-test.XXXXXX")
UTP_DEMO_SERVER_PID=
utp_install_cleanup() {
    if [ -n "$UTP_DEMO_SERVER_PID" ]; then kill "$UTP_DEMO_SERVER_PID" 2>/dev/null || true; fi
    if [ "${UTP_INSTALL_KEEP:-0}" = 1 ]; then
        echo "install test: kept $UTP_INSTALL_TMP"
    else
        rm -rf "$UTP_INSTALL_TMP"
    fi
}
trap utp_install_cleanup EXIT
trap 'exit 130' INT TERM

step() {
    echo "== install test: $*"
}

# A piece of README.md: `readme block HEADING LANG` or `readme command PREFIX`; the
# placeholder /path/to/utp-runtime (a clone) becomes this repo.
readme() {
    python3 "$UTP_ROOT/tests/install/readme.py" "$@" | sed "s|/path/to/utp-runtime|$UTP_ROOT|g"
}

# The demo server for every project of this test, on a free port.
UTP_DEMO_PORT=
start_demo_server() {
    UTP_DEMO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 "$UTP_ROOT/examples/demo/server.py" --port "$UTP_DEMO_PORT" >"$UTP_INSTALL_TMP/server.log" 2>&1 &
    UTP_DEMO_SERVER_PID=$!
    for _ in $(seq 50); do
        if python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $UTP_DEMO_PORT), 0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "install test: examples/demo/server.py did not start on port $UTP_DEMO_PORT" >&2
    cat "$UTP_INSTALL_TMP/server.log" >&2
    return 1
}

# new_project DIR: an empty project with the example data the README snippets read.
new_project() {
    [ -n "$UTP_DEMO_PORT" ] || start_demo_server
    mkdir -p "$1/examples"
    cp -R "$UTP_ROOT/examples/manuals" "$UTP_ROOT/examples/demo" "$UTP_ROOT/examples/utp.yaml" "$1/examples/"
    for manual in "$1"/examples/manuals/*; do
        sed -i "s|127\.0\.0\.1:8765|127.0.0.1:$UTP_DEMO_PORT|g" "$manual"
    done
}

# expect_completed DIR: the snippet's output (DIR/snippet.out) shows the README's workflow completed: the
# record's status (`completed`, not a subscriber's `step.completed`) and its outputs (`stock_after`). Not
# matched as one line: the snippet's subscriber prints from another thread, and a print of several values
# is not one write, so its lines interleave with the record's (`step.completedcompleted {...}`, or
# `completed step.completed report` then `{...}`).
expect_completed() {
    { grep -Eq '(^|[^.])completed( |$)' "$1/snippet.out" && grep -q "stock_after" "$1/snippet.out"; } || {
        echo "install test: the README's workflow did not complete in $1:" >&2
        cat "$1/snippet.out" >&2
        return 1
    }
}

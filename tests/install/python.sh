#!/bin/sh
# Python: utp installed as README.md says, into fresh virtual environments outside the
# repo, each running the README's Python snippet (whose workflow must complete):
#  1. the README's `pip install /path/to/utp-runtime/bindings-python` (maturin builds
#     the wheel from this clone, in pip's isolated build environment);
#  2. the README's `pip wheel ... -w dist`, then that wheel alone (no index) installed
#     into another fresh venv.
# mk/python.mk sets MATURIN_PEP517_ARGS="--profile dev" and the shared CARGO_TARGET_DIR,
# so maturin reuses the debug build of `make test-python` instead of a release build.
. "$(dirname "$0")/lib.sh"

run_snippet() { # DIR
    readme block "### Python" python >"$1/snippet.py"
    (cd "$1" && timeout 120 .venv/bin/python snippet.py >snippet.out) || {
        echo "install test: the README's Python snippet failed in $1" >&2
        return 1
    }
    expect_completed "$1"
}

new_venv_project() { # DIR
    new_project "$1"
    "${UTP_PY_SYS:-python3}" -m venv "$1/.venv"
}

install_command=$(readme command "pip install /path/to/utp-runtime/")
wheel_command=$(readme command "pip wheel /path/to/utp-runtime/")

step "python: $install_command"
app=$UTP_INSTALL_TMP/app-pip
new_venv_project "$app"
(cd "$app" && PATH="$app/.venv/bin:$PATH" VIRTUAL_ENV="$app/.venv" sh -c "$install_command --quiet")
run_snippet "$app"

step "python: $wheel_command, the wheel installed into another venv"
(cd "$app" && PATH="$app/.venv/bin:$PATH" VIRTUAL_ENV="$app/.venv" sh -c "$wheel_command --quiet")
wheel=$(ls "$app"/dist/utp_runtime-*.whl)
app=$UTP_INSTALL_TMP/app-wheel
new_venv_project "$app"
"$app/.venv/bin/pip" install --quiet --no-index "$wheel"
run_snippet "$app"
echo "install test: python passed"

#!/bin/sh
# Node: utp-runtime installed as README.md says, into fresh projects outside the repo,
# each running the README's Node snippet (an ES module with top-level await; its workflow
# must complete):
#  1. the README's `npm install /path/to/utp-runtime/bindings-node` (a folder install of
#     this clone): the install script builds the addon from the clone's workspace;
#  2. a tarball `npm pack` makes after that build: it carries the addon and installs
#     with no cargo reachable;
#  3. the same tarball without the addon (what `npm pack` makes before any build): the
#     install script builds from the Rust sources the tarball carries.
#  4. that tarball where no cargo runs: the install fails with a message saying what to do.
# UTP_BUILD_PROFILE (set by mk/node.mk to debug) and CARGO_TARGET_DIR (the shared target
# dir) keep the builds warm. Step 1 sets UTP_BUILD_FROM_SOURCE=1 because `make test-node`
# has already put an addon in bindings-node/ (a fresh clone has none; step 3 covers that).
. "$(dirname "$0")/lib.sh"

run_snippet() { # DIR
    readme block "### Node" js >"$1/snippet.mjs"
    (cd "$1" && timeout 120 node snippet.mjs >snippet.out) || {
        echo "install test: the README's Node snippet failed in $1" >&2
        return 1
    }
    expect_completed "$1"
}

new_npm_project() { # DIR
    new_project "$1"
    (cd "$1" && npm init -y >/dev/null)
}

install_command=$(readme command "npm install /path/to/utp-runtime/")

step "node: $install_command (building from the clone's sources)"
app=$UTP_INSTALL_TMP/app-folder
new_npm_project "$app"
(cd "$app" && UTP_BUILD_FROM_SOURCE=1 sh -c "$install_command --foreground-scripts")
run_snippet "$app"

step "node: npm pack in bindings-node/, installed with no cargo reachable"
packed=$UTP_INSTALL_TMP/packed
mkdir -p "$packed"
(cd "$UTP_ROOT/bindings-node" && npm pack --silent --pack-destination "$packed" >/dev/null)
tarball=$(ls "$packed"/utp-runtime-*.tgz)
[ ! -e "$UTP_ROOT/bindings-node/rust" ] || {
    echo "install test: npm pack left the staged sources in bindings-node/rust" >&2
    exit 1
}
tar tzf "$tarball" | grep -qx "package/rust/core/src/lib.rs" || {
    echo "install test: the tarball carries no Rust sources" >&2
    exit 1
}
app=$UTP_INSTALL_TMP/app-tarball
new_npm_project "$app"
node_dir=$(dirname "$(command -v node)")
(cd "$app" && PATH="$node_dir:/usr/bin:/bin" CARGO=/nonexistent/cargo \
    npm install --foreground-scripts "$tarball" 2>&1 | tee npm-install.log)
grep -q "using the prebuilt utp-runtime\." "$app/npm-install.log" || {
    echo "install test: the tarball did not carry the addon" >&2
    exit 1
}
run_snippet "$app"

step "node: the tarball without the addon, built from the sources it carries"
(cd "$packed" && tar xzf "$tarball" && rm package/*.node && tar czf utp-runtime-sources.tgz package)
app=$UTP_INSTALL_TMP/app-sources
new_npm_project "$app"
(cd "$app" && npm install --foreground-scripts "$packed/utp-runtime-sources.tgz")
run_snippet "$app"

step "node: the tarball without the addon and no cargo: the install fails and says what to do"
app=$UTP_INSTALL_TMP/app-no-cargo
new_npm_project "$app"
if (cd "$app" && CARGO=/nonexistent/cargo npm install --foreground-scripts "$packed/utp-runtime-sources.tgz" \
    >npm-install.log 2>&1); then
    echo "install test: the install succeeded with neither an addon nor cargo" >&2
    exit 1
fi
grep -q "building it needs cargo: install Rust (https://rustup.rs)" "$app/npm-install.log" || {
    echo "install test: the failed install did not say what to do:" >&2
    cat "$app/npm-install.log" >&2
    exit 1
}
echo "install test: node passed"

#!/bin/sh
# C: libutp installed as README.md says (`make install PREFIX=...` in the clone) into a
# temp prefix, then, with pkg-config and that prefix alone:
#  1. examples/c/demo.c built with strict flags ($UTP_C_CC $UTP_C_EX_CFLAGS) and run;
#  2. the README's C snippet built with the README's own `cc app.c $(pkg-config ...)` line
#     in a fresh project outside the repo and run there: it reports every error on
#     stderr, which must stay empty.
# UTP_INSTALL_PROFILE (default debug, set by mk/c.mk) is the PROFILE of `make install`:
# the debug library `make test-c` built is installed instead of a release build.
. "$(dirname "$0")/lib.sh"

prefix=$UTP_INSTALL_TMP/prefix
readme_install=$(readme command "make install PREFIX=")
install_command="${readme_install%%PREFIX=*}PREFIX=$prefix PROFILE=${UTP_INSTALL_PROFILE:-debug}"
step "c: $install_command (in the clone)"
(cd "$UTP_ROOT" && $install_command >/dev/null)
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
version=$(pkg-config --modversion utp)
expected=$(sed -n 's/^version = "\(.*\)"/\1/p' "$UTP_ROOT/Cargo.toml" | head -n 1)
[ "$version" = "$expected" ] || {
    echo "install test: pkg-config says utp $version, Cargo.toml $expected" >&2
    exit 1
}

step "c: examples/c/demo.c built with pkg-config from the prefix"
# shellcheck disable=SC2046 # pkg-config's flags are meant to split
${UTP_C_CC:-cc} ${UTP_C_EX_CFLAGS:--std=c11 -Wall -Wextra -Werror -pedantic} "$UTP_ROOT/examples/c/demo.c" \
    -o "$UTP_INSTALL_TMP/demo_pkgconfig" $(pkg-config --cflags --libs utp) -Wl,-rpath,"$prefix/lib"
"$UTP_INSTALL_TMP/demo_pkgconfig" "$UTP_ROOT/examples/manuals" >/dev/null

compile_command=$(readme command "cc app.c ")
step "c: the README's snippet, $compile_command"
app=$UTP_INSTALL_TMP/app-c
new_project "$app"
readme block "### C / C++" c >"$app/app.c"
(cd "$app" && sh -c "$compile_command")
(cd "$app" && LD_LIBRARY_PATH="$prefix/lib" timeout 60 ./a.out >snippet.out 2>snippet.err) || {
    echo "install test: the README's C snippet failed in $app" >&2
    cat "$app/snippet.err" >&2
    exit 1
}
[ ! -s "$app/snippet.err" ] || {
    echo "install test: the README's C snippet reported errors:" >&2
    cat "$app/snippet.err" >&2
    exit 1
}
echo "install test: c passed (utp $version)"

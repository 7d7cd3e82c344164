#!/usr/bin/env python3
"""Prints a piece of README.md for the install tests (tests/install/*.sh), so the tests run
the README's own snippets and install commands and the README cannot drift from them.

    readme.py block HEADING LANG   the first ```LANG fenced block after the line HEADING
    readme.py command PREFIX       the first `inline command` that starts with PREFIX

Exits 1 with a message naming what is missing.
"""
import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def block(text: str, heading: str, lang: str) -> str:
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        sys.exit(f"README.md has no heading line {heading!r}")
    fence = f"```{lang}"
    for i in range(start + 1, len(lines)):
        if lines[i].startswith(("## ", "### ")):  # the next section: no block under this heading
            break
        if lines[i].strip() == fence:
            end = lines.index("```", i + 1)
            return "\n".join(lines[i + 1 : end]) + "\n"
    sys.exit(f"README.md has no {fence} block under {heading!r}")


def command(text: str, prefix: str) -> str:
    for match in re.finditer(r"`([^`\n]+)`", text):
        if match.group(1).startswith(prefix):
            return match.group(1) + "\n"
    sys.exit(f"README.md has no `{prefix}...` command")


def main() -> None:
    text = README.read_text(encoding="utf-8")
    if len(sys.argv) == 4 and sys.argv[1] == "block":
        sys.stdout.write(block(text, sys.argv[2], sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "command":
        sys.stdout.write(command(text, sys.argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

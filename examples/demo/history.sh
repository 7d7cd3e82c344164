#!/bin/sh
# `make demo`, last part: what the demo's SQLite database recorded. Every `utp call`
# and `utp run` with --db writes there; these commands only read it.
#   sh examples/demo/history.sh UTP_BINARY DB
set -eu
utp=$1
db=$2

echo "== utp --db $db executions"
"$utp" --db "$db" executions

# The id of the newest restock run, from the JSON listing (newest first).
id=$("$utp" --db "$db" executions --json | python3 -c '
import json, sys
print(next(e["execution_id"] for e in json.load(sys.stdin) if e["workflow"] == "restock"))')

echo
echo "== utp --db $db show $id"
"$utp" --db "$db" show "$id"
echo
echo "== utp --db $db events --execution $id"
"$utp" --db "$db" events --execution "$id"

"""Per-call cost of two builds side by side: py_percall.py and bench/node/percall.mjs from
this tree, run alternately against a "before" and an "after" build, unpinned and on one
core (`taskset -c 0`), in fresh processes.

Usage:
  python3 bench/bindings/ab_percall.py BEFORE_PYTHON BEFORE_NODE_ADDON AFTER_PYTHON AFTER_NODE_ADDON \\
      [--runs 3] [--n 10000] [--rounds 5]

BEFORE_PYTHON / AFTER_PYTHON are interpreters of venvs with each build's wheel installed;
the NODE_ADDONs are each build's `utp-runtime.linux-x64-gnu.node`, loaded by this tree's
bindings-node JS through NAPI_RS_NATIVE_LIBRARY_PATH (as run.py does). Each run prints its
rows as it goes; at the end, per language, layout and row: the median of the runs' medians
(µs per call) with their range, and after / before.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["us_per_call"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before_python")
    ap.add_argument("before_node")
    ap.add_argument("after_python")
    ap.add_argument("after_node")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    sides = {"before": (a.before_python, a.before_node), "after": (a.after_python, a.after_node)}
    medians = {}  # (lang, layout, row, side) -> [median per run]
    for layout, prefix in (("free", []), ("pinned", ["taskset", "-c", "0"])):
        for i in range(a.runs):
            for side, (python, addon) in sides.items():
                load = os.getloadavg()[0]
                py = run(prefix + [python, str(HERE / "py_percall.py"), str(a.n), str(a.rounds)])
                env = dict(os.environ, NAPI_RS_NATIVE_LIBRARY_PATH=addon)
                node = run(prefix + ["node", str(ROOT / "bench" / "node" / "percall.mjs"), str(a.n), str(a.rounds)], env)
                for lang, rows in (("python", py), ("node", node)):
                    for row, v in rows.items():
                        medians.setdefault((lang, layout, row, side), []).append(v["median"])
                print(json.dumps({"layout": layout, "run": i, "side": side, "load": round(load, 2),
                                  "python": {k: round(v["median"], 2) for k, v in py.items()},
                                  "node": {k: round(v["median"], 2) for k, v in node.items()}}), flush=True)
    print("| language | layout | row | before | after | after / before |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(lang, layout, row) for lang, layout, row, _ in medians}, key=lambda k: (k[0] != "python", k[1] != "free", k[2]))
    for lang, layout, row in keys:
        cells = []
        mids = []
        for side in ("before", "after"):
            xs = medians[(lang, layout, row, side)]
            mid = statistics.median(xs)
            mids.append(mid)
            cells.append(f"{mid:.2f} ({min(xs):.2f}–{max(xs):.2f})")
        print(f"| {lang} | {layout} | `{row}` | {cells[0]} | {cells[1]} | {mids[1] / mids[0]:.2f} |")


if __name__ == "__main__":
    main()

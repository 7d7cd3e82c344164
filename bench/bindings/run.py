"""Tool calls from Python and Node through the bindings, side by side with python-utcp and @utcp/sdk.

One command, from the repo root:

    python3 bench/bindings/run.py

(LANGS=python or LANGS=node for one language; BUILD=debug measures the debug builds
`make test-python` / `make test-node` leave in .venv and bindings-node/ instead.)

Setup, all under bench/ and never touching the repo's .venv or bindings-node/*.node:
- release builds of both bindings from the shared target dir: `maturin build --release`
  of bindings-python into bench/bindings/.build/wheels, installed (not editable) into
  bench/.venv-bindings (a venv with only maturin and that wheel); `cargo build --release
  -p utp-node`, whose cdylib is copied to bench/bindings/.build/utp-runtime.linux-x64-gnu.node
  and loaded through bindings-node's own JS layer with NAPI_RS_NATIVE_LIBRARY_PATH;
- python-utcp 1.2 in bench/.venv and bench/calls' loopback server, both as
  `make bench-calls` sets them up (bench/calls/run.py);
- @utcp/sdk + @utcp/http from bench/node/package-lock.json (`npm ci` when missing).

Measurements (each in a fresh process, RUNS times, alternating; medians reported):
1. per call, no I/O: py_percall.py and bench/node/percall.mjs, N (default 20000)
   sequential calls per round, ROUNDS (default 5) rounds after a warm-up; a run reports
   the median round, the table the median of the runs;
2. loopback HTTP: one `call_http serve` server per layout (LAYOUTS=pinned,free as in
   bench/calls: `pinned` = server and every client on CPU 0, `free` = scheduler's
   choice), then per run: utp from Python (py_http_calls.py), python-utcp
   (bench/calls/python_utcp_calls.py), utp from Node and @utcp/sdk
   (bench/node/http_calls.mjs), each sequential then CONC (default 64) in flight; once per
   layout, as ceilings, the bare pooled reqwest client (`call_http raw`) and, for the Node
   rows, Node's own keep-alive `http.get` with no tool protocol (`http_calls.mjs bare`).
   Sizes: UTP_SEQ / UTP_CONC_N (default 10000 / 20000) for utp, PEER_SEQ / PEER_CONC_N
   (default 1000 / 2000) for the peers, which are 10-30x slower.
Prints a table and a final JSON line with every run's figures and the load averages."""
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODE_DIR = ROOT / "bench" / "node"
BUILD_DIR = HERE / ".build"
VENV = ROOT / "bench" / ".venv-bindings"
RUNS = int(os.environ.get("RUNS", "3"))
N = int(os.environ.get("N", "20000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
CONC = int(os.environ.get("CONC", "64"))
UTP_SEQ = int(os.environ.get("UTP_SEQ", "10000"))
UTP_CONC_N = int(os.environ.get("UTP_CONC_N", "20000"))
PEER_SEQ = int(os.environ.get("PEER_SEQ", "1000"))
PEER_CONC_N = int(os.environ.get("PEER_CONC_N", "2000"))
LANGS = os.environ.get("LANGS", "python,node").split(",")
LAYOUTS = [lay for lay in ("pinned", "free") if lay in os.environ.get("LAYOUTS", "pinned,free")]
BUILD = os.environ.get("BUILD", "release")
PEER_PY = None  # bench/.venv (python-utcp), set in main()
MATURIN = "maturin>=1.16,<2"  # as bindings-python/requirements-dev.txt

_spec = importlib.util.spec_from_file_location("bench_calls_run", ROOT / "bench" / "calls" / "run.py")
calls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calls)
CARGO_ENV = {**os.environ, "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))}


def python_with_utp() -> Path:
    """The interpreter that imports `utp`: the release wheel in bench/.venv-bindings, or the repo's debug .venv."""
    if BUILD == "debug":
        return ROOT / ".venv" / "bin" / "python"
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", MATURIN], check=True)
    wheels = BUILD_DIR / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([str(VENV / "bin" / "maturin"), "build", "--release", "--quiet", "-o", str(wheels)],
                   cwd=ROOT / "bindings-python", env=CARGO_ENV, check=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
                    "--no-deps", str(wheel)], check=True)
    return py


def node_env() -> dict:
    """Environment for the node scripts: NAPI_RS_NATIVE_LIBRARY_PATH at a release build of the addon."""
    if not (NODE_DIR / "node_modules" / "@utcp" / "sdk").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    if BUILD == "debug":
        return dict(os.environ)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "utp-node"], cwd=ROOT, env=CARGO_ENV, check=True)
    BUILD_DIR.mkdir(exist_ok=True)
    addon = BUILD_DIR / "utp-runtime.linux-x64-gnu.node"
    shutil.copyfile(Path(CARGO_ENV["CARGO_TARGET_DIR"]) / "release" / "libutp_node.so", addon)
    return {**os.environ, "NAPI_RS_NATIVE_LIBRARY_PATH": str(addon)}


def json_line(cmd, env=None, cwd=None) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=cwd).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(values) -> str:
    lo, hi, med = min(values), max(values), statistics.median(values)
    return f"{lo:.2f}-{hi:.2f}" if med < 100 else f"{lo:.0f}-{hi:.0f}"


def percall(py, env) -> dict:
    """RUNS fresh processes per language, alternating; per row the median of the runs' medians."""
    runs = {"python": [], "node": []}
    for _ in range(RUNS):
        if py:
            runs["python"].append(json_line([str(py), str(HERE / "py_percall.py"), str(N), str(ROUNDS)]))
        if env:
            runs["node"].append(json_line(["node", str(NODE_DIR / "percall.mjs"), str(N), str(ROUNDS)], env=env))
    table = {}
    for lang, rs in runs.items():
        if rs:
            table[lang] = {row: {"median_us": statistics.median(r["us_per_call"][row]["median"] for r in rs),
                                 "runs_us": [r["us_per_call"][row]["median"] for r in rs],
                                 "rounds_us": [r["us_per_call"][row]["rounds"] for r in rs]}
                           for row in rs[0]["us_per_call"]}
    return table


def http(exe: str, py, env, pinned: bool) -> dict:
    """One layout: one server, RUNS alternating runs of every client against it."""
    pre = calls.pin_to_cpu0 if pinned else None
    server = subprocess.Popen([exe, "serve"], stdout=subprocess.PIPE, text=True, preexec_fn=pre)
    clients = {}
    if py:
        clients["utp-python"] = [str(py), str(HERE / "py_http_calls.py"), "{base}", UTP_SEQ, UTP_CONC_N, CONC]
        clients["python-utcp"] = [str(PEER_PY), str(ROOT / "bench" / "calls" / "python_utcp_calls.py"),
                                  "{base}", PEER_SEQ, PEER_CONC_N, CONC]
    if env:
        clients["utp-node"] = ["node", str(NODE_DIR / "http_calls.mjs"), "utp", "{base}", UTP_SEQ, UTP_CONC_N, CONC]
        clients["utcp-sdk-node"] = ["node", str(NODE_DIR / "http_calls.mjs"), "sdk", "{base}", PEER_SEQ, PEER_CONC_N,
                                    CONC]
    runs = {name: [] for name in clients}
    try:
        base = f"http://127.0.0.1:{int(server.stdout.readline().split()[1])}"
        raw = calls.run([exe, "raw", base, str(UTP_SEQ), str(UTP_CONC_N), str(CONC)], server, pre)
        # Node's own HTTP client, no tool protocol: the ceiling for Node code, as `raw` is for Rust.
        bare_node = (json.loads(subprocess.run(["node", str(NODE_DIR / "http_calls.mjs"), "bare", base, str(UTP_SEQ),
                                                str(UTP_CONC_N), str(CONC)], check=True, capture_output=True, text=True,
                                               preexec_fn=pre, env=env, cwd=NODE_DIR).stdout.strip().splitlines()[-1])
                     if env else None)
        for _ in range(RUNS):
            for name, cmd in clients.items():
                cmd = [base if a == "{base}" else str(a) for a in cmd]
                before = calls.cpu_seconds(server.pid)
                start = time.monotonic()
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=pre, env=env,
                                     cwd=NODE_DIR).stdout
                result = json.loads(out.strip().splitlines()[-1])
                result["server_core_share"] = (calls.cpu_seconds(server.pid) - before) / (time.monotonic() - start)
                runs[name].append(result)
    finally:
        server.terminate()
        server.wait()
    modes = [("sequential", "seq_calls_per_s"), (f"{CONC} in flight", "conc_calls_per_s")]
    if py:
        modes.append((f"{CONC} in flight, asyncio", "async_calls_per_s"))
    rows = []
    for lang, ours, theirs in (("python", "utp-python", "python-utcp"), ("node", "utp-node", "utcp-sdk-node")):
        if ours not in runs:
            continue
        for mode, key in modes:
            if key not in runs[ours][0]:
                continue
            peer_key = key if key in runs[theirs][0] else "conc_calls_per_s"
            u = [r[key] for r in runs[ours]]
            p = [r[peer_key] for r in runs[theirs]]
            rows.append({"lang": lang, "mode": mode, "utp": statistics.median(u), "peer": statistics.median(p),
                         "ratio": statistics.median(u) / statistics.median(p), "utp_runs": [round(x) for x in u],
                         "peer_runs": [round(x) for x in p], "raw_client": raw[key if key in raw else peer_key],
                         **({"bare_node_http": bare_node[key]} if lang == "node" else {})})
    share = {name: statistics.median(r["server_core_share"] for r in rs) for name, rs in runs.items()}
    share["raw"] = raw["server_core_share"]
    return {"layout": calls.LAYOUT_NAMES[pinned], "rows": rows, "server_core_share": share}


def main() -> None:
    py = python_with_utp() if "python" in LANGS else None
    env = node_env() if "node" in LANGS else None
    global PEER_PY
    PEER_PY = calls.setup_venv() if py else None
    exe = calls.build()
    loads = [os.getloadavg()]
    table = percall(py, env)
    loads.append(os.getloadavg())
    layouts = [http(exe, py, env, lay == "pinned") for lay in LAYOUTS]
    loads.append(os.getloadavg())
    print(f"build {BUILD}; load average (1 min) at start / after per-call / at end: "
          + " / ".join(f"{x[0]:.2f}" for x in loads) + f"; {RUNS} runs each")
    print(f"\nper call, {N} sequential calls x {ROUNDS} rounds per run (µs; median of the runs' median rounds)")
    for lang, rows in table.items():
        for row, v in rows.items():
            print(f"  {lang:7} {row:24} {v['median_us']:9.2f} µs   (runs {spread(v['runs_us'])})")
    print(f"\nloopback HTTP, calls/s (median of runs; ratio = utp / peer)")
    print(f"  {'layout':38} {'lang':7} {'mode':24} {'utp':>9} {'peer':>8} {'ratio':>7} {'raw':>8}  runs utp | peer")
    for lay in layouts:
        for r in lay["rows"]:
            bare = f"  (Node's own http: {r['bare_node_http']:.0f})" if "bare_node_http" in r else ""
            print(f"  {lay['layout']:38} {r['lang']:7} {r['mode']:24} {r['utp']:9.0f} {r['peer']:8.0f} "
                  f"{r['ratio']:6.1f}x {r['raw_client']:8.0f}  {r['utp_runs']} | {r['peer_runs']}{bare}")
        print(f"  {'':38} server's share of one core (median): "
              + ", ".join(f"{k} {v:.2f}" for k, v in lay["server_core_share"].items()))
    print(json.dumps({"build": BUILD, "loadavg": loads, "percall": table, "http": layouts}))


if __name__ == "__main__":
    main()

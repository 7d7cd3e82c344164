"""MCP tool calls side by side: this engine, python-utcp 1.2 + utcp-mcp, the official Python SDK
client, and a bare rmcp client, against one Rust MCP server, in the same run.

One command (from the repo root): `python3 bench/mcp/run.py [--transport stdio,http]`.

It builds (release) the test server `core/examples/mcp_test_server.rs` and the Rust bench
`core/benches/mcp_calls.rs` (with `--features bench-mcp-http`: rmcp's own HTTP client for the
bare floor), creates bench/.venv-mcp with utcp 1.2.0 + utcp-mcp 1.2.0 (which bring the official
client, mcp 1.x) and a release wheel of the Python binding (`maturin build --release`), then
per layout and transport runs RUNS rounds; each round runs every side once, in turn, each in a
fresh process:

- `bare`: a bare rmcp 3.11 client (`mcp_calls calls bare`), the floor: what the SDK and the
  server cost without any engine. Rust, multi-thread tokio runtime.
- `engine (Rust)`: this engine from Rust (`mcp_calls calls engine`).
- `utp (Python)`: this engine from Python (`bench/mcp/py_calls.py`): `engine.call_tool`
  sequentially, `await engine.call_tool_async` for the calls in flight.
- `python-utcp`: UtcpClient 1.2 + utcp-mcp 1.2.0 (mcp-use over the official client).
- `mcp SDK`: the official Python client, one `mcp.ClientSession`.

Each makes sequential `tools/call`s of `echo` (`{"text": "v<i>"}`, checked), then calls with CONC
(default 64) in flight. Reported: the median calls/s per side and mode over the rounds, each side's
ratio to the bare client, our Python engine's ratio to each Python peer, and the share of one
core the server used while each side ran (from /proc/<pid>/stat: near 1.0 would mean the server
was the limit). Then registration: spawn + session + `tools/list` of the 13-tool server, for
utp, python-utcp, the SDK client and the bare client; the median ms.

Server: `mcp_test_server --output-schemas` (every tool has an output schema: python-utcp
registers no tool from a server where one lacks it), one thread. stdio: each client starts it
as its child (the pinned layout pins the client, and the child inherits it). http: one server
for all sides, started here (`--http 127.0.0.1:0`, sessions; `HTTP_MODE=stateless` for
`--stateless`). A side that refuses the server prints a "not supported" row.

Layouts (LAYOUTS=pinned,free): `pinned` puts the server and every client on CPU 0
(taskset -c 0), so each round trip is a same-core hand-off; `free` leaves placement to the
scheduler. Sizes: BARE_SEQ, BARE_CONC_N (bare and engine from Rust), UTP_SEQ, UTP_CONC_N,
PEER_SEQ, PEER_CONC_N; REG_N registrations per side per round."""
import argparse
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
VENV = ROOT / "bench" / ".venv-mcp"
PINS = ["utcp==1.2.0", "utcp-mcp==1.2.0", "maturin>=1.16,<2"]  # as bindings-python/requirements-dev.txt
RUNS = int(os.environ.get("RUNS", "5"))
CONC = int(os.environ.get("CONC", "64"))
SIZES = {
    "bare": (int(os.environ.get("BARE_SEQ", "20000")), int(os.environ.get("BARE_CONC_N", "50000"))),
    "utp": (int(os.environ.get("UTP_SEQ", "5000")), int(os.environ.get("UTP_CONC_N", "20000"))),
    "peer": (int(os.environ.get("PEER_SEQ", "500")), int(os.environ.get("PEER_CONC_N", "1000"))),
}
REG_N = int(os.environ.get("REG_N", "5"))
HTTP_MODE = os.environ.get("HTTP_MODE", "stateful")
CARGO_ENV = {**os.environ, "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))}
SIDES = [("bare", "bare (rmcp)"), ("engine", "engine (Rust)"), ("utp", "utp (Python)"),
         ("python-utcp", "python-utcp"), ("sdk", "mcp SDK (Python)")]


def build() -> dict:
    """Release builds of the server and the Rust bench; their paths."""
    out = subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "utp-core", "--example", "mcp_test_server", "--bench", "mcp_calls",
         "--features", "bench-mcp-http", "--message-format=json"],
        cwd=ROOT, env=CARGO_ENV, check=True, capture_output=True, text=True,
    ).stdout
    exes = {}
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            exes[msg["target"]["name"]] = msg["executable"]
    return exes


def setup_venv() -> Path:
    """bench/.venv-mcp: python-utcp + utcp-mcp from PyPI, and a release wheel of the binding
    (`maturin build --release`, installed; `maturin develop` would put the release library in
    the source tree, where the test venv's editable install would load it too)."""
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
    wheels = HERE / ".build" / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([str(VENV / "bin" / "maturin"), "build", "--release", "--quiet", "-o", str(wheels)],
                   cwd=ROOT / "bindings-python", env=CARGO_ENV, check=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
                    "--no-deps", str(wheel)], check=True)
    return py


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_named(pid: int, name: str) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if comm == name[:15] and int(rest.split()[1]) == pid:
            found.append(int(entry.name))
    return found


def pin_to_cpu0() -> None:
    os.sched_setaffinity(0, {0})


def run(cmd, pinned: bool, server_pid=None) -> dict:
    """One client process; its last stdout line (JSON), with the server's share of one core
    while it ran: `server_pid` for the HTTP server, else the client's `mcp_test_server` child,
    sampled every 20 ms until it goes (its CPU time up to the last sample, over that time)."""
    pre = pin_to_cpu0 if pinned else None
    start = time.monotonic()
    before = cpu_seconds(server_pid) if server_pid else 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre)
    child, first, last = None, None, None
    while proc.poll() is None:
        time.sleep(0.02)
        if server_pid:
            continue
        try:
            if child is None:
                found = children_named(proc.pid, "mcp_test_server")
                child = found[0] if found else None
            if child is not None:
                sample = (time.monotonic(), cpu_seconds(child))
                first, last = first or sample, sample
        except (OSError, IndexError):
            pass
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    if server_pid:
        result["server_core_share"] = (cpu_seconds(server_pid) - before) / (time.monotonic() - start)
    elif first and last and last[0] > first[0]:
        result["server_core_share"] = (last[1] - first[1]) / (last[0] - first[0])
    return result


def client_cmd(side: str, exes: dict, py: Path, transport: str, target) -> list:
    size = SIZES["bare" if side in ("bare", "engine") else "utp" if side == "utp" else "peer"]
    where = [target] if transport == "http" else []
    tail = [] if transport == "http" else target
    nums = [str(size[0]), str(size[1]), str(CONC)]
    if side in ("bare", "engine"):
        return [exes["mcp_calls"], "calls", side, transport, *where, *nums, *tail]
    return [str(py), str(HERE / "py_calls.py"), "calls", side, transport, *where, *nums, *tail]


def start_http_server(exe: str, pinned: bool):
    args = [exe, "--http", "127.0.0.1:0", "--output-schemas"] + (["--stateless"] if HTTP_MODE == "stateless" else [])
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, preexec_fn=pin_to_cpu0 if pinned else None)
    line = server.stdout.readline().split()
    assert line[:1] == ["listening"], line
    return server, line[1]


def measure_calls(exes: dict, py: Path, pinned: bool, transport: str) -> dict:
    server, target = None, [exes["mcp_test_server"], "--output-schemas"]
    if transport == "http":
        server, target = start_http_server(exes["mcp_test_server"], pinned)
    rows = {side: [] for side, _ in SIDES}
    try:
        for _ in range(RUNS):
            for side, _ in SIDES:
                rows[side].append(run(client_cmd(side, exes, py, transport, target), pinned, server and server.pid))
    finally:
        if server:
            server.terminate()
            server.wait()
    return rows


def measure_register(exes: dict, py: Path, pinned: bool) -> dict:
    cmd = [exes["mcp_test_server"], "--output-schemas"]
    times = {"bare": [], "engine": [], "utp": [], "python-utcp": [], "sdk": []}
    tools = {}
    for _ in range(RUNS):
        for side in times:
            if side in ("bare", "engine"):
                argv = [exes["mcp_calls"], "register", side, str(REG_N), *cmd]
            else:
                argv = [str(py), str(HERE / "py_calls.py"), "register", side, str(REG_N), *cmd]
            out = run(argv, pinned)
            times[side] += out["ms"]
            tools[side] = out["tools"]
    return {side: {"median_ms": statistics.median(ms), "tools": tools[side], "n": len(ms)} for side, ms in times.items()}


def med(rows: list, key: str):
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def ratio(a, b) -> str:
    return f"{a / b:6.2f}x" if a and b else "      -"


def report(results: list, registration: list) -> None:
    print(f"{RUNS} rounds, sides in turn each round; {CONC} in flight for the concurrent mode; "
          f"load average now {os.getloadavg()[0]:.2f}")
    head = f"{'layout':9} {'transport':9} {'side':17} {'sequential/s':>12} {'x bare':>7} {f'{CONC} in flight/s':>15} {'x bare':>7}  server core"
    print(head)
    for res in results:
        bare = res["rows"]["bare"]
        for side, label in SIDES:
            rows = res["rows"][side]
            if any("unsupported" in r for r in rows):
                why = next(r["unsupported"] for r in rows if "unsupported" in r)
                print(f"{res['layout']:9} {res['transport']:9} {label:17} not supported yet: {why[:90]}")
                continue
            seq, par = med(rows, "seq_calls_per_s"), med(rows, "conc_calls_per_s")
            bseq, bpar = med(bare, "seq_calls_per_s"), med(bare, "conc_calls_per_s")
            share = med(rows, "server_core_share")
            share = "-" if share is None else f"{share:.2f}"
            print(f"{res['layout']:9} {res['transport']:9} {label:17} {seq:12.0f} {ratio(seq, bseq)} {par:15.0f} "
                  f"{ratio(par, bpar)}  {share}")
        utp = res["rows"]["utp"]
        if not any("unsupported" in r for r in utp):
            for peer in ("python-utcp", "sdk"):
                p = res["rows"][peer]
                if any("unsupported" in r for r in p):
                    continue
                print(f"{'':19} utp (Python) / {peer}: sequential "
                      f"{med(utp, 'seq_calls_per_s') / med(p, 'seq_calls_per_s'):.1f}x, {CONC} in flight "
                      f"{med(utp, 'conc_calls_per_s') / med(p, 'conc_calls_per_s'):.1f}x")
    for reg in registration:
        print(f"registration over stdio ({reg['layout']}), median ms of spawn + session + tools/list: "
              + ", ".join(f"{side} {r['median_ms']:.1f} ({r['tools']} tools)" for side, r in reg["sides"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", default="stdio", help="stdio, http, or stdio,http")
    parser.add_argument("--layouts", default=os.environ.get("LAYOUTS", "pinned,free"))
    parser.add_argument("--no-register", action="store_true", help="skip the registration times")
    opts = parser.parse_args()
    exes = build()
    py = setup_venv()
    results, registration = [], []
    for layout in [lay for lay in ("pinned", "free") if lay in opts.layouts]:
        pinned = layout == "pinned"
        for transport in opts.transport.split(","):
            rows = measure_calls(exes, py, pinned, transport)
            results.append({"layout": layout, "transport": transport, "rows": rows})
        if not opts.no_register:
            registration.append({"layout": layout, "sides": measure_register(exes, py, pinned)})
    report(results, registration)
    print(json.dumps({"conc": CONC, "runs": RUNS, "http_mode": HTTP_MODE, "calls": results,
                      "registration": registration}))


if __name__ == "__main__":
    main()

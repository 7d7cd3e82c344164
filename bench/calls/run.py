"""Side by side: loopback HTTP tool calls through UTP Runtime and through python-utcp 1.2.

One command (from the repo root): `make bench-calls`. It creates bench/.venv with
utcp 1.2.0 + utcp-http 1.1.15 when missing and builds the release bench binary
`core/benches/call_http.rs`. Then, per layout (below), it starts one loopback server
(`call_http serve`: hyper, HTTP/1.1 keep-alive, one thread) that serves the UTCP manual
at /utcp and the tool at /echo, checks its capacity with a bare pooled reqwest client
(`call_http raw`), and RUNS times (default 5), alternating, each in a fresh process
against that same server, runs this engine (`call_http engine`: Engine::call_tool on a
multi-thread tokio runtime) and python-utcp (`python_utcp_calls.py`:
UtcpClient.call_tool on asyncio). Each run makes sequential calls, then calls with CONC
(default 64) in flight. Reported: median calls/s per side and mode, the ratio of the
medians, the raw client's calls/s, and the share of one core the server used.

Layouts (LAYOUTS=pinned,free): `pinned` puts the server and every client on CPU 0, so
a loopback round trip is a same-core hand-off; `free` leaves placement to the scheduler.

Sizes (calls per run) can be changed with UTP_SEQ, UTP_CONC_N, PY_SEQ, PY_CONC_N;
python-utcp is 5-30x slower, so it gets fewer calls for runs of similar length."""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV = ROOT / "bench" / ".venv"
RUNS = int(os.environ.get("RUNS", "5"))
CONC = int(os.environ.get("CONC", "64"))
UTP_SEQ = int(os.environ.get("UTP_SEQ", "20000"))
UTP_CONC_N = int(os.environ.get("UTP_CONC_N", "50000"))
PY_SEQ = int(os.environ.get("PY_SEQ", "1000"))
PY_CONC_N = int(os.environ.get("PY_CONC_N", "2000"))
LAYOUTS = {True: "pinned" in os.environ.get("LAYOUTS", "pinned,free"), False: "free" in os.environ.get("LAYOUTS", "pinned,free")}
PINS = {"utcp": "1.2.0", "utcp-http": "1.1.15"}


def setup_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    have = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True)
    versions = {p["name"].lower(): p["version"] for p in json.loads(have.stdout)}
    if any(versions.get(name) != v for name, v in PINS.items()):
        subprocess.run([str(py), "-m", "pip", "install", "-q", *(f"{n}=={v}" for n, v in PINS.items())], check=True)
    return py


def build() -> str:
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "utp-core", "--bench", "call_http", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "call_http" and msg.get("executable"):
            return msg["executable"]
    raise RuntimeError("cargo did not report the call_http bench executable")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(cmd, server=None, preexec_fn=None) -> dict:
    """Run one client process; with `server`, also report the share of one core the
    (single-threaded) server used while it ran: near 1.0 would mean it was the limit."""
    before, start = (cpu_seconds(server.pid) if server else 0.0), time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=preexec_fn).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if server:
        result["server_core_share"] = (cpu_seconds(server.pid) - before) / (time.monotonic() - start)
    return result


def pin_to_cpu0() -> None:
    os.sched_setaffinity(0, {0})


def measure(exe: str, py: Path, pinned: bool) -> dict:
    """One layout: start the server, check its capacity, then RUNS alternating runs per side."""
    pre = pin_to_cpu0 if pinned else None
    server = subprocess.Popen([exe, "serve"], stdout=subprocess.PIPE, text=True, preexec_fn=pre)
    try:
        port = int(server.stdout.readline().split()[1])
        base = f"http://127.0.0.1:{port}"
        raw = run([exe, "raw", base, str(UTP_SEQ), str(UTP_CONC_N), str(CONC)], server, pre)
        ours, theirs = [], []
        for _ in range(RUNS):
            ours.append(run([exe, "engine", base, str(UTP_SEQ), str(UTP_CONC_N), str(CONC)], server, pre))
            theirs.append(run([str(py), str(HERE / "python_utcp_calls.py"), base, str(PY_SEQ), str(PY_CONC_N),
                               str(CONC)], server, pre))
    finally:
        server.terminate()
        server.wait()

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    rows = []
    for mode, key in (("sequential", "seq_calls_per_s"), (f"{CONC} in flight", "conc_calls_per_s")):
        rows.append({"mode": mode, "utp_calls_per_s": med(ours, key), "python_utcp_calls_per_s": med(theirs, key),
                     "ratio": med(ours, key) / med(theirs, key), "raw_client_calls_per_s": raw[key],
                     "utp_runs": [round(r[key]) for r in ours], "python_utcp_runs": [round(r[key]) for r in theirs]})
    share = {"raw": raw["server_core_share"], "utp": med(ours, "server_core_share"),
             "python_utcp": med(theirs, "server_core_share")}
    return {"layout": LAYOUT_NAMES[pinned], "server_core_share": share, "rows": rows}


LAYOUT_NAMES = {True: "one core (server + client on CPU 0)", False: "unpinned (2 vCPUs)"}


def main() -> None:
    py = setup_venv()
    exe = build()
    load_before = os.getloadavg()
    layouts = [measure(exe, py, pinned) for pinned in (True, False) if LAYOUTS[pinned]]
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {RUNS} runs per side, "
          f"{CONC} in flight for the concurrent mode")
    print(f"{'layout':38} {'mode':14} {'utp calls/s':>12} {'py-utcp calls/s':>16} {'ratio':>7} {'raw client':>11}")
    for lay in layouts:
        for r in lay["rows"]:
            print(f"{lay['layout']:38} {r['mode']:14} {r['utp_calls_per_s']:12.0f} {r['python_utcp_calls_per_s']:16.0f}"
                  f" {r['ratio']:6.1f}x {r['raw_client_calls_per_s']:11.0f}")
        share = lay["server_core_share"]
        print(f"{'':38} server's share of one core while each client ran (median): "
              + ", ".join(f"{k} {v:.2f}" for k, v in share.items()))
    print(json.dumps({"load_before": load_before, "load_after": load_after, "layouts": layouts}))


if __name__ == "__main__":
    main()

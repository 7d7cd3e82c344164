"""Durable workflows side by side: UTP (Python binding, SQLite store) vs DBOS vs LangGraph.

One command, from the repo root:

    python3 bench/store/run.py

The workflow: 10 trivial steps in a chain (step k after step k-1), each returning
{"ok": True, "n": i}; every system persists every step to a SQLite file in WAL mode:
- UTP: utp.Engine({"store": {"url": "sqlite:PATH", "durability": D}}) and
  engine.run_workflow(wf, {}) with a Python tool "bench.step";
- DBOS: @DBOS.workflow() calling 10 @DBOS.step()s, SQLite system database
  (system_database_url="sqlite:///PATH"); the journal mode and synchronous setting are
  added to every connection DBOS opens by a SQLAlchemy "connect" listener;
- LangGraph: a StateGraph of 10 nodes in a chain compiled with SqliteSaver on
  sqlite3.connect(PATH, check_same_thread=False), one thread_id per invoke.
Durability "normal" = PRAGMA synchronous=NORMAL, "sync" = FULL (fsync at every commit).

Modes: sequential (one workflow after another) and CONC (default 8) in flight: CONC
threads each running the next workflow (all three), plus for UTP CONC asyncio tasks
awaiting engine.run_workflow_async. Each (system, mode, durability) runs RUNS times
(default 3), each in a fresh process on a fresh database file, systems alternating (the
order rotates every run); the table shows the median workflows/s and the ratio of UTP to
each peer in the same run set. Every workflow's result is checked; failures are counted
and make the command exit non-zero. Also: UTP engine open time on a fresh database file
(schema migrations included), median of OPEN_N (default 20) opens per run.

Sizes (workflows per run): UTP_SEQ / UTP_CONC (default 300 / 1000) for UTP, N_SEQ /
N_CONC (default 100 / 200) for DBOS and LangGraph; WARMUP (default 10) untimed workflows
first in every process. A full run takes ~5 minutes on 2 cores (plus the wheel build).
SYSTEMS=utp,dbos,langgraph and DURABILITY=normal,sync select cells. UTP_STORE=memory runs
UTP without a store (harness check only). SKIP_BUILD=1 reuses the wheel in
bench/store/.build/wheels; UTP_REV=HEAD builds it from the last commit rather than the
working tree (other sessions' uncommitted edits left out).

Setup, all under bench/ (the repo's .venv is never touched): bench/.venv-store, created
if missing, with PEERS from PyPI and maturin; a release wheel of bindings-python built
with the shared cargo target dir (as bench/bindings/run.py does) and installed into it.
Prints a table and a final JSON line with every run's figures, versions and load averages."""
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
BUILD_DIR = HERE / ".build"
DB_DIR = BUILD_DIR / "db"
VENV = ROOT / "bench" / ".venv-store"
PY = VENV / "bin" / "python"
PEERS = ["dbos==3.4.0", "langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2"]
MATURIN = "maturin>=1.16,<2"  # as bindings-python/requirements-dev.txt
CARGO_ENV = {**os.environ, "CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))}

RUNS = int(os.environ.get("RUNS", "3"))
CONC = int(os.environ.get("CONC", "8"))
UTP_SEQ = int(os.environ.get("UTP_SEQ", "300"))
UTP_CONC = int(os.environ.get("UTP_CONC", "1000"))
N_SEQ = int(os.environ.get("N_SEQ", "100"))
N_CONC = int(os.environ.get("N_CONC", "200"))
OPEN_N = int(os.environ.get("OPEN_N", "20"))
SYSTEMS = [s for s in ("utp", "dbos", "langgraph") if s in os.environ.get("SYSTEMS", "utp,dbos,langgraph")]
DURABILITIES = [d for d in ("normal", "sync") if d in os.environ.get("DURABILITY", "normal,sync")]
UTP_STORE = os.environ.get("UTP_STORE", "sqlite")


def setup_venv() -> None:
    """bench/.venv-store with the peers and maturin (created once; pip is a no-op when they are there)."""
    if not PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEERS, MATURIN],
                   check=True)


def install_utp() -> dict:
    """A release wheel of bindings-python from the shared target dir, installed (not editable) into the venv.
    Built from the working tree, or with UTP_REV=<commit> from that commit exported (git archive) into
    bench/store/.build/src, so other sessions' uncommitted edits stay out. Returns what it was built
    from (kept next to the wheel for SKIP_BUILD=1)."""
    wheels = BUILD_DIR / "wheels"
    if os.environ.get("SKIP_BUILD") != "1" or not list(wheels.glob("*.whl")):
        shutil.rmtree(wheels, ignore_errors=True)
        rev = os.environ.get("UTP_REV")
        src = ROOT
        if rev:
            src = BUILD_DIR / "src"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir(parents=True)
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            built_from = {"head": subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                                                 capture_output=True, text=True).stdout.strip(), "uncommitted": []}
        else:
            built_from = tree()
        subprocess.run([str(VENV / "bin" / "maturin"), "build", "--release", "--quiet", "-m",
                        str(src / "bindings-python" / "Cargo.toml"), "-o", str(wheels)],
                       cwd=src, env=CARGO_ENV, check=True)
        (wheels / "tree.json").write_text(json.dumps(built_from))
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
                    "--no-deps", str(wheel)], check=True)
    info = wheels / "tree.json"
    return json.loads(info.read_text()) if info.exists() else {"head": "unknown", "uncommitted": []}


def versions() -> dict:
    code = ("import importlib.metadata as m, json, sqlite3, utp; print(json.dumps({**{n: m.version(n) for n in "
            "('dbos', 'langgraph', 'langgraph-checkpoint', 'langgraph-checkpoint-sqlite', 'SQLAlchemy')}, "
            "'utp': utp.version(), 'python sqlite3': sqlite3.sqlite_version}))")
    return json.loads(subprocess.run([str(PY), "-c", code], check=True, capture_output=True, text=True).stdout)


def tree() -> dict:
    """The commit the wheel was built from, and any uncommitted edits under the crates it compiles."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "core", "bindings-python", "Cargo.toml", "Cargo.lock").splitlines()
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted": [line[3:] for line in dirty]}


def worker(system: str, mode: str, durability: str, n: int, db: Path) -> dict:
    env = {**os.environ, "CONC": str(CONC), "UTP_STORE": UTP_STORE, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(PY), str(HERE / "worker.py"), system, mode, durability, str(n), str(db)],
                          capture_output=True, text=True, env=env, cwd=HERE)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {system} {mode} {durability} failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr_tail"] = proc.stderr.strip().splitlines()[-3:] if result.get("failures") else []
    return result


def fsync_probe(n: int = 50) -> float:
    """Median ms of a 4 KiB write + fsync on this filesystem: what one durable commit costs at the least."""
    path = DB_DIR / "fsync-probe"
    times = []
    with open(path, "wb") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    path.unlink()
    return statistics.median(times) * 1e3


def sizes(system: str, mode: str) -> int:
    if system == "utp":
        return UTP_SEQ if mode == "seq" else UTP_CONC
    return N_SEQ if mode == "seq" else N_CONC


def persisted(result: dict) -> bool:
    """The run left its workflows in the database file (UTP_STORE=memory: nothing to check)."""
    if result["system"] == "utp" and UTP_STORE == "memory":
        return True
    rows = result.get("db", {}).get("rows", {})
    return sum(rows.values()) >= result["n"]


def main() -> None:
    setup_venv()
    built_from = install_utp() if "utp" in SYSTEMS else None
    vers = versions()
    shutil.rmtree(DB_DIR, ignore_errors=True)
    DB_DIR.mkdir(parents=True)
    loads = [os.getloadavg()]
    fsync_ms = [fsync_probe()]
    started = time.monotonic()

    modes = {s: ["seq", "threads"] + (["async"] if s == "utp" else []) for s in SYSTEMS}
    runs: dict = {}  # (durability, mode, system) -> [result]
    opens = []
    for durability in DURABILITIES:
        fsync_ms.append(fsync_probe())
        for mode in ("seq", "threads", "async"):
            cell = [s for s in SYSTEMS if mode in modes[s]]
            for r in range(RUNS):
                order = cell[r % len(cell):] + cell[:r % len(cell)]  # rotate so no system always goes first
                for system in order:
                    db = DB_DIR / f"{system}-{durability}-{mode}-{r}.db"
                    res = worker(system, mode, durability, sizes(system, mode), db)
                    res["persisted"] = persisted(res)
                    runs.setdefault((durability, mode, system), []).append(res)
                    for f in DB_DIR.glob(f"{db.name}*"):
                        f.unlink()
    if "utp" in SYSTEMS and UTP_STORE == "sqlite":
        for r in range(RUNS):
            opens.append(worker("utp", "open", "normal", OPEN_N, DB_DIR / f"open-{r}"))
            shutil.rmtree(DB_DIR / f"open-{r}", ignore_errors=True)
    loads.append(os.getloadavg())
    fsync_ms.append(fsync_probe())

    mode_names = {"seq": "sequential", "threads": f"{CONC} threads", "async": f"{CONC} asyncio tasks"}
    rows = []
    for durability in DURABILITIES:
        for mode in ("seq", "threads", "async"):
            row = {"durability": durability, "mode": mode_names[mode]}
            for system in SYSTEMS:
                rs = runs.get((durability, mode, system))
                if not rs:
                    continue
                row[system] = statistics.median(r["wf_per_s"] for r in rs)
                row[f"{system}_runs"] = [round(r["wf_per_s"], 1) for r in rs]
                row[f"{system}_failures"] = sum(r["failures"] for r in rs)
                row[f"{system}_persisted"] = all(r["persisted"] for r in rs)
            if "utp" in row:
                for peer in ("dbos", "langgraph"):
                    # peers have no asyncio row: UTP's asyncio row is compared with their threads row
                    theirs = runs.get((durability, "threads" if mode == "async" else mode, peer))
                    if theirs:
                        row[f"utp/{peer}"] = row["utp"] / statistics.median(r["wf_per_s"] for r in theirs)
            rows.append(row)

    total_failures = sum(r.get(f"{s}_failures", 0) for r in rows for s in SYSTEMS)
    not_persisted = [(r["durability"], r["mode"], s) for r in rows for s in SYSTEMS if r.get(f"{s}_persisted") is False]
    open_ms = statistics.median(o["open_ms_median"] for o in opens) if opens else None

    print(f"load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in loads[0])}, at end "
          f"{'/'.join(f'{x:.2f}' for x in loads[1])}; {os.cpu_count()} cores; {RUNS} runs per cell, "
          f"{time.monotonic() - started:.0f} s")
    print(f"4 KiB write + fsync, median of 50 (ms) at start / before each durability / at end: "
          + " / ".join(f"{x:.2f}" for x in fsync_ms))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    if built_from:
        print(f"utp wheel built from {built_from['head']}" + (
            f" plus uncommitted edits to {', '.join(built_from['uncommitted'])}" if built_from["uncommitted"] else ""))
    print(f"utp store: {UTP_STORE}; workflows per run: utp {UTP_SEQ} seq / {UTP_CONC} concurrent, "
          f"peers {N_SEQ} / {N_CONC}\n")
    head = f"  {'durability':10} {'mode':18}" + "".join(f" {s:>10}" for s in SYSTEMS) + "".join(
        f" {'utp/' + p:>14}" for p in ("dbos", "langgraph") if p in SYSTEMS and "utp" in SYSTEMS)
    print("workflows/s (median of runs; ratio = utp / peer, the asyncio row against the peers' threads row)")
    print(head)
    for r in rows:
        line = f"  {r['durability']:10} {r['mode']:18}"
        for s in SYSTEMS:
            line += f" {r[s]:10.1f}" if s in r else f" {'-':>10}"
        for p in ("dbos", "langgraph"):
            if p in SYSTEMS and "utp" in SYSTEMS:
                line += f" {r[f'utp/{p}']:13.1f}x" if f"utp/{p}" in r else f" {'-':>14}"
        print(line)
    print("\nruns: " + "; ".join(f"{r['durability']} {r['mode']}: " + ", ".join(
        f"{s} {r[f'{s}_runs']}" for s in SYSTEMS if f"{s}_runs" in r) for r in rows))
    if open_ms is not None:
        print(f"utp engine open on a fresh database file (migrations included): median {open_ms:.2f} ms "
              f"(runs' medians {[round(o['open_ms_median'], 2) for o in opens]})")
    checked = "every run" if UTP_STORE == "sqlite" else "every peer run (utp: memory store)"
    print(f"failed workflows: {total_failures}" + (f"; NOT PERSISTED: {not_persisted}" if not_persisted else
                                                      f"; {checked} left its workflows in its database file"))
    print(json.dumps({"loadavg": loads, "fsync_ms": fsync_ms, "cores": os.cpu_count(), "versions": vers, "tree": built_from,
                      "utp_store": UTP_STORE,
                      "sizes": {"utp_seq": UTP_SEQ, "utp_conc": UTP_CONC, "n_seq": N_SEQ, "n_conc": N_CONC,
                                "conc": CONC, "runs": RUNS}, "rows": rows, "open_ms_median": open_ms,
                      "opens": opens, "failures": total_failures, "not_persisted": not_persisted,
                      "runs": {"/".join(k): v for k, v in runs.items()}}))
    if total_failures or not_persisted:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

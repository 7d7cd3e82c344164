"""One measurement in a fresh process (bench/store/run.py starts one per run and cell).

    python worker.py SYSTEM MODE DURABILITY N DB_PATH

SYSTEM: utp | dbos | langgraph. MODE: seq (one workflow after another), threads (CONC
threads, each taking the next workflow until N have run), async (utp only: CONC asyncio
tasks awaiting engine.run_workflow_async), open (utp only: open an engine on N fresh
database files, median open time). DURABILITY: normal | sync (SQLite synchronous=NORMAL
or FULL, WAL in all three); `default` (DBOS only, by hand) leaves DBOS's connections as shipped. DB_PATH: a fresh database file (directories for `open`).

The workflow is the same everywhere: 10 trivial steps in a chain, each returning
{"ok": True, "n": i}. WARMUP workflows (default 10) run first and are not timed. Every
workflow's outcome is checked; failures are counted and reported, never hidden.
Prints one JSON line: wf_per_s, n, failures, seconds, and what the database holds after.
"""
import json
import os
import sqlite3
import statistics
import sys
import threading
import time

STEPS = 10
CONC = int(os.environ.get("CONC", "8"))
WARMUP = int(os.environ.get("WARMUP", "10"))
SYNC_PRAGMA = {"normal": "NORMAL", "sync": "FULL"}


# ---------------------------------------------------------------- UTP


def utp_workflow() -> dict:
    steps = []
    for i in range(STEPS):
        step = {"id": f"s{i}", "tool": "bench.step", "args": {"n": i}}
        if i:
            step["depends_on"] = [f"s{i - 1}"]
        steps.append(step)
    return {"name": "bench", "steps": steps}


def utp_engine(durability: str, db: str):
    import utp

    if os.environ.get("UTP_STORE", "sqlite") == "memory":
        engine = utp.Engine({"store": {"url": "memory"}})
    else:
        engine = utp.Engine({"store": {"url": f"sqlite:{db}", "durability": durability}})
    engine.register_tool("bench.step", lambda args: {"ok": True, "n": args.get("n")})
    return engine


def utp_setup(durability: str, db: str):
    engine = utp_engine(durability, db)
    wf = utp_workflow()

    def one() -> bool:
        return engine.run_workflow(wf, {})["status"] == "completed"

    async def one_async() -> bool:
        return (await engine.run_workflow_async(wf, {}))["status"] == "completed"

    return one, one_async, engine.close


def utp_open(durability: str, n: int, dirpath: str) -> dict:
    """Engine open time on a fresh database file (schema created by the migrations)."""
    import utp  # imported before timing

    os.makedirs(dirpath, exist_ok=True)
    times = []
    for i in range(n):
        db = os.path.join(dirpath, f"open-{i}.db")
        t0 = time.perf_counter()
        engine = utp.Engine({"store": {"url": f"sqlite:{db}", "durability": durability}})
        times.append(time.perf_counter() - t0)
        engine.close()
    return {"open_ms_median": statistics.median(times) * 1e3, "open_ms": [round(t * 1e3, 3) for t in times]}


# ---------------------------------------------------------------- DBOS


def dbos_setup(durability: str, db: str):
    import sqlalchemy as sa
    from dbos import DBOS

    # DBOS creates its own SQLAlchemy engine for the system database (pool, IMMEDIATE
    # transactions, busy timeout); a listener on the Engine class adds the same
    # journal mode and synchronous setting every other system here runs with, on every
    # connection DBOS opens.
    # (durability "default", by hand only: DBOS as shipped, SQLite's rollback journal and synchronous=FULL.)
    if durability != "default":
        @sa.event.listens_for(sa.engine.Engine, "connect")
        def _pragmas(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={SYNC_PRAGMA[durability]}")

    @DBOS.step()
    def step(n: int) -> dict:
        return {"ok": True, "n": n}

    @DBOS.workflow()
    def workflow() -> dict:
        out = None
        for i in range(STEPS):
            out = step(i)  # step k starts after step k-1 returned (and was recorded)
        return out

    dbos = DBOS(config={"name": "bench-store", "system_database_url": f"sqlite:///{db}",
                 "run_admin_server": False, "log_level": "WARNING"})
    DBOS.launch()

    def one() -> bool:
        return workflow() == {"ok": True, "n": STEPS - 1}

    def close():
        # the pragmas really are what the connections run with
        with dbos._sys_db.engine.connect() as c:  # noqa: SLF001 (a check, after the timing)
            got = (c.exec_driver_sql("PRAGMA journal_mode").scalar(), c.exec_driver_sql("PRAGMA synchronous").scalar())
        DBOS.destroy()
        return {"pragmas_seen": got}

    return one, None, close


# ---------------------------------------------------------------- LangGraph


def langgraph_setup(durability: str, db: str):
    from typing import TypedDict

    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        last: dict

    def node(i):
        def run(state: State) -> dict:
            return {"last": {"ok": True, "n": i}}
        return run

    builder = StateGraph(State)
    for i in range(STEPS):
        builder.add_node(f"s{i}", node(i))
        builder.add_edge(START if i == 0 else f"s{i - 1}", f"s{i}")
    builder.add_edge(f"s{STEPS - 1}", END)
    # check_same_thread=False as SqliteSaver's docs say (it serialises use with a lock)
    conn = sqlite3.connect(db, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={SYNC_PRAGMA[durability]}")
    saver = SqliteSaver(conn)
    graph = builder.compile(checkpointer=saver)
    counter = iter(range(10**12))
    lock = threading.Lock()

    def one() -> bool:
        with lock:
            tid = f"t{next(counter)}"
        out = graph.invoke({"last": {}}, {"configurable": {"thread_id": tid}})
        return out["last"] == {"ok": True, "n": STEPS - 1}

    def close():
        got = (conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0])
        conn.close()
        return {"pragmas_seen": got}

    return one, None, close


# ---------------------------------------------------------------- driver


def run_seq(one, n: int) -> int:
    failures = 0
    for _ in range(n):
        try:
            failures += not one()
        except Exception as e:  # counted, and the first few shown
            failures += 1
            if failures <= 3:
                print(f"failure: {e!r}", file=sys.stderr)
    return failures


def run_threads(one, n: int) -> int:
    remaining = [n]
    failures = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            try:
                ok = one()
            except Exception as e:
                ok = False
                print(f"failure: {e!r}", file=sys.stderr)
            if not ok:
                with lock:
                    failures[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(CONC)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures[0]


def run_async(one_async, n: int) -> int:
    import asyncio

    async def main() -> int:
        remaining = [n]
        failures = [0]

        async def worker():
            while remaining[0] > 0:
                remaining[0] -= 1
                try:
                    ok = await one_async()
                except Exception as e:
                    ok = False
                    print(f"failure: {e!r}", file=sys.stderr)
                failures[0] += not ok

        await asyncio.gather(*(worker() for _ in range(CONC)))
        return failures[0]

    return asyncio.run(main())


def db_contents(db: str) -> dict:
    """Row counts of every table in the database file after the run (proof it was written)."""
    if not os.path.exists(db):
        return {"exists": False}
    out = {"exists": True, "bytes": os.path.getsize(db) + sum(
        os.path.getsize(db + s) for s in ("-wal", "-journal") if os.path.exists(db + s))}
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out["rows"] = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        out["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]  # WAL is a property of the file
    finally:
        conn.close()
    return out


def main() -> None:
    system, mode, durability, n, db = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if mode == "open":
        print(json.dumps({"system": system, "durability": durability, "n": n, **utp_open(durability, n, db)}))
        return
    one, one_async, close = {"utp": utp_setup, "dbos": dbos_setup, "langgraph": langgraph_setup}[system](durability, db)
    runner = {"seq": lambda k: run_seq(one, k), "threads": lambda k: run_threads(one, k),
              "async": lambda k: run_async(one_async, k)}[mode]
    warm_failures = runner(WARMUP) if WARMUP else 0
    t0 = time.perf_counter()
    failures = runner(n)
    seconds = time.perf_counter() - t0
    extra = close() or {}
    print(json.dumps({"system": system, "mode": mode, "durability": durability, "n": n, "conc": CONC,
                      "seconds": seconds, "wf_per_s": n / seconds, "failures": failures + warm_failures,
                      "db": db_contents(db), **extra}))


if __name__ == "__main__":
    main()

"""Per-call cost of `engine.call_tool` from Python: part of `python3 bench/bindings/run.py`.

Usage: py_percall.py N ROUNDS

Two tools on one `utp.Engine()` (no config, in-memory store): `text.hello`, a `text` tool
(the engine answers it without calling back into Python: the closest to a native no-op
reachable from Python), and `bench.noop`, a Python function `lambda args: None`
registered with `register_tool` (run on the calling thread, which takes the GIL itself).
Two more rows call the same two tools on a second engine with one Python business rule,
`lambda tool, action, params: True` (docs/architecture.md, "Host callbacks on the calling
thread": with no timeout of their own, the rule and the tool run on the calling thread).
Per tool: warm-up, then ROUNDS rounds of N sequential `engine.call_tool(name, {})`;
prints one JSON line with µs per call of every round and their median. A third row,
a plain Python call of the same no-op through a dict lookup, is the floor of any
Python-level dispatch; a fourth, `executor.submit(noop).result()` on a one-thread
ThreadPoolExecutor, is what handing a call to another thread and back costs in plain
Python (a thread wake-up each way plus two GIL hand-offs): what each Python callback cost
when it ran on an engine thread. Neither is an engine cost."""
import json
from concurrent.futures import ThreadPoolExecutor
import statistics
import sys
import time

import utp


def rounds(fn, n: int, k: int) -> list:
    for _ in range(min(n, 2000)):  # warm up
        fn()
    out = []
    for _ in range(k):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - start) / n * 1e6)
    return out


def main() -> None:
    n, k = int(sys.argv[1]), int(sys.argv[2])
    engine = utp.Engine()
    engine.register_manual(
        {"tools": [{"name": "hello", "tool_call_template": {"call_template_type": "text", "content": "hello"}}]}, "text"
    )
    engine.register_tool("bench.noop", lambda args: None)
    assert engine.call_tool("text.hello", {}) == "hello"
    assert engine.call_tool("bench.noop", {}) is None
    call = engine.call_tool
    ruled = utp.Engine()
    ruled.register_manual(
        {"tools": [{"name": "hello", "tool_call_template": {"call_template_type": "text", "content": "hello"}}]}, "text"
    )
    ruled.register_tool("bench.noop", lambda args: None)
    ruled.domain_layer.add_business_rule("allow_all", lambda tool, action, params: True)
    assert ruled.call_tool("bench.noop", {}) is None
    call_ruled = ruled.call_tool
    table = {"bench.noop": lambda args: None}
    pool = ThreadPoolExecutor(1)
    submit = pool.submit
    rows = {
        "text_tool": rounds(lambda: call("text.hello", {}), n, k),
        "python_noop_tool": rounds(lambda: call("bench.noop", {}), n, k),
        "text_tool_python_rule": rounds(lambda: call_ruled("text.hello", {}), n, k),
        "python_noop_tool_python_rule": rounds(lambda: call_ruled("bench.noop", {}), n, k),
        "python_dispatch_floor": rounds(lambda: table["bench.noop"]({}), n, k),
        "thread_handoff_floor": rounds(lambda: submit(table["bench.noop"], {}).result(), n, k),
    }
    print(json.dumps({"n": n, "rounds": k, "us_per_call": {name: {"median": statistics.median(r), "rounds": r}
                                                           for name, r in rows.items()}}))


if __name__ == "__main__":
    main()

"""UTP Runtime's Python binding (`utp`) side of the HTTP half of `python3 bench/bindings/run.py`.

Usage: py_http_calls.py BASE_URL SEQ_N CONC_N CONC

Registers the manual served at BASE_URL/utcp (bench/calls' server: one http tool,
`bench.echo`), warms up, then calls `bench.echo` with {"x": "v<i>"}:
- sequentially: SEQ_N `engine.call_tool(...)` (the GIL is released while Rust works);
- threads: CONC_N calls from CONC Python threads, each looping on `engine.call_tool`;
- asyncio: CONC_N `await engine.call_tool_async(...)` through asyncio.gather with a
  semaphore of CONC (call_tool_async is a native awaitable: the call runs on the
  engine's runtime and settles an asyncio future, so all CONC calls are in flight).
Prints one JSON line in the shape of bench/calls/python_utcp_calls.py (seq_calls_per_s,
conc_calls_per_s = the threads figure) plus async_calls_per_s."""
import asyncio
import itertools
import json
import sys
import threading
import time

import utp


def check(result, i: int) -> None:
    assert result["x"] == f"v{i}", result


def sequential(engine: utp.Engine, n: int) -> float:
    call = engine.call_tool
    start = time.perf_counter()
    for i in range(n):
        check(call("bench.echo", {"x": f"v{i}"}), i)
    return n / (time.perf_counter() - start)


def threads(engine: utp.Engine, n: int, conc: int) -> float:
    counter = itertools.count()  # next() on it is atomic under the GIL
    call = engine.call_tool

    def worker() -> None:
        while (i := next(counter)) < n:
            check(call("bench.echo", {"x": f"v{i}"}), i)

    pool = [threading.Thread(target=worker) for _ in range(conc)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return n / (time.perf_counter() - start)


async def asyncio_gather(engine: utp.Engine, n: int, conc: int) -> float:
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            check(await engine.call_tool_async("bench.echo", {"x": f"v{i}"}), i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


def main() -> None:
    base, seq_n, conc_n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    engine = utp.Engine()
    assert engine.register_manual(f"{base}/utcp", "bench") == ["bench.echo"]
    warm = max(conc * 4, 200)
    sequential(engine, warm)
    threads(engine, warm, conc)
    asyncio.run(asyncio_gather(engine, warm, conc))
    seq = sequential(engine, seq_n)
    par = threads(engine, conc_n, conc)
    aio = asyncio.run(asyncio_gather(engine, conc_n, conc))
    print(json.dumps({"mode": "utp-python", "seq_n": seq_n, "seq_calls_per_s": seq, "conc_n": conc_n, "conc": conc,
                      "conc_calls_per_s": par, "async_calls_per_s": aio}))


if __name__ == "__main__":
    main()

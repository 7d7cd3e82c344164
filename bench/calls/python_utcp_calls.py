"""python-utcp 1.2 (utcp + utcp-http) side of `make bench-calls`.

Usage: python_utcp_calls.py BASE_URL SEQ_N CONC_N CONC

Registers the manual served at BASE_URL/utcp through an HttpCallTemplate, warms up,
then makes SEQ_N sequential `await client.call_tool("bench.echo", {"x": ...})` calls and
CONC_N calls through asyncio.gather with a semaphore of CONC. Prints one JSON line with
calls/s, in the shape the Rust side (`call_http engine`) prints."""
import asyncio
import json
import sys
import time

from utcp.utcp_client import UtcpClient
from utcp_http.http_call_template import HttpCallTemplate


async def drive(client: UtcpClient, n: int, conc: int) -> float:
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            result = await client.call_tool("bench.echo", {"x": f"v{i}"})
            assert result["x"] == f"v{i}", result

    start = time.perf_counter()
    if conc == 1:
        for i in range(n):
            await one(i)
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


async def main() -> None:
    base, seq_n, conc_n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    client = await UtcpClient.create(config={})
    result = await client.register_manual(
        HttpCallTemplate(name="bench", call_template_type="http", url=f"{base}/utcp", http_method="GET")
    )
    names = [t.name for t in result.manual.tools]
    assert result.success and names == ["bench.echo"], (result.errors, names)
    await drive(client, max(conc * 2, 100), conc)  # warm up
    seq = await drive(client, seq_n, 1)
    par = await drive(client, conc_n, conc)
    print(json.dumps({"mode": "python-utcp", "seq_n": seq_n, "seq_calls_per_s": seq, "conc_n": conc_n,
                      "conc": conc, "conc_calls_per_s": par}))


if __name__ == "__main__":
    asyncio.run(main())

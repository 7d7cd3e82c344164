"""The Python clients of `bench/mcp/run.py`: MCP `tools/call` of `echo`, and registration.

Usage:
  py_calls.py calls SIDE stdio SEQ_N CONC_N CONC CMD [ARGS...]
  py_calls.py calls SIDE http URL SEQ_N CONC_N CONC
  py_calls.py register SIDE N CMD [ARGS...]

SIDE: `utp` (this engine: `engine.call_tool` sequentially, `call_tool_async` for CONC in
flight), `python-utcp` (UtcpClient 1.2 + utcp-mcp), `sdk` (the official client,
`mcp.ClientSession`, one session). Each warms up, then makes SEQ_N sequential calls and CONC_N
calls with at most CONC in flight (asyncio.gather under a semaphore); one JSON line with
calls/s, or `{"unsupported": why}` when the side refuses the server. `register` times N
times: start the server, open the session, list its tools (and end it), as each side
registers an `mcp` manual; prints the median and every time in ms."""
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import time

TEMPLATE_NAME = "bench"


def template(server: dict) -> dict:
    return {"name": TEMPLATE_NAME, "call_template_type": "mcp", "config": {"mcpServers": {"s": server}}}


def utcp_template(server: dict):
    """The same template as python-utcp's CallTemplate object (what `register_manual` takes)."""
    from utcp.data.call_template import CallTemplateSerializer

    return CallTemplateSerializer().validate_dict(template(server))


def server_of(transport: str, target) -> dict:
    return {"command": target[0], "args": target[1:]} if transport == "stdio" else {"url": target}


async def drive(call, n: int, conc: int) -> float:
    """`n` calls of `call(i)` with at most `conc` in flight; calls/s."""
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            result = await call(i)
            assert result == f"v{i}", result

    start = time.perf_counter()
    if conc == 1:
        for i in range(n):
            await one(i)
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def utp_side(transport, target):
    import utp

    engine = utp.Engine()
    try:
        names = engine.register_manual(template(server_of(transport, target)))
        assert f"{TEMPLATE_NAME}.s.echo" in names, names
    except utp.UtpError as e:
        engine.close()
        raise Unsupported(f"{type(e).__name__}: {e}") from e
    name = f"{TEMPLATE_NAME}.s.echo"

    async def seq(i):  # the blocking call, as a sequential Python caller makes it
        return engine.call_tool(name, {"text": f"v{i}"})

    async def par(i):
        return await engine.call_tool_async(name, {"text": f"v{i}"})

    try:
        yield seq, par, len(names)
    finally:
        engine.close()


@contextlib.asynccontextmanager
async def python_utcp_side(transport, target):
    from utcp.utcp_client import UtcpClient

    client = await UtcpClient.create(config={})
    try:
        result = await client.register_manual(utcp_template(server_of(transport, target)))
        if not result.success:
            raise Unsupported("; ".join(result.errors))
        name = f"{TEMPLATE_NAME}.s.echo"

        async def call(i):
            return await client.call_tool(name, {"text": f"v{i}"})

        yield call, call, len(result.manual.tools)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def sdk_side(transport, target):
    from mcp import ClientSession, StdioServerParameters

    async with contextlib.AsyncExitStack() as stack:
        if transport == "stdio":
            from mcp.client.stdio import stdio_client

            params = StdioServerParameters(command=target[0], args=target[1:])
            read, write = await stack.enter_async_context(stdio_client(params))
        else:
            from mcp.client.streamable_http import streamable_http_client

            read, write, _ = await stack.enter_async_context(streamable_http_client(target))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        # As a registration would; the client also keeps the output schemas to check results.
        tools = len((await session.list_tools()).tools)

        async def call(i):
            result = await session.call_tool("echo", {"text": f"v{i}"})
            return result.content[0].text

        yield call, call, tools


class Unsupported(Exception):
    pass


SIDES = {"utp": utp_side, "python-utcp": python_utcp_side, "sdk": sdk_side}


async def calls(side, transport, target, seq_n, conc_n, conc) -> dict:
    row = {"side": side, "transport": transport}
    try:
        async with SIDES[side](transport, target) as (seq_call, par_call, _):
            await drive(seq_call, 100, 1)  # warm up
            await drive(par_call, max(conc * 4, 200), conc)
            seq = await drive(seq_call, seq_n, 1)
            par = await drive(par_call, conc_n, conc)
    except Unsupported as e:
        return {**row, "unsupported": str(e)}
    return {**row, "seq_n": seq_n, "seq_calls_per_s": seq, "conc_n": conc_n, "conc": conc, "conc_calls_per_s": par}


IMPORTS = {"utp": ["utp"], "python-utcp": ["utcp.utcp_client", "utcp.data.call_template", "utcp_mcp"],
           "sdk": ["mcp", "mcp.client.stdio"]}


async def register_once(side, cmd):
    """Start the server, open a session, list its tools: (tools, ms); then end it (not timed)."""
    start = time.perf_counter()
    if side == "utp":
        import utp

        engine = utp.Engine()
        tools = len(engine.register_manual(template(server_of("stdio", cmd))))
        ms = (time.perf_counter() - start) * 1e3
        engine.close()
        return tools, ms
    if side == "python-utcp":
        from utcp.utcp_client import UtcpClient

        client = await UtcpClient.create(config={})
        result = await client.register_manual(utcp_template(server_of("stdio", cmd)))
        ms = (time.perf_counter() - start) * 1e3
        assert result.success, result.errors
        await client.close()
        return len(result.manual.tools), ms
    async with sdk_side("stdio", cmd) as (_, _, tools):
        return tools, (time.perf_counter() - start) * 1e3


async def register(side, n, cmd) -> dict:
    """Times of `n` registrations (ending each session is not counted), after the side's
    modules are imported (timed apart: `import_ms`) and one registration to warm up."""
    import importlib

    start = time.perf_counter()
    for module in IMPORTS[side]:
        importlib.import_module(module)
    import_ms = (time.perf_counter() - start) * 1e3
    await register_once(side, cmd)
    times, tools = [], 0
    for _ in range(n):
        tools, ms = await register_once(side, cmd)
        times.append(ms)
    return {"side": side, "n": n, "tools": tools, "median_ms": statistics.median(times), "ms": times,
            "import_ms": import_ms}


def main() -> None:
    # utcp-mcp sets the root logger to INFO on import and logs several lines per call; a user
    # who benchmarks would silence it, so the comparison is of the calls, not of log output.
    logging.disable(logging.INFO)
    args = sys.argv[1:]
    if len(args) < 3 or args[1] not in SIDES:
        sys.exit(__doc__)
    if args[0] == "calls" and args[2] == "stdio":
        out = asyncio.run(calls(args[1], "stdio", args[6:], int(args[3]), int(args[4]), int(args[5])))
    elif args[0] == "calls" and args[2] == "http":
        out = asyncio.run(calls(args[1], "http", args[3], int(args[4]), int(args[5]), int(args[6])))
    elif args[0] == "register":
        out = asyncio.run(register(args[1], int(args[2]), args[3:]))
    else:
        sys.exit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

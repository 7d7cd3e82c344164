"""Streaming calls from Python: `call_tool_stream` (an iterator) and
`call_tool_stream_async` (an async iterator) against real SSE and streamable HTTP
(NDJSON) servers on 127.0.0.1: items arrive as the server sends them, closing or
dropping a stream closes its connection, errors mid-stream raise `utp.UtpError`s."""

import asyncio
import gc
import json
import textwrap
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import utp
from conftest import interrupt_child

# The server waits this long for the test to say "item 1 arrived" before it sends the rest.
GATE_TIMEOUT = 10.0
MAX_EVENT_SIZE = 1024


class _StreamHandler(BaseHTTPRequestHandler):
    """GET /sse/<case> answers text/event-stream, POST /ndjson/<case> answers
    application/x-ndjson. Cases: `gated` sends item 1, waits for `server.release`, then
    items 2 and 3; `endless` sends item 1, then keep-alives until the client goes away
    (`server.disconnected`); `broken` sends item 1, waits for `server.release`, then
    something the client rejects (an over-long event, a line that is not JSON)."""

    def _start(self, content_type):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("cache-control", "no-cache")
        self.end_headers()

    def _serve(self, item, keep_alive, broken):
        case = self.path.rsplit("/", 1)[-1]
        server = self.server
        self.wfile.write(item({"n": 1}))
        if case == "gated":
            if not server.release.wait(GATE_TIMEOUT):
                server.timed_out = True
            self.wfile.write(item({"n": 2}) + item({"n": 3}))
        elif case == "endless":
            try:
                while True:
                    time.sleep(0.05)
                    self.wfile.write(keep_alive)
            except OSError:
                server.disconnected.set()
        elif case == "broken":
            server.release.wait(GATE_TIMEOUT)  # item 1 apart from what breaks the stream
            self.wfile.write(broken)
        self.close_connection = True

    def do_GET(self):
        self._start("text/event-stream")
        sse = lambda value: f"data: {json.dumps(value)}\n\n".encode()  # noqa: E731
        oversized = b"data: " + b"x" * (2 * MAX_EVENT_SIZE) + b"\n\n"
        self._serve(sse, b": keep-alive\n\n", oversized)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._start("application/x-ndjson")
        line = lambda value: json.dumps(value).encode() + b"\n"  # noqa: E731
        self._serve(line, b"\n", b"not json\n")

    def log_message(self, *args):
        pass


class _StreamServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops connections opened together

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _StreamHandler)
        self.release = threading.Event()
        self.disconnected = threading.Event()
        self.timed_out = False


@pytest.fixture
def server():
    srv = _StreamServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def engine(server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    tools = []
    for case in ("gated", "endless", "broken"):
        tools.append({"name": f"sse_{case}", "tool_call_template": {"call_template_type": "sse", "url": f"{base}/sse/{case}"}})
        tools.append(
            {
                "name": f"http_{case}",
                "tool_call_template": {
                    "call_template_type": "streamable_http",
                    "url": f"{base}/ndjson/{case}",
                    "http_method": "POST",
                },
            }
        )
    with utp.Engine({"calls": {"max_event_size": MAX_EVENT_SIZE}}) as e:
        e.register_manual({"tools": tools}, name="feed")
        yield e


KINDS = ["sse", "http"]


@pytest.mark.parametrize("kind", KINDS)
def test_items_arrive_as_the_server_sends_them(engine, server, kind):
    stream = engine.call_tool_stream(f"feed.{kind}_gated")
    assert isinstance(stream, utp.ToolStream)
    assert next(stream) == {"n": 1}
    assert not server.release.is_set()  # the server has not sent item 2 yet
    server.release.set()
    assert list(stream) == [{"n": 2}, {"n": 3}]
    assert not server.timed_out
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("kind", KINDS)
def test_next_waits_with_the_gil_released(engine, server, kind):
    with engine.call_tool_stream(f"feed.{kind}_gated") as stream:
        assert next(stream) == {"n": 1}
        # Only a Python thread can let the server go on: it runs while `next` waits.
        threading.Timer(0.2, server.release.set).start()
        assert next(stream) == {"n": 2}
    assert not server.timed_out


@pytest.mark.parametrize("kind", KINDS)
def test_leaving_the_with_block_closes_the_connection(engine, server, kind):
    with engine.call_tool_stream(f"feed.{kind}_endless") as stream:
        assert next(stream) == {"n": 1}
    assert stream.closed
    assert server.disconnected.wait(5), "the server never saw the client go away"
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("kind", KINDS)
def test_dropping_a_stream_closes_the_connection(engine, server, kind):
    stream = engine.call_tool_stream(f"feed.{kind}_endless")
    assert next(stream) == {"n": 1}
    del stream
    gc.collect()
    assert server.disconnected.wait(5), "the server never saw the client go away"


def test_a_stream_in_a_cycle_with_its_engine_is_collected(server):
    engine = utp.Engine()
    url = f"http://127.0.0.1:{server.server_address[1]}/sse/endless"
    engine.register_manual({"tools": [{"name": "t", "tool_call_template": {"call_template_type": "sse", "url": url}}]}, name="feed")
    stream = engine.call_tool_stream("feed.t")
    assert next(stream) == {"n": 1}
    engine.register_tool("keep.stream", lambda args, kept=stream: None)  # engine -> tool -> stream -> engine
    ref = weakref.ref(engine)
    del engine, stream
    for _ in range(3):
        gc.collect()
        utp.Engine().close()  # lets the interpreter run deferred reference drops
    assert ref() is None
    assert server.disconnected.wait(5)


@pytest.mark.parametrize("kind", KINDS)
def test_close_from_another_thread_cancels_a_waiting_next(engine, server, kind):
    stream = engine.call_tool_stream(f"feed.{kind}_endless")
    assert next(stream) == {"n": 1}
    threading.Timer(0.2, stream.close).start()
    start = time.monotonic()
    with pytest.raises(utp.CancelledError):
        next(stream)
    assert time.monotonic() - start < 3
    assert server.disconnected.wait(5)


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_mid_stream_raises_and_ends_the_stream(engine, server, kind):
    stream = engine.call_tool_stream(f"feed.{kind}_broken")
    assert next(stream) == {"n": 1}
    server.release.set()
    with pytest.raises(utp.TransportError) as info:
        next(stream)
    assert info.value.code == "TRANSPORT"
    assert f"feed.{kind}_broken" in str(info.value)
    with pytest.raises(StopIteration):
        next(stream)


def test_a_tool_that_does_not_stream_yields_its_one_result(engine):
    engine.register_tool("math.add", lambda args: args["a"] + args["b"])
    assert list(engine.call_tool_stream("math.add", {"a": 2, "b": 3})) == [5]


def test_bad_arguments_raise_before_anything_is_sent(engine):
    with pytest.raises(utp.NotFoundError):
        engine.call_tool_stream("feed.nope")
    with pytest.raises(utp.ValidationFailedError):
        engine.call_tool_stream("feed.sse_gated", [1, 2])
    with pytest.raises(utp.InvalidArgumentError, match="timeout"):
        engine.call_tool_stream("feed.sse_gated", timeout=-1)
    with pytest.raises(TypeError):
        engine.call_tool_stream("feed.sse_gated", tenant=5)  # type: ignore[arg-type]
    with pytest.raises(utp.InvalidArgumentError):
        engine.call_tool_stream("feed.sse_gated", {1: 2})


def test_a_stream_of_a_closed_engine_raises(server):
    with utp.Engine() as engine:
        engine.register_manual(
            {"tools": [{"name": "t", "tool_call_template": {"call_template_type": "sse", "url": f"http://127.0.0.1:{server.server_address[1]}/sse/endless"}}]},
            name="feed",
        )
        stream = engine.call_tool_stream("feed.t")
        assert next(stream) == {"n": 1}
    with pytest.raises(utp.InvalidArgumentError, match="closed"):
        next(stream)
    with pytest.raises(utp.InvalidArgumentError, match="closed"):
        engine.call_tool_stream("feed.t")
    stream.close()
    assert server.disconnected.wait(5)


def test_ctrl_c_interrupts_a_waiting_next_and_ends_the_stream(tmp_path, server):
    url = f"http://127.0.0.1:{server.server_address[1]}/sse/endless"
    script = tmp_path / "streaming.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, utp
            engine = utp.Engine()
            engine.register_manual({{"tools": [{{"name": "t", "tool_call_template": {{
                "call_template_type": "sse", "url": "{url}"}}}}]}}, name="feed")
            stream = engine.call_tool_stream("feed.t")
            assert next(stream) == {{"n": 1}}
            print("ready", flush=True)
            try:
                next(stream)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                print("ended" if next(stream, "end") == "end" else "not ended", flush=True)
                sys.exit(3)
            """
        )
    )
    code, out, elapsed = interrupt_child(script, settle=0.3, timeout=10)
    assert (code, out.split()) == (3, ["interrupted", "ended"]), out
    assert elapsed < 5
    assert server.disconnected.wait(5)


# ----- asyncio -----


@pytest.mark.parametrize("kind", KINDS)
def test_async_items_arrive_as_the_server_sends_them(engine, server, kind):
    async def main():
        stream = engine.call_tool_stream_async(f"feed.{kind}_gated")
        assert isinstance(stream, utp.AsyncToolStream)
        assert await anext(stream) == {"n": 1}
        assert not server.release.is_set()
        server.release.set()
        return [item async for item in stream]

    assert asyncio.run(main()) == [{"n": 2}, {"n": 3}]
    assert not server.timed_out


@pytest.mark.parametrize("kind", KINDS)
def test_async_with_closes_the_connection(engine, server, kind):
    async def main():
        async with engine.call_tool_stream_async(f"feed.{kind}_endless") as stream:
            async for item in stream:
                assert item == {"n": 1}
                break
        assert stream.closed
        with pytest.raises(StopAsyncIteration):
            await anext(stream)

    asyncio.run(main())
    assert server.disconnected.wait(5)


@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_the_awaiting_task_closes_the_connection(engine, server, kind):
    async def main():
        stream = engine.call_tool_stream_async(f"feed.{kind}_endless")
        assert await anext(stream) == {"n": 1}
        waiting = asyncio.ensure_future(anext(stream))  # nothing more comes: keep-alives only
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert stream.closed

    asyncio.run(main())
    assert server.disconnected.wait(5)


@pytest.mark.parametrize("kind", KINDS)
def test_async_error_mid_stream_raises(engine, server, kind):
    async def main():
        items = []
        with pytest.raises(utp.TransportError):
            async for item in engine.call_tool_stream_async(f"feed.{kind}_broken"):
                items.append(item)
                server.release.set()
        return items

    assert asyncio.run(main()) == [{"n": 1}]


def test_async_open_errors_raise_on_the_first_item(engine):
    async def main():
        stream = engine.call_tool_stream_async("feed.nope")  # returns at once
        with pytest.raises(utp.NotFoundError):
            await anext(stream)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        with pytest.raises(utp.InvalidArgumentError, match="timeout"):
            engine.call_tool_stream_async("feed.sse_gated", timeout=-1)

    asyncio.run(main())


def test_many_async_streams_at_once(engine, server):
    async def main():
        async def read(i):
            tool = "feed.sse_gated" if i % 2 else "feed.http_gated"
            return [item async for item in engine.call_tool_stream_async(tool)]

        tasks = [asyncio.ensure_future(read(i)) for i in range(8)]
        await asyncio.sleep(0.2)
        server.release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [[{"n": 1}, {"n": 2}, {"n": 3}]] * 8

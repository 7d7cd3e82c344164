"""Calling tools from Python: native Python tools, text, CLI and HTTP tools over real
processes and a real loopback server, errors, timeouts, threads, asyncio, Ctrl-C, GC."""

import asyncio
import gc
import json
import os
import textwrap
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import utp
from conftest import interrupt_child

ADD_INPUTS = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}


def test_python_function_as_tool(engine):
    name = engine.register_tool("math.add", lambda args: args["a"] + args["b"], inputs=ADD_INPUTS, description="Add")
    assert name == "math.add"
    assert engine.call_tool("math.add", {"a": 2, "b": 3.5}) == 5.5
    tool = engine.tool("math.add")
    assert tool["tool_call_template"]["call_template_type"] == "native"
    assert engine.search_tools("add")[0]["name"] == "math.add"


def test_values_round_trip_as_python_objects(engine):
    engine.register_tool("t.echo", lambda args: args)
    value = {"s": "ü", "i": -(2**62), "f": 1.25, "b": True, "n": None, "l": [1, [2, {"x": []}]]}
    assert engine.call_tool("t.echo", value) == value
    assert engine.call_tool("t.echo") == {}  # no arguments: the function gets an empty dict


def test_async_def_tool(engine):
    async def slow_double(args):
        await asyncio.sleep(0.01)
        return args["x"] * 2

    engine.register_tool("t.double", slow_double)
    assert engine.call_tool("t.double", {"x": 21}) == 42


def test_decorator_forms(engine):
    @engine.tool
    def shout(args):
        """Upper-case a text."""
        return args["text"].upper()

    @engine.tool(name="fmt.join", tags=["text"])
    async def join(args):
        return "-".join(args["parts"])

    assert shout({"text": "x"}) == "X"  # the decorator returns the function unchanged
    assert engine.call_tool("local.shout", {"text": "hi"}) == "HI"
    assert engine.tool("local.shout")["description"] == "Upper-case a text."
    assert engine.call_tool("fmt.join", {"parts": ["a", "b"]}) == "a-b"
    assert engine.tool("fmt.join")["tags"] == ["text"]


def test_arguments_are_validated_before_the_function_runs(engine):
    calls = []
    engine.register_tool("math.add", lambda args: calls.append(args) or 0, inputs=ADD_INPUTS)
    with pytest.raises(utp.ValidationFailedError) as info:
        engine.call_tool("math.add", {"a": "two"})
    message = str(info.value)
    assert "/a" in message and "b" in message, message
    assert info.value.code == "VALIDATION_FAILED"
    assert calls == []


def test_exceptions_in_tools_fail_the_call_and_name_the_tool(engine):
    def broken(args):
        raise ValueError("boom")

    async def broken_async(args):
        raise KeyError("missing")

    engine.register_tool("t.broken", broken)
    engine.register_tool("t.broken_async", broken_async)
    engine.register_tool("t.weird", lambda args: object())
    with pytest.raises(utp.ToolFailedError, match=r"tool 't.broken' raised ValueError: boom"):
        engine.call_tool("t.broken")
    with pytest.raises(utp.ToolFailedError, match="KeyError"):
        engine.call_tool("t.broken_async")
    with pytest.raises(utp.ToolFailedError, match="JSON"):
        engine.call_tool("t.weird")
    # the engine is still fine
    engine.register_tool("t.ok", lambda args: "ok")
    assert engine.call_tool("t.ok") == "ok"


def test_timeout(engine):
    engine.register_tool("t.sleepy", lambda args: time.sleep(2) or "late")
    start = time.monotonic()
    with pytest.raises(utp.TimeoutError):
        engine.call_tool("t.sleepy", timeout=0.2)
    assert time.monotonic() - start < 1.5


def test_bad_call_arguments(engine):
    with pytest.raises(utp.NotFoundError):
        engine.call_tool("nope.tool")
    engine.register_tool("t.ok", lambda args: "ok")
    for bad in [-1.0, float("nan"), float("inf")]:
        with pytest.raises(utp.InvalidArgumentError, match="timeout"):
            engine.call_tool("t.ok", timeout=bad)
    with pytest.raises(utp.InvalidArgumentError, match="callable"):
        engine.register_tool("t.x", 42)
    with pytest.raises(utp.InvalidArgumentError, match="manual.tool"):
        engine.register_tool("nodot", lambda a: a)
    with pytest.raises(utp.InvalidArgumentError):
        engine.call_tool("t.ok", {1: 2})
    with pytest.raises(utp.ValidationFailedError):
        engine.call_tool("t.ok", [1, 2])


def test_text_and_cli_tools(engine):
    engine.register_manual(
        {
            "tools": [
                {"name": "hello", "tool_call_template": {"call_template_type": "text", "content": "hello"}},
                {
                    "name": "echo",
                    "inputs": {"type": "object", "properties": {"msg": {"type": "string"}}},
                    "tool_call_template": {
                        "call_template_type": "cli",
                        "commands": [{"command": "echo UTCP_ARG_msg_UTCP_END"}],
                    },
                },
            ]
        },
        name="local",
    )
    assert engine.call_tool("local.hello") == "hello"
    # An injection attempt is one argv item to echo, never shell text.
    out = engine.call_tool("local.echo", {"msg": "hi; touch /tmp/utp-pwned $(id) `id`"})
    assert "hi; touch /tmp/utp-pwned $(id) `id`" in out
    assert not os.path.exists("/tmp/utp-pwned")


def test_http_tools_against_a_loopback_server(http_server):
    manual = {
        "tools": [
            {
                "name": "search",
                "inputs": {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}},
                "tool_call_template": {
                    "call_template_type": "http",
                    "url": http_server + "/items",
                    "http_method": "GET",
                    "auth": {"auth_type": "api_key", "api_key": "${KEY}", "var_name": "X-Api-Key", "location": "header"},
                },
            },
            {
                "name": "create",
                "inputs": {"type": "object", "properties": {"body": {"type": "object"}}},
                "tool_call_template": {"call_template_type": "http", "url": http_server + "/items", "http_method": "POST"},
            },
            {"name": "fail", "tool_call_template": {"call_template_type": "http", "url": http_server + "/fail"}},
        ]
    }
    with utp.Engine({"variables": {"shop_KEY": "secret-key"}}) as engine:
        engine.register_manual(manual, name="shop")
        got = engine.call_tool("shop.search", {"q": "red shoes", "n": 3})
        assert got == {"path": "/items", "query": {"q": ["red shoes"], "n": ["3"]}, "key": "secret-key"}
        assert engine.call_tool("shop.create", {"body": {"sku": "A1", "qty": 2}}) == {"received": {"sku": "A1", "qty": 2}}
        with pytest.raises(utp.ToolFailedError, match="503") as info:
            engine.call_tool("shop.fail")
        assert "secret-key" not in str(info.value)


def test_many_threads_call_python_tools(engine):
    engine.register_tool("math.add", lambda args: args["a"] + args["b"], inputs=ADD_INPUTS)
    results = {}

    def worker(i):
        results[i] = [engine.call_tool("math.add", {"a": i, "b": j}) for j in range(50)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == [i + j for j in range(50)] for i in range(16))


def test_engine_threads_keep_their_python_state_between_calls(engine):
    """An engine thread keeps its Python thread state from one call to the next, so what
    a tool keeps in `threading.local` (a connection, a session) stays with its thread."""
    local = threading.local()

    def count(args):
        local.calls = getattr(local, "calls", 0) + 1
        return [threading.get_ident(), local.calls]

    engine.register_tool("t.count", count)
    seen = [engine.call_tool("t.count") for _ in range(40)]
    calls_per_thread: dict[int, int] = {}
    for ident, calls in seen:
        calls_per_thread[ident] = calls_per_thread.get(ident, 0) + 1
        assert calls == calls_per_thread[ident], seen
    assert len(calls_per_thread) < len(seen)  # threads were reused, and kept their count


def test_engine_threads_release_their_python_state_when_the_engine_closes():
    class Token:
        pass

    local = threading.local()
    refs = []

    def keep(args):
        if not hasattr(local, "token"):
            local.token = Token()
            refs.append(weakref.ref(local.token))
        return len(refs)

    engine = utp.Engine()
    engine.register_tool("t.keep", keep)
    for _ in range(20):
        # With a timeout of its own the tool runs on an engine thread (without one, on this thread).
        engine.call_tool("t.keep", timeout=30)
    assert refs and all(r() is not None for r in refs)  # kept while the threads run
    engine.close()  # joins the engine's threads: each deletes its Python state
    gc.collect()
    assert all(r() is None for r in refs)


def test_asyncio_calls_run_concurrently():
    async def main():
        with utp.Engine() as engine:
            async def nap(args):
                await asyncio.sleep(0.2)
                return args["i"]

            engine.register_tool("t.nap", nap)
            start = time.monotonic()
            results = await asyncio.gather(*(engine.call_tool_async("t.nap", {"i": i}) for i in range(8)))
            return results, time.monotonic() - start

    results, elapsed = asyncio.run(main())
    assert results == list(range(8))
    assert elapsed < 1.2  # 8 x 0.2 s would be 1.6 s if the calls ran one after another


def test_stored_callables_are_released_with_the_engine():
    class Handler:
        def __call__(self, args):
            return "ok"

    handler = Handler()
    ref = weakref.ref(handler)
    engine = utp.Engine()
    engine.register_tool("t.h", handler)
    assert engine.call_tool("t.h") == "ok"
    del handler
    gc.collect()
    assert ref() is not None  # the engine holds it
    engine.close()
    del engine
    for _ in range(3):
        gc.collect()
        utp.Engine().close()  # lets the interpreter run deferred reference drops
    assert ref() is None


def _assert_ctrl_c_interrupts(tmp_path, setup, call):
    """Run `setup` then the blocking `call` in a child; Ctrl-C must raise KeyboardInterrupt
    in it within 5 s."""
    script = tmp_path / "blocked.py"
    script.write_text(
        textwrap.dedent(setup)
        + textwrap.dedent(
            f"""
            print("ready", flush=True)
            try:
                {call}
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(3)
            """
        )
    )
    code, out, elapsed = interrupt_child(script, settle=0.3, timeout=10)
    assert code == 3, out
    assert "interrupted" in out
    assert elapsed < 5


def test_ctrl_c_interrupts_a_blocking_call(tmp_path):
    setup = """
        import sys, time, utp
        engine = utp.Engine()
        engine.register_manual({"tools": [{"name": "sleep", "tool_call_template": {
            "call_template_type": "cli", "commands": [{"command": "sleep 30"}]}}]}, name="slow")
    """
    _assert_ctrl_c_interrupts(tmp_path, setup, 'engine.call_tool("slow.sleep", timeout=60)')


def _echo_manual(base):
    return {"tools": [
        {"name": "get", "inputs": {"type": "object", "properties": {"i": {"type": "integer"}}},
         "tool_call_template": {"call_template_type": "http", "url": base + "/items"}},
        {"name": "slow", "tool_call_template": {"call_template_type": "http", "url": base + "/slow"}},
    ]}


def test_http_calls_driven_on_the_calling_thread(http_server):
    # A blocking HTTP call with no other in progress runs on a runtime of the calling
    # thread, with that thread's client for the engine: from the main thread, from other
    # threads one after another and at once, across engines, and after an engine closed.
    first = utp.Engine()
    first.register_manual(_echo_manual(http_server), name="web")
    assert [first.call_tool("web.get", {"i": i})["query"] for i in range(20)] == [{"i": [str(i)]} for i in range(20)]
    results = {}

    def worker(n):
        results[n] = [first.call_tool("web.get", {"i": n * 100 + i})["query"]["i"] for i in range(10)]

    for n in range(3):  # one after another: each thread alone, on its own runtime
        t = threading.Thread(target=worker, args=(n,))
        t.start()
        t.join()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [[str(n * 100 + i)] for i in range(10)] for n in range(11)}
    # Errors are the same on this path: validation, then a server error.
    with pytest.raises(utp.ValidationFailedError):
        first.call_tool("web.get", {"i": "x"})
    second = utp.Engine()
    second.register_manual(_echo_manual(http_server), name="web")
    assert second.call_tool("web.get", {"i": 1})["query"] == {"i": ["1"]}
    first.close()
    del first
    gc.collect()
    third = utp.Engine()
    third.register_manual(_echo_manual(http_server), name="web")
    assert third.call_tool("web.get", {"i": 2})["query"] == {"i": ["2"]}
    assert second.call_tool("web.get", {"i": 3})["query"] == {"i": ["3"]}
    # A timeout on this path, as on the runtime's.
    with pytest.raises(utp.TimeoutError):
        third.call_tool("web.slow", {}, timeout=0.2)
    second.close()
    third.close()


def test_ctrl_c_interrupts_an_http_call_driven_on_the_calling_thread(tmp_path):
    setup = """
        import sys, threading, time, utp
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Slow(BaseHTTPRequestHandler):
            def do_GET(self):
                time.sleep(30)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        engine = utp.Engine()
        url = f"http://127.0.0.1:{server.server_address[1]}/slow"
        engine.register_manual({"tools": [{"name": "slow", "tool_call_template": {
            "call_template_type": "http", "url": url}}]}, name="web")
    """
    _assert_ctrl_c_interrupts(tmp_path, setup, 'engine.call_tool("web.slow", timeout=60)')


def _serve(handler_class):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_redirects_never_carry_a_body_or_a_secret_to_another_origin():
    """Two loopback ports are two origins: A only redirects, B records what reaches it.
    An OAuth2 token request or a POST body answered with 307/308 towards B is refused
    (SECURITY) and B sees nothing; 303 becomes a bare GET; credentials stay behind."""
    seen = []

    class Recorder(BaseHTTPRequestHandler):
        def _record(self):
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length).decode()
            line = f"{self.command} {self.path} key={'x-api-key' in self.headers}"
            seen.append(f"{line} body={body}")
            payload = json.dumps({"reached": line}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _record

        def log_message(self, *args):
            pass

    b = _serve(Recorder)
    to = f"http://127.0.0.1:{b.server_address[1]}"
    hops = {"/token-307": (307, "/token"), "/post-308": (308, "/post"), "/post-303": (303, "/after303"),
            "/get-307": (307, "/get")}

    class Redirector(BaseHTTPRequestHandler):
        def _redirect(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status, path = hops[self.path]
            self.send_response(status)
            self.send_header("location", to + path)
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST = _redirect

        def log_message(self, *args):
            pass

    a = _serve(Redirector)
    base = f"http://127.0.0.1:{a.server_address[1]}"
    key = {"auth_type": "api_key", "api_key": "k-123", "var_name": "X-Api-Key", "location": "header"}

    def tool(name, path, **template):
        return {"name": name, "inputs": {"type": "object"},
                "tool_call_template": {"call_template_type": "http", "url": base + path, **template}}

    try:
        with utp.Engine() as engine:
            engine.register_manual({"name": "api", "tools": [
                tool("oauth", "/anything", auth={"auth_type": "oauth2", "token_url": base + "/token-307",
                                                 "client_id": "id", "client_secret": "s3cret"}),
                tool("post308", "/post-308", http_method="POST", auth=key),
                tool("post303", "/post-303", http_method="POST", auth=key),
                tool("get307", "/get-307", auth=key),
            ]})
            with pytest.raises(utp.SecurityError, match="307 redirect to another origin") as caught:
                engine.call_tool("api.oauth", {})
            assert "s3cret" not in str(caught.value)
            with pytest.raises(utp.SecurityError):
                engine.call_tool("api.post308", {"body": {"card": "4111"}})
            assert engine.call_tool("api.post303", {"body": {"card": "4111"}}) == {"reached": "GET /after303 key=False"}
            assert engine.call_tool("api.get307", {}) == {"reached": "GET /get key=False"}
        assert seen == ["GET /after303 key=False body=", "GET /get key=False body="]
    finally:
        for server in (a, b):
            server.shutdown()
            server.server_close()

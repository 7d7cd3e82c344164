"""tcp and udp tools: the same manual registered by python-utcp 1.2 (with its
utcp-socket plugin) and by utp, called with the same arguments against one loopback
peer that the test starts and stops, gives the same tool names and the same results.
Raw bytes (python-utcp returns `bytes`) are `{"base64": ...}` on our side."""

import asyncio
import base64
import json
import socket
import socketserver
import struct
import threading

import pytest

import utp

utcp_client = pytest.importorskip("utcp.utcp_client")
pytest.importorskip("utcp_socket")


def _read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _read_until(sock, delimiter):
    data = b""
    while not data.endswith(delimiter):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data[: -len(delimiter)]


def _length_prefixed(fmt):
    def handle(sock):
        (n,) = struct.unpack(fmt, _read_exactly(sock, struct.calcsize(fmt)))
        reply = b"echo " + _read_exactly(sock, n)
        sock.sendall(struct.pack(fmt, len(reply)) + reply)

    return handle


def _lines(sock):
    sock.sendall(b"echo " + _read_until(sock, b"\n") + b"\n")


def _fixed(sock):
    request = sock.recv(65536)
    sock.sendall(f"{len(request):<16}".encode() + b"and more")


def _stream(sock):
    sock.sendall(b"echo " + sock.recv(65536))


def _raw(sock):
    sock.recv(65536)
    sock.sendall(b"\xff\x00A")


def _cut(sock):
    sock.recv(65536)
    sock.sendall(struct.pack(">I", 100) + b"only ten..")


def _discovered_manual(kind, port):
    """What a peer answers `{"type": "utcp"}` with: a tool without a template (it gets
    the manual's), one of its own type, and a `cli` tool (not the manual's type: dropped)."""
    return json.dumps({"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [
        {"name": "echo", "description": "echo", "inputs": {"type": "object"}, "outputs": {}},
        {"name": "own", "description": "own", "inputs": {"type": "object"}, "outputs": {},
         "tool_call_template": {"call_template_type": kind, "host": "127.0.0.1", "port": port,
                                "request_data_format": "text"}},
        {"name": "run", "description": "run", "inputs": {"type": "object"}, "outputs": {},
         "tool_call_template": {"call_template_type": "cli", "commands": [{"command": "true"}]}},
    ]}).encode()


def _discover(sock):
    request = sock.recv(65536)
    if request == b'{"type": "utcp"}':
        sock.sendall(_discovered_manual("tcp", sock.getsockname()[1]))
    else:
        sock.sendall(b"called " + request)


HANDLERS = {
    "discover": _discover,
    "prefix": _length_prefixed(">I"),
    "prefix_le2": _length_prefixed("<H"),
    "lines": _lines,
    "fixed": _fixed,
    "stream": _stream,
    "raw": _raw,
    "cut": _cut,
}


def _handler(serve):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                serve(self.request)
            except OSError:
                pass

    return Handler


@pytest.fixture
def peer():
    """One loopback peer: a TCP listener per framing and a UDP socket that answers a
    datagram with three. Yields {name: port}."""
    servers, threads, ports = [], [], {}
    for name, serve in HANDLERS.items():
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _handler(serve))
        server.daemon_threads = True
        servers.append(server)
        ports[name] = server.server_address[1]

    class Datagrams(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            for reply in (b"1:" + data, b"|2", b"|3"):
                sock.sendto(reply, self.client_address)

    class Discovery(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            if data == b'{"type": "utcp"}':
                reply = _discovered_manual("udp", sock.getsockname()[1])
            else:
                reply = b"heard " + data
            sock.sendto(reply, self.client_address)

    for name, handler in (("udp", Datagrams), ("udp_discover", Discovery)):
        udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), handler)
        servers.append(udp)
        ports[name] = udp.server_address[1]
    for server in servers:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield ports
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


def _tool(name, kind, port, **fields):
    template = {"call_template_type": kind, "host": "127.0.0.1", "port": port, "timeout": 5000, **fields}
    return {"name": name, "description": name, "inputs": {"type": "object"}, "outputs": {},
            "tool_call_template": template}


def _manual(ports):
    return {"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [
        _tool("prefix", "tcp", ports["prefix"], framing_strategy="length_prefix"),
        _tool("prefix_le2", "tcp", ports["prefix_le2"], framing_strategy="length_prefix", length_prefix_bytes=2,
              length_prefix_endian="little", request_data_format="text",
              request_data_template="UTCP_ARG_city_UTCP_ARG/UTCP_ARG_days_UTCP_ARG/UTCP_ARG_flags_UTCP_ARG"),
        _tool("lines", "tcp", ports["lines"], framing_strategy="delimiter", message_delimiter="\\n",
              request_data_format="text"),
        _tool("fixed", "tcp", ports["fixed"], framing_strategy="fixed_length", fixed_message_length=16),
        _tool("stream", "tcp", ports["stream"]),
        _tool("raw", "tcp", ports["raw"], response_byte_format=None),
        _tool("not_utf8", "tcp", ports["raw"]),
        _tool("cut", "tcp", ports["cut"], framing_strategy="length_prefix"),
        _tool("udp_one", "udp", ports["udp"]),
        _tool("udp_three", "udp", ports["udp"], number_of_response_datagrams=3, request_data_format="text",
              request_data_template="ping UTCP_ARG_city_UTCP_ARG"),
        _tool("udp_none", "udp", ports["udp"], number_of_response_datagrams=0),
        _tool("udp_raw", "udp", ports["udp"], response_byte_format=None),
    ]}


CALLS = [
    ("prefix", {"city": "Zürich", "days": 3, "flags": [1, {"x": True}], "none": None}),
    ("prefix_le2", {"city": "Zürich", "days": 3, "flags": [1, {"x": True}]}),
    ("lines", {"city": "Oslo", "days": 3, "hot": False}),
    ("fixed", {"city": "Oslo"}),
    ("stream", {"city": "Zürich", "emoji": "😀"}),
    ("raw", {}),
    ("not_utf8", {}),
    ("udp_one", {"city": "Zürich"}),
    ("udp_three", {"city": "Oslo"}),
    ("udp_none", {"city": "Oslo"}),
    ("udp_raw", {"city": "Oslo"}),
]


def _python_utcp(manual, calls, templates=None):
    """Names and results (or the exception) through python-utcp's UtcpClient, for
    `manual` given as text, or for the manual call `templates` given."""

    async def run():
        client = await utcp_client.UtcpClient.create(config={"manual_call_templates": templates or [
            {"name": "m", "call_template_type": "text", "content": json.dumps(manual),
             "allowed_communication_protocols": ["tcp", "udp"]}]})
        names = sorted(t.name for t in await client.search_tools("", limit=100))
        results = {}
        for tool, args in calls:
            try:
                results[tool] = await client.call_tool(f"m.{tool}", args)
            except Exception as e:  # noqa: BLE001 - the failure itself is compared
                results[tool] = e
        return names, results

    return asyncio.run(run())


def _ours_as_python(value):
    """Our raw-bytes form as the bytes python-utcp returns."""
    if isinstance(value, dict) and set(value) == {"base64"}:
        return base64.b64decode(value["base64"])
    return value


def test_the_same_manual_gives_the_same_names_and_results(engine, peer):
    manual = _manual(peer)
    names, theirs = _python_utcp(manual, CALLS)
    engine.register_manual(manual, name="m")
    assert sorted(t["name"] for t in engine.tools()) == names
    for tool, args in CALLS:
        ours = engine.call_tool(f"m.{tool}", args)
        assert not isinstance(theirs[tool], Exception), (tool, theirs[tool])
        assert _ours_as_python(ours) == theirs[tool], tool
    # Spot checks of what both sent and got, so an agreement on nothing cannot pass.
    assert theirs["prefix"] == 'echo {"city": "Z\\u00fcrich", "days": 3, "flags": [1, {"x": true}], "none": null}'
    assert theirs["prefix_le2"] == 'echo Zürich/3/[1, {"x": true}]'
    assert theirs["lines"] == "echo Oslo 3 False"
    assert theirs["fixed"] == "16              "
    assert theirs["raw"] == b"\xff\x00A" and theirs["not_utf8"] == b"\xff\x00A"
    assert theirs["udp_three"] == "1:ping Oslo|2|3"
    assert theirs["udp_none"] == ""


def test_a_peer_closing_mid_frame_fails_in_both(engine, peer):
    manual = _manual(peer)
    _, theirs = _python_utcp(manual, [("cut", {})])
    assert isinstance(theirs["cut"], Exception)
    engine.register_manual(manual, name="m")
    with pytest.raises(utp.TransportError) as raised:
        engine.call_tool("m.cut", {})
    assert "mid-frame (10 of 100 bytes)" in str(raised.value)


def test_async_calls_and_bad_fields(engine, peer):
    manual = _manual(peer)
    manual["tools"].append(_tool("bad", "tcp", peer["stream"], framing_strategy="lines"))
    engine.register_manual(manual, name="m")

    async def both():
        return await asyncio.gather(engine.call_tool_async("m.stream", {"a": 1}),
                                    engine.call_tool_async("m.udp_one", {"a": 2}))

    assert asyncio.run(both()) == ['echo {"a": 1}', '1:{"a": 2}']
    with pytest.raises(utp.InvalidManualError) as raised:
        engine.call_tool("m.bad", {})
    assert "`framing_strategy`" in str(raised.value)


def test_hosts_beyond_loopback_need_the_config(engine):
    engine.register_manual({"tools": [_tool("far", "udp", 9, host="192.0.2.1")]}, name="m")
    with pytest.raises(utp.SecurityError) as raised:
        engine.call_tool("m.far", {})
    assert "calls.allowed_socket_hosts" in str(raised.value)


def test_a_silent_peer_is_a_timeout(engine):
    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    quiet.bind(("127.0.0.1", 0))
    try:
        engine.register_manual({"tools": [_tool("quiet", "udp", quiet.getsockname()[1], timeout=200)]}, name="m")
        with pytest.raises(utp.TimeoutError):
            engine.call_tool("m.quiet", {})
    finally:
        quiet.close()


def test_manual_call_templates_discover_the_same_tools(peer):
    templates = [
        {"name": "over_tcp", "call_template_type": "tcp", "host": "127.0.0.1", "port": peer["discover"]},
        {"name": "over_udp", "call_template_type": "udp", "host": "127.0.0.1", "port": peer["udp_discover"],
         "timeout": 5000},
    ]
    calls = [("over_tcp.echo", {"a": 1}), ("over_tcp.own", {"a": "x", "b": 2}),
             ("over_udp.echo", {"a": 1}), ("over_udp.own", {"a": "y"})]

    async def python_utcp():
        client = await utcp_client.UtcpClient.create(config={"manual_call_templates": templates})
        names = sorted(t.name for t in await client.search_tools("", limit=100))
        return names, [await client.call_tool(name, args) for name, args in calls]

    names, theirs = asyncio.run(python_utcp())
    assert names == ["over_tcp.echo", "over_tcp.own", "over_udp.echo", "over_udp.own"]
    with utp.Engine(config={"manual_call_templates": templates}) as engine:
        assert sorted(t["name"] for t in engine.tools()) == names
        assert [engine.call_tool(name, args) for name, args in calls] == theirs
    assert theirs == ['called {"a": 1}', "called x 2", 'heard {"a": 1}', "heard y"]

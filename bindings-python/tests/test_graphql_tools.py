"""`graphql` tools from Python against a real GraphQL server (graphql-core behind
http.server on 127.0.0.1): a python-utcp-shaped manual call template discovered by
introspection, queries and mutations, an explicit document whose `$id` stays GraphQL's,
errors; and the same manual through python-utcp 1.2 with its utcp-gql plugin.
Subscriptions (graphql-transport-ws) against ariadne's ASGI app under uvicorn, through
`call_tool_stream`: items in order, errors, `complete` on an early close, credentials in
`connection_init`, the address rules."""

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from graphql import build_schema, graphql_sync

import utp

SDL = """
enum Role { ADMIN MEMBER }
type Address { city: String! }
type User { id: ID! name: String! role: Role! address: Address }
type Query {
  "One user by id."
  user(id: ID!): User
  add(a: Int!, b: Int!): Int!
  version: String!
  broken: String
}
type Mutation { rename(id: ID!, name: String!): User }
"""

USERS = {"1": {"id": "1", "name": "Alice", "role": "ADMIN", "address": {"city": "Paris"}}}


class Root:
    def user(self, info, id):
        return USERS.get(id)

    def add(self, info, a, b):
        return a + b

    def version(self, info):
        return "1.0"

    def broken(self, info):
        raise ValueError("broken on purpose")

    def rename(self, info, id, name):
        return dict(USERS[id], name=name)


@pytest.fixture
def server():
    """A GraphQL endpoint at /graphql. Yields its URL and the request bodies received."""
    schema = build_schema(SDL)
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            received.append(request)
            result = graphql_sync(schema, request["query"], root_value=Root(),
                                  variable_values=request.get("variables"),
                                  operation_name=request.get("operationName"))
            payload = {"data": result.data}
            if result.errors:
                payload["errors"] = [e.formatted for e in result.errors]
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/graphql", received
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_graphql_manual_call_template_is_introspected_and_called(server):
    url, received = server
    with utp.Engine() as engine:
        tools = engine.register_manual({"name": "gql", "call_template_type": "graphql", "url": url})
        assert sorted(tools) == ["gql.add", "gql.broken", "gql.rename", "gql.user", "gql.version"]
        user = engine.tool("gql.user")
        assert user["inputs"]["required"] == ["id"]
        assert user["tool_call_template"]["selection_set"] == "{ id name role address { city } }"

        assert engine.call_tool("gql.user", {"id": "1"}) == {
            "user": {"id": "1", "name": "Alice", "role": "ADMIN", "address": {"city": "Paris"}}}
        assert engine.call_tool("gql.rename", {"id": "1", "name": "Ann"})["rename"]["name"] == "Ann"
        assert received[-1]["query"].startswith("mutation($id: ID!, $name: String!) { rename(")
        assert engine.call_tool("gql.add", {"a": 2, "b": 40}) == {"add": 42}

        with pytest.raises(utp.ToolFailedError, match="broken on purpose"):
            engine.call_tool("gql.broken")
        with pytest.raises(utp.ValidationFailedError):
            engine.call_tool("gql.add", {"a": "two", "b": 40})


def test_an_explicit_query_keeps_its_dollar_variables(server):
    url, received = server
    manual = {"name": "api", "tools": [{
        "name": "get_user",
        "inputs": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        "tool_call_template": {"call_template_type": "graphql", "url": url,
                               "query": "query GetUser($id: ID!) { user(id: $id) { name } }",
                               "operation_name": "GetUser"},
    }]}
    # `api_id` exists: a substitution of `$id` in the document would change it.
    with utp.Engine(config={"variables": {"api_id": "HIJACKED"}}) as engine:
        engine.register_manual(manual)
        assert engine.call_tool("api.get_user", {"id": "1"}) == {"user": {"name": "Alice"}}
        assert received[-1]["query"] == manual["tools"][0]["tool_call_template"]["query"]
        assert received[-1]["variables"] == {"id": "1"}


def test_bad_graphql_templates_are_named(server):
    url, _ = server
    with utp.Engine() as engine:
        with pytest.raises(utp.InvalidArgumentError, match="`operation_type` must be query, mutation or subscription"):
            engine.register_manual({"call_template_type": "graphql", "url": url, "operation_type": "read"}, name="g")
    with pytest.raises(utp.InvalidArgumentError, match=r"\('g'\): invalid graphql template: `variable_types.id`"):
        utp.Engine(config={"manual_call_templates": [
            {"name": "g", "call_template_type": "graphql", "url": url, "variable_types": {"id": 3}}]})


def test_python_utcp_registers_the_same_tools_and_returns_the_same_data(server):
    url, _ = server
    import utcp_gql
    from utcp.utcp_client import UtcpClient

    utcp_gql.register()  # its entry point is not loaded when the plugin is imported late

    template = {"name": "gql", "call_template_type": "graphql", "url": url}

    async def through_python_utcp():
        client = await UtcpClient.create(config={"manual_call_templates": [template]})
        tools = await client.config.tool_repository.get_tools()
        return sorted(t.name for t in tools), await client.call_tool("gql.version", {})

    names, version = asyncio.run(through_python_utcp())
    with utp.Engine(config={"manual_call_templates": [template]}) as engine:
        ours = [t for t in engine.tools() if t["name"].startswith("gql.")]
        # python-utcp also lists Subscription fields (we do too); this schema has none.
        assert sorted(t["name"] for t in ours) == names
        assert engine.call_tool("gql.version", {}) == version == {"version": "1.0"}
        # The tools we registered (with variable_types and selection_set) are valid
        # python-utcp GraphQL tools.
        from utcp.data.utcp_manual import UtcpManualSerializer

        manual = {"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": ours}
        parsed = UtcpManualSerializer().validate_dict(manual)
        assert {type(t.tool_call_template).__name__ for t in parsed.tools} == {"GraphQLCallTemplate"}
        user = next(t for t in parsed.tools if t.name == "gql.user")
        assert user.tool_call_template.variable_types == {"id": "ID!"}


SUBSCRIPTION_SDL = """
type Query { version: String! }
type Tick { n: Int! label: String! }
type Subscription {
  "Counts from 1 to `to`, then completes."
  count(to: Int!): Int!
  "Ticks until the client stops it."
  ticks: Tick!
  "1, then an error."
  failing: Int
  "The credential the connection was initialised with."
  whoami: String!
}
"""


@pytest.fixture
def subscription_server():
    """ariadne's ASGI GraphQL app (HTTP POST and graphql-transport-ws) under uvicorn on
    an ephemeral loopback port, on its own thread. Yields its URL and what it saw: every
    client WebSocket message, each `connection_init` payload, each handshake's headers.
    A `connection_init` with `Authorization: Bearer denied` is refused."""
    import uvicorn
    from ariadne import QueryType, SubscriptionType, make_executable_schema
    from ariadne.asgi import GraphQL
    from ariadne.asgi.handlers import GraphQLTransportWSHandler

    seen = {"messages": [], "inits": [], "handshakes": []}
    query = QueryType()
    query.set_field("version", lambda *_: "1.0")
    subscription = SubscriptionType()

    @subscription.source("count")
    async def count_source(_obj, _info, to):
        for n in range(1, to + 1):
            yield n

    @subscription.source("ticks")
    async def ticks_source(_obj, _info):
        n = 0
        while True:
            await asyncio.sleep(0.005)
            yield {"n": n, "label": f"tick {n}"}
            n += 1

    @subscription.source("failing")
    async def failing_source(_obj, _info):
        yield 1
        yield 2

    @subscription.field("failing")
    def failing_field(n, _info):
        if n == 2:
            raise ValueError("the sensor broke")
        return n

    @subscription.source("whoami")
    async def whoami_source(_obj, info):
        yield info.context["request"].scope.get("utp_who", "")

    for name in ("count", "ticks", "whoami"):
        subscription.set_field(name, lambda value, *_args, **_kwargs: value)

    def on_connect(websocket, payload):
        seen["inits"].append(payload)
        who = (payload or {}).get("Authorization", "")
        if who == "Bearer denied":
            raise ValueError("denied by the test server")
        websocket.scope["utp_who"] = who

    schema = make_executable_schema(SUBSCRIPTION_SDL, query, subscription)
    app = GraphQL(schema, websocket_handler=GraphQLTransportWSHandler(on_connect=on_connect))

    async def recording(scope, receive, send):
        if scope["type"] != "websocket":
            return await app(scope, receive, send)
        seen["handshakes"].append({k.decode(): v.decode() for k, v in scope["headers"]})

        async def receive_recorded():
            event = await receive()
            if event["type"] == "websocket.receive" and event.get("text"):
                seen["messages"].append(json.loads(event["text"]))
            return event

        return await app(scope, receive_recorded, send)

    config = uvicorn.Config(recording, host="127.0.0.1", port=0, ws="websockets-sansio",
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/graphql", seen
    finally:
        server.should_exit = True
        thread.join(10)


def _of_type(seen, kind):
    return [m for m in seen["messages"] if m.get("type") == kind]


def _wait_for(condition):
    """Wait up to 10 s (a deadline for a failing test, not a timing assertion)."""
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_subscriptions_are_discovered_and_streamed_in_order(subscription_server):
    url, seen = subscription_server
    with utp.Engine() as engine:
        tools = engine.register_manual({"name": "live", "call_template_type": "graphql", "url": url})
        assert sorted(tools) == ["live.count", "live.failing", "live.ticks", "live.version", "live.whoami"]
        ticks = engine.tool("live.ticks")
        assert ticks["tool_call_template"]["operation_type"] == "subscription"
        assert ticks["tool_call_template"]["selection_set"] == "{ n label }"

        with engine.call_tool_stream("live.count", {"to": 3}) as stream:
            assert list(stream) == [{"count": 1}, {"count": 2}, {"count": 3}]
        assert _of_type(seen, "subscribe")[-1]["payload"]["variables"] == {"to": 3}
        # A plain call: every item until the server completes.
        assert engine.call_tool("live.count", {"to": 2}) == [{"count": 1}, {"count": 2}]
        assert engine.call_tool("live.version") == {"version": "1.0"}
        assert all(h["sec-websocket-protocol"] == "graphql-transport-ws" for h in seen["handshakes"])


def test_closing_a_stream_early_sends_complete(subscription_server):
    url, seen = subscription_server
    with utp.Engine() as engine:
        engine.register_manual({"name": "live", "call_template_type": "graphql", "url": url})
        with engine.call_tool_stream("live.ticks") as stream:
            first = next(stream)
            assert first == {"ticks": {"n": 0, "label": "tick 0"}}
            assert next(stream)["ticks"]["n"] == 1
        assert _wait_for(lambda: len(_of_type(seen, "complete")) == 1), seen["messages"]
        assert _of_type(seen, "complete")[0]["id"] == _of_type(seen, "subscribe")[0]["id"]


def test_subscription_errors_raise_tool_failed(subscription_server):
    url, _ = subscription_server
    manual = {"name": "api", "tools": [
        {"name": "failing", "tool_call_template": {"call_template_type": "graphql", "url": url,
                                                   "operation_type": "subscription"}},
        {"name": "bad_doc", "tool_call_template": {"call_template_type": "graphql", "url": url,
                                                   "query": "subscription { nope }"}},
    ]}
    with utp.Engine() as engine:
        engine.register_manual(manual)
        items = []
        with pytest.raises(utp.ToolFailedError, match="the sensor broke"):
            for item in engine.call_tool_stream("api.failing"):
                items.append(item)
        assert items == [{"failing": 1}]
        # A document the server rejects: a graphql-transport-ws `error` message.
        with pytest.raises(utp.ToolFailedError, match="nope"):
            list(engine.call_tool_stream("api.bad_doc"))


def test_credentials_reach_connection_init_and_the_address_rules_apply(subscription_server):
    url, seen = subscription_server
    auth = {"auth_type": "api_key", "api_key": "Bearer ${TOKEN}", "var_name": "Authorization",
            "location": "header"}
    manual = {"name": "api", "tools": [
        {"name": "whoami", "tool_call_template": {"call_template_type": "graphql", "url": url, "auth": auth,
                                                  "operation_type": "subscription"}},
        {"name": "private", "tool_call_template": {"call_template_type": "graphql",
                                                   "url": "https://10.0.0.1/graphql",
                                                   "query": "subscription { whoami }"}},
    ]}
    with utp.Engine(config={"variables": {"api_TOKEN": "t-1"}}) as engine:
        engine.register_manual(manual)
        assert list(engine.call_tool_stream("api.whoami")) == [{"whoami": "Bearer t-1"}]
        assert seen["inits"][-1]["Authorization"] == "Bearer t-1"
        assert seen["handshakes"][-1]["authorization"] == "Bearer t-1"
        with pytest.raises(utp.SecurityError):
            engine.call_tool_stream("api.private")

    with utp.Engine(config={"variables": {"api_TOKEN": "denied"}}) as engine:
        engine.register_manual(manual)
        with pytest.raises(utp.UtpError, match="before acknowledging the connection"):
            engine.call_tool("api.whoami")

"""`graphql` tools from Python against a real GraphQL server (graphql-core behind
http.server on 127.0.0.1): a python-utcp-shaped manual call template discovered by
introspection, queries and mutations, an explicit document whose `$id` stays GraphQL's,
errors; and the same manual through python-utcp 1.2 with its utcp-gql plugin."""

import asyncio
import json
import threading
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
        # python-utcp also lists Subscription fields; this schema has none.
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

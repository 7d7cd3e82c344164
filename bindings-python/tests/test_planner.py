"""The planner from Python: engine.plan / engine.run (and the awaitable twins) with
the offline planner over Python native tools, and with an OpenAI-protocol model
server written here (http.server on 127.0.0.1) answering scripted plans."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import utp

REQUEST = "weather forecast for the city of an IP address"
API_KEY = "sk-test-key-123"


def chain_tools(engine):
    """geo.cityOfIp (ip -> city) and weather.forecast (city -> temp_c): the output
    field `city` of the first feeds the required input of the second."""
    engine.register_tool(
        "geo.cityOfIp",
        lambda args: {"city": "Mountain View" if args["ip"] == "8.8.8.8" else "Paris"},
        inputs={
            "type": "object",
            "properties": {"ip": {"type": "string", "description": "IPv4 address"}},
            "required": ["ip"],
        },
        outputs={"type": "object", "properties": {"city": {"type": "string"}}},
        description="Find which city an IP address is located in",
    )
    engine.register_tool(
        "weather.forecast",
        lambda args: {"city": args["city"], "temp_c": 21.5},
        inputs={
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
        outputs={"type": "object", "properties": {"temp_c": {"type": "number"}}},
        description="Weather forecast for a city",
        tags=["weather"],
    )


@pytest.fixture
def chain_engine():
    with utp.Engine() as e:
        chain_tools(e)
        yield e


def test_offline_plan_chains_two_python_tools(chain_engine):
    plan = chain_engine.plan(REQUEST)
    assert set(plan) == {"definition", "provider", "model", "rounds", "usage"}
    assert (plan["provider"], plan["model"], plan["rounds"]) == ("offline", "", 0)
    assert plan["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    steps = plan["definition"]["steps"]
    assert [s["tool"] for s in steps] == ["geo.cityOfIp", "weather.forecast"]
    assert steps[0]["args"] == {"ip": "${{ inputs.ip }}"}
    assert steps[1]["args"] == {"city": "${{ steps.cityOfIp.output.city }}"}
    assert steps[1]["depends_on"] == ["cityOfIp"]
    assert plan["definition"]["inputs"]["ip"]["type"] == "string"
    # The definition is a valid workflow: it runs as written.
    record = chain_engine.run_workflow(plan["definition"], {"ip": "8.8.8.8"})
    assert record["status"] == "completed", record
    assert record["outputs"]["result"]["city"] == "Mountain View"
    planned = chain_engine.event_bus.history(type="workflow.planned")
    assert len(planned) == 1 and planned[0]["data"]["provider"] == "offline"


def test_offline_plan_uses_caller_inputs_and_session(chain_engine):
    plan = chain_engine.plan(REQUEST, inputs={"ip": "1.2.3.4"}, session="s1", tenant="t1")
    assert plan["definition"]["steps"][0]["args"]["ip"] == "${{ inputs.ip }}"
    event = chain_engine.event_bus.history(type="workflow.planned")[-1]
    assert (event["session_id"], event["tenant"]) == ("s1", "t1")


def test_run_plans_and_runs(chain_engine):
    record = chain_engine.run(REQUEST, {"ip": "8.8.8.8"}, session="s1")
    assert record["status"] == "completed", record
    assert record["outputs"]["result"] == {"city": "Mountain View", "temp_c": 21.5}
    assert record["session_id"] == "s1"
    assert record["plan"]["provider"] == "offline"
    assert [s["tool"] for s in record["plan"]["definition"]["steps"]] == ["geo.cityOfIp", "weather.forecast"]
    assert record["steps"]["cityOfIp"]["status"] == "succeeded"
    # A value written in the request needs no inputs.
    record = chain_engine.run("find the city of ip=1.2.3.4 then get the weather forecast")
    assert record["status"] == "completed", record
    assert record["outputs"]["result"] == {"city": "Paris", "temp_c": 21.5}
    assert "inputs" not in record["plan"]["definition"]


def test_run_passes_the_user_to_the_domain_layer():
    """`user` reaches per-user rate limits, blocking and async alike."""
    config = {"rate_limits": [{"match": {"tool": "geo"}, "per": "user", "limit": 1, "window": "1h"}]}
    with utp.Engine(config) as e:
        chain_tools(e)
        assert e.run(REQUEST, {"ip": "8.8.8.8"}, user="ann")["status"] == "completed"
        limited = e.run(REQUEST, {"ip": "8.8.8.8"}, user="ann")
        assert limited["status"] == "failed", limited
        assert limited["steps"]["cityOfIp"]["error"]["code"] == "RATE_LIMITED", limited
        record = asyncio.run(e.run_async(REQUEST, {"ip": "8.8.8.8"}, user="bob"))
        assert record["status"] == "completed", record
        assert asyncio.run(e.run_async(REQUEST, {"ip": "8.8.8.8"}, user="bob"))["status"] == "failed"


def test_run_with_a_failing_tool_returns_a_failed_record():
    with utp.Engine() as e:
        chain_tools(e)

        def broken(args):
            raise RuntimeError("no forecast today")

        e.deregister_manual("weather")
        e.register_tool(
            "weather.forecast",
            broken,
            inputs={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            description="Weather forecast for a city",
        )
        record = e.run(REQUEST, {"ip": "8.8.8.8"})
        assert record["status"] == "failed", record
        assert record["steps"]["forecast"]["error"]["code"] == "TOOL_FAILED"
        assert "plan" in record


def test_a_request_the_offline_planner_cannot_map_is_a_planner_error(chain_engine):
    with pytest.raises(utp.PlannerError) as info:
        chain_engine.plan("book a flight to Lisbon")
    assert info.value.code == "PLANNER"
    assert isinstance(info.value, utp.UtpError)
    message = str(info.value)
    assert "A model is needed" in message and "book a flight to Lisbon" in message
    with pytest.raises(utp.PlannerError):
        chain_engine.run("book a flight to Lisbon")
    assert chain_engine.executions() == []
    with utp.Engine() as empty:
        with pytest.raises(utp.PlannerError, match="no tools are registered"):
            empty.plan("weather")


@pytest.mark.parametrize("bad", ["", "   ", 42, None, b"weather", ["weather"]])
def test_bad_requests_are_invalid_arguments(chain_engine, bad):
    with pytest.raises(utp.InvalidArgumentError) as info:
        chain_engine.plan(bad)
    assert "request" in str(info.value)
    with pytest.raises(utp.InvalidArgumentError):
        chain_engine.run(bad)


def test_bad_inputs_and_options(chain_engine):
    with pytest.raises(utp.InvalidArgumentError, match="inputs must be a dict"):
        chain_engine.plan(REQUEST, inputs=[1, 2])
    with pytest.raises(utp.InvalidArgumentError, match="inputs must be a dict"):
        chain_engine.run(REQUEST, "8.8.8.8")
    with pytest.raises(utp.InvalidArgumentError, match="timeout"):
        chain_engine.run(REQUEST, {"ip": "8.8.8.8"}, timeout=-1)
    with pytest.raises(TypeError):
        chain_engine.plan(REQUEST, session=3)
    with pytest.raises(utp.InvalidArgumentError, match="at most"):
        chain_engine.plan("weather " * 5000)


def test_a_closed_engine_refuses(chain_engine):
    chain_engine.close()
    with pytest.raises(utp.UtpError):
        chain_engine.plan(REQUEST)


def test_async_twins(chain_engine):
    async def main():
        plan = await chain_engine.plan_async(REQUEST)
        record = await chain_engine.run_async(REQUEST, {"ip": "8.8.8.8"}, session="s2")
        with pytest.raises(utp.PlannerError):
            await chain_engine.plan_async("book a flight to Lisbon")
        return plan, record

    plan, record = asyncio.run(main())
    assert plan["provider"] == "offline"
    assert record["status"] == "completed", record
    assert record["session_id"] == "s2"
    assert record["outputs"]["result"]["city"] == "Mountain View"
    assert record["plan"]["definition"] == plan["definition"]


# ---------------------------------------------------------------------------
# An OpenAI-compatible model server (chat completions) answering from a script
# ---------------------------------------------------------------------------


class ModelServer:
    """Answers POST /v1/chat/completions with the scripted texts in order (the last
    one repeats); records every request body and header."""

    def __init__(self, script):
        self.script = list(script)
        self.seen = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length).decode()
                server.seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(raw), "raw": raw})
                text = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                body = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def restock_plan():
    return {
        "name": "restock",
        "inputs": {"sku": {"type": "string"}},
        "steps": [
            {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku }}"}},
            {
                "id": "update",
                "tool": "shop.setInventory",
                "depends_on": ["stock"],
                "args": {"sku": "${{ inputs.sku }}", "count": "${{ steps.stock.output.count + 100 }}"},
            },
        ],
        "outputs": {"new_count": "${{ steps.update.output.count }}"},
    }


@pytest.fixture
def model():
    servers = []

    def start(*script):
        server = ModelServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def model_engine(server, **planner):
    section = {
        "provider": "openai",
        "base_url": f"http://127.0.0.1:{server.port}/v1",
        "model": "test-model",
        "api_key": "${OPENAI_API_KEY}",
        **planner,
    }
    engine = utp.Engine({"planner": section, "variables": {"OPENAI_API_KEY": API_KEY}})
    sku = {
        "type": "object",
        "properties": {"sku": {"type": "string", "description": "Stock keeping unit"}},
        "required": ["sku"],
    }
    engine.register_tool(
        "shop.getInventory",
        lambda args: {"sku": args["sku"], "count": 3},
        inputs=sku,
        outputs={"type": "object", "properties": {"count": {"type": "integer"}}},
        description="Get the stock count of a product",
        tags=["inventory"],
    )
    engine.register_tool(
        "shop.setInventory",
        lambda args: {"sku": args["sku"], "count": args["count"]},
        inputs={
            "type": "object",
            "properties": {"sku": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["sku", "count"],
        },
        description="Set the stock count of a product",
        tags=["inventory"],
    )
    return engine


def test_openai_protocol_valid_plan(model):
    server = model(json.dumps(restock_plan()))
    with model_engine(server) as e:
        plan = e.plan("restock product sku when low")
        assert plan["definition"] == restock_plan()
        assert (plan["provider"], plan["model"], plan["rounds"]) == ("openai", "test-model", 1)
        assert plan["usage"] == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        assert len(server.seen) == 1
        req = server.seen[0]
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"].get("authorization", req["headers"].get("Authorization")) == f"Bearer {API_KEY}"
        assert req["body"]["model"] == "test-model"
        assert "restock product sku when low" in req["raw"]
        assert "shop.getInventory" in req["raw"] and "shop.setInventory" in req["raw"]

        record = e.run("restock product sku when low", {"sku": "A1"})
        assert record["status"] == "completed", record
        assert record["outputs"]["new_count"] == 103
        assert record["plan"]["usage"]["total_tokens"] == 120
        # The caller's inputs are described by name and type, never by value.
        last = server.seen[-1]["raw"]
        assert "sku (string)" in last and "A1" not in last


def test_openai_protocol_invalid_then_repaired(model):
    bad = restock_plan()
    bad["steps"][1]["tool"] = "shop.updateStock"
    server = model(json.dumps(bad), json.dumps(restock_plan()))
    with model_engine(server) as e:
        plan = e.plan("restock")
        assert plan["rounds"] == 2
        assert plan["usage"] == {"prompt_tokens": 200, "completion_tokens": 40, "total_tokens": 240}
        assert plan["definition"]["steps"][1]["tool"] == "shop.setInventory"
        assert len(server.seen) == 2
        messages = server.seen[1]["body"]["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert "no tool named 'shop.updateStock' is registered" in messages[3]["content"]


def test_openai_protocol_never_valid_is_a_planner_error(model):
    bad = restock_plan()
    bad["steps"][0]["tool"] = "shop.nope"
    server = model("I'd be glad to help!", json.dumps(bad))
    with model_engine(server, max_repairs=1) as e:
        with pytest.raises(utp.PlannerError) as info:
            e.plan("restock")
        assert info.value.code == "PLANNER"
        assert "shop.nope" in str(info.value) and "2 round(s)" in str(info.value)
        assert API_KEY not in str(info.value)
        assert len(server.seen) == 2


def test_openai_protocol_async(model):
    server = model(json.dumps(restock_plan()))
    with model_engine(server) as e:

        async def main():
            return await asyncio.gather(e.plan_async("restock"), e.run_async("restock", {"sku": "B2"}))

        plan, record = asyncio.run(main())
        assert plan["rounds"] == 1
        assert record["status"] == "completed", record
        assert record["outputs"]["new_count"] == 103
        assert record["plan"]["provider"] == "openai"

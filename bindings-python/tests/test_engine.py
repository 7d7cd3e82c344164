"""The Python API of the registry layer: engine lifecycle, registration, discovery, search."""

import asyncio
import json
import pathlib
import threading

import pytest

import utp
from conftest import EXAMPLE_MANUALS


def test_version_matches_package():
    assert utp.version() == utp.__version__
    assert utp.__version__.count(".") == 2


def test_register_inline_manual_returns_full_tool_names(engine, weather_manual):
    names = engine.register_manual(weather_manual, name="weather")
    assert names == ["weather.get_current", "weather.get_forecast", "weather.convert_currency"]
    assert engine.manuals() == ["weather"]
    assert [t["name"] for t in engine.tools()] == sorted(names)


def test_tool_is_plain_python_data(engine, weather_manual):
    engine.register_manual(weather_manual, name="weather")
    tool = engine.tool("weather.get_current")
    assert tool["name"] == "weather.get_current"
    assert tool["inputs"]["required"] == ["city"]
    assert tool["tags"] == ["weather", "current"]
    template = tool["tool_call_template"]
    assert template["call_template_type"] == "http"
    # The placeholder is kept as written; variables are resolved at call time only.
    assert template["auth"]["api_key"] == "${API_KEY}"
    assert engine.required_variables("weather") == ["weather_API_KEY"]


def test_search_ranks_limits_and_filters_by_tag(engine, weather_manual):
    engine.register_manual(weather_manual, name="wx")
    ranked = [t["name"] for t in engine.search_tools("forecast for a city")]
    assert ranked[0] == "wx.get_forecast"
    assert len(engine.search_tools("weather", limit=1)) == 1
    assert [t["name"] for t in engine.search_tools("city", tags=["current"])] == ["wx.get_current"]
    assert engine.search_tools("zebra unicorn") == []
    # limit=0 means every match (the tag "weather" is on two tools)
    assert len(engine.search_tools("weather", limit=0)) == 2


def test_deregister(engine, weather_manual):
    engine.register_manual(weather_manual, name="weather")
    assert engine.deregister_manual("weather") is True
    assert engine.deregister_manual("weather") is False
    assert engine.tools() == []
    with pytest.raises(utp.NotFoundError):
        engine.tool("weather.get_current")
    # the name is free again
    engine.register_manual(weather_manual, name="weather")


def test_discover_example_manuals(engine):
    assert engine.discover(EXAMPLE_MANUALS) == ["legacy_notes", "shop", "weather"]
    assert "shop.getInventory" in [t["name"] for t in engine.tools()]
    # the legacy 0.1 manual was migrated on load
    legacy = engine.tool("legacy_notes.search_notes")
    assert legacy["tool_call_template"]["call_template_type"] == "cli"


def test_discover_report_lists_every_file(tmp_path):
    (tmp_path / "good.utcp.json").write_text(
        '{"utcp_version": "1.0.1", "tools": [{"name": "t", "description": "d",'
        ' "tool_call_template": {"call_template_type": "text", "content": "x"}}]}'
    )
    (tmp_path / "broken.utcp.json").write_text("{ not json")
    with utp.Engine() as engine:
        report = engine.discover_report(str(tmp_path))
    outcomes = {pathlib.Path(f["path"]).name: f for f in report["files"]}
    assert set(outcomes) == {"good.utcp.json", "broken.utcp.json"}
    assert outcomes["good.utcp.json"]["status"] == "registered"
    assert outcomes["broken.utcp.json"]["status"] == "failed"
    assert outcomes["broken.utcp.json"]["code"] == "INVALID_MANUAL"


def test_register_manual_from_path_and_pathlike(engine):
    assert engine.register_manual(str(EXAMPLE_MANUALS / "weather.utcp.json"))[0].startswith("weather.")
    assert engine.register_manual(EXAMPLE_MANUALS / "shop.utcp.yaml", name="shop2")[0].startswith("shop2.")


def test_config_dict_and_file(tmp_path, weather_manual):
    with utp.Engine({"manuals": [str(EXAMPLE_MANUALS / "weather.utcp.json")]}) as engine:
        assert engine.manuals() == ["weather"]
    (tmp_path / "utp.yaml").write_text("manuals:\n  - " + str(EXAMPLE_MANUALS / "shop.utcp.yaml") + "\n")
    with utp.Engine(tmp_path / "utp.yaml") as engine:
        assert engine.manuals() == ["shop"]


def test_context_manager_closes(weather_manual):
    with utp.Engine() as engine:
        engine.register_manual(weather_manual, name="w")
    assert engine.closed
    with pytest.raises(utp.InvalidArgumentError, match="closed"):
        engine.tools()
    engine.close()  # idempotent


def test_async_twins():
    async def main():
        with utp.Engine() as engine:
            names = await engine.discover_async(EXAMPLE_MANUALS)
            found = await engine.search_tools_async("stock count for a product", limit=1)
            return names, found

    names, found = asyncio.run(main())
    assert names == ["legacy_notes", "shop", "weather"]
    assert found[0]["name"] in ("shop.getInventory", "shop.setInventory")


def test_many_threads_share_one_engine(engine, weather_manual):
    errors = []

    def worker(i):
        try:
            engine.register_manual(weather_manual, name=f"w{i}")
            for _ in range(50):
                assert engine.search_tools("forecast", limit=1)
            assert engine.deregister_manual(f"w{i}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert engine.manuals() == []


def test_openapi_document_registers_one_tool_per_operation(engine):
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "Pet Store", "version": "1"},
        "servers": [{"url": "https://pets.example/v1"}],
        "paths": {
            "/pets": {
                "get": {"operationId": "listPets", "summary": "List pets", "tags": ["pets"]},
                "post": {"summary": "Create a pet"},
            },
            "/pets/{id}": {"delete": {"parameters": [{"name": "id", "in": "path", "required": True}]}},
        },
    }
    names = engine.register_manual(spec)
    assert sorted(names) == ["Pet_Store.delete_pets_id", "Pet_Store.listPets", "Pet_Store.post_pets"]


def test_a_spec_split_over_files_registers_by_path(engine, tmp_path):
    # Relative-file `$ref`s (design: discovery and registry): a parameter and a schema in
    # other files, a schema file pointing at another; the tool validates with them.
    (tmp_path / "schemas").mkdir()
    (tmp_path / "params.yaml").write_text("limit: {name: limit, in: query, schema: {type: integer, maximum: 50}}\n")
    (tmp_path / "schemas" / "pet.json").write_text('{"type": "object", "properties": {"tag": {"$ref": "tag.json"}}}')
    (tmp_path / "schemas" / "tag.json").write_text('{"type": "string", "enum": ["cat", "dog"]}')
    spec = {
        "openapi": "3.1.0", "info": {"title": "Split", "version": "1"}, "servers": [{"url": "http://127.0.0.1:1"}],
        "paths": {"/pets": {"post": {"operationId": "addPet", "parameters": [{"$ref": "params.yaml#/limit"}],
                                     "requestBody": {"content": {"application/json": {"schema": {"$ref": "schemas/pet.json"}}}},
                                     "responses": {"200": {"description": "ok"}}}}},
    }
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    assert engine.register_manual(str(tmp_path / "openapi.json"), "split") == ["split.addPet"]
    inputs = engine.tool("split.addPet")["inputs"]
    assert inputs["properties"]["limit"] == {"type": "integer", "maximum": 50}
    assert inputs["properties"]["body"] == {"$ref": "#/$defs/pet"}
    assert inputs["$defs"]["tag"] == {"type": "string", "enum": ["cat", "dog"]}
    with pytest.raises(utp.ValidationFailedError, match="/body/tag"):
        engine.call_tool("split.addPet", {"limit": 3, "body": {"tag": "cow"}})
    (tmp_path / "escape.json").write_text(json.dumps({**spec, "paths": {"/x": {"get": {"parameters": [{"$ref": "../p.yaml#/a"}]}}}}))
    with pytest.raises(utp.InvalidManualError, match="(?i)outside the spec.s directory|no such file"):
        engine.register_manual(str(tmp_path / "escape.json"), "escape")

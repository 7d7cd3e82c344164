"""Every public entry point given bad arguments raises a UtpError with a stable code."""

import math

import pytest

import utp


def test_hierarchy_and_codes():
    assert issubclass(utp.NotFoundError, utp.UtpError)
    assert issubclass(utp.UtpError, Exception)
    assert utp.NotFoundError.code == "NOT_FOUND"
    assert utp.ERRORS_BY_CODE["ALREADY_EXISTS"] is utp.AlreadyExistsError
    assert len(utp.ERRORS_BY_CODE) == 19
    assert utp.UtpError.__module__ == "utp"


def test_duplicate_manual(engine, weather_manual):
    engine.register_manual(weather_manual, name="weather")
    with pytest.raises(utp.AlreadyExistsError) as info:
        engine.register_manual(weather_manual, name="weather")
    assert info.value.code == "ALREADY_EXISTS"
    assert "weather" in str(info.value)
    # the failed registration changed nothing
    assert len(engine.tools()) == 3


def test_unknown_tool(engine):
    with pytest.raises(utp.NotFoundError, match="no tool named 'nope.x'"):
        engine.tool("nope.x")
    with pytest.raises(utp.NotFoundError):
        engine.required_variables("nope")


def test_unknown_call_template_type_names_type_and_tool(engine):
    manual = {"tools": [{"name": "t", "tool_call_template": {"call_template_type": "carrier_pigeon"}}]}
    with pytest.raises(utp.InvalidManualError) as info:
        engine.register_manual(manual, name="m")
    assert "carrier_pigeon" in str(info.value) and "'t'" in str(info.value)
    assert engine.manuals() == []


@pytest.mark.parametrize(
    "manual",
    [42, 3.5, None, ["a"], object(), b"{}"],
)
def test_register_manual_rejects_wrong_types(engine, manual):
    with pytest.raises(utp.InvalidArgumentError):
        engine.register_manual(manual)


def test_register_manual_missing_file(engine, tmp_path):
    with pytest.raises(utp.NotFoundError):
        engine.register_manual(str(tmp_path / "missing.utcp.json"))


def test_values_without_json_form(engine):
    with pytest.raises(utp.InvalidArgumentError, match="dict keys must be str"):
        engine.register_manual({1: "x"})
    with pytest.raises(utp.InvalidArgumentError, match="no JSON representation"):
        engine.register_manual({"tools": [], "x": math.nan})
    with pytest.raises(utp.InvalidArgumentError, match="64 bits"):
        engine.register_manual({"tools": [], "x": 2**80})
    loop = []
    loop.append(loop)
    with pytest.raises(utp.InvalidArgumentError, match="deeper"):
        engine.register_manual({"tools": [], "x": loop})


def test_bad_config():
    with pytest.raises(utp.InvalidArgumentError):
        utp.Engine(42)
    with pytest.raises(utp.UtpError):
        utp.Engine("/nonexistent/utp.yaml")
    with pytest.raises(utp.UtpError):
        utp.Engine({"variables": "not a map"})


def test_store_argument(tmp_path):
    with pytest.raises(utp.InvalidArgumentError, match="memory"):
        utp.Engine(store="redis://x")
    with pytest.raises(utp.InvalidArgumentError, match="path"):
        utp.Engine(store="sqlite:")
    utp.Engine(store=f"sqlite:{tmp_path}/x.db").close()


def test_wrong_argument_types_are_type_errors_not_crashes(engine):
    with pytest.raises(TypeError):
        engine.search_tools(123)
    with pytest.raises((TypeError, OverflowError)):
        engine.search_tools("x", limit=-1)
    with pytest.raises(TypeError):
        engine.deregister_manual(None)
    with pytest.raises(utp.InvalidArgumentError):
        engine.discover(42)


def test_empty_and_odd_search_queries(engine, weather_manual):
    engine.register_manual(weather_manual, name="weather")
    for query in ["", "   ", "\x00", "ü" * 10_000, "*", "weather" * 1000]:
        assert isinstance(engine.search_tools(query), list)

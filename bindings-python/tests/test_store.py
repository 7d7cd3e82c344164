"""The SQLite store from Python (docs/design.md §9): a run committed and read back by a new
engine, the event audit log, STORE errors (a file locked by another engine, a file
that is not a database), recovery of a run whose process was killed with SIGKILL
(steps committed before the kill are not called again), a run whose tools the
config names resumed by the constructor itself and finishing on the engine's
runtime, session state across engines, retention (`prune`), and `store=` against
the config's `store`."""

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import utp


def chain(n, tool="t.step"):
    """`n` steps in a chain; each gets its own name and the previous output + 1."""
    steps = []
    for i in range(n):
        step = {"id": f"s{i}", "tool": tool, "args": {"name": f"s{i}", "n": i}}
        if i:
            step["depends_on"] = [f"s{i - 1}"]
            step["args"]["n"] = "${{ steps.s%d.output.n + 1 }}" % (i - 1)
        steps.append(step)
    return {"name": "chain", "steps": steps, "outputs": {"last": "${{ steps.s%d.output.n }}" % (n - 1)}}


def counting_tool(calls_file):
    """A tool that appends its step's name to `calls_file` and returns `{n}`."""

    def step(args):
        with open(calls_file, "a") as f:
            f.write(args["name"] + "\n")
        return {"n": args["n"]}

    return step


def calls(calls_file):
    path = pathlib.Path(calls_file)
    return path.read_text().split() if path.exists() else []


def kinds(events):
    return [e["type"] for e in events]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "utp.db"


def test_a_run_is_read_back_by_a_new_engine(db, tmp_path):
    log = tmp_path / "calls.txt"
    with utp.Engine(store=f"sqlite:{db}") as engine:
        engine.register_tool("t.step", counting_tool(log))
        record = engine.run_workflow(chain(3), session="s1")
        assert record["status"] == "completed"
        assert record["outputs"] == {"last": 2}
        exec_id = record["execution_id"]
    assert db.exists()

    with utp.Engine(store=f"sqlite:{db}") as engine:
        # No tool registered: what a previous engine ran is read from the store.
        again = engine.execution(exec_id)
        assert again["status"] == "completed"
        assert again["outputs"] == {"last": 2}
        assert again["session_id"] == "s1"
        assert [again["steps"][f"s{i}"]["status"] for i in range(3)] == ["succeeded"] * 3
        assert again["steps"]["s2"]["output"] == {"n": 2}
        listed = engine.executions()
        assert [e["execution_id"] for e in listed] == [exec_id]
        assert listed[0]["status"] == "completed"
        assert engine.executions(status="completed", session="s1")[0]["execution_id"] == exec_id
        assert engine.executions(status="failed") == []

        events = engine.stored_events(execution_id=exec_id)
        types = kinds(events)
        for once in ("workflow.started", "workflow.completed"):
            assert types.count(once) == 1, types
        assert types[0] == "workflow.started" and types[-1] == "workflow.completed"
        assert types.count("step.completed") == 3
        assert all(e["execution_id"] == exec_id for e in events)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # Nothing ran in this engine, so none of this is in its in-memory history.
        assert engine.event_bus.history(execution_id=exec_id) == []
    assert calls(log) == ["s0", "s1", "s2"]


def test_stored_events_filters(db, tmp_path):
    with utp.Engine(store=f"sqlite:{db}") as engine:
        engine.register_tool("t.step", counting_tool(tmp_path / "calls.txt"))
        first = engine.run_workflow(chain(2))["execution_id"]
        second = engine.run_workflow(chain(2))["execution_id"]
        steps = engine.stored_events(type="step.*")
        assert steps and all(t.startswith("step.") for t in kinds(steps))
        assert {e["execution_id"] for e in steps} == {first, second}
        assert kinds(engine.stored_events(execution_id=second, type="workflow.completed")) == ["workflow.completed"]
        everything = engine.stored_events()
        assert len(engine.stored_events(limit=3)) == 3
        page = engine.stored_events(after=everything[1]["seq"], limit=2)
        assert [e["seq"] for e in page] == [e["seq"] for e in everything[2:4]]
        assert engine.stored_events(after=everything[-1]["seq"]) == []
        assert engine.stored_events(since="2100-01-01T00:00:00Z") == []
        assert len(engine.stored_events(until="2100-01-01T00:00:00Z")) == len(everything)
        with pytest.raises(utp.InvalidArgumentError, match="matches no event type"):
            engine.stored_events(type="workflow.finished")
        assert asyncio.run(engine.stored_events_async(execution_id=first)) == engine.stored_events(execution_id=first)


def test_memory_store_has_the_same_shape(tmp_path):
    with utp.Engine() as engine:
        engine.register_tool("t.step", counting_tool(tmp_path / "calls.txt"))
        exec_id = engine.run_workflow(chain(2))["execution_id"]
        types = kinds(engine.stored_events(execution_id=exec_id))
        assert types.count("workflow.started") == 1 and types.count("workflow.completed") == 1
        assert engine.recover() == []
        assert engine.prune(0) == 0


def test_a_second_engine_on_the_same_file_is_a_store_error(db):
    with utp.Engine(store=f"sqlite:{db}"):
        with pytest.raises(utp.UtpError) as caught:
            utp.Engine(store=f"sqlite:{db}")
        assert isinstance(caught.value, utp.StoreError)
        assert caught.value.code == "STORE"
        assert str(db) in str(caught.value)
        # Through the config as well.
        with pytest.raises(utp.StoreError):
            utp.Engine({"store": f"sqlite:{db}"})
    # Closed: the file is free again.
    utp.Engine(store=f"sqlite:{db}").close()


def test_a_file_that_is_not_a_database_is_a_store_error(db):
    db.write_bytes(b"this is not a SQLite database, just text\n" * 200)
    with pytest.raises(utp.StoreError) as caught:
        utp.Engine(store=f"sqlite:{db}")
    assert caught.value.code == "STORE"


def test_bad_store_arguments():
    for bad in ("postgres://x", "sqlite:", "  ", "sqlite"):
        with pytest.raises(utp.InvalidArgumentError, match="store"):
            utp.Engine(store=bad)
    with pytest.raises(utp.InvalidArgumentError, match="durability"):
        utp.Engine({"store": {"url": "sqlite:/tmp/never.db", "durability": "fast"}})


def test_the_store_argument_wins_over_the_config_url(tmp_path):
    configured = tmp_path / "configured.db"
    chosen = tmp_path / "sub" / "chosen.db"
    config = {"store": {"url": f"sqlite:{configured}", "durability": "sync", "retention": "30d"}}
    with utp.Engine(config, store=f"sqlite:{chosen}") as engine:
        engine.set_session_state("s", "k", 1)
    assert chosen.exists() and not configured.exists()
    # The config alone opens its own url.
    with utp.Engine(config) as engine:
        assert engine.session_state("s") == {}
    assert configured.exists()


def test_a_relative_store_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    config_file = tmp_path / "conf" / "utp.json"
    config_file.write_text("{}")
    with utp.Engine(str(config_file), store="sqlite:rel.db") as engine:
        engine.set_session_state("s", "k", True)
    assert (tmp_path / "rel.db").exists()


def test_session_state_and_approvals_outlive_the_engine(db):
    with utp.Engine(store=f"sqlite:{db}") as engine:
        engine.set_session_state("s1", "cart", ["a", "b"], tenant="acme")
        engine.set_session_state("s2", "n", 7)
    with utp.Engine(store=f"sqlite:{db}") as engine:
        assert engine.session_state("s1", tenant="acme") == {"cart": ["a", "b"]}
        assert engine.session_state("s1") == {}
        assert engine.session_state("s2") == {"n": 7}
        engine.set_session_state("s2", "n", None)
    with utp.Engine(store=f"sqlite:{db}") as engine:
        assert engine.session_state("s2") == {}


def test_prune(db, tmp_path):
    with utp.Engine(store=f"sqlite:{db}") as engine:
        engine.register_tool("t.step", counting_tool(tmp_path / "calls.txt"))
        exec_id = engine.run_workflow(chain(2))["execution_id"]
    with utp.Engine(store=f"sqlite:{db}") as engine:
        assert engine.execution(exec_id)["status"] == "completed"
        assert engine.prune("30d") == 0
        assert engine.prune(3600.0) == 0
        time.sleep(0.05)
        deleted = engine.prune(0.01)
        assert deleted > 0
        with pytest.raises(utp.NotFoundError):
            engine.execution(exec_id)
        assert engine.stored_events(execution_id=exec_id) == []
        assert asyncio.run(engine.prune_async("1h")) == 0
        for bad in ("soon", -1, True, None, [1]):
            with pytest.raises(utp.InvalidArgumentError, match="older_than"):
                engine.prune(bad)


CHILD = textwrap.dedent(
    """
    import sys, time
    import utp

    db, log = sys.argv[1], sys.argv[2]
    engine = utp.Engine(store="sqlite:" + db)

    def step(args):
        with open(log, "a") as f:
            f.write(args["name"] + "\\n")
        if args["name"] == "s2":
            while True:          # killed here, with SIGKILL, by the test
                time.sleep(0.05)
        return {"n": args["n"]}

    engine.register_tool("t.step", step)
    workflow = {workflow!r}
    exec_id = engine.start_workflow(workflow, session="crash")
    print(exec_id, flush=True)
    engine.wait_execution(exec_id)
    """
)


def test_a_run_killed_with_sigkill_is_resumed_without_repeating_committed_steps(db, tmp_path):
    log = tmp_path / "calls.txt"
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("{workflow!r}", repr(chain(4))))
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(log)], stdout=subprocess.PIPE, text=True)
    try:
        exec_id = proc.stdout.readline().strip()
        assert exec_id, "the child printed no execution id"
        deadline = time.monotonic() + 30
        while "s2" not in calls(log):
            assert proc.poll() is None, "the child exited before step s2"
            assert time.monotonic() < deadline, "step s2 never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert calls(log) == ["s0", "s1", "s2"]

    with utp.Engine(store=f"sqlite:{db}") as engine:
        # Its tool is not registered yet: the run is left in the store as it was.
        left = engine.execution(exec_id)
        assert left["status"] == "running"
        assert left["steps"]["s1"]["status"] == "succeeded"
        assert left["steps"]["s3"]["status"] == "pending"
        assert [e["execution_id"] for e in engine.executions(status="running")] == [exec_id]

        engine.register_tool("t.step", counting_tool(log))
        assert engine.recover() == [exec_id]
        assert engine.recover() == []  # already running here
        record = engine.wait_execution(exec_id, timeout=30)
        assert record["status"] == "completed", record
        assert record["outputs"] == {"last": 3}
        assert record["session_id"] == "crash"
        assert record["steps"]["s1"]["output"] == {"n": 1}
        types = kinds(engine.stored_events(execution_id=exec_id))
        assert types.count("workflow.started") == 1
        assert types.count("workflow.completed") == 1
        assert types.count("step.completed") == 4

    # s0 and s1 were committed before the kill: never called again; s2 ran again.
    assert calls(log) == ["s0", "s1", "s2", "s2", "s3"]

    with utp.Engine(store=f"sqlite:{db}") as engine:
        assert engine.execution(exec_id)["status"] == "completed"
        assert engine.recover() == []


def test_recover_async_and_a_closed_engine(db):
    engine = utp.Engine(store=f"sqlite:{db}")
    assert asyncio.run(engine.recover_async()) == []
    engine.close()
    for call in (engine.recover, engine.stored_events, lambda: engine.prune(1)):
        with pytest.raises(utp.InvalidArgumentError, match="closed"):
            call()


def shell_manual(log, gate):
    """Tools s0, s1, s2 (CLI, so a config can name them): each appends its name to
    `log`; s1 then waits until the file `gate` exists."""

    def tool(name, extra=""):
        script = f"echo {name} >> {log}{extra}"
        template = {"call_template_type": "cli", "commands": [{"command": f"sh -c '{script}'"}]}
        return {"name": name, "tool_call_template": template}

    # An orphaned shell (of a killed child) also ends when the folder is removed.
    wait = f"; while [ ! -f {gate} ] && [ -d {gate.parent} ]; do sleep 0.05; done"
    return {"name": "sh", "tools": [tool("s0"), tool("s1", wait), tool("s2")]}


SHELL_CHAIN = {
    "name": "shell",
    "steps": [
        {"id": "a", "tool": "sh.s0"},
        {"id": "b", "tool": "sh.s1", "depends_on": ["a"]},
        {"id": "c", "tool": "sh.s2", "depends_on": ["b"]},
    ],
}


def test_the_constructor_resumes_runs_whose_tools_the_config_names(db, tmp_path):
    """Recovery inside `Engine(...)` runs on the engine's own runtime: the resumed run
    goes on after the constructor returned, with no further call."""
    log, gate = tmp_path / "calls.txt", tmp_path / "gate"
    config = {"manuals": [shell_manual(log, gate)], "store": f"sqlite:{db}"}
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys, utp
            engine = utp.Engine(json.loads({json.dumps(json.dumps(config))}))
            exec_id = engine.start_workflow(json.loads({json.dumps(json.dumps(SHELL_CHAIN))}))
            print(exec_id, flush=True)
            engine.wait_execution(exec_id)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        exec_id = proc.stdout.readline().strip()
        deadline = time.monotonic() + 30
        while "s1" not in calls(log):
            assert proc.poll() is None, "the child exited before step b"
            assert time.monotonic() < deadline, "step b never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        with utp.Engine(config) as engine:
            # Resumed by the constructor: running already, nothing left for recover().
            assert engine.recover() == []
            assert engine.execution(exec_id)["status"] in ("created", "running")  # "created" until its task starts
            gate.touch()  # lets step b (and the killed child's orphaned shell) finish
            record = engine.wait_execution(exec_id, timeout=30)
            assert record["status"] == "completed", record
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # Step a was committed before the kill: not run again; b ran twice (killed, resumed).
    assert calls(log) == ["s0", "s1", "s1", "s2"]


def test_close_mid_run_releases_the_file_and_leaves_the_run_for_the_next_engine(db, tmp_path):
    log = tmp_path / "calls.txt"

    def slow(args):
        with open(log, "a") as f:
            f.write(args["name"] + "\n")
        if args["name"] == "s1":
            time.sleep(0.3)  # close() comes meanwhile: this result is never recorded
        return {"n": args["n"]}

    engine = utp.Engine(store=f"sqlite:{db}")
    engine.register_tool("t.step", slow)
    exec_id = engine.start_workflow(chain(3))
    deadline = time.monotonic() + 10
    while "s1" not in calls(log):
        assert time.monotonic() < deadline, "step s1 never started"
        time.sleep(0.01)
    engine.close()

    with utp.Engine(store=f"sqlite:{db}") as again:  # the file is free at once
        left = again.execution(exec_id)
        assert left["status"] == "running"
        assert left["steps"]["s0"]["status"] == "succeeded"
        assert left["steps"]["s1"]["status"] in ("pending", "running")
        again.register_tool("t.step", counting_tool(log))
        assert again.recover() == [exec_id]
        assert again.wait_execution(exec_id, timeout=30)["outputs"] == {"last": 2}
    assert calls(log) == ["s0", "s1", "s1", "s2"]

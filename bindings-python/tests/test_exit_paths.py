"""Every way a process can end with engines it never closed: each scenario is a script
run in child processes (UTP_EXIT_RUNS times, 20 by default, in parallel batches), which
must end with the status Python gives that path and print no crash text on stderr.

The engine threads that call Python (tool and rule threads, event subscriber threads)
must stop calling it before the interpreter finalizes (bindings-python/src/host_exit.rs);
before that was done, the first scenario aborted (SIGABRT) nearly every time."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

RUNS = int(os.environ.get("UTP_EXIT_RUNS", "20"))
# Children at once: enough to finish quickly, few enough not to starve a small machine.
BATCH = int(os.environ.get("UTP_EXIT_BATCH", "5"))
CRASH_TEXT = ("panicked", "Fatal Python error", "Aborted", "not initialized", "Segmentation fault", "core dumped")

# Shared by the scripts: an engine with a Python tool, a Python rule and slow subscribers.
PRELUDE = textwrap.dedent(
    """
    import os, signal, sys, time
    import utp

    def busy_engine(config=None, subscribers=2, delay=0.001):
        e = utp.Engine(config)
        e.register_tool("t.noop", lambda a: 1, inputs={"type": "object"})
        e.domain_layer.add_business_rule("allow-all", lambda tool, action, params: True)
        for _ in range(subscribers):
            e.event_bus.subscribe("*", lambda ev: time.sleep(delay))
        return e
    """
)


def run_child(script, interrupt_after_ready=False, timeout=60):
    """Run `script`; with `interrupt_after_ready`, send SIGINT once it prints "ready".
    Returns (returncode, stdout, stderr, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if interrupt_after_ready:
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"expected 'ready', got {line!r}"
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err, time.monotonic() - started


def run_many(script, **kwargs):
    with ThreadPoolExecutor(max_workers=BATCH) as pool:
        return list(pool.map(lambda _: run_child(script, **kwargs), range(RUNS)))


def assert_clean(results, status, stderr_has=None, stdout_has=None, within=30.0):
    for code, out, err, seconds in results:
        assert code == status, f"exit status {code}, expected {status}; stderr:\n{err[-3000:]}"
        for text in CRASH_TEXT:
            assert text not in err, f"{text!r} on stderr:\n{err[-3000:]}"
        if stderr_has:
            assert stderr_has in err, err[-3000:]
        if stdout_has:
            assert stdout_has in out, out
        assert seconds < within, f"took {seconds:.1f} s"


def test_normal_exit_without_close():
    # The program, with a rule too.
    assert_clean(
        run_many(
            """
            e = busy_engine()
            for i in range(3000):
                e.call_tool("t.noop", {})
            print("done")
            """
        ),
        0,
        stdout_has="done",
    )


def test_uncaught_exception():
    assert_clean(
        run_many(
            """
            e = busy_engine()
            for i in range(1000):
                e.call_tool("t.noop", {})
            raise RuntimeError("boom")
            """
        ),
        1,
        stderr_has="RuntimeError: boom",
    )


def test_sys_exit_on_the_main_thread_while_subscribers_are_busy():
    assert_clean(
        run_many(
            """
            e = busy_engine()
            for i in range(1000):
                e.call_tool("t.noop", {})
            sys.exit(5)
            """
        ),
        5,
    )


def test_exit_while_daemon_threads_are_in_calls():
    # Daemon threads blocked in call_tool when the interpreter finalizes.
    assert_clean(
        run_many(
            """
            import threading
            e = busy_engine()
            def loop():
                while True:
                    try:
                        e.call_tool("t.noop", {})
                    except utp.UtpError:
                        pass
            for _ in range(3):
                threading.Thread(target=loop, daemon=True).start()
            time.sleep(0.3)
            print("main done")
            """
        ),
        0,
        stdout_has="main done",
    )


def test_exit_with_async_calls_pending():
    # asyncio.run returns with call_tool_async calls of a slow tool still running.
    assert_clean(
        run_many(
            """
            import asyncio
            e = busy_engine()
            def slow(args):
                time.sleep(0.2)
                return 2
            e.register_tool("t.slow", slow, inputs={"type": "object"})
            async def main():
                for _ in range(200):
                    await e.call_tool_async("t.noop", {})
                pending = [asyncio.ensure_future(e.call_tool_async("t.slow", {})) for _ in range(50)]
                await asyncio.sleep(0.05)
                print("pending", sum(not p.done() for p in pending))
            asyncio.run(main())
            """
        ),
        0,
        stdout_has="pending",
    )


def test_sys_exit_inside_a_subscriber_is_logged_and_the_process_goes_on():
    # A subscriber runs on the engine's thread: SystemExit there ends that event, as
    # it would end a threading.Thread, not the process.
    assert_clean(
        run_many(
            """
            e = busy_engine()
            e.event_bus.subscribe("tool.succeeded", lambda ev: sys.exit(3))
            for i in range(200):
                e.call_tool("t.noop", {})
            e.event_bus.flush()
            print("still here")
            """
        ),
        0,
        stdout_has="still here",
        stderr_has="SystemExit: 3",
    )


def test_sys_exit_inside_a_tool_fails_the_call():
    assert_clean(
        run_many(
            """
            e = busy_engine()
            e.register_tool("t.quit", lambda a: sys.exit(3), inputs={"type": "object"})
            e.call_tool("t.noop", {})
            e.call_tool("t.quit", {})
            """
        ),
        1,
        stderr_has="SystemExit",
    )


def test_sys_exit_inside_a_rule_denies_the_call():
    assert_clean(
        run_many(
            """
            e = busy_engine()
            e.domain_layer.add_business_rule("quits", lambda tool, action, params: sys.exit(3))
            try:
                e.call_tool("t.noop", {})
            except utp.PermissionDeniedError as denied:
                print("denied:", denied)
            sys.exit(4)
            """
        ),
        4,
        stdout_has="denied:",
    )


def test_ctrl_c_during_a_call():
    # Python ends an uncaught KeyboardInterrupt by killing itself with SIGINT.
    assert_clean(
        run_many(
            """
            e = busy_engine()
            def slow(args):
                print("ready", flush=True)
                time.sleep(1.0)
                return 1
            e.register_tool("t.slow", slow, inputs={"type": "object"})
            for i in range(100):
                e.call_tool("t.noop", {})
            e.call_tool("t.slow", {})
            """,
            interrupt_after_ready=True,
        ),
        -signal.SIGINT,
        stderr_has="KeyboardInterrupt",
    )


def test_ctrl_c_during_a_workflow():
    assert_clean(
        run_many(
            """
            e = busy_engine()
            def slow(args):
                print("ready", flush=True)
                time.sleep(1.0)
                return 1
            e.register_tool("t.slow", slow, inputs={"type": "object"})
            e.run_workflow({
                "name": "slow",
                "steps": [
                    {"id": "a", "tool": "t.noop"},
                    {"id": "b", "tool": "t.slow", "depends_on": ["a"]},
                    {"id": "c", "tool": "t.noop", "depends_on": ["b"]},
                ],
            })
            """,
            interrupt_after_ready=True,
        ),
        -signal.SIGINT,
        stderr_has="KeyboardInterrupt",
    )


def test_exit_while_a_thousand_events_are_queued_for_slow_subscribers():
    # Each subscriber sits 2 s on its first event while the rest pile up in its queue.
    # Queued events are dropped at exit, as close() drops them: exit waits only for
    # the events being handled.
    results = run_many(
        """
        e = busy_engine({"events": {"queue_capacity": 5000}}, subscribers=3, delay=2.0)
        for i in range(1000):
            e.call_tool("t.noop", {})
        queued = [s["queued"] for s in e.metrics()["events"]["subscribers"]]
        assert min(queued) >= 1000, queued
        print("queued", queued)
        """
    )
    assert_clean(results, 0, stdout_has="queued", within=15.0)


def test_fork_in_the_middle_with_multiprocessing():
    # The child of a fork gets a clear error from the parent's engine, and a new
    # engine of its own works; the parent carries on.
    assert_clean(
        run_many(
            """
            import multiprocessing, threading

            def child(queue):
                try:
                    parent_engine.call_tool("t.noop", {})
                    queue.put("the parent's engine answered")
                except utp.InvalidArgumentError as error:
                    mine = utp.Engine()
                    mine.register_tool("c.echo", lambda a: a, inputs={"type": "object"})
                    queue.put(("refused" if "fork" in str(error) else str(error), mine.call_tool("c.echo", {"x": 1})))

            parent_engine = busy_engine()
            calling = threading.Thread(target=lambda: [parent_engine.call_tool("t.noop", {}) for _ in range(2000)])
            calling.start()
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            p = ctx.Process(target=child, args=(queue,))
            p.start()
            answer = queue.get(timeout=20)
            p.join(20)
            calling.join()
            assert p.exitcode == 0, p.exitcode
            assert answer == ("refused", {"x": 1}), answer
            print("child:", answer)
            """
        ),
        0,
        stdout_has="child: ('refused'",
    )


def test_fork_in_the_middle_with_os_fork_and_a_normal_exit_in_the_child():
    # Unlike multiprocessing (os._exit), this child runs the exit hook itself, with
    # the parent's engine and its queued events copied into it.
    assert_clean(
        run_many(
            """
            e = busy_engine({"events": {"queue_capacity": 5000}}, delay=0.01)
            for i in range(300):
                e.call_tool("t.noop", {})
            pid = os.fork()
            if pid == 0:
                try:
                    e.call_tool("t.noop", {})
                except utp.InvalidArgumentError as error:
                    assert "fork" in str(error), error
                e.close()
                fresh = utp.Engine()
                fresh.register_tool("c.one", lambda a: 1, inputs={"type": "object"})
                assert fresh.call_tool("c.one", {}) == 1
                sys.exit(7)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 7, status
            for i in range(300):
                e.call_tool("t.noop", {})
            print("parent done")
            """
        ),
        0,
        stdout_has="parent done",
    )


def test_an_atexit_hook_of_the_program_still_uses_the_engine():
    # Hooks run last-registered first: the program's (registered after `import utp`)
    # runs before utp's own, which closes the engines.
    assert_clean(
        run_many(
            """
            import atexit
            e = busy_engine()
            atexit.register(lambda: print("atexit call:", e.call_tool("t.noop", {}), flush=True))
            e.call_tool("t.noop", {})
            """
        ),
        0,
        stdout_has="atexit call: 1",
    )

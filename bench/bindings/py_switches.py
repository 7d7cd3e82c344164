"""Context switches per blocking `call_tool` from Python, all threads of the process
(`getrusage(RUSAGE_SELF)`: voluntary + involuntary), for the rows of py_percall.py.

Usage: py_switches.py N

A thread that blocks and is woken counts a voluntary switch each time, so this shows
how many thread hand-offs a call makes, whatever else the machine is doing (timings on a
loaded machine do not). Prints one JSON line: switches per call per row."""
import json
import resource
import sys

import utp


def switches() -> int:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_nvcsw + u.ru_nivcsw


def per_call(fn, n: int) -> float:
    for _ in range(min(n, 2000)):
        fn()
    before = switches()
    for _ in range(n):
        fn()
    return (switches() - before) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    manual = {"tools": [{"name": "hello", "tool_call_template": {"call_template_type": "text", "content": "hello"}}]}
    plain, ruled = utp.Engine(), utp.Engine()
    for engine in (plain, ruled):
        engine.register_manual(manual, "text")
        engine.register_tool("bench.noop", lambda args: None)
    ruled.domain_layer.add_business_rule("allow_all", lambda tool, action, params: True)
    rows = {
        "text_tool": per_call(lambda: plain.call_tool("text.hello", {}), n),
        "python_noop_tool": per_call(lambda: plain.call_tool("bench.noop", {}), n),
        "text_tool_python_rule": per_call(lambda: ruled.call_tool("text.hello", {}), n),
        "python_noop_tool_python_rule": per_call(lambda: ruled.call_tool("bench.noop", {}), n),
    }
    print(json.dumps({"n": n, "switches_per_call": {k: round(v, 2) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()

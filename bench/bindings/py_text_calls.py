"""Sequential `text`-tool calls from Python, for instruction counts (issue 19's before/after):

    valgrind --tool=callgrind python bench/bindings/py_text_calls.py 10000

One `utp.Engine()`, one `text` tool, 2,000 warm-up calls, then N measured calls of
`engine.call_tool("text.hello", {})`. Instruction counts repeat for the same build,
whatever else the machine does, so small per-call costs show that timings hide."""
import sys

import utp

engine = utp.Engine()
engine.register_manual({"name": "text", "tools": [
    {"name": "hello", "tool_call_template": {"call_template_type": "text", "content": "hello"}}]})
for _ in range(2000):
    engine.call_tool("text.hello", {})
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 10000):
    engine.call_tool("text.hello", {})

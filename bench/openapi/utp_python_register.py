"""Register one OpenAPI spec file (or UTCP manual) with UTP Runtime from Python:
`utp.Engine().register_manual(path)`, timed in-process as the Rust `register_spec`
example times `Engine::register_manual(path)` (the engine is created first; file read
+ parse + conversion + indexing are timed). Prints `{"seconds", "tools", "peak_kb"}`.
Usage: utp_python_register.py SPEC (with a Python that imports `utp`)."""
import json
import resource
import sys
import time

import utp


def main() -> None:
    path = sys.argv[1]
    engine = utp.Engine()
    start = time.perf_counter()
    tools = engine.register_manual(path, name="m")
    elapsed = time.perf_counter() - start
    engine.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "tools": len(tools), "peak_kb": peak_kb}))


if __name__ == "__main__":
    main()

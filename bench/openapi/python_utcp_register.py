"""Register one OpenAPI spec file with python-utcp 1.2 (utcp + utcp-http) and report
wall time (in-process, file read + JSON parse + conversion), tool count and the
names of the operations converted. Usage: python_utcp_register.py SPEC [NAMES_OUT]"""
import json
import resource
import sys
import time

from utcp_http.openapi_converter import OpenApiConverter


def main() -> None:
    path = sys.argv[1]
    start = time.perf_counter()
    with open(path, "rb") as f:
        spec = json.load(f)
    manual = OpenApiConverter(spec, spec_url=None, call_template_name="m").convert()
    elapsed = time.perf_counter() - start
    names = [t.name.split(".", 1)[-1] for t in manual.tools]
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as out:
            out.write("\n".join(names))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "tools": len(names), "peak_kb": peak_kb}))


if __name__ == "__main__":
    main()

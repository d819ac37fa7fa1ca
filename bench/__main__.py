"""Run benchmarks: `python -m bench <name> [...]`, `python -m bench all`, `python -m bench --list`.

One benchmark runs in this process; several run one after another, each in a Python process
of its own, so no figure (a peak RSS above all) carries what an earlier benchmark left behind.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

from bench.support import setup_django

BENCH_DIR = Path(__file__).resolve().parent


def available() -> dict[str, str]:
    """Benchmark names (modules bench/bench_<name>.py) and their one-line descriptions."""
    found = {}
    for module in pkgutil.iter_modules([str(BENCH_DIR)]):
        if module.name.startswith("bench_"):
            loaded = importlib.import_module(f"bench.{module.name}")
            found[module.name.removeprefix("bench_")] = (loaded.__doc__ or "").strip().splitlines()[0]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark names, or 'all'")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    args = parser.parse_args(argv)

    setup_django()
    benches = available()
    if args.list or not args.names:
        for name, description in sorted(benches.items()):
            print(f"{name:24} {description}")
        return 0
    names = sorted(benches) if args.names == ["all"] else args.names
    unknown = [name for name in names if name not in benches]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; see --list")
    if len(names) == 1:
        report = importlib.import_module(f"bench.bench_{names[0]}").run(quick=args.quick)
        report.print()
        return 0 if report.met else 1
    missed = []
    for name in names:
        command = [sys.executable, "-m", "bench", name, *(["--quick"] if args.quick else [])]
        if subprocess.run(command, cwd=BENCH_DIR.parent, check=False).returncode != 0:
            missed.append(name)
    print(f"\n== {len(names) - len(missed)} of {len(names)} benchmarks met every target", end="")
    print(f"; missed: {', '.join(missed)}" if missed else "")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

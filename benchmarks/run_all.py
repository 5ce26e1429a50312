"""Run every benchmark once, each in its own process, and print their tables one after another.

    .venv/bin/python benchmarks/run_all.py [--only vs_monai scaling] [-- extra args for all]

Each script prints a markdown table and writes its plot to ``docs/bench/``. Separate processes
because PyTorch (MONAI's benchmark) must not share a process with ONNX Runtime, and so one
script's memory does not count in the next one's. About 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("service_overhead", "vs_monai", "scaling", "load", "objects_cost")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run just these")
    parser.add_argument("extra", nargs="*", help="arguments passed to every script (after --)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    failed = []
    for name in args.only or SCRIPTS:
        print(f"\n===== {name} =====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args.extra]).returncode
        seconds[name] = time.perf_counter() - t0
        if rc != 0:
            failed.append(name)
            print(f"{name} FAILED (exit {rc})", flush=True)
    total = time.perf_counter() - started
    print("\n===== run time =====\n")
    for name, s in seconds.items():
        print(f"- {name}: {s:.0f} s")
    print(f"- total: {total:.0f} s ({total / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""How much memory and time does one pixel of a request cost? (the admission budget's inputs)

Starts a fresh ``python -m service`` on the bundled model per case (2 ONNX Runtime threads, as
the CPU Deployment) and sends synthetic nuclei images (uint16 PNG, nuclei ~20 px so
``diameter=20`` keeps the scale at 1 and the work is exactly the image's pixels). Reports the
process's peak RSS (VmHWM) above its idle RSS, per request pixel, and the wall time per pixel;
the last rows send two images at once to check that the per-pixel memory adds up.

    python benchmarks/admission_memory.py [--sizes 1024 2048 4096 8192] [--pair 4096]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from _common import BUNDLED_MODEL, PeakRss, Service, encode_png, machine, markdown_table, nuclei_image


def run(sizes: list[int], pair: int | None, threads: int, output: str) -> list[list[object]]:
    rows: list[list[object]] = []
    cases: list[tuple[int, int]] = [(s, 1) for s in sizes] + ([(pair, 2)] if pair else [])
    for size, count in cases:
        body = encode_png(nuclei_image(size))
        with Service(BUNDLED_MODEL, threads) as svc:
            idle = PeakRss(svc.pid).rss()
            params = {"diameter": 20, "output": output}
            with PeakRss(svc.pid) as peak, ThreadPoolExecutor(count) as pool:
                started = time.perf_counter()
                answers = list(pool.map(svc.segment, [body] * count, [params] * count))
                seconds = time.perf_counter() - started
            assert all(a.status_code == 200 for a in answers)
            pixels = count * size * size
            above = peak.peak - idle
            gib = 2**30
            rows.append([
                f"{count} × {size}²", f"{pixels / 1e6:.1f}", f"{idle / gib:.2f}", f"{peak.peak / gib:.2f}",
                f"{above / gib:.2f}", f"{above / pixels:.0f}", f"{seconds:.1f}",
                f"{pixels / seconds / 1e6:.2f}",
            ])
            print(markdown_table(HEADERS, rows[-1:]), flush=True)
    return rows


HEADERS = ["request", "MP", "idle RSS GiB", "peak RSS GiB", "above idle GiB", "bytes / px", "s", "MP/s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--pair", type=int, default=4096, help="also two of this size at once (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="mask")
    args = parser.parse_args()
    rows = run(args.sizes, args.pair or None, args.threads, args.output)
    print(f"\n{machine()}\n")
    print(markdown_table(HEADERS, rows))


if __name__ == "__main__":
    main()

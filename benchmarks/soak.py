"""Soak: hours (or minutes) of mixed traffic against one service — errors, latency, memory over time.

The release check behind ``tests/reliability/test_load_and_overload.py`` (which runs 500 small
images in seconds): a real ``python -m service`` (or ``--url`` of one already running) gets
``--concurrency`` clients sending synthetic nuclei images of ``--sizes`` (round robin, 8- and
16-bit PNG) for ``--duration`` seconds. A 503 is backpressure: the client waits ``Retry-After``
(capped at 1 s) and sends the image again. Anything else that is not a 200 PNG of the input's
size is an error. The server's resident memory is sampled every ``--sample-s`` seconds.

Prints three markdown tables — per-size latency percentiles, memory over time, the verdict — and
exits non-zero on any error or when RSS at the end exceeds RSS after the warm-up (the first
``--warmup-s`` seconds) by more than ``--max-rss-growth`` (default 10 %).

    .venv/bin/python benchmarks/soak.py --duration 1800 --concurrency 16
    .venv/bin/python benchmarks/soak.py --url http://10.0.0.5:8000 --pid 1234 --duration 3600
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
from _common import REPO, Service, encode_png, markdown_table, nuclei_image, resolve_model


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


Bodies = dict[str, tuple[bytes, tuple[int, int]]]  # name → (PNG bytes, (H, W))


class Soak:
    """The clients' shared tally: per-image latency of 200s, status counts, errors."""

    def __init__(self, url: str, bodies: Bodies, api_key: str | None) -> None:
        self.url, self.bodies = url, bodies
        self.headers = {"Content-Type": "image/png", **({"X-API-Key": api_key} if api_key else {})}
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.done = 0
        self.stop = threading.Event()

    def client_loop(self, offset: int) -> None:
        names = list(self.bodies)
        k = offset
        with httpx.Client(base_url=self.url, timeout=600) as client:
            while not self.stop.is_set():
                name = names[k % len(names)]
                k += 1
                body, shape = self.bodies[name]
                while not self.stop.is_set():
                    started = time.perf_counter()
                    try:
                        r = client.post("/segment", content=body, headers=self.headers)
                    except httpx.HTTPError as exc:
                        self._error(f"{name}: {type(exc).__name__}: {exc}")
                        break
                    seconds = time.perf_counter() - started
                    with self.lock:
                        self.statuses[r.status_code] += 1
                    if r.status_code == 503:
                        self.stop.wait(min(1.0, float(r.headers.get("Retry-After", "1"))))
                        continue
                    problem = self._check(r, shape)
                    if problem:
                        self._error(f"{name}: {problem}")
                    else:
                        with self.lock:
                            self.latency[name].append(seconds)
                            self.done += 1
                    break

    @staticmethod
    def _check(r: httpx.Response, shape: tuple[int, int]) -> str:
        if r.status_code != 200:
            return f"{r.status_code} {r.text[:200]}"
        mask = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.shape != shape:
            return f"bad mask {None if mask is None else mask.shape} for {shape}"
        return ""

    def _error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (default 600)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024, 2048],
                        help="square image edges, sent round robin")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "nuclei-unet.onnx",
                        help="model for the service started here (ignored with --url)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = all cores)")
    parser.add_argument("--url", help="soak a service that is already running instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for memory sampling")
    parser.add_argument("--api-key", help="X-API-Key to send")
    parser.add_argument("--sample-s", type=float, default=10, help="RSS sampling interval, seconds")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="memory baseline taken after this long (default 10%% of --duration)")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed RSS growth, fraction")
    args = parser.parse_args()
    warmup_s = args.warmup_s if args.warmup_s is not None else 0.1 * args.duration

    bodies: Bodies = {}
    for k, size in enumerate(args.sizes):
        image = nuclei_image(size, seed=7 + k)
        if k % 2:  # every other size as 8-bit: both decode paths stay exercised
            image = (image.astype(np.float32) / max(1, int(image.max())) * 255).astype(np.uint8)
        bodies[f"{size}² {image.dtype}"] = (encode_png(image), image.shape[:2])

    with tempfile.TemporaryDirectory() as tmp:
        service = None
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
        else:
            model = resolve_model(args.model, Path(tmp))
            service = Service(model, args.threads)
            url, pid = service.url, service.pid
        process = psutil.Process(pid) if pid else None
        soak = Soak(url, bodies, args.api_key)
        threads = [threading.Thread(target=soak.client_loop, args=(i,), daemon=True)
                   for i in range(args.concurrency)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[tuple[float, float, int, int]] = []  # (t, RSS MB, images done, errors)
        baseline: float | None = None
        try:
            while (elapsed := time.monotonic() - started) < args.duration:
                rss = process.memory_info().rss / 1e6 if process else float("nan")
                samples.append((elapsed, rss, soak.done, len(soak.errors)))
                if baseline is None and elapsed >= warmup_s:
                    baseline = rss
                print(f"{elapsed:7.0f} s  RSS {rss:8.1f} MB  images {soak.done:7d}  "
                      f"errors {len(soak.errors)}", flush=True)
                time.sleep(min(args.sample_s, max(0.0, args.duration - elapsed)))
        except KeyboardInterrupt:
            print("interrupted: reporting what ran")
        soak.stop.set()
        for thread in threads:
            thread.join(timeout=600)
        wall = time.monotonic() - started
        final = process.memory_info().rss / 1e6 if process else float("nan")
        samples.append((wall, final, soak.done, len(soak.errors)))
        if service is not None:
            service.close()

    rows = []
    for name in bodies:
        lat = [1000 * s for s in soak.latency[name]]
        rows.append([name, len(lat), f"{percentile(lat, 50):.0f}", f"{percentile(lat, 90):.0f}",
                     f"{percentile(lat, 99):.0f}", f"{max(lat, default=float('nan')):.0f}"])
    print(f"\n## Latency of 200s ({args.concurrency} clients, {wall:.0f} s)\n")
    print(markdown_table(["image", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))

    step = max(1, len(samples) // 20)  # about 20 rows, always the last
    shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    print("\n## Server memory over time\n")
    print(markdown_table(["t (s)", "RSS (MB)", "images done", "errors"],
                         [[f"{t:.0f}", f"{rss:.1f}", done, errs] for t, rss, done, errs in shown]))

    baseline = baseline if baseline is not None else (samples[0][1] if samples else float("nan"))
    growth = (final - baseline) / baseline if process and baseline else float("nan")
    all_latency = [s for lat in soak.latency.values() for s in lat]
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(soak.statuses.items()))
    verdict = [
        ["images segmented", f"{soak.done} ({soak.done / wall:.2f}/s)"],
        ["responses by status", statuses or "none"],
        ["errors (not 200/503, or a wrong mask)", len(soak.errors)],
        ["latency p50 / p99 (all sizes)",
         f"{1000 * statistics.median(all_latency):.0f} / {1000 * percentile(all_latency, 99):.0f} ms"
         if all_latency else "n/a"],
        [f"RSS after warm-up ({warmup_s:.0f} s) → end",
         f"{baseline:.1f} → {final:.1f} MB ({100 * growth:+.1f} %)"],
    ]
    print("\n## Verdict\n")
    print(markdown_table(["", ""], verdict))
    for message in soak.errors[:10]:
        print("error:", message)
    failed = bool(soak.errors) or soak.done == 0 or (growth == growth and growth > args.max_rss_growth)
    print("\nFAIL" if failed else "\nPASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

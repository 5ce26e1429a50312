"""What bounding decode costs, and whether hostile uploads can stall the service (issue 15).

    .venv/bin/python benchmarks/hostile_decode.py [--duration 20] [--repo DIR] [--skip-costs]

1. **Cost of the bounds on legitimate files** (in process): the structure walk
   (``service.structure.check``) against the whole read (``microscopy.select``, which includes
   it) on a 2048² 8-bit and an 8192² 16-bit PNG; and, for comparison, what decoding in a
   worker *process* would add (the decoded array pickled back), the isolation not chosen.
2. **/livez under attack** (a real ``python -m service`` from ``--repo``, so the same script
   measures another checkout, e.g. the code before the bounds): four clients post issue 15's
   hostile files to ``/segment`` over and over for ``--duration`` s while /livez is asked
   every 100 ms (from another process); then four clients post legal 8192² 16-bit PNGs to
   ``/probe`` (a full decode).

Prints markdown tables (ms); no plot. Latency figures live here, never in tests.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from _common import REPO, free_port, machine, markdown_table, percentile

from service import microscopy, structure
from tests import hostile_images as hostile  # the checkout's root is on sys.path (_common)

LIMIT = 8192 * 8192


def _png(array: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def legal_pngs() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    small = rng.random((64, 64)).astype(np.float32)
    import cv2

    def smooth(size: int, top: int, dtype: type) -> np.ndarray:
        image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        image = (image - image.min()) / np.ptp(image)
        noise = rng.normal(0, 0.02, image.shape).astype(np.float32)
        return (np.clip(image + noise, 0, 1) * top).astype(dtype)

    return {"PNG 8-bit 2048²": _png(smooth(2048, 255, np.uint8)),
            "PNG 16-bit 8192²": _png(smooth(8192, 65535, np.uint16))}


def _decode_in_worker(data: bytes) -> np.ndarray:
    return microscopy.select(data, microscopy.Selection(), LIMIT, structure.Limits()).image


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def costs(files: dict[str, bytes], repeat: int) -> None:
    rows = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(_decode_in_worker, files["PNG 8-bit 2048²"]).result()  # warm: imports done
        for name, data in files.items():
            walk = median_ms(lambda d=data: structure.check(d, structure.Limits()), repeat)
            read = median_ms(lambda d=data: _decode_in_worker(d), repeat)
            proc = median_ms(lambda d=data: pool.submit(_decode_in_worker, d).result(), repeat)
            rows.append([name, f"{len(data) / 1e6:.1f} MB", f"{walk:.2f}", f"{read:.0f}",
                         f"{100 * walk / read:.2f}%", f"{proc:.0f}", f"{proc / read:.2f}×"])
    print(markdown_table(["file", "size", "walk ms", "read ms (walk incl.)", "walk share",
                          "read in a worker process ms", "process / thread"], rows))


class Server:
    def __init__(self, repo: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNET_")}
        env.update({"UNET_PORT": str(port), "UNET_HOST": "127.0.0.1", "UNET_PROVIDERS": "cpu",
                    "UNET_LOG_LEVEL": "WARNING"})
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("the service did not become ready")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # a server stuck in a decode would not drain
            self.proc.wait()


_POLLER = """
import json, sys, time
from pathlib import Path
import httpx
url, stop = sys.argv[1], Path(sys.argv[2])
live = []
with httpx.Client(base_url=url, timeout=600) as http:
    while not stop.exists():
        t0 = time.perf_counter()
        http.get("/livez").raise_for_status()
        live.append(1000 * (time.perf_counter() - t0))
        time.sleep(0.1)
print(json.dumps(live))
"""


def attack(url: str, route: str, streams: dict[str, bytes], duration: float) -> None:
    """Post each of ``streams`` from its own client for ``duration`` s; poll /livez meanwhile."""
    results: dict[str, list[tuple[int | str, float]]] = {name: [] for name in streams}
    stop = time.monotonic() + duration

    def client(name: str) -> None:
        with httpx.Client(base_url=url, timeout=duration + 30) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    status: int | str = http.post(route, files={"file": (name, streams[name])}).status_code
                except httpx.TimeoutException:
                    status = "timeout"
                results[name].append((status, 1000 * (time.perf_counter() - t0)))

    threads = [threading.Thread(target=client, args=(name,), daemon=True) for name in streams]
    # /livez is asked from another process: in this one, the uploading threads would compete
    # with it for the GIL and the client's own latency would be measured.
    with tempfile.TemporaryDirectory() as tmp:
        stop_file = Path(tmp) / "stop"
        poller = subprocess.Popen([sys.executable, "-c", _POLLER, url, str(stop_file)],
                                  stdout=subprocess.PIPE)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop_file.touch()
        live = json.loads(poller.communicate()[0])
    rows = [[name, len(r), dict(Counter(s for s, _ in r)), f"{statistics.median(ms for _, ms in r):.0f}"]
            for name, r in results.items()]
    print(markdown_table([f"{route} upload", "requests", "statuses", "median ms"], rows))
    print()
    print(markdown_table(["/livez answers", "p50 ms", "p99 ms", "max ms"],
                         [[len(live), f"{percentile(live, 50):.0f}", f"{percentile(live, 99):.0f}",
                           f"{max(live):.0f}"]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose service to start")
    parser.add_argument("--skip-costs", action="store_true")
    args = parser.parse_args()
    print(machine())
    files = legal_pngs()
    if not args.skip_costs:
        costs(files, args.repeat)
    hostile_files = {
        "30,000 chained 1×1 TIFF pages": hostile.tiff_chained_pages(30_000),
        "4,000 APP1 Exif segments (1 KB)": hostile.jpeg_exif_bomb(4_000, payload=1_000),
        "2,000,000 tiny PNG chunks": hostile.png_chunk_bomb(2_000_000, kind=b"zzZz", payload=b""),
        "2-page TIFF, 2nd IFD without width": hostile.tiff_second_page_without_width(),
    }
    server = Server(args.repo)
    try:
        print(f"\n{args.repo}: 4 clients, hostile files → /segment, {args.duration:g} s\n")
        attack(server.url, "/segment", hostile_files, args.duration)
        print(f"\n{args.repo}: 4 clients, legal 8192² 16-bit PNG → /probe (full decode), "
              f"{args.duration:g} s\n")
        big = files["PNG 16-bit 8192²"]
        attack(server.url, "/probe", {f"client {k}": big for k in range(4)}, args.duration)
    finally:
        server.close()


if __name__ == "__main__":
    main()

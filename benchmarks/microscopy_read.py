"""What reading microscopy files costs: the old decoder vs ``microscopy.select`` on the same bytes.

    .venv/bin/python benchmarks/microscopy_read.py [--size 2048] [--repeat 5]

Questions: does a single-plane file cost more than before (tifffile instead of OpenCV for TIFF,
plus the grey-or-colour check for RGB)? What do a channel of a hyperstack, a slice and a max
projection of a z-stack cost? How long does refusing a TIFF of too many tiny pages take?
Prints a markdown table (median of ``--repeat`` runs, ms); no plot. Pure CPU, one process.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import tifffile

from service import imaging, microscopy
from service.microscopy import Selection

LIMIT = 1 << 30


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def tiff(array: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **options)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    n, rep = args.size, args.repeat
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 4096, (n, n), dtype=np.uint16)
    grey8 = (grey16 >> 4).astype(np.uint8)
    png16 = cv2.imencode(".png", grey16, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    tif16 = tiff(grey16, photometric="minisblack")
    rgb_grey = cv2.imencode(".png", np.dstack([grey8] * 3), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    small = grey16[: n // 4, : n // 4]
    zstack = np.stack([np.roll(small, k, axis=0) for k in range(31)])
    ij_z = tiff(zstack, imagej=True, metadata={"axes": "ZYX"})
    ij_tzc = tiff(np.stack([np.stack([np.stack([small, small])] * 8)] * 4), imagej=True,
                  metadata={"axes": "TZCYX"})
    pages = tiff(np.zeros((10_001, 4, 4), np.uint8), photometric="minisblack")

    def select(data: bytes, **choice) -> Callable[[], object]:
        return lambda: microscopy.select(data, Selection(**choice), LIMIT, 10_000)

    def decode(data: bytes) -> Callable[[], object]:
        return lambda: imaging.decode(data, LIMIT)

    rows = [
        (f"PNG 16-bit {n}²", "imaging.decode (before)", decode(png16)),
        (f"PNG 16-bit {n}²", "microscopy.select", select(png16)),
        (f"TIFF 16-bit {n}²", "imaging.decode (before)", decode(tif16)),
        (f"TIFF 16-bit {n}²", "microscopy.select", select(tif16)),
        (f"PNG grey-as-RGB {n}²", "imaging.decode (before)", decode(rgb_grey)),
        (f"PNG grey-as-RGB {n}²", "microscopy.select", select(rgb_grey)),
        (f"ImageJ Z=31 {n // 4}²", "probe", lambda: microscopy.probe(ij_z, LIMIT, 10_000)),
        (f"ImageJ Z=31 {n // 4}²", "z=15", select(ij_z, z=15)),
        (f"ImageJ Z=31 {n // 4}²", "project=max", select(ij_z, project="max")),
        (f"ImageJ T=4 Z=8 C=2 {n // 4}²", "channel=1 z=3 t=2", select(ij_tzc, channel="1", z=3, t=2)),
        ("TIFF of 10,001 pages", "refused (limit 10,000)", lambda: _refused(pages)),
    ]
    print("| file | read | median ms |\n|---|---|---:|")
    for name, what, work in rows:
        print(f"| {name} | {what} | {median_ms(work, rep):.1f} |")
    return 0


def _refused(data: bytes) -> None:
    try:
        microscopy.select(data, Selection(z=0), LIMIT, 10_000)
    except microscopy.TooManyPages:
        return
    raise AssertionError("a TIFF of 10,001 pages was not refused")


if __name__ == "__main__":
    raise SystemExit(main())

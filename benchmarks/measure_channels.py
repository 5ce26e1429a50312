"""What do ``measure=``, ``expand=`` and ``background_ring=`` cost? ``POST /segment?output=objects`` on a
multi-channel image without them, with one other channel, with every channel, with every channel over
cells grown 5 px around the nuclei, and each channel's local background in an 8 px ring (around the
nuclei, and beyond the cells), in ONE run on one real ``python -m service``.

A ``--size``² synthetic nuclei image (``_common.nuclei_image``) is the DAPI channel of an ImageJ
TIFF whose other ``--markers`` channels are noise (uint16), sent with ``channel=DAPI`` and a fixed
``diameter`` (the size estimate is not what is measured). The prediction cache is off (a repeated
request would be answered from it). Interleaved for ``--repeat`` rounds after a warm-up of each;
each variant's time over the plain request's, by median, is what measuring adds: reading the
channels' pages and two sums per channel over the nuclei's pixels (four with cells, and the cells'
distance transform; the ring's own distance transform and a median per nucleus and channel). Prints
a markdown table. The model is the bundled one (int8 on a CPU, as served).

    .venv/bin/python benchmarks/measure_channels.py [--size 2048] [--markers 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import Service, machine, markdown_table, nuclei_image  # noqa: E402

from service.settings import DEFAULT_MODEL_PATH  # noqa: E402

TIFF = {"Content-Type": "image/tiff"}


def multichannel_tiff(size: int, markers: int) -> bytes:
    nuclei = nuclei_image(size).astype(np.uint16)
    rng = np.random.default_rng(1)
    others = [rng.integers(0, 4000, nuclei.shape, dtype=np.uint16) for _ in range(markers)]
    names = ["DAPI", *(f"marker{k + 1}" for k in range(markers))]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([nuclei, *others]), imagej=True,
                     metadata={"axes": "CYX", "Labels": names})
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--markers", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    body = multichannel_tiff(args.size, args.markers)
    variants: dict[str, dict[str, str]] = {
        "no measure": {}, "measure=marker1": {"measure": "marker1"}, "measure=all": {"measure": "all"},
        "measure=all&expand=5": {"measure": "all", "expand": "5"},
        "measure=all&background_ring=8": {"measure": "all", "background_ring": "8"},
        "measure=all&expand=5&background_ring=8": {"measure": "all", "expand": "5", "background_ring": "8"}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    columns: dict[str, int] = {}
    with Service(DEFAULT_MODEL_PATH, args.threads, {"UNET_PREDICTION_CACHE_MB": "0"}) as service:

        def send(extra: dict[str, str]) -> tuple[float, str]:
            started = time.perf_counter()
            params = {"output": "objects", "channel": "DAPI", "diameter": "20", **extra}
            r = service.client.post("/segment", content=body, headers=TIFF, params=params)
            r.raise_for_status()
            return time.perf_counter() - started, r.text

        for name, extra in variants.items():  # warm-up, and the tables' widths
            _, text = send(extra)
            columns[name] = len(text.splitlines()[0].split(","))
            objects = text.count("\n") - 1
        for _ in range(args.repeat):
            for name, extra in variants.items():
                times[name].append(send(extra)[0])
    plain = statistics.median(times["no measure"])
    print(machine())
    print(f"{args.size}² ImageJ TIFF, DAPI + {args.markers} marker channels (uint16), {objects} nuclei, "
          f"{args.repeat} interleaved rounds\n")
    rows = [[name, columns[name], f"{statistics.median(t):.2f}", f"{min(t):.2f}",
             f"{statistics.median(t) / plain:.3f}"] for name, t in times.items()]
    print(markdown_table(["request", "table columns", "median s", "min s", "÷ no measure"], rows))


if __name__ == "__main__":
    main()

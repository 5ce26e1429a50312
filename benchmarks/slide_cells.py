"""What do cells (``expand=``) cost a slide job? Time and the server's peak memory, in ONE run.

A wide slide (``--height`` × ``--width``, a tiled zlib OME-TIFF of synthetic nuclei,
``_common.nuclei_image`` mirror-tiled; a slide job's memory grows with the width) is segmented by
``POST /jobs?output=ome-zarr&geojson=true`` by path, with a fixed ``diameter``, without cells and
with ``expand=`` each of ``--expand``. Every job runs on a fresh ``python -m service`` (bundled
model), so each peak (``VmHWM`` over the server's life: start-up, a warm-up request and the job)
is that variant's own; variants are interleaved for ``--repeat`` rounds. Prints a markdown table:
job seconds (median), its ratio to the job without cells, and the peak RSS (highest over rounds).

    .venv/bin/python benchmarks/slide_cells.py [--height 2048] [--width 16384] [--expand 10 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BUNDLED_MODEL, Service, encode_png, machine, markdown_table, nuclei_image, vm_hwm  # noqa: E402


def write_slide(path: Path, height: int, width: int) -> None:
    base = nuclei_image(4096)
    image = np.tile(base, (-(-height // 4096), -(-width // 4096)))[:height, :width]
    tifffile.imwrite(path, image, tile=(512, 512), compression="zlib", photometric="minisblack", ome=True,
                     bigtiff=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})


def run_job(slide: Path, params: dict[str, str], threads: int, jobs_dir: Path) -> tuple[float, int, int]:
    """``(seconds, peak RSS bytes, objects)`` of one slide job on a fresh server."""
    env = {"UNET_DATA_ROOT": str(slide.parent), "UNET_JOBS_DIR": str(jobs_dir)}
    with Service(BUNDLED_MODEL, threads, env) as service:
        service.segment(encode_png(nuclei_image(512)), {"output": "mask"})  # warm-up
        started = time.perf_counter()
        r = service.client.post("/jobs", params={"output": "ome-zarr", "geojson": "true", **params},
                                json={"path": slide.name})
        r.raise_for_status()
        job_id = r.json()["id"]
        while (status := service.client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        if status["status"] != "succeeded":
            raise RuntimeError(f"the job did not succeed: {status}")
        objects = int(service.client.get(f"/jobs/{job_id}/result").json()["objects"])
        peak = vm_hwm(service.pid) or 0
        service.client.delete(f"/jobs/{job_id}")
        return seconds, peak, objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--expand", type=float, nargs="+", default=[10.0, 100.0])
    parser.add_argument("--diameter", default="20")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    variants = {"no cells": {}, **{f"expand={e:g}": {"expand": f"{e:g}"} for e in args.expand}}
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.ome.tif"
        write_slide(slide, args.height, args.width)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        peaks: dict[str, int] = dict.fromkeys(variants, 0)
        counts: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, params in variants.items():
                took, peak, objects = run_job(slide, {"diameter": args.diameter, **params}, args.threads,
                                              Path(tmp) / "jobs")
                seconds[name].append(took)
                peaks[name] = max(peaks[name], peak)
                counts[name] = objects
    base = statistics.median(seconds["no cells"])
    print(f"{machine()}; slide {args.height}×{args.width} uint16, diameter {args.diameter}, "
          f"{args.repeat} rounds, geojson=true in every job")
    print(markdown_table(
        ["variant", "objects", "job s (median)", "× no cells", "peak RSS MiB"],
        [[name, counts[name], f"{statistics.median(s):.1f}", f"{statistics.median(s) / base:.3f}",
          f"{peaks[name] / 2**20:.0f}"] for name, s in seconds.items()],
    ))


if __name__ == "__main__":
    main()

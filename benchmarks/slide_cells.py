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
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cells_cost_table, job_on_fresh_server, machine, nuclei_image  # noqa: E402


def write_slide(path: Path, height: int, width: int) -> None:
    base = nuclei_image(4096)
    image = np.tile(base, (-(-height // 4096), -(-width // 4096)))[:height, :width]
    tifffile.imwrite(path, image, tile=(512, 512), compression="zlib", photometric="minisblack", ome=True,
                     bigtiff=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})


def run_job(slide: Path, params: dict[str, str], threads: int, jobs_dir: Path) -> tuple[float, int, int]:
    """``(seconds, peak RSS bytes, objects)`` of one slide job on a fresh server."""
    env = {"UNET_DATA_ROOT": str(slide.parent), "UNET_JOBS_DIR": str(jobs_dir)}
    return job_on_fresh_server(threads, env, lambda client: client.post(
        "/jobs", params={"output": "ome-zarr", "geojson": "true", **params}, json={"path": slide.name}))


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
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.ome.tif"
        write_slide(slide, args.height, args.width)
        table = cells_cost_table(
            args.expand, args.repeat, lambda params: run_job(slide, {"diameter": args.diameter, **params},
                                                             args.threads, Path(tmp) / "jobs"), "objects")
    print(f"{machine()}; slide {args.height}×{args.width} uint16, diameter {args.diameter}, "
          f"{args.repeat} rounds, geojson=true in every job")
    print(table)


if __name__ == "__main__":
    main()

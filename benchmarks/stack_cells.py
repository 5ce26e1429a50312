"""What do cells (``expand=``) cost a stack job? Time and the server's peak memory, in ONE run.

A synthetic z-stack (``model_export.synth_stack``: ``--depth`` slices of ``--size``², ``--nuclei``
ellipsoid nuclei; pixel 0.5 µm, z-step 1 µm), repeated ``--tiles`` times along z, y and x for a
large stack (generating one is minutes), with a second channel (a marker) is sent as a
calibrated ImageJ TIFF to ``POST /jobs?output=labels3d&measure=1`` at a fixed ``diameter``, without
cells and with ``expand=`` each of ``--expand`` (the cells grown in 3-D, ``service.cells3d``, and
the marker measured over each cytoplasm). Every job runs on a fresh ``python -m service`` (bundled
model), so each peak (``VmHWM`` over the server's life: start-up, a warm-up request and the job) is
that variant's own; variants are interleaved for ``--repeat`` rounds. Prints a markdown table:
job seconds (median), its ratio to the job without cells, and the peak RSS (highest over rounds).

    .venv/bin/python benchmarks/stack_cells.py [--depth 16] [--size 512] [--tiles 1] [--expand 5 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    add_stack_options,
    cells_cost_table,
    imagej_stack,
    job_on_fresh_server,
    machine,
    synthetic_stack,
)

TIFF = {"Content-Type": "image/tiff"}


def stack_tiff(depth: int, size: int, nuclei: int, tiles: int) -> bytes:
    image = np.tile(synthetic_stack(depth, size, nuclei), (tiles, tiles, tiles))
    marker = np.random.default_rng(7).integers(0, 2000, image.shape).astype(image.dtype)
    return imagej_stack(np.stack([image, marker], axis=1), "ZCYX")


def run_job(body: bytes, params: dict[str, str], threads: int, jobs_dir: Path) -> tuple[float, int, int]:
    """``(seconds, peak RSS bytes, objects)`` of one stack job on a fresh server."""
    return job_on_fresh_server(threads, {"UNET_JOBS_DIR": str(jobs_dir)}, lambda client: client.post(
        "/jobs", params={"output": "labels3d", **params}, content=body, headers=TIFF))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stack_options(parser)
    parser.add_argument("--tiles", type=int, default=1, help="repeat the stack this many times along z, y, x")
    parser.add_argument("--expand", type=float, nargs="+", default=[5.0, 20.0])
    parser.add_argument("--diameter", default="24")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    body = stack_tiff(args.depth, args.size, args.nuclei, args.tiles)
    common = {"channel": "0", "measure": "1", "diameter": args.diameter}
    with tempfile.TemporaryDirectory() as tmp:
        table = cells_cost_table(
            args.expand, args.repeat,
            lambda params: run_job(body, {**common, **params}, args.threads, Path(tmp) / "jobs"), "nuclei")
    depth, size = args.depth * args.tiles, args.size * args.tiles
    print(f"{machine()}; stack {depth} × {size}² uint16 + a marker channel, pixel 0.5 µm, "
          f"z-step 1 µm, diameter {args.diameter}, {args.repeat} rounds, measure=1 in every job")
    print(table)


if __name__ == "__main__":
    main()

"""How much memory does growing a stack's cells take? ``StackFiles.finish`` with ``expand=``, in-process.

The stack of ``benchmarks/stack_cells.py`` (``model_export.synth_stack`` 16 × 512², 120 nuclei,
seed 7, repeated ``--tiles`` times along z, y and x), its labels and a random marker channel
added slice by slice to a ``service.stack_files.StackFiles``, then ``finish`` (labels3d.tif, the
cells grown in 3-D, cells3d.tif, the table) with pixel 0.5 µm and z-step 1 µm. Prints the peak of
Python's allocations during ``finish`` (``tracemalloc``: numpy's arrays included) and the rise of
the process's anonymous RSS (sampled every 50 ms; file pages of the scratch memory maps excluded).

    .venv/bin/python benchmarks/cells3d_memory.py [--tiles 2] [--expand 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_export.synth_stack import StackConfig, synth_stack  # noqa: E402
from service import cells3d, stack_files, zstack  # noqa: E402


def anonymous_rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--expand", type=float, default=20.0)
    args = parser.parse_args()
    image, labels = synth_stack(7, StackConfig(depth=16, size=512, nuclei=120))
    reps = (args.tiles,) * 3
    labels = np.tile(np.asarray(labels, np.int32), reps)
    image = np.tile(image, reps)
    marker = np.random.default_rng(1).integers(0, 2000, image.shape).astype(np.uint16)
    voxel = zstack.VoxelSize(0.5, 0.5, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        files = stack_files.StackFiles(Path(tmp), labels.shape, channel_keys=["marker"], expand=args.expand)
        for z in range(labels.shape[0]):
            files.add(labels[z], image[z], [marker[z]])
        del image
        base, peak, done = anonymous_rss_mib(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], anonymous_rss_mib())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        tracemalloc.start()
        files.finish(voxel)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        done.set()
        sampler.join()
    plan = cells3d.plan(labels.shape, args.expand, cells3d.spacing_of(voxel))
    print(f"stack {labels.shape}, expand={args.expand:g}: plan {plan}, held {plan.held_bytes / 1e6:.0f} MB, "
          f"regrown {plan.regrown:.2f}")
    print(f"finish: tracemalloc peak {traced / 1e6:.0f} MB; anonymous RSS rose by {peak[0] - base} MiB")


if __name__ == "__main__":
    main()

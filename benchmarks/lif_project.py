"""What one image of a Leica LIF project costs to read and to send: the plane from the project's
bytes (``POST /segment`` with ``series=``), from a memory map of the file (slide and stack jobs by
path), and the image cut out as an OME-TIFF (``unet-segment --series``, ``frames.cut_image``).

    .venv/bin/python benchmarks/lif_project.py [--images 8] [--slices 10] [--size 1024] [--repeat 3]

Writes a LAS X-style project (``tests/lif_files.py``: ``--images`` images of 2 channels ×
``--slices`` z-slices × size², uint16, calibrated) to a temporary folder, then for the last image
(the one furthest into the file) measures, per read: the bytes it needs; the time to get the plane
(channel 1, the middle slice; an upload's bytes are in memory before the clock starts). Prints a
markdown table (medians over ``--repeat`` rounds, ms).
One process, 2-core CPU: compare the rows of one run, not runs. The file is in the page cache
after it is written, so the times are of parsing and copying, not of a disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.lif_files: the LAS X layout writer

from _plane_reads import print_reads, three_reads  # noqa: E402

from service import microscopy  # noqa: E402
from tests.lif_files import Image, lif_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    stacks = [rng.integers(0, 4096, (args.slices, 2, args.size, args.size), dtype=np.uint16)
              for _ in range(args.images)]
    last, z = args.images - 1, args.slices // 2
    expected = stacks[-1][z, 1]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "session.lif"
        path.write_bytes(lif_bytes([Image(f"Series{k + 1:03d}", s, "ZCYX", ("Green", "Blue"), 0.3, z_um=1.0)
                                    for k, s in enumerate(stacks)]))
        del stacks
        reads = three_reads(path, last, microscopy.Selection(channel="Blue", z=z), args.size)
        print(f"project: {args.images} images × {args.slices} slices × 2 channels × {args.size}², uint16, "
              f"{path.stat().st_size / 2**20:.0f} MiB; the last image's channel 1 at z={z}; {args.repeat} "
              "rounds\n")
        print_reads(reads, expected, args.repeat)


if __name__ == "__main__":
    main()

"""What one position of a Nikon ND2 costs to read, and what an ND2's structure costs to parse.

    .venv/bin/python benchmarks/nd2_plate.py [--positions 8] [--slices 10] [--size 1024] [--repeat 3]

Part 1 writes a plate as NIS-Elements lays it out (``tests/nd2_files.py``: ``--positions`` XY
positions × ``--slices`` z-slices × size² × 2 channels, uint16, calibrated, each frame's channels
interleaved) and reads the last position's channel 1 at the middle slice three ways: from the
file's bytes (an upload, in memory before the clock starts), from a memory map of the file (slide
and stack jobs by path), and cut out as an OME-TIFF (``unet-segment --series``). Part 2 times
``microscopy.select`` of one 64² frame of files of 1 to 49,990 frames (the chunk map walked,
the metadata decoded by nd2, the frame read), and the decode of a metadata chunk of 16 MiB of the
smallest records (the most ``UNET_MAX_METADATA_BYTES`` lets a file hold). Prints markdown tables
(medians over ``--repeat`` rounds). One process, 2-core CPU: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.nd2_files: the NIS layout writer

from _plane_reads import median_ms, print_reads, three_reads  # noqa: E402

from service import microscopy, structure  # noqa: E402
from service.structure import Limits  # noqa: E402
from tests import nd2_files  # noqa: E402
from tests.nd2_files import Nd2, write_nd2  # noqa: E402


def plate(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (args.positions, args.slices, args.size, args.size, 2), dtype=np.uint16)
    last, z = args.positions - 1, args.slices // 2
    expected = pixels[last, z, :, :, 1].copy()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plate.nd2"
        path.write_bytes(write_nd2(Nd2(pixels, "PZYXC", ("FITC", "DAPI"), 0.325, 1.0)))
        del pixels
        reads = three_reads(path, last, microscopy.Selection(channel="DAPI", z=z), args.size)
        print(f"plate: {args.positions} positions × {args.slices} slices × {args.size}² × 2 channels, "
              f"uint16, {path.stat().st_size / 2**20:.0f} MiB; the last position's channel 1 at z={z}; "
              f"{args.repeat} rounds\n")
        print_reads(reads, expected, args.repeat)


def structure_costs(args: argparse.Namespace) -> None:
    print("\n| file | chunks | select one 64² frame, ms (median) |")
    print("|---|---|---|")
    for count in (1, 1_000, 10_000, 49_990):
        data = write_nd2(Nd2(np.zeros((count, 64, 64), np.uint8), "TYX"))
        choice = microscopy.Selection(t=count - 1) if count > 1 else microscopy.Selection()
        ms = median_ms(lambda d=data, c=choice: microscopy.select(d, c, 1 << 30, Limits()), args.repeat)
        frames_of = f"{count:,} frame{'s' if count > 1 else ''} of 64²"
        chunks = structure.check_nd2(data, Limits())
        print(f"| {frames_of}, {len(data) / 2**20:.1f} MiB | {chunks:,} | {ms:.0f} |")
    records = {"SLxImageTextInfo": {"TextInfoItem_5": "x", "pad": list(range(1_000_000))}}
    text_info = nd2_files.clx_records(records)
    data = write_nd2(Nd2(np.zeros((64, 64), np.uint16), text_info=text_info))
    limits = Limits(max_metadata_bytes=len(text_info) + 4096)
    ms = median_ms(lambda: microscopy.select(data, microscopy.Selection(), 1 << 30, limits), args.repeat)
    print(f"| one frame, a text-info chunk of {len(text_info) / 2**20:.1f} MiB of 1 M int32 records | "
          f"{structure.check_nd2(data, limits)} | {ms:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    plate(args)
    structure_costs(args)


if __name__ == "__main__":
    main()

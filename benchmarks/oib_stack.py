"""What one plane of an Olympus OIB costs to read, and what an OIB's structure costs to parse.

    .venv/bin/python benchmarks/oib_stack.py [--slices 30] [--size 1024] [--repeat 3]

Part 1 writes a z-stack as FluoView lays it out (``tests/oib_files.py``: ``--slices`` z-slices ×
size² × 2 channels, uint16, calibrated, one TIFF per plane in an OLE2 compound file) and reads
channel 1 at the middle slice: from the file's bytes (an upload, in memory before the clock
starts), cut out as an OME-TIFF (``unet-segment --z all``), and, for scale, that plane's own TIFF
decoded by tifffile alone. Part 2 times ``microscopy.select`` of the last 8² plane of files of 1
to 24,000 planes (a ``.tif`` and a ``.pty`` each: the compound file's directory walked, olefile's
directory parsed, the settings read, the plane read). Prints markdown tables (medians over
``--repeat`` rounds). One process, 2-core CPU: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.oib_files: the FluoView layout writer

from _plane_reads import median_ms, print_reads, stack_arguments  # noqa: E402

from service import frames, microscopy, structure  # noqa: E402
from service.structure import Limits  # noqa: E402
from tests.oib_files import Oib, tiff_bytes, write_oib  # noqa: E402


def stack(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (args.slices, 2, args.size, args.size), dtype=np.uint16)
    z = args.slices // 2
    expected = pixels[z, 1].copy()
    data = write_oib(Oib(pixels, "ZCYX", ("Alexa Fluor 488", "DAPI"), 0.207, 500.0))
    plane_tiff = tiff_bytes(expected)
    del pixels
    choice = microscopy.Selection(channel="DAPI", z=z)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stack.oib"
        path.write_bytes(data)

        def from_upload() -> tuple[int, np.ndarray]:
            return len(data), microscopy.select(data, choice, 1 << 30, Limits()).image

        def cut() -> tuple[int, np.ndarray]:
            piece = frames.cut_frame(path, "z", z, choice, 1 << 30)
            assert piece is not None
            return len(piece), microscopy.select(piece, choice, 1 << 30, Limits()).image

        def tiff_alone() -> tuple[int, np.ndarray]:
            return len(plane_tiff), tifffile.imread(io.BytesIO(plane_tiff))

        print(f"stack: {args.slices} slices × {args.size}² × 2 channels, uint16, "
              f"{len(data) / 2**20:.0f} MiB; channel 1 at z={z}; {args.repeat} rounds\n")
        reads = {"the file's bytes (an upload)": from_upload, "the plane cut out (unet-segment --z all)": cut,
                 "for scale: the plane's own TIFF, tifffile alone": tiff_alone}
        print_reads(reads, expected, args.repeat)


def structure_costs(args: argparse.Namespace) -> None:
    print("\n| file | directory entries | select the last 8² plane, ms (median) |")
    print("|---|---|---|")
    for count in (1, 1_000, 10_000, 24_000):
        data = write_oib(Oib(np.zeros((count, 8, 8), np.uint8), "TYX"))
        choice = microscopy.Selection(t=count - 1) if count > 1 else microscopy.Selection()
        ms = median_ms(lambda d=data, c=choice: microscopy.select(d, c, 1 << 30, Limits()), args.repeat)
        entries = structure.check_compound(data, Limits())
        planes = f"{count:,} plane{'s' if count > 1 else ''} of 8²"
        print(f"| {planes}, {len(data) / 2**20:.1f} MiB | {entries:,} | {ms:.0f} |")


def main() -> None:
    args = stack_arguments(__doc__)
    stack(args)
    structure_costs(args)


if __name__ == "__main__":
    main()

"""What one plane of a DeltaVision file and of a Zeiss LSM costs to read, four ways.

    .venv/bin/python benchmarks/dv_lsm_stack.py [--slices 30] [--size 1024] [--repeat 3]

Writes a z-stack of ``--slices`` × size² × 2 channels (DeltaVision) or 3 tracks (LSM: ZEN keeps a
plane's tracks as one page's samples), uint16, as softWoRx and ZEN lay them out
(``tests/dv_files.py``, ``tests/vendor_tiffs.py``), and reads channel 1 at the middle slice: from
the file's bytes (an upload, in memory before the clock starts), from a memory map of the file (a
stored upload), by path (``slide_files.open_slide``: slide and stack jobs), and cut out as an
OME-TIFF (``unet-segment --z all``). Prints markdown tables (medians over ``--repeat`` rounds),
every plane checked against the array written. One process, 2-core CPU: compare rows of one run.
"""

from __future__ import annotations

import argparse
import mmap
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*: the vendors' layout writers

from _plane_reads import print_reads, stack_arguments  # noqa: E402

from service import frames, microscopy, slide_files  # noqa: E402
from service.structure import Limits  # noqa: E402
from tests.dv_files import dv_bytes  # noqa: E402
from tests.vendor_tiffs import lsm_bytes  # noqa: E402


def reads(path: Path, choice: microscopy.Selection, side: int) -> dict:
    upload = path.read_bytes()

    def from_upload() -> tuple[int, np.ndarray]:
        return len(upload), microscopy.select(upload, choice, 1 << 30, Limits()).image

    def from_map() -> tuple[int, np.ndarray]:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return len(view), microscopy.select(view, choice, 1 << 30, Limits()).image  # type: ignore[arg-type]

    def by_path() -> tuple[int, np.ndarray]:
        with slide_files.open_slide(path, choice, max_pixels=1 << 34, limits=Limits()) as source:
            return side * side * 2, np.asarray(source.read(0, side, 0, side))

    def cut() -> tuple[int, np.ndarray]:
        piece = frames.cut_frame(path, "z", choice.z or 0, choice, 1 << 30)
        assert piece is not None
        return len(piece), microscopy.select(piece, choice, 1 << 30, Limits()).image

    return {"the file's bytes (an upload)": from_upload,
            "a memory map of the file (a stored upload)": from_map,
            "by path (open_slide: slide and stack jobs)": by_path,
            "the plane cut out (unet-segment --z all)": cut}


def table(title: str, path: Path, choice: microscopy.Selection, expected: np.ndarray,
          args: argparse.Namespace) -> None:
    size = path.stat().st_size / 2**20
    print(f"\n{title}, {size:.0f} MiB; channel 1 at z={choice.z}; {args.repeat} rounds\n")
    print_reads(reads(path, choice, args.size), expected, args.repeat)


def main() -> None:
    args = stack_arguments(__doc__)
    rng = np.random.default_rng(0)
    z = args.slices // 2
    with tempfile.TemporaryDirectory() as folder:
        dv = rng.integers(0, 4096, (1, 2, args.slices, args.size, args.size), dtype=np.uint16)  # T, C, Z
        path = Path(folder) / "stack.dv"
        path.write_bytes(dv_bytes(dv, 0.108, 0.2, wavelengths=(525, 455)))
        expected = dv[0, 1, z].copy()
        del dv
        table(f"DeltaVision: {args.slices} slices × {args.size}² × 2 waves, uint16", path,
              microscopy.Selection(channel="455 nm", z=z), expected, args)
        path.unlink()
        lsm = rng.integers(0, 4096, (args.slices, 3, args.size, args.size), dtype=np.uint16)
        path = Path(folder) / "stack.lsm"
        path.write_bytes(lsm_bytes(lsm, "ZCYX", (0.1, 0.1, 0.5), ["Ch1-T1", "ChS1-T2", "Ch2-T3"]))
        expected = lsm[z, 1].copy()
        del lsm
        table(f"Zeiss LSM: {args.slices} slices × {args.size}² × 3 tracks, uint16", path,
              microscopy.Selection(channel="ChS1-T2", z=z), expected, args)


if __name__ == "__main__":
    main()

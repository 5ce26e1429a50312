"""What one plane of an Imaris file costs to read, four ways, with the chunkings Imaris writes.

    .venv/bin/python benchmarks/ims_stack.py [--slices 30] [--size 1024] [--repeat 3]

Writes a z-stack of ``--slices`` × size² × 2 channels, uint16 (nuclei-like blobs and noise, deflate
level 2, no shuffle, as the real files checked are stored), twice: in chunks of 16 × 256 × 256
(Bitplane's PtK2Cell demo) and of 1 × size × size (an Imaris 9.5 file), with ``tests/ims_files.py``.
Reads channel 1 at the middle slice as ``dv_lsm_stack.py`` does: from the file's bytes (an upload),
a memory map (a stored upload), by path (slide and stack jobs) and cut out as an OME-TIFF
(``unet-segment --z all``); and, for scale, with h5py (libhdf5; not what the service uses: see
``service/ims.py``). Prints markdown tables (medians over ``--repeat`` rounds), every plane checked
against the array written. One process, 2-core CPU: compare rows of one run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*: the layout writer

from _plane_reads import print_reads, stack_arguments  # noqa: E402
from dv_lsm_stack import reads  # noqa: E402

from service import microscopy  # noqa: E402
from tests.ims_files import ims_bytes  # noqa: E402


def stack(slices: int, size: int, seed: int) -> np.ndarray:
    """``1 × 2 × slices × size × size`` uint16 (T, C, Z, Y, X): smooth blobs with camera noise, which
    deflate compresses about as it does real fluorescence."""
    rng = np.random.default_rng(seed)
    out = np.empty((1, 2, slices, size, size), np.uint16)
    for c in range(2):
        for z in range(slices):
            small = rng.random((size // 32, size // 32)).astype(np.float32)
            blobs = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
            out[0, c, z] = np.clip(blobs * 3000 + rng.normal(200, 20, (size, size)), 0, 65535)
    return out


def main() -> None:
    args = stack_arguments(__doc__)
    z = args.slices // 2
    volume = stack(args.slices, args.size, seed=0)
    expected = volume[0, 1, z].copy()
    choice = microscopy.Selection(channel="DAPI", z=z)
    for chunks in ((16, 256, 256), (1, args.size, args.size)):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "stack.ims"
            path.write_bytes(ims_bytes(volume, (0.1, 0.1, 0.3), ["GFP", "DAPI"], chunks=chunks,
                                       shuffle=False, levels=1))
            size = path.stat().st_size / 2**20
            print(f"\nImaris, {args.slices} slices × {args.size}² × 2 channels, uint16, chunks {chunks}, "
                  f"{size:.0f} MiB; channel 1 at z={z}; {args.repeat} rounds\n")
            ways = reads(path, choice, args.size)
            try:
                import h5py

                def with_h5py(path: Path = path) -> tuple[int, np.ndarray]:
                    with h5py.File(path, "r") as f:
                        plane = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 1/Data"][z]
                    return plane.nbytes, plane[:args.size, :args.size]

                ways["h5py (libhdf5), for scale: not the service's reader"] = with_h5py
            except ImportError:
                pass
            print_reads(ways, expected, args.repeat)


if __name__ == "__main__":
    main()

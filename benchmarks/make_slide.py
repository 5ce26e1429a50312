"""Write a gigapixel test slide: a 16-bit tiled pyramidal OME-TIFF of synthetic nuclei (issue #16).

The slide is one ``--base``² image of synthetic nuclei (``model_export.data.synth_nuclei``,
16-bit, with the slide's nucleus sizes and density) repeated periodically with an offset:
pixel ``(y, x)`` is ``base[(y + oy) % B, (x + ox) % B]``. The offsets are odd, so the seams where
copies meet (at ``B·k - o``) never fall on a power-of-two window or tile border: a windowed
pipeline whose windows are 512, 1024, 2048 or 4096 px still finds nuclei cut by every one of its
window borders, as on a real slide. The seams themselves cut nuclei with a straight edge; the
in-memory comparison the issue asks for takes a crop away from them (``--print-crop``).

Written in bounded memory: tifffile takes the tiles from an iterator (one ``--tile``² tile at a
time, deflate-compressed on worker threads), pyramid levels 2× smaller each as SubIFDs (sampled
by stride: ``level_k[i, j] = slide[i·2^k, j·2^k]``) down to ≤ 1024 px, as bfconvert and QuPath
write them, so QuPath, Fiji (Bio-Formats), napari and tifffile open it. Held at once: the base
image (B² × 2 bytes, 32 MiB at 4096) plus a few tiles.

    .venv/bin/python benchmarks/make_slide.py /data/slide-32k.ome.tif [--size 32768] [--base 4096]
        [--tile 512] [--pixel-size 0.65] [--seed 20261130] [--print-crop]

(needs the ``train`` extra: the generator lives in model_export, which imports PyTorch.)
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import PeakRss  # noqa: E402 - after the path set-up, as in the other benchmarks

#: Where the first copy of the base image starts (odd: seams avoid every power-of-two border).
OFFSET = (1371, 2203)


def base_image(size: int, seed: int) -> np.ndarray:
    """``(size, size)`` uint16 synthetic nuclei: radius 6–10 px, 20–30 % coverage, no flat
    padding or background steps (a slide is tissue all over), 12-bit range if drawn 8-bit."""
    from model_export.data import SynthConfig, synth_nuclei

    config = SynthConfig(radius=(6.0, 10.0), coverage=(0.2, 0.3), field_step=0.0, flat_padding=0.0)
    image, _ = synth_nuclei(seed, size, config)
    if image.dtype == np.uint8:
        image = image.astype(np.uint16) << 4
    return image


def slide_tile(
    base: np.ndarray, y0: int, x0: int, tile: int, step: int, shape: tuple[int, int]
) -> np.ndarray:
    """The ``tile``² tile at ``(y0, x0)`` of the level sampled every ``step`` px (zeros past the
    level's edge, as TIFF tiles are padded)."""
    b = base.shape[0]
    height, width = shape
    rows = np.arange(y0, min(y0 + tile, height)) * step
    cols = np.arange(x0, min(x0 + tile, width)) * step
    out = np.zeros((tile, tile), base.dtype)
    out[: rows.size, : cols.size] = base[np.ix_((rows + OFFSET[0]) % b, (cols + OFFSET[1]) % b)]
    return out


def tiles(base: np.ndarray, shape: tuple[int, int], tile: int, step: int) -> Iterator[np.ndarray]:
    height, width = shape
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            yield slide_tile(base, y0, x0, tile, step, shape)


def expected(base: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The slide's pixels ``[y0:y1, x0:x1]`` at full resolution (for checks and crops)."""
    b = base.shape[0]
    return base[np.ix_((np.arange(y0, y1) + OFFSET[0]) % b, (np.arange(x0, x1) + OFFSET[1]) % b)]


def write_slide(
    path: Path, size: int, base: np.ndarray, tile: int = 512, pixel_size_um: float = 0.65, workers: int = 2
) -> list[tuple[int, int]]:
    """Write the slide; returns the ``(H, W)`` of each pyramid level."""
    shapes = [(size, size)]
    while max(shapes[-1]) > 1024:
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    options = dict(
        tile=(tile, tile), dtype=np.uint16, photometric="minisblack", compression="zlib",
        compressionargs={"level": 6}, maxworkers=workers,
        # tifffile compresses this many bytes of tiles per pass (default 512 MiB: it buffers them)
        buffersize=32 * 2**20,
    )
    metadata = {
        "axes": "YX", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "Channel": {"Name": ["DAPI"]},
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(tiles(base, shapes[0], tile, 1), shape=shapes[0], subifds=len(shapes) - 1,
                 metadata=metadata, **options)
        for k, shape in enumerate(shapes[1:], start=1):
            tw.write(tiles(base, shape, tile, 2**k), shape=shape, subfiletype=1, **options)
    return shapes


def seam_free_crop(size: int, base: int, crop: int) -> tuple[int, int]:
    """Top-left of a ``crop``² window inside one copy of the base image, away from the slide's
    border (a crop from here has no seam in it)."""
    start = (-OFFSET[0]) % base, (-OFFSET[1]) % base  # where the first whole copy begins
    if start[0] + crop > size or start[1] + crop > size or crop > base:
        raise ValueError(f"no seam-free {crop}² crop in a {size}² slide of {base}² copies")
    return start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=32768, help="slide edge, px")
    parser.add_argument("--base", type=int, default=4096, help="edge of the repeated synthetic image, px")
    parser.add_argument("--tile", type=int, default=512, help="TIFF tile edge, px (multiple of 16)")
    parser.add_argument("--pixel-size", type=float, default=0.65, help="µm per pixel")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--workers", type=int, default=2, help="compression threads")
    parser.add_argument("--print-crop", type=int, default=4096, metavar="N",
                        help="print where an N² seam-free crop lies (for the in-memory comparison)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    with PeakRss(os.getpid()) as generating:
        base = base_image(args.base, args.seed)
        gc.collect()
    t1 = time.perf_counter()
    with PeakRss(os.getpid()) as writing:
        start_rss = writing.rss()
        shapes = write_slide(args.out, args.size, base, args.tile, args.pixel_size, args.workers)
    t2 = time.perf_counter()
    levels = f"{len(shapes)} levels, tiles {args.tile}², {args.pixel_size} µm/px"
    print(f"| slide | {args.size}² uint16, {levels} |")
    print("|---|---|")
    print(f"| file | {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB) |")
    print(f"| base image | {args.base}² seed {args.seed}, {t1 - t0:.1f} s |")
    print(f"| writing | {t2 - t1:.1f} s ({args.size**2 / 1e6 / (t2 - t1):.1f} MP/s) |")
    print(f"| peak RSS generating | {generating.peak / 1e6:.0f} MB |")
    print(f"| peak RSS writing | {writing.peak / 1e6:.0f} MB ({start_rss / 1e6:.0f} MB before) |")
    if args.print_crop:
        y, x = seam_free_crop(args.size, args.base, args.print_crop)
        n = args.print_crop
        print(f"| seam-free {n}² crop | y {y}:{y + n}, x {x}:{x + n} |")


if __name__ == "__main__":
    main()

"""What reading one plane of a Zeiss CZI costs the service (``service.czi``), against Zeiss's own
libCZI (pylibCZIrw, not served: it crashed on mutated files) and against the same plane sent as
an uncompressed OME-TIFF (what a user had to convert to before).

    .venv/bin/python benchmarks/czi_read.py [--size 2048] [--channels 3] [--tiles 4] [--repeat 5]
                                            [--slide 8192] [--band 1024]

Two files, written by libCZI as ZEN saves them (zstd1, 16-bit split bytes): a single field
(channels × size², uint16) and a tile scan of tiles × tiles fields of size/tiles px each,
overlapping by 10 %. For each, the time to get the last channel's plane as an array, from bytes
in memory (``microscopy.select``: structure walk, czifile's directory, decode) and from a file
(libCZI: open + read). The arrays are checked equal. Prints a markdown table (medians over
``--repeat`` rounds, ms). One process, 2-core CPU: compare the rows of one run, not runs.

Then a slide: a ``--slide``² tile scan of 1024² fields overlapping by 64 px, as a CZI (zstd1)
and as the same plane in a tiled OME-TIFF (512² tiles, zlib, what bfconvert writes), each read
whole in ``--band``-row bands through ``service.slide_files`` as a slide job reads it; the
bands are checked equal.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/ helpers

from service import microscopy, slide_files  # noqa: E402
from service.structure import Limits  # noqa: E402
from tests.czi_files import ZSTD1, Tile, czi_bytes  # noqa: E402


def nuclei_like(size: int, seed: int) -> np.ndarray:
    """Smooth blobs on a dark background with camera noise: compresses as micrographs do."""
    import cv2

    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size), np.float32)
    for _ in range(size * size // 2000):
        y, x = rng.integers(0, size, 2)
        cv2.circle(canvas, (int(x), int(y)), int(rng.integers(5, 14)), float(rng.uniform(800, 3000)), -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 2) + rng.normal(200, 30, canvas.shape)
    return np.clip(canvas, 0, 65535).astype(np.uint16)


def timed(call, repeat: int) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slide", type=int, default=8192)
    parser.add_argument("--band", type=int, default=1024)
    args = parser.parse_args(argv)
    from pylibCZIrw import czi as pyczi

    last = args.channels - 1
    field = [Tile(nuclei_like(args.size, c), c=c) for c in range(args.channels)]
    step = args.size // args.tiles
    tile = int(step * 1.1)
    scan = [Tile(nuclei_like(tile, 100 + k)[:, :], c=0, x=(k % args.tiles) * step, y=(k // args.tiles) * step)
            for k in range(args.tiles * args.tiles)]
    files = {
        f"one field, {args.channels} channels × {args.size}²": (czi_bytes(field, None, 0.65e-6, ZSTD1), last),
        f"tile scan, {args.tiles}×{args.tiles} tiles of {tile}²": (czi_bytes(scan, None, 0.65e-6, ZSTD1), 0),
    }
    print("| file | CZI MiB | service.czi, bytes → plane (ms) | libCZI, file → plane (ms) | "
          "the plane as an uncompressed OME-TIFF, bytes → plane (ms) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, (data, channel) in files.items():
            path = Path(folder) / "file.czi"
            path.write_bytes(data)
            selection = microscopy.Selection(channel=str(channel))
            ours_ms, ours = timed(lambda d=data, s=selection: microscopy.select(d, s, 10**9, Limits()).image,
                                  args.repeat)

            def libczi(p=path, c=channel):
                with pyczi.open_czi(str(p)) as reader:
                    return reader.read(plane={"C": c})[:, :, 0]

            theirs_ms, theirs = timed(libczi, args.repeat)
            assert np.array_equal(ours, theirs), name
            out = io.BytesIO()
            tifffile.imwrite(out, ours, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65})
            tiff = out.getvalue()
            tiff_ms, from_tiff = timed(lambda t=tiff: microscopy.select(t, microscopy.Selection(), 10**9,
                                                                        Limits()).image, args.repeat)
            assert np.array_equal(from_tiff, ours)
            print(f"| {name} | {len(data) / 2**20:.2f} | {ours_ms:.1f} | {theirs_ms:.1f} | {tiff_ms:.1f} |")
        print()
        slide_bands(Path(folder), args.slide, args.band)
    return 0


def slide_bands(folder: Path, size: int, band: int) -> None:
    field, step = 1024, 1024 - 64
    plane = nuclei_like(size, 7)
    starts = list(range(0, size - field, step)) + [size - field]
    tiles = [Tile(np.ascontiguousarray(plane[y : y + field, x : x + field]), x=x, y=y)
             for y in starts for x in starts]
    files = {
        "CZI tile scan (zstd1)": folder / "scan.czi",
        "tiled OME-TIFF (512², zlib)": folder / "scan.ome.tif",
    }
    files["CZI tile scan (zstd1)"].write_bytes(czi_bytes(tiles, None, 0.65e-6, ZSTD1))
    tifffile.imwrite(files["tiled OME-TIFF (512², zlib)"], plane, tile=(512, 512), compression="zlib",
                     ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    print(f"| {size}² slide read in {band}-row bands | file MiB | seconds |")
    print("|---|---|---|")
    for name, path in files.items():
        start = time.perf_counter()
        opened = slide_files.open_slide(path, microscopy.Selection(), max_pixels=size * size, limits=Limits())
        with opened as slide:
            for y in range(0, size, band):
                window = slide.read(y, min(size, y + band), 0, size)
                assert np.array_equal(window, plane[y : y + band]), name
        seconds = time.perf_counter() - start
        print(f"| {name} | {path.stat().st_size / 2**20:.1f} | {seconds:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())

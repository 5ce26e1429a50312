"""One image of a vendor file (a LIF project's image, an ND2's position) read three ways, timed:
what ``benchmarks/lif_project.py`` and ``benchmarks/nd2_plate.py`` compare."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service import frames, microscopy, slide_files
from service.structure import Limits

Read = Callable[[], tuple[int, np.ndarray]]


def stack_arguments(doc: str) -> argparse.Namespace:
    """The command line of a z-stack benchmark (its docstring's first line as the description):
    ``--slices`` (30), ``--size`` (1024, px a side), ``--repeat`` (3 rounds)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


def three_reads(path: Path, series: int, choice: microscopy.Selection, side: int) -> dict[str, Read]:
    """Image ``series``'s plane ``choice`` (its channel and z, without ``series``) of the file at
    ``path``, ``side``² px: from the file's bytes as an upload (read before the clock starts), from
    a memory map of the file (slide and stack jobs by path), and cut out as an OME-TIFF
    (``unet-segment --series``); each read gives the bytes it held or sent and the plane."""
    upload = path.read_bytes()  # what the service holds of an upload, received before the timing
    chosen = microscopy.Selection(series=series, channel=choice.channel, z=choice.z)

    def from_upload() -> tuple[int, np.ndarray]:
        return len(upload), microscopy.select(upload, chosen, 1 << 30, Limits()).image

    def from_map() -> tuple[int, np.ndarray]:
        with slide_files.open_slide(path, chosen, max_pixels=1 << 34, limits=Limits()) as source:
            return side * side * 2, source.read(0, side, 0, side)

    def cut() -> tuple[int, np.ndarray]:
        data = frames.cut_image(path, series, choice, 1 << 30)
        assert data is not None
        return len(data), microscopy.select(data, choice, 1 << 30, Limits()).image

    return {"the file's bytes, series= (an upload)": from_upload,
            "a memory map of the file (by path)": from_map,
            "the image cut out (unet-segment --series)": cut}


def median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def print_reads(reads: dict[str, Read], expected: np.ndarray, repeat: int) -> None:
    """A markdown table of the reads (medians over ``repeat`` rounds), each checked to give ``expected``."""
    print("| read | MiB held or sent | ms (median) |")
    print("|---|---|---|")
    for name, read in reads.items():
        size, plane = read()
        assert np.array_equal(plane, expected), name
        print(f"| {name} | {size / 2**20:.1f} | {median_ms(read, repeat):.0f} |")

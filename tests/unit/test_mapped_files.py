"""Files read through a memory map — a stored upload (``service.uploads``), or a large file the
Python API maps — read exactly as their bytes do, in every format, and are never copied whole:
a stored file may be gigabytes.
"""

from __future__ import annotations

import io
import mmap
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from service import imaging, microscopy, workload
from service.microscopy import Selection
from service.structure import Limits
from service.uploads import StoredImage
from tests.czi_files import Tile, czi_bytes
from tests.lif_files import Image, lif_bytes

LIMIT = 10_000_000
H, W = 48, 64
NUCLEI = np.random.default_rng(3).integers(0, 4000, (H, W), dtype=np.uint16)
GREY8 = (NUCLEI // 16).astype(np.uint8)


def _encoded(ext: str, image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def _ome_two_images() -> bytes:
    out = io.BytesIO()
    with tifffile.TiffWriter(out, ome=True) as writer:
        writer.write(GREY8, metadata={"axes": "YX", "Name": "first"})
        writer.write(np.stack([GREY8, NUCLEI.astype(np.uint8)]), metadata={"axes": "CYX", "Name": "second"})
    return out.getvalue()


FILES = {
    "png": (_encoded(".png", NUCLEI), Selection()),
    "jpeg": (_encoded(".jpg", GREY8), Selection()),
    "bmp": (_encoded(".bmp", GREY8), Selection()),
    "ome-tiff": (_ome_two_images(), Selection(series=1, channel="1")),
    "czi": (czi_bytes([Tile(NUCLEI)], {0: "DAPI"}, 0.5e-6), Selection()),
    "lif": (lif_bytes([Image("a", GREY8), Image("b", np.stack([NUCLEI // 2, NUCLEI]), "CYX",
                                                 ("Gray", "Blue"))]),
            Selection(series=1, channel="blue")),
}


def mapped(tmp_path: Path, data: bytes) -> StoredImage:
    path = tmp_path / "stored"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        return StoredImage(handle.fileno(), 0, access=mmap.ACCESS_READ)


@pytest.mark.parametrize("kind", sorted(FILES))
def test_a_mapped_file_reads_as_its_bytes(kind: str, tmp_path: Path) -> None:
    data, choice = FILES[kind]
    stored = mapped(tmp_path, data)
    limits = Limits()
    assert workload.plane_pixels(stored, LIMIT, limits) == workload.plane_pixels(data, LIMIT, limits)
    from_map = microscopy.select(stored, choice, LIMIT, limits)
    from_bytes = microscopy.select(data, choice, LIMIT, limits)
    np.testing.assert_array_equal(from_map.image, from_bytes.image)
    assert from_map.describe() == from_bytes.describe()
    assert microscopy.probe(stored, LIMIT, limits, choice.series).describe() == \
        microscopy.probe(data, LIMIT, limits, choice.series).describe()


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_a_large_mapped_file_is_not_copied_to_be_decoded(kind: str, tmp_path: Path) -> None:
    """A small image followed by 48 MiB (what decoders ignore: bytes after PNG's IEND, padding
    after JPEG's end): reading it must not copy the file (Pillow was given a BytesIO of it)."""
    data, choice = FILES[kind]
    padding = bytes(48 << 20)
    stored = mapped(tmp_path, data + padding)
    tracemalloc.start()
    try:
        plane = microscopy.select(stored, choice, LIMIT, Limits())
        imaging.probe(stored)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plane.image.shape == (H, W)
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB allocated to read a {len(stored) / 2**20:.0f} MiB map"

"""DeltaVision files (``service.dv``) as softWoRx writes them (``tests/dv_files.py``): every plane
in each of the three section orders and both byte orders, channels by emission wavelength, µm from
the header, by upload, memory map and path, and the refusals."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from service import frames, microscopy, slide_files, structure, workload
from service.imaging import ImageTooLarge, UndecodableImage, UnsupportedImageType
from service.microscopy import Selection, SelectionError
from tests.dv_files import dv_bytes

MAX = 10**8
RNG = np.random.default_rng(7)
STACK = RNG.integers(0, 4000, (2, 3, 4, 20, 24)).astype(np.uint16)  # T, C, Z, Y, X
NAMES = ["455 nm", "525 nm", "632 nm"]


def select(data: bytes, **choice: object) -> microscopy.Plane:
    return microscopy.select(data, Selection(**choice), MAX, 10_000)  # type: ignore[arg-type]


@pytest.mark.parametrize("sequence", [0, 1, 2])
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_every_plane_is_read_in_each_section_order_and_byte_order(sequence: int, byte_order: str) -> None:
    data = dv_bytes(STACK, wavelengths=(455, 525, 632), sequence=sequence, byte_order=byte_order,
                    extended_bytes=96)
    layout = microscopy.probe(data, MAX, 10_000)
    assert (layout.format, layout.axes, layout.planes) == ("DeltaVision", "TZCYX", {"Z": 4, "T": 2})
    assert [c.name for c in layout.channels] == NAMES
    assert layout.pixel_size == microscopy.PixelSize(0.13262, 0.13262, "dv", 0.3)
    for t in range(2):
        for c in range(3):
            for z in range(4):
                assert np.array_equal(select(data, channel=NAMES[c], z=z, t=t).image, STACK[t, c, z])


@pytest.mark.parametrize("dtype, read_as", [(np.uint8, np.uint8), (np.int16, np.float32),
                                            (np.float32, np.float32), (np.int32, np.float32)])
def test_pixel_types_read_as_the_service_reads_them(dtype: type, read_as: type) -> None:
    stack = (RNG.integers(-100, 200, (1, 1, 2, 8, 8)) if dtype != np.uint8
             else RNG.integers(0, 255, (1, 1, 2, 8, 8))).astype(dtype)
    plane = select(dv_bytes(stack, wavelengths=(525,)), z=1).image
    assert plane.dtype == read_as and np.array_equal(plane, stack[0, 0, 1].astype(read_as))


def test_a_single_plane_with_no_calibration_says_so() -> None:
    data = dv_bytes(STACK[:1, :1, :1], pixel_um=0.0, z_um=0.0, wavelengths=(0,))
    layout = microscopy.probe(data, MAX, 10_000)
    assert layout.pixel_size is None and layout.channels[0].name is None
    assert any("pixel size" in w for w in layout.warnings)


def test_waves_sharing_a_wavelength_are_offered_by_index() -> None:
    layout = microscopy.probe(dv_bytes(STACK[:, :2], wavelengths=(525, 525)), MAX, 10_000)
    assert [c.name for c in layout.channels] == [None, None]


def test_a_memory_map_a_path_and_a_cut_frame_read_as_the_upload(tmp_path: Path) -> None:
    path = tmp_path / "cells.dv"
    path.write_bytes(dv_bytes(STACK, wavelengths=(455, 525, 632), sequence=1))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert np.array_equal(select(view, channel="525 nm", z=2, t=1).image, STACK[1, 1, 2])  # type: ignore[arg-type]
    with slide_files.open_slide(path, Selection(channel="632 nm", z=3, t=0), max_pixels=MAX,
                                limits=structure.Limits()) as source:
        assert np.array_equal(np.asarray(source.read(2, 18, 3, 20)), STACK[0, 2, 3, 2:18, 3:20])
    cut = frames.cut_frame(path, "t", 1, Selection(channel="455 nm", z=0), MAX)
    assert cut is not None and len(cut) < len(path.read_bytes()) / 4
    assert np.array_equal(select(cut, channel="455 nm", z=0, t=1).image, STACK[1, 0, 0])


def test_admission_charges_one_plane_from_the_header() -> None:
    data = dv_bytes(STACK)
    assert workload.plane_pixels(data, MAX, 10_000) == 20 * 24
    with pytest.raises(ImageTooLarge):
        workload.plane_pixels(data, 20 * 24 - 1, 10_000)


def test_broken_and_hostile_headers_are_refused_with_the_reason() -> None:
    data = dv_bytes(STACK)
    with pytest.raises(UndecodableImage, match="cut short"):
        microscopy.probe(data[:-1], MAX, 10_000)
    lying = bytearray(data)
    lying[8:12] = (2**31 - 1).to_bytes(4, "little")  # sections: far more than the file holds
    with pytest.raises(UndecodableImage):
        microscopy.probe(bytes(lying), MAX, 10_000)
    uneven = bytearray(data)
    uneven[8:12] = (23).to_bytes(4, "little")  # 23 sections are not 3 waves × 2 times × z
    with pytest.raises(UndecodableImage, match="wavelengths"):
        microscopy.probe(bytes(uneven), MAX, 10_000)
    with pytest.raises(UnsupportedImageType, match="complex"):
        microscopy.probe(dv_bytes(STACK[:1, :1, :1].astype(np.complex64)), MAX, 10_000)
    with pytest.raises(ImageTooLarge):
        microscopy.probe(data, 100, 10_000)
    with pytest.raises(SelectionError):
        microscopy.probe(data, MAX, 10_000, series=1)


def test_other_formats_are_not_taken_for_deltavision() -> None:
    from tests.api import _images as im

    png = im.png(im.blobs(64, 64, seed=1))
    assert not structure.is_dv(png)
    forged = bytearray(1024)
    forged[96:98] = b"\xa0\xc0"  # the ID alone, with sizes no header has
    assert not structure.is_dv(bytes(forged))
